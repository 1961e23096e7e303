"""The model on one prompt with attention patterns and normalisation scales frozen: a linear
map from the residual-stream writes (token embeddings, MLP outputs, attention ``hook_z``
where it is replaced) to every read (a transcoder's input, an attention SAE's input, the
attention's input, the unembedding's input), and its transpose.

Frozen means: every ``attn.hook_pattern`` and every ``hook_scale`` keep the values they had
on the prompt. Then LayerNorm is ``x -> centre(x) / s * w + b`` with ``s`` a constant,
attention is ``x -> sum_h P_h (LN1(x) W_V,h + b_V,h) W_O,h + b_O`` with ``P_h`` a constant,
and an MLP that is replaced by a dictionary contributes constants (its features and error
are nodes) plus a skip transcoder's ``x_in W_skip``. What is left between nodes is linear
(up to constants), and ``backward`` applies its transpose to a batch of read directions at
once: that is how attribution-graph edges are computed (circuit-tracer does the same by
autograd through the model; the explicit transpose is faster, needs no copy of the
forward pass per batch, and holds no (batch, heads, T, T) tensor: the patterns are stored
once, as the model's own forward pass holds them).

``tests/test_graphs.py`` checks this transpose against autograd through TransformerLens
with the same freezes, and every edge against an intervention in the model itself.

Sites (the names ``backward`` takes and returns):
- reads: ``blocks.L.ln2.hook_normalized`` (a transcoder's input), ``blocks.L.attn.hook_z``
  (an attention SAE's input, heads flattened), ``blocks.L.attn.input`` (the attention's
  input after LN1: where a query or key reads), ``unembed.input`` (after the final LN);
- writes: ``hook_embed``, ``blocks.L.hook_mlp_out``, ``blocks.L.attn.hook_z`` when replaced.
"""
from __future__ import annotations

import torch

from interp.errors import DataError

UNEMBED_INPUT = "unembed.input"


def attn_input(layer: int) -> str:
    return f"blocks.{layer}.attn.input"


def mlp_read(layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_normalized"


def mlp_write(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def z_site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _layer(site: str) -> int:
    return int(site.split(".")[1])


def check_architecture(model) -> None:
    """Refuse, in one line naming the family, what ``FrozenTransformer`` does not model."""
    cfg = model.cfg
    family = cfg.original_architecture or cfg.model_name
    unsupported = [
        (cfg.attn_only, "attention-only models have no MLP to replace"),
        (cfg.use_normalization_before_and_after, "normalisation after attention and MLP "
                                                 "(Gemma-2/3 style)"),
        (cfg.use_attn_in or cfg.use_split_qkv_input, "per-head attention inputs "
                                                     "(use_attn_in / use_split_qkv_input)"),
        (cfg.normalization_type not in (None, "LN", "LNPre", "RMS", "RMSPre"),
         f"normalization_type {cfg.normalization_type!r}"),
        (cfg.positional_embedding_type not in ("standard", "rotary"),
         f"positional embeddings {cfg.positional_embedding_type!r}"),
    ]
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES

    unsupported.append((cfg.original_architecture in POST_NORM_ARCHITECTURES,
                        "post-norm blocks"))
    for bad, why in unsupported:
        if bad and why:
            raise DataError(f"attribution graphs do not support {family}: {why}; supported: "
                            f"pre-norm transformers (GPT-2, GPT-NeoX/Pythia, Llama, Qwen2, "
                            f"Mistral and the embedded models)")


class _Norm:
    """A frozen LayerNorm/RMSNorm: its scale per position and weight."""

    def __init__(self, module, scale: torch.Tensor | None, kind: str | None):
        self.centre = kind in ("LN", "LNPre")
        self.scale = scale                       # (T, 1), None without normalisation
        self.w = getattr(module, "w", None)      # (d,), None for the Pre variants
        self.w = None if self.w is None else self.w.detach()

    def back_from_normalized(self, g: torch.Tensor) -> torch.Tensor:
        """Transpose of ``x -> centre(x) / s`` (to hook_normalized)."""
        if self.scale is None:
            return g
        g = g / self.scale[: g.shape[1]]
        return g - g.mean(-1, keepdim=True) if self.centre else g

    def back_from_output(self, g: torch.Tensor) -> torch.Tensor:
        """Transpose of ``x -> centre(x) / s * w + b`` (to the module's output)."""
        return self.back_from_normalized(g if self.w is None else g * self.w)


class FrozenTransformer:
    """A TransformerLens model frozen on one prompt (see the module docstring).

    ``cache`` holds the prompt's ``hook_pattern`` and ``hook_scale`` values, batch 1, as
    ``run_with_cache`` returns them; ``FrozenTransformer.cache_names`` says which."""

    def __init__(self, model, cache):
        check_architecture(model)
        self.model = model
        cfg = model.cfg
        self.n_layers, self.parallel = cfg.n_layers, cfg.parallel_attn_mlp
        kind = cfg.normalization_type

        def norm(module, name):
            return _Norm(module, cache[name][0] if name in cache else None, kind)

        self.ln1 = [norm(b.ln1, f"blocks.{i}.ln1.hook_scale") for i, b in enumerate(model.blocks)]
        self.ln2 = [norm(b.ln2, f"blocks.{i}.ln2.hook_scale") for i, b in enumerate(model.blocks)]
        self.ln_final = norm(model.ln_final, "ln_final.hook_scale")
        self.patterns = [cache[f"blocks.{i}.attn.hook_pattern"][0]  # (H, T, T)
                         for i in range(self.n_layers)]
        # W_V (H, d, dh) and W_O (H, dh, d), grouped-query heads expanded
        self.W_V = [b.attn.W_V.detach() for b in model.blocks]
        self.W_O = [b.attn.W_O.detach() for b in model.blocks]

    @staticmethod
    def cache_names(model) -> list[str]:
        names = ["ln_final.hook_scale"]
        for i in range(model.cfg.n_layers):
            names += [f"blocks.{i}.ln1.hook_scale", f"blocks.{i}.ln2.hook_scale",
                      f"blocks.{i}.attn.hook_pattern"]
        return [n for n in names if n in model.hook_dict]

    def _attention_back(self, layer: int, g_z: torch.Tensor) -> torch.Tensor:
        """Transpose of ``attention input (after LN1) -> hook_z``: g_z (B, T, H, dh) to
        (B, T, d). Per head, g_v = P^T g_z: one (T, T) @ (T, B*dh) product per head."""
        b, t, h, dh = g_z.shape
        p = self.patterns[layer][:, :t, :t]                          # (H, Tq, Tk)
        g_zh = g_z.permute(2, 1, 0, 3).reshape(h, t, b * dh)         # (H, Tq, B*dh)
        g_v = torch.bmm(p.transpose(1, 2), g_zh).reshape(h, t, b, dh)
        return torch.einsum("htbe,hde->btd", g_v, self.W_V[layer])

    def backward(self, reads: dict[str, torch.Tensor], writes: set[str],
                 skips: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Transpose of the frozen map from the sites in ``writes`` (plus ``hook_embed``) to
        the reads: ``reads[site]`` is a (B, T', d_site) batch of directions at that read
        (T' <= T: later positions cannot affect earlier ones, so they are left out). Returns
        the (B, T', d_site) gradient at each write site, ``hook_embed`` included; a site
        above the highest read is left out (its gradient is zero).

        Every ``blocks.L.hook_mlp_out`` must be in ``writes`` (an MLP left in place is not
        linear); a ``blocks.L.attn.hook_z`` in ``writes`` is replaced (its gradient stops
        there). ``skips[L]`` is layer L's skip-transcoder matrix (d, d): its output follows
        its input, ``x_in W_skip``, as the residual stream does."""
        skips = skips or {}
        missing = [mlp_write(i) for i in range(self.n_layers) if mlp_write(i) not in writes]
        if missing:
            raise DataError(f"an attribution graph needs every MLP replaced by a transcoder; "
                            f"not replaced: {', '.join(missing)}")
        some = next(iter(reads.values()))
        b, t = some.shape[:2]
        g = torch.zeros(b, t, self.model.cfg.d_model, dtype=some.dtype, device=some.device)
        top = self.n_layers - 1
        if UNEMBED_INPUT in reads:
            g = g + self.ln_final.back_from_output(reads[UNEMBED_INPUT])
        else:  # nothing above the highest read: the gradient there is zero, not computed
            top = max(_layer(site) for site in reads)
        out: dict[str, torch.Tensor] = {}
        for layer in reversed(range(top + 1)):
            # g: d/d resid_post of this layer
            out[mlp_write(layer)] = g
            g_mlp_in = reads.get(mlp_read(layer))
            if layer in skips:
                via_skip = g @ skips[layer].T
                g_mlp_in = via_skip if g_mlp_in is None else g_mlp_in + via_skip
            g_from_mlp = (None if g_mlp_in is None
                          else self.ln2[layer].back_from_normalized(g_mlp_in))
            if g_from_mlp is not None and not self.parallel:
                g = g + g_from_mlp                                   # d/d resid_mid
            g_attn_in = self._attention_to_input(layer, g, reads, writes, out)
            g = g + self.ln1[layer].back_from_output(g_attn_in) if g_attn_in is not None else g
            if g_from_mlp is not None and self.parallel:
                g = g + g_from_mlp                                   # both read resid_pre
        out["hook_embed"] = g
        return out

    def _attention_to_input(self, layer: int, g_out: torch.Tensor, reads: dict, writes: set,
                            out: dict) -> torch.Tensor | None:
        """The gradient at the attention's input (after LN1) from ``g_out`` at its output,
        from directions read at its ``hook_z`` and at its input; records the gradient at a
        replaced ``hook_z``."""
        w_o = self.W_O[layer]                                        # (H, dh, d)
        h, dh = w_o.shape[:2]
        g_z = torch.einsum("btd,hed->bthe", g_out, w_o)              # (B, T, H, dh)
        z = z_site(layer)
        read_z = reads[z].reshape(g_z.shape) if z in reads else None
        if z in writes:  # replaced: only what reads hook_z itself goes on through it
            out[z] = g_z.reshape(*g_z.shape[:2], h * dh)
            g_z = read_z
        elif read_z is not None:
            g_z = g_z + read_z
        g_in = None if g_z is None else self._attention_back(layer, g_z)
        direct = reads.get(attn_input(layer))
        if direct is not None:
            g_in = direct if g_in is None else g_in + direct
        return g_in
