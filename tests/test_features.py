"""The feature store: streaming statistics against brute force, logit effects against the
dense product, the CLI end to end on the embedded othello model, and bad inputs."""
import json

import numpy as np
import pytest
import torch

from interp.cli import main
from interp.errors import CorruptArtifactError, DataError, InterpError, UnknownNameError
from interp.features import FeatureStore
from interp.features import accumulate as A
from interp.features import build as B
from interp.features.codes import Codes, encode
from interp.features.logits import logit_effects

SHIPPED = "othello/blocks.3.hook_resid_post/topk"
HOOK = "blocks.3.hook_resid_post"


# ------------------------------------------------------------------ a small random problem
def random_batches(d_sae=7, vocab=11, n_ctx=9, n_batches=12, batch=5, k=3, dense=False,
                   seed=0):
    """(tokens (B, n_ctx), Codes) batches with sparse codes (k per row, some zero) or
    dense ones, and the dense (rows, d_sae) activations of every batch for brute force."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        tokens = torch.randint(0, vocab, (batch, n_ctx), generator=g)
        rows = batch * (n_ctx - 1)
        if dense:
            acts = torch.rand(rows, d_sae, generator=g) * 3
            acts[torch.rand(rows, d_sae, generator=g) < 0.6] = 0
            out.append((tokens, Codes(acts=acts), acts))
        else:
            idx = torch.stack([torch.randperm(d_sae, generator=g)[:k] for _ in range(rows)])
            vals = torch.rand(rows, k, generator=g) * 3
            vals[torch.rand(rows, k, generator=g) < 0.2] = 0  # padding, as relu(topk) gives
            dense_acts = torch.zeros(rows, d_sae).scatter_add(1, idx, vals)
            out.append((tokens, Codes(values=vals, indices=idx), dense_acts))
    return out


def accumulate(batches, d_sae=7, vocab=11, n_ctx=9, **cfg):
    cfg = B.FeatureConfig(n_tokens=1, **cfg)
    acc = A.FeatureAccumulator(d_sae, vocab, n_ctx, cfg)
    for tokens, codes, _ in batches:
        acc.add(tokens, codes)
    return acc


def brute_force(batches, n_ctx=9):
    """All activations (contexts, positions 1.., d_sae) and tokens (contexts, n_ctx)."""
    tokens = torch.cat([t for t, _, _ in batches])
    acts = torch.cat([a.view(t.shape[0], n_ctx - 1, -1) for t, _, a in batches])
    return tokens, acts


def window_of(tokens, acts, ctx, pos, latent, before, after, n_ctx=9):
    toks, vals = [], []
    for q in range(pos - before, pos + after + 1):
        if 0 <= q < n_ctx:
            toks.append(int(tokens[ctx, q]))
            vals.append(float(acts[ctx, q - 1, latent]) if q >= 1 else 0.0)
    return toks, vals


@pytest.mark.parametrize("dense", [False, True])
def test_streaming_top_n_equals_brute_force(dense):
    batches = random_batches(dense=dense)
    acc = accumulate(batches, top_n=6, window=(3, 2))
    tokens, acts = brute_force(batches)
    flat = acts.reshape(-1, acts.shape[-1])
    tables = acc.tables()
    ex = tables["examples"]
    for lat in range(flat.shape[1]):
        expect = flat[:, lat][flat[:, lat] > 0].sort(descending=True).values[:6]
        got = torch.tensor(ex["value"][(ex["latent"] == lat) & (ex["kind"] == "top")])
        assert torch.equal(got, expect), lat
    for i in np.nonzero(ex["kind"] == "top")[0]:
        ctx, pos, lat = int(ex["context"][i]), int(ex["pos"][i]), int(ex["latent"][i])
        assert float(acts[ctx, pos - 1, lat]) == ex["value"][i]
        toks, vals = window_of(tokens, acts, ctx, pos, lat, 3, 2)
        w = ex["tokens"][i]
        inside = w >= 0
        assert w[inside].tolist() == toks
        assert np.allclose(ex["acts"][i][inside], vals)
        assert ex["acts"][i][3] == ex["value"][i]  # the max token sits after `before` tokens


@pytest.mark.parametrize("dense", [False, True])
def test_density_histogram_and_token_counts_equal_brute_force(dense, monkeypatch):
    if not dense:  # the sparse (token, latent) accumulator, flushed several times
        monkeypatch.setattr(A, "DENSE_TOKEN_LATENT_CELLS", 0)
        monkeypatch.setattr(A, "SPARSE_FLUSH", 50)
    batches = random_batches(dense=dense, seed=1)
    acc = accumulate(batches, hist_decades=(-1, 1), hist_per_decade=4)
    assert acc.token_latents.dense == dense  # the patched table kind is the one exercised
    tokens, acts = brute_force(batches)
    flat = acts.reshape(-1, acts.shape[-1]).numpy().astype(np.float64)
    t = acc.tables()
    n = flat.shape[0]
    assert acc.n_tokens == n
    np.testing.assert_array_equal(t["count"], (flat > 0).sum(0))
    np.testing.assert_allclose(t["density"], (flat > 0).sum(0) / n)
    np.testing.assert_allclose(t["max_act"], flat.max(0), rtol=1e-6)
    np.testing.assert_allclose(t["mean_all"], flat.sum(0) / n, rtol=1e-5)
    edges = acc.cfg.hist_edges()
    for lat in range(flat.shape[1]):
        v = flat[:, lat][flat[:, lat] > 0].astype(np.float32)
        np.testing.assert_array_equal(t["hist"][lat], np.histogram(v, bins=edges)[0])
    # (token, latent) sums and counts, and the tokens' own counts
    row_tok = tokens[:, 1:].reshape(-1).numpy()
    tok, lat, cnt, sums = (x.numpy() for x in acc.token_latent_pairs())
    brute_cnt = np.zeros((11, flat.shape[1]), dtype=np.int64)
    brute_sum = np.zeros((11, flat.shape[1]))
    np.add.at(brute_cnt, row_tok, flat > 0)
    np.add.at(brute_sum, row_tok, flat)
    np.testing.assert_array_equal(brute_cnt[tok, lat], cnt)
    np.testing.assert_allclose(brute_sum[tok, lat], sums, rtol=1e-5)
    assert cnt.sum() == (flat > 0).sum()
    np.testing.assert_array_equal(t["token_counts"], np.bincount(row_tok, minlength=11))


def test_interval_samples_lie_in_their_interval():
    batches = random_batches(n_batches=30, seed=2)
    acc = accumulate(batches, quantile_bins=4, samples_per_bin=2)
    _, acts = brute_force(batches)
    flat = acts.reshape(-1, acts.shape[-1])
    ex = acc.tables()["examples"]
    q = np.nonzero(ex["kind"] == "quantile")[0]
    assert len(q) > 0
    mx = flat.max(0).values.numpy()
    filled = populated = 0
    for lat in range(flat.shape[1]):
        sel = q[ex["latent"][q] == lat]
        for b in range(4):
            in_bin = sel[ex["bin"][sel] == b]
            assert len(in_bin) <= 2
            v = flat[:, lat]
            pop = ((v > 0) & (v >= b / 4 * mx[lat]) & ((v < (b + 1) / 4 * mx[lat]) | (b == 3)))
            populated += bool(pop.any())
            filled += len(in_bin) > 0
            for i in in_bin:
                val = ex["value"][i]
                assert b / 4 * mx[lat] - 1e-6 <= val <= (b + 1) / 4 * mx[lat] + 1e-6
                assert acts[ex["context"][i], ex["pos"][i] - 1, lat] == val
    assert filled >= 0.8 * populated


def test_rank_within_orders_groups():
    groups = torch.tensor([2, 0, 2, 1, 0, 2])
    scores = torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0, 2.0])
    order, rank = A.rank_within(groups, scores, 3)
    assert groups[order].tolist() == [0, 0, 1, 2, 2, 2]
    assert scores[order].tolist() == [5.0, 4.0, 2.0, 3.0, 2.0, 1.0]
    assert rank.tolist() == [0, 1, 0, 0, 1, 2]


# ------------------------------------------------------------------ the embedded model
@pytest.fixture(scope="module")
def othello():
    from interp.models import load

    return load("othello")


@pytest.fixture(scope="module")
def shipped_sae():
    from interp.sae.release import load_pretrained

    return load_pretrained(SHIPPED)


def test_logit_effects_equal_the_dense_product(othello, shipped_sae):
    eff = logit_effects(shipped_sae, othello, HOOK, m=7, chunk=300)
    D = shipped_sae.W_dec.detach()
    D = (D - D.mean(1, keepdim=True)) * othello.ln_final.w.detach()  # ln_final: centre, gain
    dense = D @ othello.W_U.detach()
    top = dense.topk(7, dim=1)
    bot = dense.topk(7, dim=1, largest=False)
    np.testing.assert_allclose(eff["pos_values"], top.values.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(eff["neg_values"], bot.values.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(eff["pos_ids"], top.indices.numpy())
    np.testing.assert_array_equal(eff["neg_ids"], bot.indices.numpy())


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_encode_gives_the_saes_activations(arch):
    from interp.sae.release import load_pretrained

    sae = load_pretrained(f"othello/{HOOK}/{arch}")
    x = torch.randn(64, sae.cfg.d_in) * 3
    with torch.no_grad():
        codes = encode(sae, x)
        rows, lats, vals = codes.entries()
        got = torch.zeros(64, sae.cfg.d_sae).index_put_((rows, lats), vals)
        torch.testing.assert_close(got, sae.encode(x).clamp_min(0))


def write_run(path, model="othello"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "run.json").write_text(json.dumps({
        "model": model, "hooks": [HOOK],
        "dataset": {"kind": "othello", "seed": 1000000, "n_games": None}}))
    return path


def test_cli_builds_a_store_with_feature_pages(tmp_path, othello, shipped_sae, capsys):
    run = write_run(tmp_path / "run")
    assert main(["features", "--run", str(run), "--sae", SHIPPED, "--tokens", "3000",
                 "--top", "5", "--window", "4,2", "--batch", "16"]) == 0
    out = run / "features" / "othello--blocks.3.hook_resid_post--topk.duckdb"
    assert str(out) in capsys.readouterr().out
    fs = FeatureStore(out)
    assert fs.meta["model"] == "othello" and fs.meta["hook"] == HOOK
    assert fs.meta["n_tokens"] == 51 * 59 and fs.meta["run"] == str(run)
    for key in ("run", "sae", "created", "version", "code_version", "n_tokens"):
        assert key in fs.meta
    s = fs.summary()
    latent = int(np.argmax(s["count"]))
    page = fs.feature(latent)
    assert set(page) >= {"latent", "count", "density", "mean_act", "max_act", "histogram",
                         "top_tokens", "logits", "top_examples", "quantiles"}
    assert page["count"] == s["count"][latent] > 0
    assert sum(page["histogram"]["counts"]) == page["count"]
    assert len(page["histogram"]["edges"]) == len(page["histogram"]["counts"]) + 1
    assert len(page["top_examples"]) == 5
    assert len(page["logits"]["boosted"]) == 20 and page["logits"]["boosted"][0]["token"]
    top = page["top_examples"][0]
    assert top["value"] == pytest.approx(page["max_act"])
    assert top["acts"][top["max_index"]] == pytest.approx(page["max_act"])
    assert top["tokens"][top["max_index"]] == fs.token_str([top["token_ids"][top["max_index"]]])[0]
    # recompute the top example from scratch: its context, the model, the SAE
    from itertools import islice

    from interp.data.sources import OthelloSource

    ctx = next(islice(OthelloSource(seed=1000000).contexts(60), top["context"], None))
    ctx = torch.from_numpy(ctx)[None]
    assert ctx[0, top["window_start"]:top["window_start"] + len(top["token_ids"])].tolist() \
        == top["token_ids"]
    with torch.no_grad():
        _, cache = othello.run_with_cache(ctx, names_filter=HOOK)
        acts = shipped_sae.encode(cache[HOOK][0])
    assert float(acts[top["pos"], latent]) == pytest.approx(top["value"], rel=1e-4)
    assert float(acts[1:, latent].max()) == pytest.approx(page["max_act"], rel=1e-4)
    for q in page["quantiles"]:
        for e in q["examples"]:
            assert q["lo"] - 1e-5 <= e["value"] <= q["hi"] + 1e-5
    # search by token (id and string), by density
    tok = page["top_tokens"][0]
    hits = fs.search_by_token(tok["token"], n=50)
    assert latent in [h["latent"] for h in hits]
    assert fs.search_by_token(tok["token_id"], n=5)[0]["token_count"] > 0
    dens = fs.by_density(0.0, 1.0, n=10)
    assert len(dens) == 10 and dens[0]["density"] >= dens[-1]["density"]
    fs.close()


def test_bad_inputs_are_clear_errors(tmp_path, othello):
    run = write_run(tmp_path / "run")
    with pytest.raises(UnknownNameError, match="unknown run"):
        B.build_for_run(tmp_path / "nope", SHIPPED, B.FeatureConfig(n_tokens=10))
    with pytest.raises(DataError, match="positive"):
        B.build_for_run(run, SHIPPED, B.FeatureConfig(n_tokens=0))
    with pytest.raises(DataError, match="trained on 'pycode'"):
        B.build_for_run(run, "pycode/blocks.2.hook_resid_post/topk", B.FeatureConfig(n_tokens=10))
    with pytest.raises(UnknownNameError, match="unknown SAE"):
        B.build_for_run(run, "othello/blocks.3.hook_resid_post/topkk",
                        B.FeatureConfig(n_tokens=10))
    # an SAE whose width is not its hook's, and one whose hook the model lacks
    from interp.sae.core import SAEConfig, SparseAutoencoder
    from interp.sae.io import save_sae

    narrow = SparseAutoencoder(SAEConfig(d_in=64, d_sae=32, arch="topk", k=4,
                                         b_dec_init="zeros",
                                         metadata={"model_name": "othello", "hook_name": HOOK}))
    save_sae(narrow, run / "saes" / "narrow")
    with pytest.raises(DataError, match="d_in=64"):
        B.build_for_run(run, "narrow", B.FeatureConfig(n_tokens=10))
    nohook = SparseAutoencoder(SAEConfig(d_in=128, d_sae=32, arch="topk", k=4,
                                         b_dec_init="zeros",
                                         metadata={"model_name": "othello",
                                                   "hook_name": "blocks.9.hook_resid_post"}))
    save_sae(nohook, run / "saes" / "nohook")
    with pytest.raises(DataError, match="not a hook"):
        B.build_for_run(run, str(run / "saes" / "nohook"), B.FeatureConfig(n_tokens=10))
    # the CLI turns them into messages
    assert main(["features", "--run", str(tmp_path / "nope"), "--sae", SHIPPED,
                 "--tokens", "5"]) == 2


def test_store_errors(tmp_path, othello, shipped_sae):
    import duckdb

    from interp.data.sources import OthelloSource

    out = B.build_feature_store(othello, shipped_sae, HOOK, OthelloSource(),
                                B.FeatureConfig(n_tokens=500, n_ctx=60), tmp_path / "f.duckdb",
                                {"model": "othello"}, progress=False)
    fs = FeatureStore(out)
    with pytest.raises(DataError, match="out of range"):
        fs.feature(2048)
    with pytest.raises(DataError, match="out of range"):
        fs.feature(-1)
    with pytest.raises(UnknownNameError, match="no token"):
        fs.search_by_token("zz9")
    with pytest.raises(DataError):
        fs.by_density(0.5, 0.1)
    fs.close()
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorruptArtifactError, match="not a feature store"):
        FeatureStore(junk)
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t AS SELECT 1 AS x")
    con.close()
    with pytest.raises(CorruptArtifactError, match="not a feature store"):
        FeatureStore(other)
    with pytest.raises(InterpError, match="no feature store"):
        FeatureStore(tmp_path / "missing.duckdb")


def test_recording_in_chunks_changes_nothing(othello, shipped_sae, monkeypatch):
    from interp.data.sources import OthelloSource

    cfg = B.FeatureConfig(n_tokens=1500, n_ctx=60, batch_size=4, top_n=4)
    tables = []
    for rows in (1, 10**6):  # every forward batch on its own; all of them at once
        monkeypatch.setattr(B, "RECORD_ROWS", rows)
        acc, _ = B.stream_features(othello, shipped_sae, HOOK, OthelloSource(), cfg,
                                   progress=False)
        tables.append(acc.tables())
    a, b = tables
    np.testing.assert_array_equal(a["count"], b["count"])
    np.testing.assert_array_equal(a["hist"], b["hist"])
    top = [t["examples"]["kind"] == "top" for t in tables]
    for key in ("latent", "value"):  # (othello openings repeat: equal values tie)
        np.testing.assert_array_equal(a["examples"][key][top[0]], b["examples"][key][top[1]])


def test_a_source_that_runs_out_is_a_logged_note(othello, shipped_sae, caplog):
    from interp.data.sources import OthelloSource

    cfg = B.FeatureConfig(n_tokens=59 * 10, n_ctx=60, batch_size=4)
    with caplog.at_level("WARNING", logger="interp.features.build"):
        acc, _ = B.stream_features(othello, shipped_sae, HOOK, OthelloSource(n_games=3), cfg,
                                   progress=False)
    assert acc.n_contexts == 3 and acc.n_tokens == 3 * 59
    assert "note: the token source ran out after 3 contexts (10 requested)" in caplog.text


def test_build_refuses_an_sae_of_another_hook_and_writes_nothing(tmp_path, othello,
                                                                  shipped_sae):
    from interp.data.sources import OthelloSource

    out = tmp_path / "f.duckdb"
    with pytest.raises(DataError, match="reads blocks.3.hook_resid_post, not "
                                        "blocks.2.hook_resid_post"):
        B.build_feature_store(othello, shipped_sae, "blocks.2.hook_resid_post", OthelloSource(),
                              B.FeatureConfig(n_tokens=100, n_ctx=60), out,
                              {"model": "othello"}, progress=False)
    assert list(tmp_path.iterdir()) == []
