"""Reconstruction metrics of an SAE on stored activations: MSE, FVU, L0, dead/dense latents."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from interp.sae.core import SparseAutoencoder

DENSE_FREQUENCY = 0.1  # a latent active on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[torch.Tensor],
                           scale: float = 1.0, k: int | None = None) -> dict:
    """Metrics over ``batches`` of raw activations (multiplied by ``scale`` on the way in).

    FVU is sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over all rows; ``k`` evaluates a
    top-k SAE at k' = k (HierarchicalTopK's any-k inference). Returns floats and the
    per-latent firing frequency (``density``, a list).
    """
    was = sae.training
    sae.eval()
    n, sq_err, l0 = 0, 0.0, 0.0
    sum_x = sum_x2 = None
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    try:
        for x in batches:
            x = x.float() * scale
            out = sae.forward_at_k(x, k) if k is not None else sae(x)
            sq_err += float((out.x_hat - x).double().square().sum())
            xs = x.double()
            sum_x = xs.sum(0) if sum_x is None else sum_x + xs.sum(0)
            sum_x2 = float(xs.square().sum()) + (0.0 if sum_x2 is None else sum_x2)
            l0 += float(out.l0().sum())
            if out.acts is not None:
                fired += (out.acts != 0).sum(0).double()
            else:
                active = out.values != 0
                fired.index_add_(0, out.indices[active], torch.ones(int(active.sum()),
                                                                    dtype=torch.float64))
            n += x.shape[0]
    finally:
        sae.train(was)
    if n == 0:
        raise ValueError("no rows to evaluate on")
    total_var = sum_x2 - float(sum_x.square().sum()) / n
    density = fired / n
    return {"mse": sq_err / n, "fvu": sq_err / max(total_var, 1e-12), "l0": l0 / n,
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > DENSE_FREQUENCY).double().mean()),
            "n_tokens": n, "density": density.tolist()}
