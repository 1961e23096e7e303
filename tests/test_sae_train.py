"""The trainer: FVU falls, a killed run resumes to the same weights, bad input is explained."""
import json

import pytest
import torch
from safetensors.torch import load_file

from interp.errors import DataError
from interp.sae.core import ARCHITECTURES
from interp.sae.io import load_sae
from interp.sae.trainer import TrainConfig, lr_factor, train_sae

ARCH_OPTIONS = {"relu": {"lr": 3e-3, "sae_options": {"l1_coeff": 0.3}},
                "jumprelu": {"lr": 3e-3, "sae_options": {"l0_coeff": 0.05}},
                "matryoshka": {"sae_options": {"prefixes": [16, 64]}},
                "ksparse": {"sae_options": {"k_start": 16, "k_anneal_steps": 50}}}


def config(store, out, arch="topk", **kw):
    base = dict(store=str(store), out=str(out), arch=arch, d_sae=64, k=4, batch_size=256,
                steps=150, lr=5e-3, warmup_steps=10, eval_rows=2048, eval_every=50,
                checkpoint_every=20, dead_window_tokens=5000, log_every=5)
    base.update(ARCH_OPTIONS.get(arch, {}))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_learns_the_toy_data(arch, sparse_store, tmp_path):
    res = train_sae(config(sparse_store, tmp_path / arch, arch), progress=False)
    log = [json.loads(l) for l in open(tmp_path / arch / "train_log.jsonl")]
    train = [r for r in log if "fvu" in r]
    assert train[-1]["fvu"] < 0.5 * train[0]["fvu"], (train[0], train[-1])
    assert res["eval"]["fvu"] < 0.35, res["eval"]
    sae = load_sae(tmp_path / arch)  # saved in SAELens format, scale folded in
    assert sae.cfg.arch == arch
    if arch == "hierarchical_topk":
        fvus = [res["eval_by_k"][k]["fvu"] for k in sorted(res["eval_by_k"], key=int)]
        assert fvus == sorted(fvus, reverse=True), "more latents never reconstruct worse"
    assert not (tmp_path / arch / "checkpoint.pt").exists()


def test_a_killed_run_resumes_to_the_same_weights(sparse_store, tmp_path):
    full = config(sparse_store, tmp_path / "full", "topk", steps=60)
    train_sae(full, progress=False)
    part = config(sparse_store, tmp_path / "part", "topk", steps=60, stop_after=27)
    assert train_sae(part, progress=False)["stopped_at"] == 27
    assert (tmp_path / "part" / "checkpoint.pt").exists()
    # the process died after step 27: the last checkpoint is at step 20
    part.stop_after = None
    train_sae(part, progress=False)
    a = load_file(str(tmp_path / "full" / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "part" / "sae_weights.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_bad_training_input_is_explained(sparse_store, tmp_path):
    with pytest.raises(DataError, match="k=100 must lie in \\[1, d_sae=64\\]"):
        train_sae(config(sparse_store, tmp_path / "a", k=100), progress=False)
    with pytest.raises(DataError, match="unknown SAE options \\['kk'\\]"):
        train_sae(config(sparse_store, tmp_path / "b", sae_options={"kk": 1}), progress=False)
    with pytest.raises(DataError, match="too few"):
        train_sae(config(sparse_store, tmp_path / "c", eval_rows=19_900), progress=False)
    c = config(sparse_store, tmp_path / "d", "topk", stop_after=20)
    train_sae(c, progress=False)
    with pytest.raises(DataError, match="from a 'topk' SAE, not 'batchtopk'"):
        train_sae(config(sparse_store, tmp_path / "d", "batchtopk"), progress=False)
    (tmp_path / "d" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(Exception, match="corrupt or truncated"):
        train_sae(config(sparse_store, tmp_path / "d", "topk"), progress=False)


def test_lr_schedule():
    assert lr_factor(0, 100, 10, 0.8) == pytest.approx(0.1)
    assert lr_factor(50, 100, 10, 0.8) == 1.0
    assert lr_factor(90, 100, 10, 0.8) == pytest.approx(0.5)


def test_evaluate_writes_metrics_and_figures(sparse_store, tmp_path):
    from interp.sae.evaluate import evaluate_sae

    out = tmp_path / "h"
    train_sae(config(sparse_store, out, "hierarchical_topk", steps=60), progress=False)
    res = evaluate_sae(str(out), store=str(sparse_store), tokens=2048)
    trained = json.loads((out / "metrics.json").read_text())
    assert res["reconstruction"]["fvu"] == pytest.approx(trained["eval"]["fvu"], rel=1e-6)
    assert set(res["reconstruction_by_k"]) == {"1", "2", "4"}
    assert "could not be loaded" in res["spliced_skipped"]  # the toy store has no model
    for f in ("eval.json", "density.html", "fvu_by_k.html", "training_curves.html"):
        assert (out / f).stat().st_size > 1000, f
    with pytest.raises(DataError, match="d_in=16, but the SAE"):
        from interp.sae.core import SAEConfig, SparseAutoencoder
        from interp.sae.io import save_sae

        other = SparseAutoencoder(SAEConfig(d_in=8, d_sae=16, k=2))
        save_sae(other, tmp_path / "other")
        evaluate_sae(str(tmp_path / "other"), store=str(sparse_store))


def test_compiled_loss_trains_like_the_eager_one(sparse_store, tmp_path):
    eager = train_sae(config(sparse_store, tmp_path / "eager", steps=30), progress=False)
    compiled = train_sae(config(sparse_store, tmp_path / "compiled", steps=30, compile=True),
                         progress=False)
    assert compiled["eval"]["fvu"] == pytest.approx(eager["eval"]["fvu"], rel=1e-3)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batch_topk_threshold_is_measured_at_the_final_weights(arch, sparse_store, tmp_path):
    from interp.activations.store import open_store

    # 100 steps with the default momentum (an average over the last ~100): the cut-off
    # drifts all along, so an average over the steps infers at a lower L0 than k
    res = train_sae(config(sparse_store, tmp_path / arch, arch, steps=100, k=8,
                           warmup_steps=0), progress=False)
    sae = load_sae(tmp_path / arch).eval()
    store = open_store(sparse_store)
    train_rows = next(store.batches(4096, store.hooks[0], shuffle=False,
                                    row_range=(0, store.n_rows - 2048)))
    with torch.no_grad():
        l0 = float((sae.inference_codes(train_rows).acts > 0).sum(1).float().mean())
    assert l0 == pytest.approx(8, rel=0.05), (l0, res["eval"]["l0"])


def test_end_to_end_batches_mix_contexts_in_an_order_a_resumed_run_repeats():
    import itertools

    from interp.sae.trainer import EndToEndObjective, _Dist

    cfg = TrainConfig(store="", out="unused", arch="e2e", model="othello",
                      hook="blocks.3.hook_resid_post", batch_size=590, steps=20,
                      eval_contexts=8)
    obj = EndToEndObjective(cfg, _Dist("cpu"))
    in_file_order = torch.cat(list(itertools.islice(obj._token_batches(obj.contexts, 8), 20)))
    trained_on = list(itertools.islice(obj.batches(0), 20))
    mixed = torch.cat(trained_on)
    # the run's 20 batches are one window: the same contexts, another order
    assert not torch.equal(in_file_order, mixed)
    assert sorted(map(tuple, in_file_order.tolist())) == sorted(map(tuple, mixed.tolist()))
    resumed = list(itertools.islice(EndToEndObjective(cfg, _Dist("cpu")).batches(5), 3))
    assert all(torch.equal(a, b) for a, b in zip(resumed, trained_on[5:8]))
