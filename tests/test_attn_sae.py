"""Attention-output SAEs: an SAE at ``blocks.L.attn.hook_z`` (heads concatenated, d_in =
n_heads * d_head) whose latents write to the residual stream through ``W_O``.

Checked on the embedded othello model against slow, obvious references: the splice's
flatten / unflatten of (batch, pos, n_heads, d_head), the residual direction of a latent
against the real model's change of ``hook_attn_out`` when the latent is added at
``hook_z``, ``interp eval`` on a trained one, and SAELens reading our folder."""
import json

import pytest
import torch

from interp.errors import DataError
from interp.sae.core import SAEConfig, SparseAutoencoder

LAYER = 1
HOOK = f"blocks.{LAYER}.attn.hook_z"
ATTN_OUT = f"blocks.{LAYER}.hook_attn_out"


@pytest.fixture(scope="module")
def model():
    from interp.models import load

    return load("othello")


def tokens(n=3, t=16):
    from interp.data.othello import generate_games

    return torch.from_numpy(generate_games(n, 11).tokens(with_bos=True)[:, :t])


def random_sae(d_in, hook=HOOK, seed=0, **kw):
    cfg = SAEConfig(d_in=d_in, d_sae=96, arch="topk", k=6, seed=seed,
                    metadata={"hook_name": hook}, **kw)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        sae.b_dec.normal_(std=0.1, generator=torch.Generator().manual_seed(seed))
    return sae.eval()


def identity_sae(d_in, hook=HOOK):
    """A ReLU SAE that reconstructs exactly: latents relu(x) and relu(-x), decoder +I / -I."""
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=2 * d_in, arch="relu",
                                      metadata={"hook_name": hook}))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae._W_enc.copy_(torch.cat([eye, -eye]))
        sae._W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def heads_concatenated(z):
    """(B, T, H, dh) -> (B, T, H * dh) by hand: head 0's d_head units, then head 1's, ..."""
    return torch.cat([z[:, :, h] for h in range(z.shape[2])], dim=-1)


# ------------------------------------------------------------------ the layout
def test_flat_units_concatenates_heads_and_refuses_another_width():
    from interp.hooks import flat_units

    z = torch.randn(2, 5, 4, 32)
    flat = flat_units(z, 128)
    assert torch.equal(flat, heads_concatenated(z))
    assert torch.equal(flat.reshape(z.shape), z)  # the way back
    x = torch.randn(2, 5, 7)
    assert torch.equal(flat_units(x, 7), x)  # one unit dim: as it is
    with pytest.raises(DataError, match=r"units \(4, 32\) \(128 wide\).*d_in=32"):
        flat_units(z, 32)  # a head's d_head taken for the width: the old bug, refused


def test_splice_hook_at_hook_z_equals_a_per_row_reference(model):
    """The spliced forward equals one written slowly: every (context, position) row's heads
    concatenated by hand, through the SAE, split back into heads; an exact SAE gives the
    clean logits."""
    from interp.sae.evaluate import splice_hook

    sae = random_sae(model.cfg.n_heads * model.cfg.d_head)
    toks = tokens()
    H, dh = model.cfg.n_heads, model.cfg.d_head

    def slow(z, hook):
        out = torch.empty_like(z)
        for b in range(z.shape[0]):
            for t in range(z.shape[1]):
                row = torch.cat([z[b, t, h] for h in range(H)])[None]
                x_hat = sae(row).x_hat[0]
                for h in range(H):
                    out[b, t, h] = x_hat[h * dh:(h + 1) * dh]
        return out

    with torch.no_grad():
        clean = model(toks)
        fast = model.run_with_hooks(toks, fwd_hooks=[(HOOK, splice_hook(sae))])
        by_hand = model.run_with_hooks(toks, fwd_hooks=[(HOOK, slow)])
        exact = model.run_with_hooks(toks, fwd_hooks=[(HOOK, splice_hook(identity_sae(H * dh)))])
    torch.testing.assert_close(fast, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fast, clean, atol=1e-3)  # the random SAE did change the model
    torch.testing.assert_close(exact, clean, atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="d_in=32"):  # an SAE of one head's width: refused
        model.run_with_hooks(toks, fwd_hooks=[(HOOK, splice_hook(random_sae(dh)))])


def test_spliced_model_at_hook_z_keeps_the_output_and_encodes_concatenated_heads(model):
    from interp.circuits.splice import SplicedModel

    sae = random_sae(model.cfg.n_heads * model.cfg.d_head)
    toks = tokens()
    sm = SplicedModel(model, {HOOK: sae})
    with torch.no_grad():
        res = sm.run(toks)
        _, cache = model.run_with_cache(toks, names_filter=[HOOK])
        codes = sae(heads_concatenated(cache[HOOK]).reshape(-1, sae.cfg.d_in)).dense()
    torch.testing.assert_close(res.logits, model(toks), atol=1e-5, rtol=1e-5)
    st = res.hooks[HOOK]
    torch.testing.assert_close(st.acts, codes.reshape(*toks.shape, -1))
    assert st.err.shape == (*toks.shape, sae.cfg.d_in)


# ------------------------------------------------------------------ writes through W_O
@pytest.mark.parametrize("hook,written", [
    (HOOK, ATTN_OUT), (f"blocks.{LAYER}.mlp.hook_post", f"blocks.{LAYER}.hook_mlp_out")])
def test_residual_direction_is_the_models_change_when_a_latent_is_added(model, hook, written):
    """Add W_dec[i] (as the hook's own shape) at every position of the real model: the
    change of the hook the block writes to the residual stream is the latent's residual
    direction (hook_z: through W_O, summed over heads; mlp.hook_post: through W_out)."""
    from interp.features.logits import residual_directions
    from interp.hooks import hook_widths

    sae = random_sae(hook_widths(model, [hook])[hook], hook=hook)
    directions = residual_directions(sae, model)
    assert directions.shape == (sae.cfg.d_sae, model.cfg.d_model)
    toks = tokens()
    with torch.no_grad():
        _, clean = model.run_with_cache(toks, names_filter=[written])
        for i in (0, 17, 95):
            def add_latent(act, hook, i=i):
                return act + sae.W_dec[i].reshape(act.shape[2:])

            with model.hooks(fwd_hooks=[(hook, add_latent)]):
                _, after = model.run_with_cache(toks, names_filter=[written])
            change = after[written] - clean[written]  # (B, T, d_model), the same everywhere
            torch.testing.assert_close(change, directions[i].expand_as(change),
                                       atol=1e-4, rtol=1e-4)


def test_steering_a_hook_z_latent_moves_attn_out_by_its_residual_direction(model):
    from interp.circuits.splice import SplicedModel
    from interp.features.logits import residual_directions

    sae = random_sae(model.cfg.n_heads * model.cfg.d_head)
    sm = SplicedModel(model, {HOOK: sae})
    toks = tokens()

    def steer(name, a, e):
        a = a.clone()
        a[:, -1, 5] += 2.0
        return a, e

    with torch.no_grad():
        clean = sm.run(toks, capture=(ATTN_OUT,)).captured[ATTN_OUT]
        after = sm.run(toks, {HOOK: steer}, capture=(ATTN_OUT,)).captured[ATTN_OUT]
    torch.testing.assert_close(after[:, -1] - clean[:, -1],
                               2.0 * residual_directions(sae, model)[5].expand(3, -1),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after[:, :-1], clean[:, :-1])


def test_residual_directions_of_a_transcoder_and_refusals(model):
    from interp.features.logits import logit_effects, residual_directions
    from interp.hooks import mlp_io_hooks

    hook_in, hook_out = mlp_io_hooks(LAYER)
    tc = SparseAutoencoder(SAEConfig(d_in=128, d_sae=32, arch="topk", k=4, d_out=128,
                                     metadata={"hook_name": hook_in,
                                               "hook_name_out": hook_out}))
    # a transcoder writes hook_mlp_out, itself a residual-stream term: its decoder as it is
    torch.testing.assert_close(residual_directions(tc, model), tc.W_dec.detach())
    for hook in (f"blocks.{LAYER}.attn.hook_q", hook_in):  # no residual direction: refused
        width = 128 if hook == hook_in else model.cfg.n_heads * model.cfg.d_head
        sae = random_sae(width, hook=hook)
        with pytest.raises(DataError, match="has no residual-stream direction") as e:
            residual_directions(sae, model)
        assert "\n" not in str(e.value)
        assert logit_effects(sae, model, hook, m=3) is None  # the feature store: no logits
    with pytest.raises(DataError, match="32-wide rows, but .*hook_z of the model is 128"):
        residual_directions(random_sae(32), model)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """harvest hook_z of one layer (a few thousand tokens), train a tiny SAE on it."""
    from interp.cli import main

    tmp = tmp_path_factory.mktemp("attn_sae")
    run, out = tmp / "run", tmp / "sae"
    assert main(["harvest", "--model", "othello", "--hook", HOOK, "--tokens", "4000",
                 "--out", str(run)]) in (0, None)
    assert main(["train", "--store", str(run), "--hook", HOOK, "--arch", "topk",
                 "--latents", "256", "--k", "8", "--batch-size", "256", "--steps", "30",
                 "--lr", "3e-3", "--eval-rows", "1024", "--out", str(out)]) in (0, None)
    return run, out


def test_cli_evaluates_a_hook_z_sae_spliced_into_the_model(trained, tmp_path, model):
    from interp.cli import main
    from interp.features.logits import logit_effects
    from interp.sae.io import load_sae

    run, out = trained
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["d_in"] == model.cfg.n_heads * model.cfg.d_head
    assert cfg["metadata"]["hook_name"] == HOOK
    assert main(["eval", str(out), "--store", str(run), "--tokens", "1024", "--contexts", "8",
                 "--out", str(tmp_path / "ev")]) in (0, None)
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["hook"] == HOOK and ev["d_in"] == 128
    assert 0 < ev["reconstruction"]["fvu"] < 1
    zero = ev["spliced"]["zero"]
    assert zero["ce_clean"] < zero["ce_spliced"] and zero["ce_clean"] < zero["ce_ablated"]
    assert ev["ce_loss_recovered"] == pytest.approx(zero["ce_loss_recovered"])
    assert ev["ce_loss_recovered"] < 1 and ev["kl"] > 0
    # its logit effects go through W_O (the feature store's column)
    eff = logit_effects(load_sae(out), model, HOOK, m=3)
    assert eff is not None and eff["pos_values"].shape == (256, 3)


def test_sae_lens_opens_a_hook_z_sae_and_reads_the_hooks_own_shape(trained, model):
    """SAELens (its hook_z mode, from cfg.json's reshape_activations) on (B, T, H, dh)
    activations gives our encodings and reconstructions on the concatenated heads."""
    from sae_lens import SAE

    from interp.sae.io import load_sae

    _, out = trained
    assert json.loads((out / "cfg.json").read_text())["reshape_activations"] == "hook_z"
    ours = load_sae(out)
    theirs = SAE.load_from_disk(str(out))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens(), names_filter=[HOOK])
        z = cache[HOOK]                                              # (B, T, H, dh)
        flat = heads_concatenated(z).reshape(-1, ours.cfg.d_in)
        ours_out = ours(flat)
        acts = theirs.encode(z)
        recon = theirs(z)
    assert acts.shape == (*z.shape[:2], ours.cfg.d_sae) and recon.shape == z.shape
    torch.testing.assert_close(acts.reshape(-1, ours.cfg.d_sae), ours_out.dense(),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(heads_concatenated(recon).reshape(flat.shape), ours_out.x_hat,
                               atol=1e-5, rtol=1e-5)
