"""Transcoders (a dictionary reading one space and writing another, optionally with a
linear skip term) in the one SAE core: the sparse path against the dense autograd
reference and against the formula written out by hand, for every architecture."""
import copy

import pytest
import torch

from interp.errors import DataError
from interp.sae.core import ARCHS, SAEConfig, SparseAutoencoder

D_IN, D_OUT, M, B = 12, 20, 64, 40

EXTRA = {"matryoshka": {"prefixes": (8, 24, M)}, "relu": {"l1_coeff": 0.5},
         "jumprelu": {"jumprelu_bandwidth": 0.5, "jumprelu_init_threshold": 0.1}}


def make(arch, skip=False, d_out=D_OUT, **kw):
    cfg = SAEConfig(d_in=D_IN, d_sae=M, arch=arch, k=5, k_aux=7, seed=3, d_out=d_out,
                    skip=skip, **{**EXTRA.get(arch, {}), **kw})
    tc = SparseAutoencoder(cfg)
    with torch.no_grad():  # non-trivial biases and skip term so the tests see them
        g = torch.Generator().manual_seed(9)
        tc.b_dec.copy_(torch.randn(tc.b_dec.shape, generator=g))
        tc.b_enc.copy_(torch.randn(M, generator=g) * 0.1)
        if skip:
            tc.W_skip.copy_(torch.randn(D_IN, cfg.out_dim, generator=g) * 0.1)
    return tc


def xy(seed=4, d_out=D_OUT):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D_IN, generator=g) * 2, torch.randn(B, d_out, generator=g)


def run_loss(tc, x, y, dead):
    """(loss, terms, dense codes, y_hat, dL/dx, {parameter: gradient}) of one loss."""
    xg = x.clone().requires_grad_()
    total, out, terms = tc.loss(xg, step=0, dead=dead, y=y)
    total.backward()
    return (float(total.detach()), terms, out.dense().detach(), out.x_hat.detach(), xg.grad,
            {n: p.grad.clone() for n, p in tc.named_parameters() if p.grad is not None})


@pytest.mark.parametrize("skip", [False, True], ids=["plt", "skip"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_transcoder_sparse_path_equals_dense_reference(arch, skip):
    """Forward, every loss term (AuxK on dead latents included) and every gradient."""
    sparse = make(arch, skip)
    dense = copy.deepcopy(sparse)
    dense.sparse_kernels = False
    x, y = xy()
    dead = torch.rand(M, generator=torch.Generator().manual_seed(5)) < 0.5
    sparse.train(), dense.train()
    (ls, ts, acts_s, yh_s, gx_s, gs), (ld, td, acts_d, yh_d, gx_d, gd) = (
        run_loss(sparse, x, y, dead), run_loss(dense, x, y, dead))
    assert ts.keys() == td.keys()
    assert ls == pytest.approx(ld, rel=1e-5)
    for name in ts:
        assert ts[name] == pytest.approx(td[name], rel=1e-5), name
    torch.testing.assert_close(acts_s, acts_d)
    torch.testing.assert_close(yh_s, yh_d, rtol=1e-5, atol=1e-5)
    assert yh_s.shape == (B, D_OUT)
    torch.testing.assert_close(gx_s, gx_d, rtol=1e-4, atol=1e-5)
    assert gs.keys() == gd.keys()
    assert ("W_skip" in gs) == skip
    for name in gs:
        torch.testing.assert_close(gs[name], gd[name], rtol=1e-4, atol=1e-5,
                                   msg=f"{arch}: gradient of {name}")


@pytest.mark.parametrize("skip", [False, True], ids=["plt", "skip"])
@pytest.mark.parametrize("arch", ["topk", "relu", "hierarchical_topk"])
def test_transcoder_formula_by_hand(arch, skip):
    """z = x W_enc + b_enc (no b_dec inside), y_hat = a W_dec + b_dec (+ x W_skip); the
    loss is the MSE against y (hierarchical: averaged over prefixes of the sorted top K)."""
    tc = make(arch, skip)
    x, y = xy()
    total, out, terms = tc.loss(x, y=y)
    with torch.no_grad():
        z = x @ tc.W_enc + tc.b_enc
        torch.testing.assert_close(out.pre_activations(), z, rtol=1e-5, atol=1e-5)
        acts = out.dense()
        s = x @ tc.W_skip if skip else 0.0
        torch.testing.assert_close(out.x_hat, acts @ tc.W_dec + tc.b_dec + s,
                                   rtol=1e-5, atol=1e-5)
        if arch == "hierarchical_topk":
            v, i = out.values, out.indices
            ref = sum(((v[:, :k, None] * tc.W_dec[i[:, :k]]).sum(1) + tc.b_dec + s - y)
                      .square().sum(1).mean() for k in range(1, 6)) / 5
        else:
            ref = (out.x_hat - y).square().sum(1).mean()
    assert terms["mse"] == pytest.approx(float(ref), rel=1e-5)


def test_same_width_transcoder_and_tied_ksparse_transcoder_match_the_reference():
    """d_out == d_in: a transcoder still does not subtract b_dec, and is not tied at init
    (its encoder starts small: it predicts about b_dec); tied ksparse weights stay allowed."""
    from interp.sae.core import SparseAutoencoder

    for kw in ({"arch": "topk"}, {"arch": "ksparse", "tied": True}):
        sparse = make(d_out=D_IN, **kw)
        if kw["arch"] == "topk":
            fresh = SparseAutoencoder(sparse.cfg)
            assert not torch.allclose(fresh.W_enc, fresh.W_dec.T)
            row_norms = fresh._W_enc.detach().norm(dim=1)  # small: FVU about 1 at start
            assert float(row_norms.mean()) == pytest.approx(0.1, rel=0.2)
        dense = copy.deepcopy(sparse)
        dense.sparse_kernels = False
        x, y = xy(d_out=D_IN)
        a, b = run_loss(sparse, x, y, None), run_loss(dense, x, y, None)
        assert a[0] == pytest.approx(b[0], rel=1e-5)
        for name in a[5]:
            torch.testing.assert_close(a[5][name], b[5][name], rtol=1e-4, atol=1e-5)
        assert "b_dec" in a[5]  # the output bias is trained by the reconstruction
        with torch.no_grad():
            z = x @ sparse.W_enc + sparse.b_enc
        torch.testing.assert_close(sparse.encode_pre(x), z)


def test_encoder_gives_no_b_dec_gradient():
    """For a transcoder b_dec is the output bias only: its gradient is sum(dL/dy_hat)."""
    tc = make("topk")
    x, y = xy()
    total, out, _ = tc.loss(x, y=y)
    total.backward()
    expected = 2 * (out.x_hat - y).detach().sum(0) / B
    torch.testing.assert_close(tc.b_dec.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "hierarchical_topk"])
def test_fold_activation_scales_gives_the_same_transcoder_on_raw_activations(arch):
    tc = make(arch, skip=True)
    tc.train()
    x, _ = xy()
    tc(x)  # batchtopk: an inference threshold
    tc.eval()
    s_in, s_out = 0.3, 2.5
    before = tc(x * s_in).x_hat / s_out
    tc.fold_activation_scale(s_in, s_out)
    torch.testing.assert_close(tc(x).x_hat, before, rtol=1e-5, atol=1e-5)


def test_init_b_dec_from_an_output_sample_and_bad_configs():
    tc = make("topk", b_dec_init="mean")
    _, y = xy()
    tc.init_b_dec(y)
    torch.testing.assert_close(tc.b_dec.detach(), y.mean(0))
    with pytest.raises(DataError, match="d_out=20"):
        tc.init_b_dec(torch.randn(5, D_IN))
    with pytest.raises(DataError, match="target has d=12"):
        tc.loss(xy()[0], y=torch.randn(B, D_IN))
    with pytest.raises(DataError, match="skip=true is an option of transcoders"):
        SAEConfig(d_in=4, d_sae=8, k=4, skip=True).validate()
    with pytest.raises(DataError, match="tied weights need d_in == d_out"):
        SAEConfig(d_in=4, d_sae=8, k=4, arch="ksparse", tied=True, d_out=6).validate()
    sae = SparseAutoencoder(SAEConfig(d_in=4, d_sae=8, k=4))
    assert "zero_shift" not in sae.state_dict() and not hasattr(sae, "W_skip")
    assert "zero_shift" not in make("topk").state_dict()


# ------------------------------------------------------------------ training
HOOK_IN, HOOK_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


def write_io_store(path, n_rows=16_000, d_in=32, d_out=24, n_true=32, k_true=3, seed=0,
                   linear=0.0):
    """A store of two hooks at the same rows: x a sparse sum of ``n_true`` input directions,
    y the same coefficients on ``n_true`` output directions plus an offset (a sparse function
    of x), plus ``linear`` * x @ A for a fixed A (what a skip term fits)."""
    import numpy as np

    from interp.activations.store import StoreWriter

    g = torch.Generator().manual_seed(seed)
    unit = lambda t: t / t.norm(dim=1, keepdim=True)  # noqa: E731
    dirs_in, dirs_out = unit(torch.randn(n_true, d_in, generator=g)), unit(
        torch.randn(n_true, d_out, generator=g))
    offset, A = torch.randn(d_out, generator=g), torch.randn(d_in, d_out, generator=g) / 4
    n_ctx, per_ctx = 9, 8
    n = (n_rows // per_ctx) * per_ctx
    idx = torch.stack([torch.randperm(n_true, generator=g)[:k_true] for _ in range(n)])
    coef = torch.rand(idx.shape, generator=g) * 2 + 0.5
    x = (coef[..., None] * dirs_in[idx]).sum(1) + 0.05 * torch.randn(n, d_in, generator=g)
    y = (coef[..., None] * dirs_out[idx]).sum(1) + offset + linear * x @ A
    w = StoreWriter(path, {HOOK_IN: d_in, HOOK_OUT: d_out}, n_ctx, list(range(1, n_ctx)),
                    shard_rows=4096, meta={"model": "toy", "source": {"kind": "synthetic"}})
    xs, ys = x.view(-1, per_ctx, d_in), y.view(-1, per_ctx, d_out)
    for s in range(0, xs.shape[0], 256):
        w.add(np.zeros((xs[s:s + 256].shape[0], n_ctx), dtype=np.int64),
              {HOOK_IN: xs[s:s + 256], HOOK_OUT: ys[s:s + 256]})
    w.close()
    return path


def tc_config(store, out, **kw):
    from interp.sae.trainer import TrainConfig

    base = dict(store=str(store), out=str(out), hook=HOOK_IN, hook_out=HOOK_OUT, arch="topk",
                d_sae=64, k=4, batch_size=256, steps=200, lr=1e-2, warmup_steps=10,
                eval_rows=2048, eval_every=100, checkpoint_every=50,
                dead_window_tokens=5000, log_every=10)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("arch,skip", [("topk", False), ("topk", True),
                                       ("hierarchical_topk", True), ("batchtopk", False)])
def test_transcoders_learn_a_sparse_function_of_their_input(arch, skip, tmp_path):
    import json

    from interp.sae.io import load_sae
    from interp.sae.trainer import train_sae

    store = write_io_store(tmp_path / "store", linear=1.0 if skip else 0.0)
    opts = {"skip": True} if skip else {}
    if arch == "batchtopk":
        opts["threshold_momentum"] = 0.1
    res = train_sae(tc_config(store, tmp_path / "tc", arch=arch, sae_options=opts),
                    progress=False)
    assert res["eval"]["fvu"] < 0.2, res["eval"]
    assert (res["d_in"], res["d_out"], res["hook"], res["hook_out"]) == (32, 24, HOOK_IN,
                                                                          HOOK_OUT)
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["interp"]["d_out"] == 24 and cfg["interp"]["skip"] == skip
    assert cfg["metadata"]["hook_name"] == HOOK_IN
    assert cfg["metadata"]["hook_name_out"] == HOOK_OUT
    # saved with both scales folded in: the held-out FVU again, on raw activations
    from interp.activations.store import open_store
    from interp.sae.evaluate import reconstruction_metrics

    tc = load_sae(tmp_path / "tc")
    s = open_store(store)
    held = s.batches(4096, [HOOK_IN, HOOK_OUT], shuffle=False,
                     row_range=(s.n_rows - 2048, s.n_rows))
    again = reconstruction_metrics(tc, held)
    assert again["fvu"] == pytest.approx(res["eval"]["fvu"], rel=1e-3, abs=1e-5)


def test_plt_without_skip_cannot_fit_a_linear_part_the_skip_one_does(tmp_path):
    """The toy's y has a dense linear part: only the skip term represents it with k = 2."""
    from interp.sae.trainer import train_sae

    store = write_io_store(tmp_path / "store", linear=2.0)
    fvu = {skip: train_sae(tc_config(store, tmp_path / f"tc{skip}", k=2, steps=250,
                                     sae_options={"skip": skip}), progress=False)["eval"]["fvu"]
           for skip in (False, True)}
    assert fvu[True] < 0.5 * fvu[False], fvu


def test_transcoder_resume_and_bad_hooks(tmp_path):
    from interp.errors import MismatchError
    from interp.sae.trainer import train_sae

    store = write_io_store(tmp_path / "store", n_rows=8000)
    with pytest.raises(DataError, match="runs after output hook"):
        tc_config(store, tmp_path / "a", hook=HOOK_OUT, hook_out=HOOK_IN).validate()
    with pytest.raises(DataError, match="that is an SAE"):
        tc_config(store, tmp_path / "a", hook_out=HOOK_IN).validate()
    full = tc_config(store, tmp_path / "full", steps=60, sae_options={"skip": True})
    train_sae(full, progress=False)
    part = tc_config(store, tmp_path / "part", steps=60, stop_after=27,
                     sae_options={"skip": True})
    train_sae(part, progress=False)
    with pytest.raises(MismatchError, match="hook_out"):  # the same folder, as an SAE
        train_sae(tc_config(store, tmp_path / "part", steps=60, hook_out=None),
                  progress=False)
    part.stop_after = None
    train_sae(part, progress=False)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "part" / "sae_weights.safetensors"))
    assert "W_skip" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


# ------------------------------------------------------------------ saving
IO_ARCHS = ["relu", "jumprelu", "topk", "batchtopk", "matryoshka", "hierarchical_topk",
            "ksparse"]


def trained_like(arch, skip):
    tc = make(arch, skip)
    with torch.no_grad():
        tc.activation_scale.fill_(0.37)
        tc.activation_scale_out.fill_(1.9)
    if ARCHS[arch].batch_topk:
        tc.train()(xy()[0] * 0.37)  # the inference threshold
    return tc.eval()


@pytest.mark.parametrize("skip", [False, True], ids=["plt", "skip"])
@pytest.mark.parametrize("arch", IO_ARCHS)
def test_transcoder_round_trips_and_sae_lens_opens_its_forms(arch, skip, tmp_path):
    from interp.sae.io import load_sae, save_sae

    ours = trained_like(arch, skip)
    save_sae(ours, tmp_path / "tc", metadata={"hook_name": HOOK_IN, "hook_name_out": HOOK_OUT})
    x = xy()[0] * 3
    with torch.no_grad():
        ref_acts = ours.encode(x * 0.37)
        ref_out = ours(x * 0.37).x_hat / 1.9
        back = load_sae(tmp_path / "tc")
        assert (back.cfg.d_out, back.cfg.skip) == (D_OUT, skip)
        torch.testing.assert_close(back.encode(x), ref_acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(x).x_hat, ref_out, atol=1e-5, rtol=1e-5)
    raw = __import__("json").loads((tmp_path / "tc" / "cfg.json").read_text())
    assert raw["d_out"] == D_OUT and raw["apply_b_dec_to_input"] is False
    assert raw["metadata"]["hook_name_out"] == HOOK_OUT
    from sae_lens import SAE

    if raw["architecture"].startswith("interp_"):  # no SAELens form: refused, not misread
        with pytest.raises(Exception):
            SAE.load_from_disk(str(tmp_path / "tc"))
        return
    theirs = SAE.load_from_disk(str(tmp_path / "tc"))
    assert type(theirs).__name__.endswith("SkipTranscoder" if skip else "Transcoder")
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ref_acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), ref_out, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ end to end
def test_cli_trains_a_plt_on_othello_mlp_io_hooks(tmp_path):
    """harvest the MLP's input and output of block 1, train a small PLT, read its files."""
    import json

    from interp.cli import main
    from interp.hooks import mlp_io_hooks

    hook_in, hook_out = mlp_io_hooks(1)
    run = tmp_path / "run"
    assert main(["harvest", "--model", "othello", "--hook", hook_in, "--hook", hook_out,
                 "--tokens", "6000", "--out", str(run)]) in (0, None)
    out = tmp_path / "plt"
    assert main(["train", "--store", str(run), "--hook", hook_in, "--hook-out", hook_out,
                 "--arch", "topk", "--latents", "256", "--k", "8", "--batch-size", "256",
                 "--steps", "40", "--lr", "3e-3", "--eval-rows", "1024",
                 "--option", "skip=true", "--out", str(out)]) in (0, None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["hook"], metrics["hook_out"]) == (hook_in, hook_out)
    assert metrics["eval"]["fvu"] < 0.9 and metrics["eval"]["l0"] == pytest.approx(8, abs=0.5)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["d_in"] == cfg["d_out"] == cfg["interp"]["d_out"] and cfg["interp"]["skip"]
    assert cfg["architecture"] == "interp_topk_skip_transcoder"
    assert (cfg["metadata"]["hook_name"], cfg["metadata"]["hook_name_out"]) == (hook_in,
                                                                                hook_out)
    # interp eval: FVU of the MLP's output on the store's held-out rows, and the model with
    # its MLP replaced (CE-loss recovered against zero-ablating the MLP's output, KL)
    ev_dir = tmp_path / "ev"
    assert main(["eval", str(out), "--store", str(run), "--tokens", "1024", "--contexts", "8",
                 "--out", str(ev_dir)]) in (0, None)
    ev = json.loads((ev_dir / "eval.json").read_text())
    assert (ev["hook"], ev["hook_out"], ev["d_out"], ev["skip"]) == (hook_in, hook_out, 128,
                                                                     True)
    assert ev["reconstruction"]["fvu"] == pytest.approx(metrics["eval"]["fvu"], rel=1e-4)
    spliced = ev["spliced"]["zero"]
    assert spliced["ce_clean"] < spliced["ce_spliced"] < spliced["ce_ablated"]
    assert 0 < ev["ce_loss_recovered"] < 1 and ev["kl"] > 0
    # another store without the output hook is refused, naming it
    other = tmp_path / "only_in"
    assert main(["harvest", "--model", "othello", "--hook", hook_in, "--tokens", "600",
                 "--out", str(other)]) in (0, None)
    assert main(["eval", str(out), "--store", str(other), "--out", str(tmp_path / "e2")]) == 2


def test_splicing_a_transcoder_replaces_the_mlp_output_by_its_prediction():
    """The spliced forward equals, by hand: the clean run's MLP input through the
    transcoder, written at the MLP's output by a plain hook."""
    from interp.hooks import mlp_io_hooks
    from interp.models import load
    from interp.sae.evaluate import splice_hooks

    model = load("othello")
    hook_in, hook_out = mlp_io_hooks(2)
    tc = SparseAutoencoder(SAEConfig(d_in=128, d_sae=64, arch="topk", k=4, d_out=128,
                                     skip=True, metadata={"hook_name": hook_in,
                                                          "hook_name_out": hook_out})).eval()
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(1, 61, (3, 12))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook_in])
        x = cache[hook_in]
        y_hat = tc(x.reshape(-1, 128)).x_hat.reshape(x.shape)
        by_hand = model.run_with_hooks(tokens, fwd_hooks=[(hook_out, lambda a, hook: y_hat)])
        spliced = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(tc))
    torch.testing.assert_close(spliced, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(spliced, model(tokens), atol=1e-3)  # it did change the model


def test_a_transcoder_is_not_evaluated_or_spliced_as_an_sae():
    from interp.sae.evaluate import reconstruction_metrics, splice_hook

    tc = make("topk", d_out=D_IN)  # same widths: only the check stops a wrong figure
    with pytest.raises(DataError, match="pairs of its two hooks"):
        reconstruction_metrics(tc, [xy()[0]])
    with pytest.raises(DataError, match="cannot be spliced"):
        splice_hook(tc)
    res = reconstruction_metrics(tc, [xy(d_out=D_IN)])
    assert res["fvu"] > 0 and res["n_tokens"] == B


@pytest.mark.parametrize("kind", ["Transcoder", "SkipTranscoder", "JumpReLUTranscoder",
                                  "JumpReLUSkipTranscoder"])
def test_a_transcoder_sae_lens_wrote_loads_with_the_same_outputs(kind, tmp_path):
    """SAELens's own transcoder folders (written by its save_model) open with load_sae."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    from interp.sae.io import load_sae

    cfg_cls = getattr(sae_lens, f"{kind}Config")
    theirs = getattr(sae_lens, kind)(cfg_cls(d_in=D_IN, d_sae=24, d_out=D_OUT,
                                             apply_b_dec_to_input=False,
                                             metadata=SAEMetadata(
                                                 hook_name=HOOK_IN, hook_name_out=HOOK_OUT)))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if "JumpReLU" in kind:
            theirs.threshold.copy_(torch.rand(24, generator=g) * 0.2)
    theirs.save_model(str(tmp_path / "tc"))
    ours = load_sae(tmp_path / "tc")
    assert ours.cfg.skip == ("Skip" in kind) and ours.cfg.d_out == D_OUT
    assert ours.cfg.metadata.get("hook_name_out") == HOOK_OUT
    x = xy()[0]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x).x_hat, theirs(x), atol=1e-5, rtol=1e-5)
