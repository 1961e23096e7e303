import pytest
import torch

from interp.ablations import ablate_circuit, ablate_latents, ablate_units, shift, steer
from interp.circuits.attribution import Node
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import make_task
from interp.errors import DataError
from interp.models import load
from interp.sae.release import load_pretrained

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    model = load("pycode")
    model.eval()
    spliced = SplicedModel(model, {HOOK: load_pretrained(f"pycode/{HOOK}/topk")})
    task = make_task("pycode-bracket", model, n=16)
    return model, spliced, task


def test_zero_ablation_moves_the_output_exactly_as_the_residual_change_predicts(setup):
    model, spliced, task = setup
    toks = task.clean
    acts = spliced.run(toks).hooks[HOOK].acts
    latent = int(acts[:, -1].sum(0).argmax())
    rep = ablate_latents(spliced, HOOK, toks, [latent], task=task)
    # by hand: resid_post moves by -a * W_dec[latent] everywhere
    shift_vec = -acts[..., latent, None] * spliced.saes[HOOK].W_dec[latent]
    ref = model.run_with_hooks(toks, fwd_hooks=[(HOOK, lambda x, hook: x + shift_vec)])
    lp = ref[:, :-1].log_softmax(-1)
    ref_loss = float(-lp.gather(-1, toks[:, 1:, None]).mean())
    assert rep.loss_after == pytest.approx(ref_loss, abs=1e-4)
    assert rep.metric_after == pytest.approx(float(task.metric(ref).mean()), abs=1e-4)
    assert rep.metric_change != 0 and len(rep.top_up) == 10


def test_mean_resample_steer_clamp(setup):
    model, spliced, task = setup
    toks = task.clean
    for mode in ("mean", "resample"):
        rep = ablate_latents(spliced, HOOK, toks, [3, 7], mode=mode, reference=task.patch)
        assert rep.loss_after > 0
    up = steer(spliced, HOOK, toks, 5, alpha=8.0)
    assert up.loss_change != 0
    same = steer(spliced, HOOK, toks, 5, clamp=None, alpha=0.0)
    assert same.loss_change == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DataError, match="exactly one"):
        steer(spliced, HOOK, toks, 5)
    with pytest.raises(DataError, match="out of range"):
        ablate_latents(spliced, HOOK, toks, [99999])


def test_units_circuit_and_shift(setup):
    from interp.probes.datasets import make_dataset

    model, spliced, task = setup
    rep = ablate_units(model, "blocks.1.mlp.hook_post", task.clean, [0, 1, 2], mode="mean")
    assert rep.loss_after > 0
    last = task.clean.shape[1] - 1
    everything = [Node(HOOK, p, j) for p in range(task.clean.shape[1]) for j in range(2049)]
    kept = ablate_circuit(spliced, task, everything)
    assert kept["metric_after"] == pytest.approx(kept["metric_full"], abs=1e-4)
    gone = ablate_circuit(spliced, task, [Node(HOOK, last, 2048)], complement=True)
    assert gone["metric_after"] != pytest.approx(gone["metric_full"])
    ds = make_dataset("pycode-in-string", 48)
    res = shift(spliced, HOOK, list(range(64)), "blocks.3.hook_resid_post", ds,
                max_examples=1500)
    assert 0.5 < res["accuracy_before"] <= 1 and 0 <= res["accuracy_after"] <= 1


def test_ablate_cli(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "interp.cli", "ablate", "--sae",
                        f"pycode/{HOOK}/topk", "--latents", "100", "--alpha", "10",
                        "--prompt", "def f(x):"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "next-token loss" in r.stdout and "probability up" in r.stdout
