import numpy as np
import pytest
import torch

from interp.errors import DataError, UnknownNameError
from interp.probes.sparse import (exact_single_unit, f_stat, mean_diff, select_units,
                                  sparse_probe)


def planted(n=2000, u=300, units=(17, 123, 250), noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, u, generator=g)
    y = (torch.rand(n, generator=g) < 0.3).long()
    for i, j in enumerate(units):
        x[:, j] += (3.0 - i) * y * noise
    return x, y


def test_mean_diff_and_f_stat_equal_hand_and_sklearn_computations():
    from sklearn.feature_selection import f_classif

    x, y = planted(n=500, u=40, units=(3, 30))
    md = mean_diff(x, y)
    hand = torch.stack([(x[y == 1, j].mean() - x[y == 0, j].mean()).abs() for j in range(40)])
    torch.testing.assert_close(md, hand)
    ref, _ = f_classif(x.numpy(), y.numpy())
    np.testing.assert_allclose(f_stat(x, y).numpy(), ref, rtol=1e-4)


def test_exact_selector_finds_the_planted_unit_and_matches_brute_force():
    from sklearn.linear_model import LogisticRegression

    x, y = planted(n=600, u=30, units=(7, 21), noise=0.6)
    best, losses = exact_single_unit(x, y, weight_decay=0.0)
    assert best == 7
    # brute force: one sklearn fit per unit, balanced, no penalty
    brute = []
    for j in range(30):
        xs = (x[:, j:j + 1] - x[:, j].mean()) / (x[:, j].std() + 1e-6)
        clf = LogisticRegression(penalty=None, class_weight="balanced").fit(xs.numpy(), y.numpy())
        p = clf.predict_proba(xs.numpy())[:, 1]
        w = np.where(y.numpy() == 1, len(y) / (2 * y.sum().item()),
                     len(y) / (2 * (len(y) - y.sum().item())))
        brute.append(-(w * (y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p))).sum() / w.sum())
    np.testing.assert_allclose(losses.numpy(), np.array(brute), rtol=1e-3, atol=1e-4)
    assert int(np.argmin(brute)) == best


@pytest.mark.parametrize("method", ["mean_diff", "f_stat", "l1", "greedy"])
def test_selectors_recover_the_planted_units(method):
    x, y = planted()
    chosen = set(select_units(x, y, 3, method).tolist())
    assert chosen == {17, 123, 250}


def test_probe_f1_grows_with_k_and_dense_probe_is_reported():
    x, y = planted()
    res = sparse_probe(x, y, ks=(1, 2, 3, 8))
    f1 = {r.k: r.test["f1"] for r in res}
    assert f1[1] < f1[3] and f1[3] > 0.9
    assert res[-1].method == "dense" and res[-1].k is None and len(res[-1].units) == 300
    assert res[0].units == [17]
    for r in res:
        assert 0.5 < r.test["auroc"] <= 1.0


def test_bad_probe_input_is_refused():
    x, y = planted(n=100, u=10, units=(2,))
    with pytest.raises(DataError, match="single class"):
        sparse_probe(x, torch.zeros(100, dtype=torch.long))
    with pytest.raises(DataError, match="100 examples but"):
        sparse_probe(x, y[:50])
    with pytest.raises(UnknownNameError, match="f_stat"):
        select_units(x, y, 2, "anova")
    with pytest.raises(DataError, match="k must be 1"):
        select_units(x, y, 2, "exact")
    with pytest.raises(DataError, match="0/1"):
        sparse_probe(x, y * 2)


def test_builtin_datasets_and_features():
    from interp.models import load
    from interp.probes.datasets import make_dataset, probe_features
    from interp.sae.release import load_pretrained

    ds = make_dataset("othello-legal-d3", 40)
    assert ds.tokens.shape == (40, 60) and (ds.labels[:, 0] == -1).all()
    from interp.data import othello as oth

    games = oth.generate_games(40, np.random.default_rng(424_242))
    assert bool(ds.labels[0, 5]) == bool(games.legal_mask()[0, 4, oth.parse_square("d3")])
    model = load("pycode")
    ds = make_dataset("pycode-in-string", 32)
    saes = {"topk": load_pretrained("pycode/blocks.2.hook_resid_post/topk")}
    x, y, info = probe_features(model, ds, "sae:topk", saes, max_examples=500)
    assert x.shape == (500, 2048) and info["positives"] == int(y.sum()) > 0
    x2, _, _ = probe_features(model, ds, "hook:blocks.1.mlp.hook_post", max_examples=500)
    assert x2.shape == (500, 512)
    with pytest.raises(DataError, match="hook:HOOK_NAME"):
        probe_features(model, ds, "neurons")
    with pytest.raises(UnknownNameError, match="pycode-in-string"):
        make_dataset("pycode-in-strings")
    with pytest.raises(DataError, match="a1 .. h8"):
        make_dataset("othello-mine-z9")


def test_probe_cli_compares_sources(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, "-m", "interp.cli", "probe", "--task", "pycode-keyword",
                        "--source", "hook:blocks.1.mlp.hook_post", "--source",
                        "sae:pycode/blocks.2.hook_resid_post/topk", "--k", "1,4",
                        "--contexts", "64", "--examples", "2000", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "k=1" in r.stdout and "dense" in r.stdout
    res = json.loads(out.read_text())
    assert set(res["sources"]) == {"hook:blocks.1.mlp.hook_post",
                                   "sae:pycode/blocks.2.hook_resid_post/topk"}
    assert out.with_suffix(".html").exists()


def test_one_vs_rest_on_three_planted_classes():
    from interp.probes.sparse import macro_average, one_vs_rest

    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (1500,), generator=g)
    x = torch.randn(1500, 50, generator=g)
    for c, unit in enumerate((4, 20, 33)):
        x[:, unit] += 3.0 * (y == c)
    per = one_vs_rest(x, y, ks=(1,))
    assert set(per) == {0, 1, 2}
    assert [per[c][0].units for c in (0, 1, 2)] == [[4], [20], [33]]
    avg = macro_average(per)
    assert avg[0].test["f1"] == pytest.approx(np.mean([per[c][0].test["f1"] for c in per]))


def test_multiclass_datasets():
    from interp.probes.datasets import make_dataset

    ds = make_dataset("othello-state-d4", 20)
    assert set(ds.labels[ds.labels >= 0].tolist()) <= {0, 1, 2}
    assert int(ds.labels.max()) == 2


def test_probes_on_builtin_pycode_properties_reach_stated_scores():
    """The README's figures, on a smaller sample: neurons of blocks.1 carry in-string and
    keyword information that a dense probe reads well and a 64-sparse probe mostly."""
    from interp.models import load
    from interp.probes.datasets import make_dataset, probe_features

    model = load("pycode")
    for prop, dense_f1, k64_f1 in (("pycode-in-string", 0.85, 0.75), ("pycode-keyword", 0.9, 0.7)):
        ds = make_dataset(prop, 128)
        x, y, _ = probe_features(model, ds, "hook:blocks.1.mlp.hook_post", max_examples=5000)
        res = {r.k: r.test["f1"] for r in sparse_probe(x, y, ks=(1, 64))}
        assert res[None] > dense_f1 and res[64] > k64_f1 and res[1] < res[64], (prop, res)


def test_user_token_spans_and_sequence_labels(tmp_path):
    import json

    from interp.models import load
    from interp.probes.datasets import make_dataset, probe_features

    model = load("pycode")
    lines = []
    for i in range(60):
        text = f"x{i} = foo({i})  # note {i}\n"
        start = text.index("#")
        lines.append(json.dumps({"text": text, "spans": [[start, len(text) - 1]]}))
    path = tmp_path / "comments.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ds = make_dataset(str(path), model=model)
    assert ds.labels.ndim == 2 and (ds.labels[:, 0] == -1).all()
    enc = model.tokenizer("x0 = foo(0)  # note 0\n", return_offsets_mapping=True,
                          add_special_tokens=False)
    first_comment = next(j for j, (s, e) in enumerate(enc["offset_mapping"]) if s >= 12)
    assert ds.labels[0, 1 + first_comment] == 1 and ds.labels[0, 1] == 0
    x, y, _ = probe_features(model, ds, "hook:blocks.1.mlp.hook_post")
    assert 0 < int(y.sum()) < len(y)
    seq = tmp_path / "seq.csv"
    seq.write_text("text,label\n" + "".join(f"def f{i}(x): return x,{i % 2}\n" for i in range(20)))
    ds2 = make_dataset(str(seq), model=model)
    assert ds2.per_sequence and ds2.labels.tolist() == [i % 2 for i in range(20)]
    x2, y2, _ = probe_features(model, ds2, "hook:blocks.1.mlp.hook_post")
    assert x2.shape == (20, 512)


def test_equal_l0_sweep_picks_the_shipped_architectures_near_the_target():
    from interp.probes.experiment import equal_l0_saes
    from interp.sae.release import load_pretrained

    prefix = "othello/blocks.3.hook_resid_post"
    saes, target, skipped = equal_l0_saes(prefix)
    assert target == 16
    names = {n.rsplit("/", 1)[1] for n in saes}
    assert {"topk", "batchtopk", "matryoshka", "hierarchical_topk@k16"} <= names
    assert {n.rsplit("/", 1)[1] for n, _ in skipped} >= {"relu", "jumprelu"}
    assert saes[f"{prefix}/hierarchical_topk@k16"].cfg.k == 16
    assert load_pretrained(f"{prefix}/hierarchical_topk").cfg.k == 32  # a copy was changed
    x = torch.randn(5, 128)
    assert (saes[f"{prefix}/hierarchical_topk@k16"](x).l0() <= 16).all()
    with pytest.raises(DataError, match="no shipped SAEs"):
        equal_l0_saes("othello/blocks.9.hook_resid_post")
