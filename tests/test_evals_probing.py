"""Sparse probing evaluation (interp.evals.probing): the selection, normalisation and AUC
against slow, obvious references; a planted latent probed perfectly by both protocols;
the encoding rule on a transcoder and an attention SAE; an end-to-end run on a shipped
othello SAE; refusals."""
import json

import numpy as np
import pytest
import torch

from interp.errors import DataError, InterpError
from interp.evals import probing
from interp.probes.datasets import ProbeDataset, example_rows, make_dataset
from interp.probes.sparse import train_test_split


def sparse_latents(n=400, m=64, density=0.1, seed=0):
    """Nonnegative sparse activations with a few dead latents and varied firing scales."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(m, generator=g) * 5 + 0.1
    x = torch.rand(n, m, generator=g) * scale * (torch.rand(n, m, generator=g) < density)
    x[:, [3, 40]] = 0.0  # dead
    return x


def test_mean_nonzero_scale_matches_a_loop():
    x = sparse_latents()
    scale, alive = probing.mean_nonzero_scale(x)
    for j in range(x.shape[1]):
        fired = x[:, j][x[:, j] != 0]
        assert bool(alive[j]) == (len(fired) > 0)
        want = fired.mean() if len(fired) else torch.tensor(1.0)
        torch.testing.assert_close(scale[j], want)
    normalised = x / scale
    for j in torch.nonzero(alive).flatten().tolist():  # alive latents fire at 1 on average
        torch.testing.assert_close(normalised[:, j][normalised[:, j] != 0].mean(),
                                   torch.tensor(1.0))


def test_rank_latents_is_the_sorted_mean_difference_of_alive_latents():
    x = sparse_latents(seed=1)
    y = (torch.rand(len(x), generator=torch.Generator().manual_seed(2)) < 0.5).long()
    _, alive = probing.mean_nonzero_scale(x)
    ranking = probing.rank_latents(x, y, alive).tolist()
    scores = {j: abs(float(x[y == 1, j].mean()) - float(x[y == 0, j].mean()))
              for j in range(x.shape[1]) if bool(alive[j])}
    want = sorted(scores, key=lambda j: (-scores[j], j))
    assert ranking == want and 3 not in ranking and 40 not in ranking


def test_rank_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + y, 1)  # rounded: many ties
    assert probing.rank_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_balanced_rows_keep_equal_classes_of_labelled_tokens():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(30, 20, generator=g) < 0.2).long()
    labels[:, 0] = -1
    ds = ProbeDataset("toy", None, torch.zeros(30, 20, dtype=torch.long), labels)
    rows = probing.balanced_rows(ds, 300, seed=0)
    y = labels[rows[:, 0], rows[:, 1]]
    assert int((y == 1).sum()) == int((y == 0).sum()) > 0 and bool((rows[:, 1] > 0).all())
    sample = {tuple(r) for r in example_rows(ds, 300, 0).tolist()}
    assert {tuple(r) for r in rows.tolist()} <= sample
    assert torch.equal(rows, probing.balanced_rows(ds, 300, seed=0))
    labels[:, 1:] = 0
    labels[0, 1:5] = 1  # four positives
    with pytest.raises(DataError, match="4 positive"):
        probing.balanced_rows(ds, 300, seed=0)


def test_a_planted_latent_is_found_and_probed_perfectly_at_k1():
    x = sparse_latents(n=600, seed=3)
    y = (torch.rand(len(x), generator=torch.Generator().manual_seed(4)) < 0.5).long()
    x[:, 13] = y * (1.0 + torch.rand(len(x), generator=torch.Generator().manual_seed(5)))
    split = train_test_split(y, 0.25, 0)
    cfg = probing.ProbingConfig(sae_probes_ks=(1, 4), Cs=(0.1, 1.0, 10.0)).validate()
    sb = probing.saebench_probes(x, y, split, (1, 2, 5))
    assert sb["k1"]["latents"] == [13] and sb["k1"]["accuracy"] > 0.99
    tr = split[0]
    diff = {j: abs(float(x[tr][y[tr] == 1, j].mean()) - float(x[tr][y[tr] == 0, j].mean()))
            for j in range(x.shape[1])}
    top5 = sorted(diff, key=lambda j: -diff[j])[:5]
    assert set(sb["k5"]["latents"]) == set(top5)
    sp = probing.sae_probes_probes(x, y, split, cfg)
    assert sp["top_latents"][0] == 13 and sp["k1"]["k"] == 1
    assert sp["k1"]["auc"] > 0.99 and sp["k1"]["f1"] > 0.99


@pytest.fixture(scope="module")
def othello():
    from interp.models import load

    return load("othello")


@pytest.mark.parametrize("name", ["othello/plt/L1", "othello/attn/L1"])
def test_latents_come_from_the_hook_the_dictionary_reads(othello, name):
    """A transcoder's latents encode its input (ln2.hook_normalized), an attention SAE's
    the concatenated heads of hook_z; zero at BOS."""
    from interp.runs import load_pretrained

    sae = load_pretrained(name)
    tokens = make_dataset("othello-empty-c5", 4).tokens
    hook = sae.cfg.metadata["hook_name"]
    _, cache = othello.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook].reshape(-1, sae.cfg.d_in)
    want = sae.eval()(x).dense().clamp_min(0).reshape(*tokens.shape, -1)
    want[:, 0] = 0
    torch.testing.assert_close(probing.latent_acts(othello, sae, tokens), want)


def test_end_to_end_on_a_shipped_othello_sae(othello):
    from interp.runs import load_pretrained

    sae = load_pretrained("othello/blocks.3.hook_resid_post/topk")
    res = probing.run(othello, sae, "othello", n_contexts=64, max_examples=400,
                      properties=["othello-empty-c5", "othello-legal-c5", "othello-state-c5"],
                      sae_probes_ks=(1, 4, 64), Cs=(0.1, 1.0, 10.0))
    json.dumps(res)
    assert set(res) == {"summary", "details", "config", "seconds"}
    summary, details = res["summary"], res["details"]
    assert summary["properties"] == 2 and "othello-state-c5" in details["skipped"]
    assert {f"saebench_accuracy_k{k}" for k in (1, 2, 5)} <= set(summary)
    assert {f"sae_probes_{m}_k{k}" for m in ("auc", "f1") for k in (1, 4, 64)} <= set(summary)
    assert all(0.0 <= v <= 1.0 for k, v in summary.items() if k != "properties")
    empty = details["properties"]["othello-empty-c5"]
    assert empty["positives"] * 2 == empty["examples"]
    assert all(len(empty["saebench"][f"k{k}"]["latents"]) == k for k in (1, 2, 5))
    assert empty["sae_probes"]["k64"]["k"] == 64
    assert empty["sae_probes"]["k64"]["auc"] > 0.75      # chance: 0.5
    assert empty["saebench"]["k5"]["accuracy"] > 0.55    # balanced: chance 0.5
    assert details["hook"] == "blocks.3.hook_resid_post"


def test_refusals_are_one_line_data_errors(othello):
    from interp.runs import load_pretrained

    sae = load_pretrained("othello/blocks.3.hook_resid_post/topk")
    with pytest.raises(DataError, match="has none; models with built-in properties: "
                                        "othello, pycode") as e:
        probing.run(othello, sae, "gpt2")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="not one of othello's"):
        probing.run(othello, sae, "othello", properties=["pycode-keyword"])
    with pytest.raises(InterpError, match="penalty"):
        probing.run(othello, sae, "othello", penalty="l3")
