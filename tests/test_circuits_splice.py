import pytest
import torch

from interp.circuits.splice import SplicedModel
from interp.errors import DataError, UnknownNameError
from interp.models import load
from interp.sae.core import SAEConfig, SparseAutoencoder

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_attn_out", "blocks.3.hook_mlp_out"]


@pytest.fixture(scope="module")
def model():
    m = load("othello")
    m.eval()
    return m


def random_sae(d_in: int, arch: str = "topk", seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=256, arch=arch, k=8, seed=seed))
    with torch.no_grad():
        sae.b_dec.normal_(std=0.1)
    return sae.eval()


@pytest.fixture(scope="module")
def spliced(model):
    return SplicedModel(model, {h: random_sae(128, seed=i) for i, h in enumerate(HOOKS)})


def tokens(n=3, t=20):
    from interp.data.othello import generate_games

    return torch.from_numpy(generate_games(n, 5).tokens(with_bos=True)[:, :t])


def test_spliced_model_computes_exactly_what_the_model_does(model, spliced):
    toks = tokens()
    clean = model(toks)
    res = spliced.run(toks)
    assert torch.equal(res.logits, clean)
    assert spliced.hooks == HOOKS  # model order
    for h in HOOKS:
        st = res.hooks[h]
        assert st.acts.shape == (3, 20, 256) and st.err.shape == (3, 20, 128)
        x_hat = st.acts @ spliced.saes[h].W_dec + spliced.saes[h].b_dec
        torch.testing.assert_close(x_hat + st.err, st.x, atol=1e-5, rtol=0)
    tracked = spliced.run(toks, track_grads=True)
    assert torch.equal(tracked.logits.detach(), clean)


def test_node_gradients_are_the_models_gradients_projected(model, spliced):
    toks = tokens()
    res = spliced.run(toks, track_grads=True)
    metric = res.logits[:, -1, 5].sum() - res.logits[:, -1, 9].sum()
    metric.backward()
    # the original model's gradient at each hook, by plain hooks
    grads = {}

    def keep(act, hook):
        act.retain_grad()
        grads[hook.name] = act
        return act

    logits = model.run_with_hooks(toks, fwd_hooks=[(h, keep) for h in HOOKS])
    (logits[:, -1, 5].sum() - logits[:, -1, 9].sum()).backward()
    for h in HOOKS:
        g = grads[h].grad
        torch.testing.assert_close(res.hooks[h].err.grad, g, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.hooks[h].acts.grad, g @ spliced.saes[h].W_dec.T,
                                   atol=1e-5, rtol=1e-4)


def test_interventions_change_exactly_the_decoded_difference(model, spliced):
    toks = tokens()
    hook = HOOKS[0]
    base = spliced.run(toks)
    acts = base.hooks[hook].acts
    latent = int(acts[0, 5].argmax())

    def ablate(name, a, err):
        a = a.clone()
        a[:, :, latent] = 0
        return a, err

    out = spliced.run(toks, {hook: ablate})
    # by hand: the residual after block 1 moves by -a_latent * W_dec[latent]
    shift = -acts[..., latent, None] * spliced.saes[hook].W_dec[latent]
    ref = model.run_with_hooks(toks, fwd_hooks=[(hook, lambda x, hook: x + shift)])
    torch.testing.assert_close(out.logits, ref, atol=1e-4, rtol=1e-4)
    assert not torch.equal(out.logits, base.logits)


def test_bad_splices_are_refused(model):
    with pytest.raises(UnknownNameError, match="blocks.9.hook_resid_post"):
        SplicedModel(model, {"blocks.9.hook_resid_post": random_sae(128)})
    with pytest.raises(DataError, match="d_in=64.*width 128"):
        SplicedModel(model, {"blocks.0.hook_resid_post": random_sae(64)})
    with pytest.raises(DataError, match="at least one SAE"):
        SplicedModel(model, {})
    sm = SplicedModel(model, {"blocks.0.hook_resid_post": random_sae(128)})
    with pytest.raises(DataError, match="no SAE is spliced"):
        sm.run(tokens(), {"blocks.1.hook_resid_post": lambda n, a, e: (a, e)})
