"""Logit effects of SAE latents: which tokens each latent's decoder row promotes and suppresses.

A latent's output direction (d_model,) is its decoder row mapped into the residual stream:
as it is for a residual-stream hook, through the layer's ``W_out`` (d_mlp, d_model) for
``mlp.hook_post``, through ``W_O`` (n_heads * d_head, d_model) for ``attn.hook_z``; then
through ln_final's centring and gain (its 1/rms scale ignored). Its logit effect is that
direction through the unembedding: ``D @ W_U`` (d_sae, d_vocab), of which only the top and
bottom ``m`` tokens of each latent are kept, computed in chunks of latents.
"""
from __future__ import annotations

import numpy as np
import torch

from interp.hooks import layer_of


def output_directions(sae, model, hook: str) -> torch.Tensor | None:
    """(d_sae, d_model): each decoder row as the residual-stream direction it writes,
    through ln_final's centering and gain (its 1/rms scale ignored); None when the hook's
    units do not map to the residual stream linearly."""
    directions = sae.W_dec.detach().float().cpu()  # (d_sae, d_in)
    d_model = model.cfg.d_model
    layer = layer_of(hook)
    if hook.endswith("mlp.hook_post") and layer is not None \
            and directions.shape[1] == model.cfg.d_mlp:
        directions = directions @ model.blocks[layer].mlp.W_out.detach().float().cpu()
    elif hook.endswith("attn.hook_z") and layer is not None:
        W_O = model.blocks[layer].attn.W_O.detach().float().cpu()  # (H, dh, d_model)
        if directions.shape[1] != W_O.shape[0] * W_O.shape[1]:
            return None
        directions = directions @ W_O.reshape(-1, d_model)
    elif directions.shape[1] != d_model:
        return None
    if not hook.startswith("ln_final"):
        norm = getattr(model.cfg, "normalization_type", None)
        if norm in ("LN", "LNPre"):
            directions = directions - directions.mean(1, keepdim=True)
        if norm in ("LN", "RMS") and hasattr(model, "ln_final") and hasattr(model.ln_final, "w"):
            directions = directions * model.ln_final.w.detach().float().cpu()
    return directions


def logit_effects(sae, model, hook: str, m: int, chunk: int = 1024
                  ) -> dict[str, np.ndarray] | None:
    """Top ``m`` boosted and suppressed tokens of every latent: ``(D @ W_U)`` in chunks of
    latents, never the whole (d_sae, d_vocab) product at once. Returns ``pos_ids``,
    ``pos_values``, ``neg_ids``, ``neg_values``, each (d_sae, m); None when the hook's units
    do not map to the residual stream (see :func:`output_directions`)."""
    directions = output_directions(sae, model, hook)
    if directions is None:
        return None
    W_U = model.W_U.detach().float().cpu()  # (d_model, d_vocab)
    m = min(m, W_U.shape[1])
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("pos_ids", "pos_values",
                                                            "neg_ids", "neg_values")}
    for start in range(0, directions.shape[0], chunk):
        effects = directions[start:start + chunk] @ W_U
        top = effects.topk(m, dim=1)
        bottom = effects.topk(m, dim=1, largest=False)
        parts["pos_ids"].append(top.indices)
        parts["pos_values"].append(top.values)
        parts["neg_ids"].append(bottom.indices)
        parts["neg_values"].append(bottom.values)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}
