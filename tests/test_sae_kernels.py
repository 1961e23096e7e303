"""The sparse path of the top-k family against the dense autograd reference, and each
compiled kernel against its torch fallback."""
import copy

import pytest
import torch

from interp.sae import kernels
from interp.sae.core import SAEConfig, SparseAutoencoder

D, M, B = 16, 64, 40


def torch_only(fn, *args, **kw):
    """Run ``fn`` with the torch fallbacks instead of the compiled kernels."""
    saved = kernels._EXT
    kernels._EXT = None
    try:
        return fn(*args, **kw)
    finally:
        kernels._EXT = saved


@pytest.fixture(scope="module", autouse=True)
def compiled():
    if kernels.extension() is None:
        pytest.skip("no C++ compiler here: the compiled kernels are not built")


def test_topk_rows_equals_torch_topk_including_ties_and_infinities():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(300, 1000, generator=g)
    z[:, 500:] = z[:, :500].round(decimals=1)  # many ties
    bias = torch.randn(1000, generator=g)
    bias[::3] = -float("inf")  # masked latents, as AuxK masks live ones
    for k in (1, 7, 64, 333):
        v, i = kernels.topk_rows(z, bias, k)
        ref = (z + bias).topk(k, dim=1).values
        torch.testing.assert_close(v.sort(1, descending=True).values, ref)
        torch.testing.assert_close((z + bias).gather(1, i), v)  # indices point at the values
        assert (i.sort(1).values.diff(dim=1) > 0).all()         # no latent twice


def test_topk_rows_small_rows_and_k_equal_m():
    z = torch.randn(5, 20)
    v, i = kernels.topk_rows(z, torch.zeros(20), 20)
    torch.testing.assert_close(v.sort(1).values, z.sort(1).values)


def test_decode_gather_dot_scatter_match_the_fallbacks():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(M, D, generator=g)
    idx = torch.randint(0, M, (B, 5), generator=g)
    v = torch.randn(B, 5, generator=g)
    v[0, 0] = 0.0
    u = torch.randn(B, D, generator=g)
    torch.testing.assert_close(kernels.decode(v, idx, w), torch_only(kernels.decode, v, idx, w))
    torch.testing.assert_close(kernels.gather_dot(u, idx, w),
                               torch_only(kernels.gather_dot, u, idx, w))
    torch.testing.assert_close(kernels.scatter_rows(torch.zeros(M, D), idx, v, u),
                               torch_only(kernels.scatter_rows, torch.zeros(M, D), idx, v, u))
    shift = torch.randn(D, generator=g)
    torch.testing.assert_close(kernels.scatter_rows(torch.zeros(M, D), idx, v, u, shift=shift),
                               kernels.scatter_rows(torch.zeros(M, D), idx, v, u - shift))
    # the dense products they stand for
    dense = torch.zeros(B, M).scatter_add(1, idx, v)
    torch.testing.assert_close(kernels.decode(v, idx, w), dense @ w)
    torch.testing.assert_close(kernels.scatter_rows(torch.zeros(M, D), idx, v, u), dense.T @ u)


def test_hierarchical_loss_and_gradients_match_autograd():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(M, D, generator=g)
    x0 = torch.randn(B, D, generator=g)
    v = torch.rand(B, 6, generator=g).sort(1, descending=True).values
    idx = torch.randint(0, M, (B, 6), generator=g)
    ours = kernels.hierarchical(x0, v, idx, w)
    ref = torch_only(kernels.hierarchical, x0, v, idx, w)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kernels.hierarchical(x0, v, idx, w, grads=False), ref[0],
                               rtol=1e-5, atol=1e-4)


ARCHS = [("ksparse", {}), ("ksparse", {"tied": True}), ("topk", {}), ("batchtopk", {}),
         ("matryoshka", {"prefixes": (8, 24, M)}), ("hierarchical_topk", {})]


@pytest.mark.parametrize("arch,extra", ARCHS)
def test_sparse_path_equals_dense_reference(arch, extra):
    """Loss terms and every parameter's gradient, AuxK on dead latents included."""
    cfg = SAEConfig(d_in=D, d_sae=M, arch=arch, k=5, k_aux=7, seed=3, tied_init=False, **extra)
    sparse = SparseAutoencoder(cfg)
    with torch.no_grad():
        sparse.b_dec.normal_()
        sparse.b_enc.normal_(std=0.1)
    dense = copy.deepcopy(sparse)
    dense.sparse_kernels = False
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, D, generator=g) * 2
    dead = torch.rand(M, generator=g) < 0.5
    sparse.train(), dense.train()
    results = []
    for sae in (sparse, dense):
        xg = x.clone().requires_grad_()
        total, out, terms = sae.loss(xg, step=0, dead=dead)
        total.backward()
        results.append((float(total), terms, out.dense().detach(), xg.grad,
                        {n: p.grad.clone() for n, p in sae.named_parameters()}))
    (ls, ts, acts_s, gx_s, grads_s), (ld, td, acts_d, gx_d, grads_d) = results
    assert ts.keys() == td.keys()
    assert ls == pytest.approx(ld, rel=1e-5)
    torch.testing.assert_close(acts_s, acts_d)
    torch.testing.assert_close(gx_s, gx_d, rtol=1e-4, atol=1e-5)
    assert grads_s.keys() == grads_d.keys()
    for name in grads_s:
        torch.testing.assert_close(grads_s[name], grads_d[name], rtol=1e-4, atol=1e-5,
                                   msg=f"{arch}: gradient of {name}")


def test_forward_at_k_and_eval_mode_match_the_reference():
    cfg = SAEConfig(d_in=D, d_sae=M, arch="hierarchical_topk", k=8, seed=5)
    sparse = SparseAutoencoder(cfg).eval()
    dense = copy.deepcopy(sparse)
    dense.sparse_kernels = False
    x = torch.randn(B, D)
    torch.testing.assert_close(sparse(x).x_hat, dense(x).x_hat)
    for k in (1, 3, 8):
        torch.testing.assert_close(sparse.forward_at_k(x, k).x_hat, dense.forward_at_k(x, k).x_hat)
        torch.testing.assert_close(sparse.forward_at_k(x, k).dense(),
                                   dense.forward_at_k(x, k).dense())


def test_bfloat16_encoder_product_selects_nearly_the_same_latents():
    cfg = SAEConfig(d_in=D, d_sae=M, arch="topk", k=5, seed=6)
    fp32 = SparseAutoencoder(cfg)
    bf16 = copy.deepcopy(fp32)
    bf16.encoder_dtype = torch.bfloat16
    x = torch.randn(200, D)
    a, b = fp32(x), bf16(x)
    same = (a.dense() != 0) == (b.dense() != 0)
    assert same.float().mean() > 0.98
    fvu = lambda o: float((o.x_hat - x).square().sum() / (x - x.mean(0)).square().sum())  # noqa: E731
    assert abs(fvu(a) - fvu(b)) < 0.02
    _, out, _ = bf16.loss(x)
    assert out.x_hat.dtype == torch.float32


@pytest.mark.slow
def test_portable_build_without_avx512_gives_the_same_topk():
    """The kernels' non-AVX512 branch (other CPUs) compiled here and held to torch.topk."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the AVX512 branch exists on x86 only")
    portable = kernels.build(("-mno-avx512f",))
    z = torch.randn(100, 700)
    bias = torch.randn(700)
    v, i = portable.topk_rows(z, bias, 20)
    torch.testing.assert_close(v.sort(1, descending=True).values, (z + bias).topk(20).values)
    torch.testing.assert_close((z + bias).gather(1, i), v)


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_sae_adam_equals_torch_adam_with_projection_and_renorm(arch):
    """SAEAdam (fused kernel, and its torch fallback) takes the same steps as torch's Adam
    between remove_parallel_grad and normalize_decoder, over several steps."""
    from interp.sae.trainer import SAEAdam

    cfg = SAEConfig(d_in=D, d_sae=M, arch=arch, k=4)
    x = torch.randn(B, D)
    saes = [SparseAutoencoder(cfg) for _ in range(3)]
    for s in saes[1:]:
        s.load_state_dict(saes[0].state_dict())
    reference = torch.optim.Adam(saes[0].parameters(), lr=1e-2, betas=(0.9, 0.999))
    fused, fallback = (SAEAdam(s, lr=1e-2, betas=(0.9, 0.999)) for s in saes[1:])
    for _ in range(4):
        for s, opt in zip(saes, (reference, fused, fallback)):
            opt.zero_grad()
            s.loss(x)[0].backward()
            if opt is reference:
                s.remove_parallel_grad()
                opt.step()
                s.normalize_decoder()
            elif opt is fused:
                opt.step()
            else:
                torch_only(opt.step)
    for s in saes[1:]:
        for (name, a), b in zip(saes[0].named_parameters(), s.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    if arch == "topk":
        norms = saes[1].W_dec.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
    # checkpoints interchange with torch's Adam
    reference.load_state_dict(fused.state_dict())
