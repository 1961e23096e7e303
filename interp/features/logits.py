"""Logit effects of SAE latents: which tokens each latent's decoder row promotes and suppresses.

A latent's residual direction (d_model,) is its decoder row mapped into the residual stream
(:func:`residual_directions`) from the hook the dictionary writes (an SAE's own hook; a
transcoder's output hook, e.g. ``hook_mlp_out``): as it is for a residual-stream hook,
through the layer's ``W_out`` (d_mlp, d_model) for ``mlp.hook_post``, through ``W_O``
(n_heads * d_head, d_model) for ``attn.hook_z``; other hooks have none (no logit effects).
Its output direction is that through
ln_final's centring and gain (its 1/rms scale ignored); its logit effect is the output
direction through the unembedding: ``D @ W_U`` (d_sae, d_vocab), of which only the top and
bottom ``m`` tokens of each latent are kept, computed in chunks of latents.
"""
from __future__ import annotations

import numpy as np
import torch

from interp.errors import DataError
from interp.hooks import is_residual_stream, layer_of


def residual_directions(sae, model, hook: str | None = None) -> torch.Tensor:
    """(d_sae, d_model): each decoder row as the residual-stream direction it writes, from
    the hook the dictionary writes (an SAE's own: ``hook``, else its metadata
    ``hook_name``; a transcoder's output hook from its metadata). The one place a decoder
    row becomes a residual-stream direction:

    - a residual-stream hook (``interp.hooks.is_residual_stream``: resid_pre/mid/post,
      attn_out, mlp_out, the embeddings; so a transcoder writing ``hook_mlp_out``) or
      ``ln_final.hook_normalized``: the row itself;
    - ``mlp.hook_post``: the row through the layer's ``W_out`` (d_mlp, d_model);
    - ``attn.hook_z`` (heads concatenated, as ``flat_units`` lays them out): the row as
      (n_heads, d_head) blocks, each through its head's ``W_O[h]`` (d_head, d_model), summed.

    Refused (:class:`DataError`, one line) for any other hook: its units reach the residual
    stream through something nonlinear or not at all (q/k/v, patterns, LayerNorm inputs)."""
    from interp.sae.evaluate import written_hook

    hook = written_hook(sae) if sae.cfg.transcoder or not hook else hook
    directions = sae.W_dec.detach().float().cpu()  # (d_sae, d_out)
    d_model, width = model.cfg.d_model, directions.shape[1]
    layer = layer_of(hook or "")
    W = None  # (width, d_model) the linear map into the residual stream; None: identity
    if hook and (is_residual_stream(hook) or hook == "ln_final.hook_normalized"):
        expected = d_model
    elif hook and hook.endswith("mlp.hook_post") and layer is not None:
        expected, W = model.cfg.d_mlp, model.blocks[layer].mlp.W_out  # (d_mlp, d_model)
    elif hook and hook.endswith("attn.hook_z") and layer is not None:
        W_O = model.blocks[layer].attn.W_O  # (n_heads, d_head, d_model)
        # sum over heads of row[h] @ W_O[h] is one product with the heads stacked in order
        expected, W = W_O.shape[0] * W_O.shape[1], W_O.reshape(-1, d_model)
    else:
        raise DataError(f"the decoder of {hook or 'a dictionary without a hook'} has no "
                        f"residual-stream direction: residual directions are defined for "
                        f"residual-stream hooks (resid_pre/mid/post, attn_out, mlp_out), "
                        f"mlp.hook_post (through W_out) and attn.hook_z (through W_O)")
    if width != expected:
        raise DataError(f"the decoder writes {width}-wide rows, but {hook} of the model is "
                        f"{expected} wide")
    return directions if W is None else directions @ W.detach().float().cpu()


def output_directions(sae, model, hook: str) -> torch.Tensor | None:
    """(d_sae, d_model): each latent's residual direction (:func:`residual_directions`)
    through ln_final's centering and gain (its 1/rms scale ignored); None when the written
    hook's units do not map to the residual stream linearly (a feature store then has no
    logit effects)."""
    try:
        directions = residual_directions(sae, model, hook)
    except DataError:
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
