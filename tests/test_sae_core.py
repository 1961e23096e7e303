"""The SAE core and its variants against slow, obvious references on small tensors."""
import math

import pytest
import torch

from interp.errors import DataError, UnknownNameError
from interp.sae.core import (SAEConfig, SparseAutoencoder, batch_topk, geometric_median)

D, M, B = 8, 32, 10


def make(arch, **kw):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch=arch, **kw))
    with torch.no_grad():  # non-trivial biases so the tests see them
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def x_batch(seed=1):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


def dense_reference_topk(z, k, relu=True):
    out = torch.zeros_like(z)
    for i in range(z.shape[0]):
        order = sorted(range(z.shape[1]), key=lambda j: -float(z[i, j]))[:k]
        for j in order:
            out[i, j] = max(float(z[i, j]), 0.0) if relu else float(z[i, j])
    return out


def test_sparse_decode_equals_dense_product_values_and_gradients():
    sae = make("topk", k=5)
    vals = torch.randn(B, 5, requires_grad=True)
    idx = torch.randint(0, M, (B, 5))
    dense = torch.zeros(B, M).index_put((torch.arange(B)[:, None].expand(B, 5), idx),
                                        vals, accumulate=True)
    ref = dense @ sae.W_dec + sae.b_dec
    got = sae.decode_sparse(vals, idx)
    torch.testing.assert_close(got, ref)
    g = torch.randn(B, D)
    gv, gw = torch.autograd.grad((got * g).sum(), [vals, sae.W_dec])
    rv, rw = torch.autograd.grad((ref * g).sum(), [vals, sae.W_dec])
    torch.testing.assert_close(gv, rv)
    torch.testing.assert_close(gw, rw)


@pytest.mark.parametrize("arch,relu", [("topk", True), ("ksparse", False),
                                       ("hierarchical_topk", True)])
def test_topk_activations_match_reference(arch, relu):
    sae = make(arch, k=4)
    x = x_batch()
    out = sae(x)
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    ref = dense_reference_topk(z.detach(), 4, relu=relu)
    torch.testing.assert_close(out.dense(), ref)
    torch.testing.assert_close(out.x_hat, ref @ sae.W_dec + sae.b_dec)
    if arch == "ksparse":
        with torch.no_grad():
            sae.b_enc.fill_(-10.0)
        assert (sae(x).values < 0).all(), "ksparse keeps the sign of the k largest"
    if arch == "hierarchical_topk":
        assert (out.values[:, :-1] >= out.values[:, 1:]).all(), "sorted for the prefix loss"


def test_batch_topk_keeps_the_batch_largest_and_sets_a_threshold():
    z = torch.randn(6, 12, generator=torch.Generator().manual_seed(3))
    values, indices = batch_topk(z, 3)
    dense = torch.zeros_like(z).scatter_add(1, indices, values)
    flat = z.relu().flatten()
    cut = flat.topk(18).values.min()
    ref = torch.where(z.relu() >= cut, z.relu(), torch.zeros_like(z))
    torch.testing.assert_close(dense, ref)
    sae = make("batchtopk", k=3)
    sae.train()
    with pytest.raises(DataError, match="no inference threshold"):
        sae.eval()(x_batch())
    sae.train()(x_batch())
    assert float(sae.threshold) > 0
    sae.eval()
    x = x_batch(2)
    out = sae(x)
    z = sae.encode_pre(x)
    torch.testing.assert_close(out.dense(), z * (z > sae.threshold))


def test_jumprelu_forward_and_straight_through_gradients():
    sae = make("jumprelu", jumprelu_bandwidth=0.5, jumprelu_init_threshold=0.2)
    x = x_batch()
    total, out, terms = sae.loss(x)
    z = out.pre.detach()
    theta = sae.log_threshold.exp().detach()
    torch.testing.assert_close(out.acts.detach(), z * (z > theta))
    # d loss / d theta from the rectangle-kernel estimator, by hand
    eps = 0.5
    window = ((z - theta).abs() < eps / 2).float()
    err = (out.x_hat - x).detach()  # d mse / d x_hat = 2 err / B
    g_acts = 2 * err @ sae.W_dec.detach().T / B
    g_theta_recon = (g_acts * -(theta / eps) * window).sum(0)
    g_theta_l0 = sae.cfg.l0_coeff * (-(1 / eps) * window).sum(0) / B
    (grad,) = torch.autograd.grad(total, sae.log_threshold)
    torch.testing.assert_close(grad, (g_theta_recon + g_theta_l0) * theta)
    assert terms["l0"] == pytest.approx(sae.cfg.l0_coeff * float((z > theta).sum(1).float().mean()))


def test_relu_l1_is_weighted_by_decoder_norms():
    sae = make("relu", l1_coeff=2.0)
    x = x_batch()
    _, out, terms = sae.loss(x)
    acts = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    with torch.no_grad():
        ref = 2.0 * sum(float(acts[i, j] * sae.W_dec[j].norm())
                        for i in range(B) for j in range(M)) / B
    assert terms["l1"] == pytest.approx(ref, rel=1e-5)
    assert not sae.cfg.unit_norm_decoder


def test_matryoshka_loss_sums_prefix_reconstructions():
    sae = make("matryoshka", k=4, prefixes=(4, 12, M))
    sae.train()
    x = x_batch()
    _, out, terms = sae.loss(x)
    acts = out.dense().detach()
    ref = 0.0
    for m in (4, 12, M):
        masked = acts.clone()
        masked[:, m:] = 0
        ref += float((masked @ sae.W_dec + sae.b_dec - x).square().sum(1).mean())
    assert terms["mse"] == pytest.approx(ref, rel=1e-5)
    sampled = make("matryoshka", k=4, n_sampled_prefixes=3)
    sizes = sampled.prefix_sizes(torch.Generator().manual_seed(0))
    assert sizes[-1] == M and sizes == sorted(sizes) and len(sizes) <= 4


def test_hierarchical_loss_averages_every_prefix_of_the_sorted_topk():
    K = 5
    sae = make("hierarchical_topk", k=K)
    x = x_batch()
    _, out, terms = sae.loss(x)
    z = sae.encode_pre(x).detach()
    ref = 0.0
    for kp in range(1, K + 1):
        ref += float((dense_reference_topk(z, kp) @ sae.W_dec + sae.b_dec - x)
                     .square().sum(1).mean())
    assert terms["mse"] == pytest.approx(ref / K, rel=1e-5)
    # any k' <= K at inference equals the prefix of the sorted top-K
    for kp in (1, 3, K):
        torch.testing.assert_close(sae.forward_at_k(x, kp).dense(),
                                   dense_reference_topk(z, kp))
    with pytest.raises(DataError, match="k'=6"):
        sae.forward_at_k(x, K + 1)


def test_aux_loss_reconstructs_the_residual_from_dead_latents():
    sae = make("topk", k=3, k_aux=4)
    x = x_batch()
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::3] = True
    _, out, terms = sae.loss(x, dead=dead)
    z = out.pre_activations().detach()
    zd = torch.where(dead, z, torch.full_like(z, -math.inf))
    ref_acts = torch.zeros_like(z)
    for i in range(B):
        top = zd[i].topk(4).indices
        ref_acts[i, top] = z[i, top].relu()
    residual = (x - out.x_hat).detach()
    ref = float((ref_acts @ sae.W_dec - residual).square().sum(1).mean())
    assert terms["aux"] == pytest.approx(sae.cfg.aux_alpha * ref, rel=1e-5)
    _, _, no_dead = sae.loss(x, dead=torch.zeros(M, dtype=torch.bool))
    assert "aux" not in no_dead


def test_decoder_stays_on_the_sphere():
    for tied in (False, True):
        sae = make("ksparse", k=4, tied=tied)
        p = sae.decoder_parameter()
        p.grad = torch.randn_like(p)
        sae.remove_parallel_grad()
        assert p.shape == (M, D)  # decoder directions are rows, tied or not
        torch.testing.assert_close((p.grad * p).sum(1), torch.zeros(M), atol=1e-5, rtol=0)
        with torch.no_grad():
            p.mul_(3)
        sae.normalize_decoder()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(M))
    tied = make("ksparse", k=4, tied=True)
    assert tied.W_dec.data_ptr() == tied.W_enc.data_ptr()  # one parameter, not a copy


def test_tied_init_and_k_annealing():
    sae = make("topk", k=4)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    ks = make("ksparse", k=4, k_start=16, k_anneal_steps=100)
    assert [ks.k_at(s) for s in (0, 50, 100, 500)] == [16, 10, 4, 4]
    ks.train()
    assert ks(x_batch(), step=0).values.shape[1] == 16
    ks.eval()
    assert ks(x_batch()).values.shape[1] == 4


def test_geometric_median_beats_every_sample_point_and_the_mean():
    g = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(50, 3, generator=g), torch.full((5, 3), 40.0)])
    med = geometric_median(pts)
    cost = lambda c: (pts - c).norm(dim=1).sum()
    assert cost(med) <= cost(pts.mean(0))
    for eps in (torch.eye(3) * 1e-2):
        assert cost(med) <= cost(med + eps) + 1e-4 and cost(med) <= cost(med - eps) + 1e-4
    assert med.norm() < 2  # robust to the outliers, unlike the mean


def test_fold_activation_scale_gives_the_same_model_on_raw_inputs():
    sae = make("topk", k=4)
    x = x_batch() * 7.0
    s = 0.3
    before = sae(x * s).x_hat / s
    sae.fold_activation_scale(s)
    torch.testing.assert_close(sae(x).x_hat, before, atol=1e-5, rtol=1e-5)


def test_bad_configs_are_explained():
    with pytest.raises(DataError, match="k=64 must lie in \\[1, d_sae=32\\]"):
        SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch="topk", k=64))
    with pytest.raises(UnknownNameError, match="closest matches: topk"):
        SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch="topkk"))
    with pytest.raises(DataError, match="prefixes must be strictly increasing"):
        SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch="matryoshka", prefixes=(8, 4, M)))
    with pytest.raises(DataError, match="tied weights"):
        SparseAutoencoder(SAEConfig(d_in=D, d_sae=M, arch="topk", tied=True))
    with pytest.raises(DataError, match="d_in=8"):
        make("topk", k=4)(torch.randn(3, 5))
    with pytest.raises(DataError, match="unknown SAE config keys \\['kk'\\]"):
        SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "kk": 3})


def test_batch_topk_fast_path_and_fallback_agree_with_the_full_search():
    g = torch.Generator().manual_seed(7)
    for z in (torch.randn(32, 200, generator=g),                       # fast path
              torch.cat([torch.randn(1, 200, generator=g) + 10,         # one row dominates:
                         torch.randn(31, 200, generator=g)])):           # the fallback
        z.requires_grad_(True)
        values, indices = batch_topk(z, 3)
        dense = torch.zeros_like(z).scatter_add(1, indices, values)
        cut = z.relu().flatten().topk(96).values.min()
        ref = torch.where(z.relu() >= cut, z.relu(), torch.zeros_like(z))
        torch.testing.assert_close(dense, ref)
        (grad,) = torch.autograd.grad(dense.sum(), z)
        torch.testing.assert_close(grad, (ref > 0).float())
