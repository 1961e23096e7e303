"""The replacement model: a CLT and a transcoder set spliced into othello, checked against
slow references, and ``interp eval`` on them end to end (with its refusals)."""
import json

import pytest
import torch

from interp.hooks import mlp_io_hooks
from interp.models import load
from interp.sae.clt import CLTConfig, CrossLayerTranscoder, save_clt
from interp.sae.core import SAEConfig, SparseAutoencoder
from interp.sae.evaluate import splice_hooks
from interp.sae.io import save_sae
from refusals import refuse, run_cli

LAYERS = (1, 2, 4)


@pytest.fixture(scope="module")
def othello():
    return load("othello")


def tokens(n=4, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.zeros(n, 1, dtype=torch.long),
                      torch.randint(1, 61, (n, length - 1), generator=g)], 1)


def random_clt(d, layers=LAYERS, arch="topk", k=6):
    meta = {"model_name": "othello", "hook_names": [mlp_io_hooks(L)[0] for L in layers],
            "hook_names_out": [mlp_io_hooks(L)[1] for L in layers],
            "hook_name": mlp_io_hooks(layers[0])[0]}
    clt = CrossLayerTranscoder(CLTConfig(SAEConfig(d_in=d, d_sae=64, arch=arch, k=k),
                                         layers, d, meta))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in clt.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return clt.eval()


def test_clt_splice_equals_a_pair_by_pair_reference(othello):
    """At layer t's MLP output the spliced model holds sum_{s <= t} a_s(x_s) W[s -> t] + b,
    with x_s the MLP inputs of this same (replaced) forward pass."""
    clt = random_clt(othello.cfg.d_model)
    toks = tokens()
    got = othello.run_with_hooks(toks, fwd_hooks=clt.splice_hooks())

    seen, acts = {}, {}

    def keep(s):
        def fn(act, hook):
            seen[s] = act
        return fn

    def write(t):
        def fn(act, hook):
            x = seen[t].reshape(-1, act.shape[-1])
            acts[t] = clt.encoders[t](x).dense()
            y = torch.zeros_like(x)
            for s in range(t + 1):
                block = clt.decoder_blocks(s)[:, t - s]
                bias = clt.encoders[s].b_dec.reshape(len(LAYERS) - s, -1)[t - s]
                y = y + acts[s] @ block + bias
            return y.reshape(act.shape)
        return fn

    ref_hooks = []
    for t, L in enumerate(LAYERS):
        h_in, h_out = mlp_io_hooks(L)
        ref_hooks += [(h_in, keep(t)), (h_out, write(t))]
    want = othello.run_with_hooks(toks, fwd_hooks=ref_hooks)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, othello(toks), atol=1e-2)  # it did replace something


def test_a_one_layer_clt_is_a_transcoder(othello):
    d = othello.cfg.d_model
    clt = random_clt(d, layers=(3,))
    h_in, h_out = mlp_io_hooks(3)
    plt = SparseAutoencoder(SAEConfig(d_in=d, d_sae=64, k=6, d_out=d,
                                      metadata={"hook_name": h_in, "hook_name_out": h_out}))
    plt.load_state_dict(clt.encoders[0].state_dict())
    toks = tokens()
    a = othello.run_with_hooks(toks, fwd_hooks=clt.splice_hooks())
    b = othello.run_with_hooks(toks, fwd_hooks=splice_hooks(plt.eval()))
    torch.testing.assert_close(a, b)


def test_replacement_metrics_by_hand(othello):
    from interp.sae.replacement import Replacement, replacement_metrics

    clt = random_clt(othello.cfg.d_model)
    rep = Replacement([clt], ["clt"])
    toks = tokens(n=6, length=30)
    res = replacement_metrics(othello, rep, [toks[:3], toks[3:]])
    with torch.no_grad():
        clean = othello(toks)
        replaced = othello.run_with_hooks(toks, fwd_hooks=clt.splice_hooks(keep_first=True))
        # the BOS position is kept: it is the same in every context, and never trained on
        torch.testing.assert_close(replaced[:, 0], clean[:, 0])
        assert not torch.allclose(replaced[:, 1:], clean[:, 1:], atol=1e-2)
    agree = (clean[:, :-1].argmax(-1) == replaced[:, :-1].argmax(-1)).float().mean()
    assert res["top1_agreement"] == pytest.approx(float(agree))
    lp = clean[:, :-1].log_softmax(-1)
    ce = -lp.gather(-1, toks[:, 1:, None]).mean()
    assert res["ce_clean"] == pytest.approx(float(ce), rel=1e-5)
    assert res["n_tokens"] == 6 * 29
    (fig,) = res["dictionaries"]
    assert fig["kind"] == "clt" and [f["layer"] for f in fig["layers"]] == list(LAYERS)
    assert res["total_l0"] == pytest.approx(fig["l0"])


def test_eval_cli_on_a_clt_and_a_transcoder_set(othello, tmp_path):
    d = othello.cfg.d_model
    clt = random_clt(d)
    save_clt(clt, tmp_path / "clt")
    code, out, err = run_cli(["eval", tmp_path / "clt", "--contexts", "8"])
    assert code in (0, None), err
    res = json.loads((tmp_path / "clt" / "eval.json").read_text())
    assert res["kind"] == "replacement" and len(res["replaces"]) == 3
    assert 0 <= res["legal_moves"]["replaced"] <= 1 and res["legal_moves"]["original"] > 0.9
    assert "legal-move top-1" in out and "top-1 agreement" in out
    # a set folder: one transcoder per layer, in layer order whatever their names
    for name, L in (("b", 4), ("a", 1)):
        h_in, h_out = mlp_io_hooks(L)
        tc = SparseAutoencoder(SAEConfig(d_in=d, d_sae=32, k=4, d_out=d))
        save_sae(tc, tmp_path / "set" / name, metadata={
            "hook_name": h_in, "hook_name_out": h_out, "model_name": "othello"})
    code, out, err = run_cli(["eval", tmp_path / "set", "--contexts", "4"])
    assert code in (0, None), err
    res = json.loads((tmp_path / "set" / "eval.json").read_text())
    assert res["replaces"] == ["blocks.1.hook_mlp_out", "blocks.4.hook_mlp_out"]
    # the same hook twice, several without --out, a CLT store that lacks a layer
    refuse(["eval", tmp_path / "clt", tmp_path / "set", "--out", tmp_path / "x"],
           "both replace blocks.1.hook_mlp_out", watch=[tmp_path])
    refuse(["eval", tmp_path / "set" / "a", tmp_path / "set" / "b"], "--out",
           watch=[tmp_path])


def test_clt_training_refuses_a_store_without_every_layer(tmp_path):
    h_in, h_out = mlp_io_hooks(1)
    run = tmp_path / "run"
    code, _, err = run_cli(["harvest", "--model", "othello", "--hook", h_in, "--hook", h_out,
                            "--hook", mlp_io_hooks(2)[0], "--tokens", "3000", "--out", run])
    assert code in (0, None), err
    refuse(["train", "--store", run, "--clt-layers", "1,2", "--out", tmp_path / "clt"],
           "lacks blocks.2.hook_mlp_out", "layers [1, 2]", watch=[run])
    refuse(["train", "--store", run, "--clt-layers", "2,1", "--out", tmp_path / "clt"],
           "ascending", watch=[run])
    refuse(["train", "--store", run, "--clt-layers", "1", "--hook", h_in,
            "--out", tmp_path / "clt"], "--clt-layers, not --hook", watch=[run])


def test_cli_trains_a_clt_and_resumes_it(tmp_path):
    """harvest two layers' MLP inputs and outputs, train a CLT in two halves (killed and
    resumed), and compare with an uninterrupted run."""
    from interp.sae.clt import load_clt

    hooks = [h for L in (0, 1) for h in mlp_io_hooks(L)]
    run = tmp_path / "run"
    argv = ["harvest", "--model", "othello", "--tokens", "12000", "--out", run]
    for h in hooks:
        argv += ["--hook", h]
    assert run_cli(argv)[0] in (0, None)
    common = ["train", "--store", run, "--clt-layers", "0,1", "--latents", "64", "--k", "4",
              "--steps", "12", "--batch-size", "512", "--eval-rows", "2048",
              "--checkpoint-every", "6"]
    code, out, err = run_cli(common + ["--out", tmp_path / "whole"])
    assert code in (0, None), err
    assert "layer 1: FVU" in out
    from interp.sae.trainer import TrainConfig, train_sae

    cfg = dict(store=str(run), out=str(tmp_path / "halves"), clt_layers=(0, 1), d_sae=64, k=4,
               steps=12, batch_size=512, eval_rows=2048, checkpoint_every=6)
    assert train_sae(TrainConfig(**cfg, stop_after=6), progress=False)["stopped_at"] == 6
    train_sae(TrainConfig(**cfg), progress=False)
    a, b = load_clt(tmp_path / "whole"), load_clt(tmp_path / "halves")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert metrics["kind"] == "clt" and len(metrics["eval"]["layers"]) == 2


def test_a_transcoder_whose_hooks_the_model_lacks_is_refused(othello, tmp_path):
    """Spliced where its hooks do not exist (a layer-7 MLP in a 6-layer model, no model
    recorded): one line naming the hook, before any evaluation."""
    d = othello.cfg.d_model
    tc = SparseAutoencoder(SAEConfig(d_in=d, d_sae=16, k=4, d_out=d))
    h_in, h_out = mlp_io_hooks(7)
    save_sae(tc, tmp_path / "tc7", metadata={"hook_name": h_in, "hook_name_out": h_out})
    refuse(["eval", tmp_path / "tc7", "--model", "othello"], "blocks.7.ln2.hook_normalized",
           "not a hook of model 'othello'", watch=[tmp_path])
    h_in, h_out = mlp_io_hooks(1)
    save_sae(tc, tmp_path / "set" / "a", metadata={"hook_name": h_in, "hook_name_out": h_out})
    save_sae(tc, tmp_path / "set" / "b", metadata={"hook_name": mlp_io_hooks(7)[0],
                                                    "hook_name_out": mlp_io_hooks(7)[1]})
    refuse(["eval", tmp_path / "set", "--model", "othello"], "blocks.7", watch=[tmp_path])


def test_eval_refuses_store_k_and_a_corrupt_clt(tmp_path):
    """--k and --store take one SAE or transcoder; a truncated CLT is named, one line."""
    import shutil

    from interp.models.zoo import REPO_ROOT

    refuse(["eval", "othello/clt", "--k", "4", "--out", tmp_path / "e"], "--k and --store")
    refuse(["eval", "othello/plt", "--store", tmp_path, "--out", tmp_path / "e"],
           "--k and --store")
    bad = tmp_path / "clt"
    shutil.copytree(REPO_ROOT / "saes" / "othello" / "clt", bad)
    weights = bad / "clt_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    refuse(["eval", bad, "--out", tmp_path / "e"], "not a readable cross-layer transcoder",
           watch=[bad])
    assert not (tmp_path / "e").exists()
