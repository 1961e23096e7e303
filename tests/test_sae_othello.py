"""End to end on the embedded othello model: every architecture learns its activations,
end-to-end SAEs learn through the model, and evaluation splices them in."""
import json

import pytest

from interp.activations.harvest import HarvestConfig, harvest
from interp.sae.core import ARCHITECTURES
from interp.sae.trainer import TrainConfig, train_sae

HOOK = "blocks.3.hook_resid_post"
# short runs: a faster threshold average for the batch-level archs, a milder L1
OPTIONS = {"relu": {"lr": 2e-3, "sae_options": {"l1_coeff": 1.0}},
           "jumprelu": {"lr": 2e-3, "sae_options": {"l0_coeff": 0.02}},
           "batchtopk": {"sae_options": {"threshold_momentum": 0.1}},
           "matryoshka": {"sae_options": {"prefixes": [64, 256, 512], "threshold_momentum": 0.1}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("othello") / "run"
    harvest(HarvestConfig(model="othello", hooks=[HOOK], n_tokens=40_000, out=str(out),
                          batch_size=64), progress=False)
    return out


def train_log(folder):
    return [json.loads(line) for line in open(folder / "train_log.jsonl")]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_fits_othello_activations(arch, store, tmp_path):
    kw = dict(lr=1e-3, eval_rows=4096, log_every=10, eval_every=10**9)
    kw.update(OPTIONS.get(arch, {}))
    cfg = TrainConfig(store=str(store), out=str(tmp_path / arch), arch=arch, d_sae=512, k=16,
                      batch_size=512, steps=120, **kw)
    res = train_sae(cfg, progress=False)
    rows = [r for r in train_log(tmp_path / arch) if "fvu" in r]
    assert rows[-1]["fvu"] < 0.7 * rows[0]["fvu"], (rows[0], rows[-1])
    assert res["eval"]["fvu"] < 0.6, res["eval"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["e2e", "e2e+ds"])
def test_end_to_end_sae_learns_through_the_model(arch, tmp_path):
    from interp.sae.evaluate import evaluate_sae

    cfg = TrainConfig(store="", out=str(tmp_path / "sae"), arch=arch, model="othello",
                      hook=HOOK, d_sae=256, k=16, batch_size=1180, steps=60, lr=5e-3,
                      warmup_steps=5, eval_contexts=32, log_every=5, eval_every=10**9)
    res = train_sae(cfg, progress=False)
    rows = [r for r in train_log(tmp_path / "sae") if "kl" in r]
    assert rows[-1]["kl"] < 0.7 * rows[0]["kl"], (rows[0], rows[-1])
    if arch == "e2e+ds":
        assert any(k.startswith("ds_blocks.5") for k in rows[0])
    assert res["eval"]["ce_loss_recovered"] > 0.5
    ev = evaluate_sae(str(tmp_path / "sae"), contexts=32)
    assert ev["ce_loss_recovered"] == pytest.approx(res["eval"]["ce_loss_recovered"], abs=0.2)
    assert ev["spliced"]["mean"]["ce_ablated"] > ev["spliced"]["mean"]["ce_clean"]
