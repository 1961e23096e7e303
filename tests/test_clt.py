"""Cross-layer transcoders: the joint forward and loss against a slow per-pair reference,
gradients of the sparse path against dense autograd, saving, training end to end."""
import json

import pytest
import torch

from interp.errors import DataError
from interp.sae.clt import CLTConfig, CrossLayerTranscoder, load_clt, save_clt
from interp.sae.core import SAEConfig

N, D, D_OUT, M = 3, 12, 10, 40
CLT_ARCHS = ["topk", "batchtopk", "relu", "jumprelu", "matryoshka", "hierarchical_topk",
             "ksparse"]


def make(arch, sparse_kernels=True, seed=0):
    opts = {"prefixes": (10, 20, M)} if arch == "matryoshka" else {}
    cfg = CLTConfig(SAEConfig(d_in=D, d_sae=M, arch=arch, k=4, seed=seed, **opts),
                    layers=(1, 2, 4), d_out=D_OUT)
    clt = CrossLayerTranscoder(cfg, sparse_kernels=sparse_kernels)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in clt.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return clt


def xy(rows=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, N, D, generator=g), torch.randn(rows, N, D_OUT, generator=g)


def reference_output(clt, x):
    """y_hat_t = sum_{s <= t} act_s(x_s) @ W_dec[s -> t] + sum_s b_dec[s -> t], pair by pair."""
    y = torch.zeros(x.shape[0], N, D_OUT)
    for s, enc in enumerate(clt.encoders):
        acts = enc(x[:, s]).dense()
        blocks = clt.decoder_blocks(s)
        bias = enc.b_dec.reshape(N - s, D_OUT)
        for j in range(N - s):
            y[:, s + j] += acts @ blocks[:, j] + bias[j]
    return y


@pytest.mark.parametrize("arch", CLT_ARCHS)
def test_forward_is_the_sum_over_source_layers(arch):
    clt = make(arch)
    x, _ = xy()
    clt.train()(x)  # batch top-k: an inference threshold
    clt.eval()
    with torch.no_grad():
        torch.testing.assert_close(clt(x).x_hat, reference_output(clt, x), atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize("arch", CLT_ARCHS)
def test_sparse_path_gradients_equal_dense_autograd(arch):
    x, y = xy()
    results = []
    for sparse in (True, False):
        clt = make(arch, sparse_kernels=sparse).train()
        dead = torch.zeros(N * M, dtype=torch.bool)
        dead[::3] = True
        loss, out, terms = clt.loss(x, dead=dead, y=y,
                                    generator=torch.Generator().manual_seed(0))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in clt.named_parameters()
                                        if p.grad is not None}))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, atol=1e-4, rtol=1e-4)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], atol=1e-4, rtol=1e-4, msg=name)


def test_loss_is_the_per_layer_sum_of_squared_errors():
    clt = make("topk").train()
    x, y = xy()
    loss, out, terms = clt.loss(x, y=y)
    by_hand = sum(((out.x_hat[:, t] - y[:, t]) ** 2).sum(1).mean() for t in range(N))
    torch.testing.assert_close(loss, by_hand)
    assert out.l0().float().mean() == 4 * N


def test_hierarchical_loss_averages_every_k_prime():
    clt = make("hierarchical_topk", sparse_kernels=False).train()
    x, y = xy()
    loss, out, _ = clt.loss(x, y=y)
    errs = []
    for kp in range(1, 5):
        y_hat = torch.zeros_like(y)
        for s, (enc, o) in enumerate(zip(clt.encoders, out.outs)):
            part = enc.decode_sparse(o.values[:, :kp], o.indices[:, :kp])
            y_hat[:, s:] += part.reshape(-1, N - s, D_OUT)
        errs.append(((y_hat - y) ** 2).sum((1, 2)).mean())
    torch.testing.assert_close(loss, torch.stack(errs).mean())


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_save_load_round_trip_on_raw_activations(arch, tmp_path):
    clt = make(arch)
    x, y = xy()
    clt.train()(x * 0.5)
    clt.activation_scale.copy_(torch.tensor([[0.5], [0.7], [1.3]]))
    clt.activation_scale_out.copy_(torch.tensor([[2.0], [0.4], [1.1]]))
    clt.eval()
    with torch.no_grad():
        ref = clt(x * clt.activation_scale).x_hat / clt.activation_scale_out
        save_clt(clt, tmp_path / "clt", metadata={"model_name": "othello"})
        back = load_clt(tmp_path / "clt")
        torch.testing.assert_close(back(x).x_hat, ref, atol=1e-5, rtol=1e-5)
    raw = json.loads((tmp_path / "clt" / "cfg.json").read_text())
    assert raw["architecture"] == "interp_clt" and raw["layers"] == [1, 2, 4]
    assert raw["model_name"] == "othello"


def test_bad_configs_and_shapes():
    with pytest.raises(DataError, match="ascending"):
        CLTConfig(SAEConfig(d_in=D, d_sae=M), layers=(2, 1), d_out=D).validate()
    with pytest.raises(DataError, match="skip"):
        CLTConfig(SAEConfig(d_in=D, d_sae=M, skip=True), layers=(1,), d_out=D).validate()
    clt = make("topk")
    with pytest.raises(DataError, match="reads"):
        clt(torch.randn(4, N + 1, D))
    with pytest.raises(DataError, match="writes"):
        clt.loss(torch.randn(4, N, D), y=torch.randn(4, N, D_OUT + 1))
