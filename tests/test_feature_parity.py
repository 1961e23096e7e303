"""What a feature page computes live (``interp.features.dashboard``), each against a slow,
obvious reference: similar decoder directions, correlated neurons, activations on a prompt,
the loss change when a latent is ablated; and how code examples are drawn."""
import numpy as np
import pytest
import torch

from interp.errors import DataError
from interp.features.dashboard import (ablation_loss_change, correlated_neurons,
                                       dictionary_acts, example_contexts, similar_decoders,
                                       top_correlated)
from interp.sae.core import SAEConfig, SparseAutoencoder


@pytest.fixture(scope="module")
def othello():
    from interp.models import load

    return load("othello").eval()


def othello_tokens(n=6, t=24, seed=2):
    from interp.data.othello import generate_games

    return torch.from_numpy(generate_games(n, seed).tokens(with_bos=True)[:, :t])


def test_similar_decoders_brute_force():
    W = torch.randn(40, 12, generator=torch.Generator().manual_seed(0))
    W[7] = 3 * W[3] + 0.01 * W[5]                      # nearly parallel to 3, other norm
    got = similar_decoders(W, 3, n=10)
    ref = []
    for j in range(40):
        if j != 3:
            ref.append((float(W[3] @ W[j] / (W[3].norm() * W[j].norm())), j))
    ref.sort(reverse=True)
    assert [r["latent"] for r in got] == [j for _, j in ref[:10]]
    assert [r["cosine"] for r in got] == pytest.approx([c for c, _ in ref[:10]], abs=1e-5)
    assert got[0]["latent"] == 7 and got[0]["cosine"] > 0.99
    with pytest.raises(DataError, match="out of range"):
        similar_decoders(W, 40)


@pytest.mark.parametrize("arch", ["topk", "relu"])
@torch.no_grad()
def test_correlated_neurons_and_prompt_activations_brute_force(othello, arch):
    hook = "blocks.2.hook_resid_post"
    sae = SparseAutoencoder(SAEConfig(d_in=128, d_sae=32, arch=arch, k=6, seed=1,
                                      metadata={"hook_name": hook})).eval()
    toks = othello_tokens()
    acts = dictionary_acts(othello, sae, toks, batch_size=4)   # two batches
    _, cache = othello.run_with_cache(toks, names_filter=[hook, "blocks.2.mlp.hook_post"])
    ref = sae(cache[hook].reshape(-1, 128)).dense().reshape(6, 24, 32)
    ref[:, 0] = 0
    torch.testing.assert_close(acts, ref.clamp_min(0), atol=1e-5, rtol=1e-5)
    corr = correlated_neurons(othello, sae, toks, batch_size=4)
    assert corr.shape == (32, 512)
    a = ref[:, 1:].reshape(-1, 32).double().numpy()
    b = cache["blocks.2.mlp.hook_post"][:, 1:].reshape(-1, 512).double().numpy()
    for latent in range(32):
        if a[:, latent].std() == 0:
            assert corr[latent].abs().max() == 0
            continue
        for neuron in (0, 5, 100, 511):
            if b[:, neuron].std() == 0:
                continue
            r = np.corrcoef(a[:, latent], b[:, neuron])[0, 1]
            assert float(corr[latent, neuron]) == pytest.approx(r, abs=1e-4)
    best = top_correlated(corr, 0, 3)
    assert [x["neuron"] for x in best] == corr[0].argsort(descending=True)[:3].tolist()


def tiny_case():
    """A one-layer model whose residual stream is e0 at every position and whose
    unembedding reads e0 as token 1; an SAE whose latent 0 is exactly e0 (latent 1 never
    fires). Ablating latent 0 removes all the model knows: the loss must go up."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=8, d_head=4, n_heads=2, d_mlp=16,
                                  d_vocab=4, n_ctx=6, act_fn="relu", normalization_type=None)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W_E[:, 0] = 1.0
        model.W_U[0, 1] = 5.0
    hook = "blocks.0.hook_resid_post"
    sae = SparseAutoencoder(SAEConfig(d_in=8, d_sae=2, arch="relu", metadata={
        "hook_name": hook}))
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.W_enc[0, 0] = 1.0
        sae.W_dec[0, 0] = 1.0
        sae.W_enc[1, 1] = 1.0
        sae.W_dec[1, 1] = 1.0
    return model.eval(), sae.eval()


def test_loss_change_on_ablation_sign_and_shape():
    model, sae = tiny_case()
    toks = torch.tensor([[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    res = ablation_loss_change(model, sae, toks, 0)
    assert res["delta"].shape == res["clean"].shape == (2, 5) and res["acts"].shape == (2, 6)
    assert (res["acts"] == 1).all()
    clean = -torch.log_softmax(torch.tensor([0.0, 5, 0, 0]), 0)[1]
    torch.testing.assert_close(res["clean"], torch.full((2, 5), float(clean)))
    torch.testing.assert_close(res["ablated"], torch.full((2, 5), float(np.log(4))))
    assert (res["delta"] > 1).all()                          # the loss goes up
    none = ablation_loss_change(model, sae, toks, 1)         # a latent that never fires
    assert none["delta"].abs().max() == 0
    with pytest.raises(DataError, match="out of range"):
        ablation_loss_change(model, sae, toks, 2)


@torch.no_grad()
def test_loss_change_is_the_residual_shift_on_a_real_model(othello):
    from interp.sae.release import load_pretrained

    hook = "blocks.3.hook_resid_post"
    sae = load_pretrained(f"othello/{hook}/topk")
    toks = othello_tokens(3, 30)
    res = ablation_loss_change(othello, sae, toks, 5)
    _, cache = othello.run_with_cache(toks, names_filter=hook)
    a = sae(cache[hook].reshape(-1, 128)).dense().reshape(3, 30, -1)[..., 5]
    shift = -a[..., None] * sae.W_dec[5]
    ref = othello.run_with_hooks(toks, fwd_hooks=[(hook, lambda x, hook: x + shift)])
    lp = ref[:, :-1].log_softmax(-1).gather(-1, toks[:, 1:, None])[..., 0]
    torch.testing.assert_close(res["ablated"], -lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res["acts"], a, atol=1e-5, rtol=1e-5)


def test_example_contexts_replay_the_store_source(app_run):
    from interp.features import FeatureStore
    from interp.viz.othello import position_at

    fs = FeatureStore(app_run / "features" / "topk.duckdb")
    latent = fs.by_density(0.01, 1.0, n=1)[0]["latent"]
    page = fs.feature(latent)
    examples = page["top_examples"] + [e for q in page["quantiles"] for e in q["examples"]]
    ctx = example_contexts(fs.meta, examples)
    assert all(c is not None and len(c) == fs.meta["n_ctx"] for c in ctx)
    for e, c in zip(examples, ctx):
        ids = np.asarray(e["token_ids"])
        w = c[e["window_start"]:e["window_start"] + len(ids)]
        assert np.array_equal(w[ids >= 0], ids[ids >= 0])
        assert len(position_at(c, e["pos"]).moves) == e["pos"]    # a legal game up to there
    bad = dict(examples[0], token_ids=[t + 1 if t > 0 else t for t in examples[0]["token_ids"]])
    assert example_contexts(fs.meta, [bad]) == [None]              # another window: refused
    assert example_contexts({"source": {"kind": "nowhere"}, "n_ctx": 8}, examples[:1]) == [None]


def test_code_rendering_escapes_html_and_keeps_line_breaks():
    from interp.viz.features import code_example_html, code_html

    toks = ["def", " f", "():", "\n    ", "return", ' "<script>alert(1)</script>"', "\n\n",
            "x", " &", " y"]
    acts = [0, 0, 0, 2.0, 0, 1.0, 0, 0, 0.5, 0]
    out = code_html(toks, acts, None, 3)
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&amp;" in out and "\n" not in out              # no raw newline: Markdown-safe
    assert out.count("<br>") == 3                          # one + two line breaks
    assert "↵<br>    " in out                              # a firing newline shows; indent kept
    assert "white-space:pre" in out and "monospace" in out
    assert out.count("outline:1px") == 1 and "rgba(245,133,24,1.00)" in out
    ex = {"token_ids": [-1, -1, 5, 6], "tokens": ["#-1", "#-1", "a", "\nb"],
          "acts": [0, 0, 1.0, 0], "max_index": 2}
    out = code_example_html(ex, 2.0)
    assert "#-1" not in out and "rgba(245,133,24,0.50)" in out and out.count("<br>") == 1


@pytest.mark.parametrize("name", ["othello/blocks.1.hook_resid_post/topk", "othello/plt/L1",
                                  "othello/attn/L2"])
def test_every_kind_of_dictionary(othello, name):
    """Residual SAEs, transcoders (read ln2, write the MLP output) and attention SAEs
    (hook_z, heads concatenated): profiles, neurons and ablations all run on them."""
    from interp.data.othello import generate_games
    from interp.features.othello import dictionary_profile
    from interp.sae.release import load_pretrained

    sae = load_pretrained(name)
    m = sae.cfg.d_sae
    games = generate_games(8, 4)
    prof = dictionary_profile(othello, sae, games)
    assert prof.corr.shape == (m, 6, 64) and torch.isfinite(prof.corr).all()
    toks = othello_tokens(4, 20)
    corr = correlated_neurons(othello, sae, toks)
    assert corr.shape == (m, 512)
    acts = dictionary_acts(othello, sae, toks)
    latent = int(acts.sum((0, 1)).argmax())
    res = ablation_loss_change(othello, sae, toks, latent)
    assert res["delta"].shape == (4, 19) and res["delta"].abs().max() > 0
    torch.testing.assert_close(res["acts"][:, 1:], acts[:, 1:, latent], atol=1e-4, rtol=1e-4)
