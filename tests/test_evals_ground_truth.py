"""Ground-truth match of dictionary latents (interp.evals.ground_truth): the count and
P/R/F1 matrices against a slow loop, planted latents, distinct coverage, one end-to-end run
on a shipped othello SAE, and the refusals."""
import json

import numpy as np
import pytest
import torch

from interp.data.pycode_labels import TokenLabels
from interp.errors import DataError, MismatchError, UsageError
from interp.evals import ground_truth as gt


def _random_sample(seed: int, m: int = 7, p: int = 5, n: int = 120):
    g = torch.Generator().manual_seed(seed)
    fires = torch.rand(n, m, generator=g) < 0.3
    labels = torch.rand(n, p, generator=g) < 0.4
    fires[:, 0] = False            # a dead latent
    labels[:, 1] = False           # a property that never holds
    return fires, labels


def _counts(fires: torch.Tensor, labels: torch.Tensor, chunk: int = 50) -> gt.MatchCounts:
    counts = gt.MatchCounts.zeros(fires.shape[1], labels.shape[1])
    for s in range(0, fires.shape[0], chunk):     # several chunks, as count_matches adds them
        counts.add_(fires[s:s + chunk], labels[s:s + chunk])
    return counts


def _loop_scores(fires: torch.Tensor, labels: torch.Tensor, i: int, j: int):
    tp = fp = fn = 0
    for r in range(fires.shape[0]):
        a, b = bool(fires[r, i]), bool(labels[r, j])
        tp += a and b
        fp += a and not b
        fn += b and not a
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return tp, precision, recall, f1


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_recall_f1_matrix_matches_a_loop(seed):
    fires, labels = _random_sample(seed)
    counts = _counts(fires, labels)
    precision, recall, f1 = gt.precision_recall_f1(counts.true_positives, counts.fires,
                                                   counts.positives)
    assert counts.n_positions == fires.shape[0]
    for i in range(fires.shape[1]):
        for j in range(labels.shape[1]):
            tp, p, r, f = _loop_scores(fires, labels, i, j)
            assert counts.true_positives[i, j] == tp
            assert precision[i, j] == pytest.approx(p)
            assert recall[i, j] == pytest.approx(r)
            assert f1[i, j] == pytest.approx(f)


def test_best_matches_agree_with_a_loop():
    fires, labels = _random_sample(2, m=9, p=6, n=200)
    counts = _counts(fires, labels)
    best = gt.best_matches(counts, min_fires=5, min_positives=10)
    n = fires.shape[0]
    for i in range(fires.shape[1]):
        alive = int(fires[:, i].sum()) >= 5
        candidates = []
        for j in range(labels.shape[1]):
            tp, _, _, f = _loop_scores(fires, labels, i, j)
            above_chance = tp * n > int(fires[:, i].sum()) * int(labels[:, j].sum())
            if alive and above_chance and int(labels[:, j].sum()) >= 10:
                candidates.append((f, j))
        assert bool(best.alive[i]) == alive
        if not candidates:
            assert int(best.property[i]) == -1 and float(best.f1[i]) == 0.0
        else:
            assert float(best.f1[i]) == pytest.approx(max(candidates)[0])
            assert int(best.property[i]) in [j for f, j in candidates
                                              if f == pytest.approx(max(candidates)[0])]


def test_a_planted_latent_equal_to_a_property_gets_f1_one_and_that_property():
    fires, labels = _random_sample(3, m=8, p=6, n=300)
    fires[:, 4] = labels[:, 2]
    best = gt.best_matches(_counts(fires, labels), min_fires=5, min_positives=10)
    assert int(best.property[4]) == 2
    assert float(best.f1[4]) == float(best.precision[4]) == float(best.recall[4]) == 1.0
    assert int(best.latent_of_property[2]) == 4 and float(best.f1_of_property[2]) == 1.0


def test_an_always_on_latent_matches_nothing():
    """Firing everywhere gives F1 = 2b / (1 + b) with a property of base rate b, but no
    information: the chance guard leaves it unmatched."""
    fires, labels = _random_sample(4, m=3, p=4, n=200)
    fires[:, 1] = True
    labels[:, 3] = torch.arange(200) % 10 != 0          # base rate 0.9: F1 0.95 by chance
    best = gt.best_matches(_counts(fires, labels), min_fires=5, min_positives=10)
    assert bool(best.alive[1]) and int(best.property[1]) == -1 and float(best.f1[1]) == 0.0


def test_distinct_coverage_counts_copies_of_one_feature_once():
    _, labels = _random_sample(5, m=1, p=4, n=400)
    labels[:, 1] = torch.arange(400) % 3 == 0
    copies = labels[:, [0] * 10].clone()                # ten copies of property 0
    one_other = labels[:, [1]].clone()
    few = _counts(copies, labels)
    many = _counts(torch.cat([copies[:, :2], one_other], 1), labels)
    assert gt.distinct_covered(gt.best_matches(few, 5, 10)) == 1
    assert gt.distinct_covered(gt.best_matches(many, 5, 10)) == 2
    summary = gt.summarize(few, gt.best_matches(few, 5, 10))
    assert summary["properties_covered_f1_ge_0.5"] == 1
    assert summary["frac_alive_f1_ge_0.8"] == 1.0 and summary["alive_latents"] == 10


def test_pycode_properties_from_token_labels():
    lab = TokenLabels(np.array([1, 0, 0, 0, 0], bool), np.array([0, 1, 0, 0, 0], bool),
                      np.array([0, 0, 1, 0, 0], bool), np.array([0, 1, 2, 5, 0], np.int16),
                      np.array([0, 0, 1, 3, 7], np.int16))
    props = gt.pycode_properties(lab)
    assert props["pycode-in-string"].tolist() == [1, 0, 0, 0, 0]
    assert props["pycode-in-brackets"].tolist() == [0, 1, 1, 1, 0]
    assert props["pycode-indented"].tolist() == [0, 0, 1, 1, 1]
    assert props["pycode-bracket-depth-2"].tolist() == [0, 0, 1, 0, 0]
    assert props[f"pycode-bracket-depth-{gt.MAX_BRACKET_DEPTH}+"].tolist() == [0, 0, 0, 1, 0]
    assert props["pycode-indent-0"].tolist() == [1, 1, 0, 0, 0]
    assert props[f"pycode-indent-{gt.MAX_INDENT_LEVEL}+"].tolist() == [0, 0, 0, 0, 1]


@pytest.fixture(scope="module")
def othello_model_and_sae():
    from interp.models import load
    from interp.runs import load_pretrained

    return load("othello"), load_pretrained("othello/blocks.3.hook_resid_post/topk")


def test_end_to_end_on_a_shipped_othello_sae(othello_model_and_sae):
    model, sae = othello_model_and_sae
    result = gt.run(model, sae, "othello", n_contexts=6, batch_size=4)
    json.dumps(result, allow_nan=False)
    s, d = result["summary"], result["details"]
    assert s["n_latents"] == sae.cfg.d_sae == 2048
    assert s["alive_latents"] + s["dead_latents"] + s["rare_latents"] == s["n_latents"]
    games = gt.othello_sample(6, 0, model.cfg.n_ctx)
    assert s["n_positions"] == int(games.valid.sum()) > 300
    assert 0 < s["n_properties"] <= 6 * 64 == len(games.names)
    for key in ("mean_best_f1", "mean_best_precision", "mean_best_recall",
                "frac_alive_f1_ge_0.5", "frac_alive_f1_ge_0.8",
                "frac_properties_covered_f1_ge_0.5"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["frac_alive_f1_ge_0.8"] <= s["frac_alive_f1_ge_0.5"]
    assert 0 <= s["properties_covered_f1_ge_0.5"] <= s["n_properties"]
    latents = d["latents"]
    assert len(latents["latent"]) == s["alive_latents"] == len(latents["f1"])
    assert all(p is None or p.startswith("othello-") for p in latents["property"])
    assert all(f == 0 or 2 * p * r / (p + r) == pytest.approx(f, abs=1e-3) for p, r, f in
               zip(latents["precision"], latents["recall"], latents["f1"]))
    assert len(d["properties"]["property"]) == s["n_properties"]
    assert d["top"] == sorted(d["top"], key=lambda row: -row["f1"])
    assert result["config"]["hook"] == "blocks.3.hook_resid_post" and result["seconds"] > 0


def test_unknown_model_is_a_one_line_data_error():
    with pytest.raises(DataError) as err:
        gt.run(None, None, "gpt2")
    message = str(err.value)
    assert "\n" not in message and "gpt2" in message
    assert all(name in message for name in gt.GROUND_TRUTH_MODELS)


def test_options_below_one_are_refused_before_any_work():
    for option in ("n_contexts", "min_fires", "min_positives", "batch_size"):
        with pytest.raises(UsageError, match=option):
            gt.run(None, None, "othello", **{option: 0})


def test_the_properties_of_another_model_are_refused(othello_model_and_sae):
    model, sae = othello_model_and_sae
    with pytest.raises(MismatchError, match="pycode"):
        gt.run(model, sae, "pycode")
