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

Gemma-2's norms after each sublayer are frozen the same way: the attention's output goes
through ``x -> x / s * w`` (``ln1_post``) before the residual stream; the MLP's is inside
what its transcoder writes (``hook_mlp_out`` is after ``ln2_post``). Its logit soft cap is
not linear: graphs trace the logits before the cap (``uncapped_logits``), which keeps their
order, and the interventions that check them read the same.

``tests/test_graphs.py`` checks this transpose against autograd through TransformerLens
with the same freezes, and every edge against an intervention in the model itself.

Sites (the names ``backward`` takes and returns):
- reads: ``blocks.L.ln2.hook_normalized`` (a transcoder's input), ``blocks.L.attn.hook_z``
  (an attention SAE's input, heads flattened), ``blocks.L.attn.input`` (the attention's
  input after LN1: where a query or key reads), ``unembed.input`` (after the final LN);
- writes: ``hook_embed``, ``blocks.L.hook_mlp_out``, ``blocks.L.attn.hook_z`` when replaced.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

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


FINAL_NORMALIZED = "ln_final.hook_normalized"


def capped(model) -> bool:
    """Whether the model soft-caps its logits (Gemma-2: ``cap * tanh(x / cap)``) after a
    final norm (the pre-cap logits are read there)."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    return (softcap_enabled(model.cfg.output_logits_soft_cap)
            and FINAL_NORMALIZED in model.hook_dict)


def uncapped_logits(model, normalized: torch.Tensor) -> torch.Tensor:
    """The logits before a soft cap, from the final norm's ``hook_normalized`` (after its
    scale, which a frozen run holds fixed; pass only the positions wanted: the unembedding
    is the widest product): what the unembedding's input reads, so what a graph traces (a
    monotone cap keeps their order). Inverting the cap from the capped logits would lose
    precision near it."""
    ln = model.ln_final
    x = normalized * ln.w if getattr(ln, "w", None) is not None else normalized
    x = x + ln.b if getattr(ln, "b", None) is not None else x
    return model.unembed(x)


def capped_logits(model, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` through the model's soft cap, if it has one (the model's own output)."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def check_architecture(model) -> None:
    """Refuse, in one line naming the family, what ``FrozenTransformer`` does not model."""
    cfg = model.cfg
    family = cfg.original_architecture or cfg.model_name
    unsupported = [
        (cfg.attn_only, "attention-only models have no MLP to replace"),
        (cfg.use_normalization_before_and_after
         and not str(cfg.normalization_type).startswith("RMS"),
         "LayerNorm after attention and MLP"),
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
                            f"Mistral, Gemma-2 and the embedded models)")


class Reads(NamedTuple):
    """Directions read at one site by some rows of a batch: row ``rows[i]`` reads
    ``vecs[i]`` at position ``pos[i]`` (a row may read several, at several sites)."""

    rows: torch.Tensor   # (n,) long
    pos: torch.Tensor    # (n,) long
    vecs: torch.Tensor   # (n, d_site)

    @staticmethod
    def cat(parts: list["Reads"]) -> "Reads":
        if len(parts) == 1:
            return parts[0]
        return Reads(*(torch.cat([getattr(p, f) for p in parts]) for f in Reads._fields))


class _Norm:
    """A frozen LayerNorm/RMSNorm: its scale per position and weight."""

    def __init__(self, module, scale: torch.Tensor | None, kind: str | None):
        self.centre = kind in ("LN", "LNPre")
        self.scale = scale                       # (T, 1), None without normalisation
        self.w = getattr(module, "w", None)      # (d,), None for the Pre variants
        self.w = None if self.w is None else self.w.detach()

    def back_from_normalized(self, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Transpose of ``x -> centre(x) / s`` (to hook_normalized) on vectors ``v`` (n, d)
        at positions ``pos`` (n,)."""
        if self.scale is None:
            return v
        v = v / self.scale[pos]
        return v - v.mean(-1, keepdim=True) if self.centre else v

    def back_from_output(self, v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Transpose of ``x -> centre(x) / s * w + b`` (to the module's output)."""
        return self.back_from_normalized(v if self.w is None else v * self.w, pos)

    def centre_right(self, m: torch.Tensor) -> torch.Tensor:
        """``m`` (..., d) times the centring (symmetric, on the last axis): ``g @
        centre_right(m)`` is ``back_from_normalized(g @ m)`` up to the division by the
        position's scale."""
        return m - m.mean(-1, keepdim=True) if self.scale is not None and self.centre else m

    def fold_right(self, m: torch.Tensor) -> torch.Tensor:
        """The same for ``back_from_output`` (``* w``, then centring)."""
        return self.centre_right(m if self.w is None else m * self.w)

    def inverse_scale(self, t: int) -> torch.Tensor | None:
        """(t, 1, 1): one over each position's scale, None without normalisation."""
        return None if self.scale is None else (1 / self.scale[:t])[:, :, None]


CAUSAL_MIN = 256   # _causal_mm splits products of at least this many positions


def _causal_mm(mix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mix @ x`` for ``mix`` (t, t) zero below the diagonal (a causal pattern,
    transposed): row k only needs x's rows k..t-1, so a block of rows starting at k0 is
    one product with ``x[k0:]`` (blocks of t / 8 rows: about 30% less time than the dense
    product on long prompts). The zeros skipped are exact (masked scores give exactly zero
    probability)."""
    t = mix.shape[0]
    if t < CAUSAL_MIN:
        return mix @ x
    out = torch.empty(t, x.shape[1], dtype=x.dtype, device=x.device)
    step = max(64, t // 8)
    for k0 in range(0, t, step):
        k1 = min(k0 + step, t)
        torch.mm(mix[k0:k1, k0:], x[k0:], out=out[k0:k1])
    return out


def _scatter_add(g: torch.Tensor, reads: Reads, vecs: torch.Tensor) -> None:
    """g[pos, row] += vecs (g: (T, B, d)), in place; repeated (pos, row) pairs add up."""
    g.index_put_((reads.pos, reads.rows), vecs, accumulate=True)


class FrozenTransformer:
    """A TransformerLens model frozen on one prompt (see the module docstring).

    ``cache`` holds the prompt's ``hook_pattern`` and ``hook_scale`` values, batch 1, as
    ``run_with_cache`` returns them; ``FrozenTransformer.cache_names`` says which.

    Gradients are held position-major, (T, B, d): each head's value and output
    projections are then one GEMM over (T*B, d) and its pattern one (T, T) @ (T, B*dh)
    product, with no permuted copy. LN1's transpose (``* w``, centring, ``/ s`` per
    position) is folded into them: into the value side ``M_h = W_V,h^T diag(w) C`` and
    into the pattern ``mix_h[k, q] = P_h[q, k] / s[k]``, so it costs no pass over the
    gradient."""

    def __init__(self, model, cache):
        check_architecture(model)
        self.model = model
        cfg = model.cfg
        self.n_layers, self.parallel = cfg.n_layers, cfg.parallel_attn_mlp
        self.d_model = cfg.d_model
        self.causal = cfg.attention_dir == "causal"
        kind = cfg.normalization_type

        def norm(module, name):
            return _Norm(module, cache[name][0] if name in cache else None, kind)

        self.ln1 = [norm(b.ln1, f"blocks.{i}.ln1.hook_scale") for i, b in enumerate(model.blocks)]
        self.ln2 = [norm(b.ln2, f"blocks.{i}.ln2.hook_scale") for i, b in enumerate(model.blocks)]
        self.ln_final = norm(model.ln_final, "ln_final.hook_scale")
        # Gemma-2: an RMSNorm (with its weight) between the attention's output and the
        # residual stream; the MLP's (ln2_post) is inside what a transcoder writes
        self.ln1_post = ([_Norm(b.ln1_post, cache[f"blocks.{i}.ln1_post.hook_scale"][0], "RMS")
                          for i, b in enumerate(model.blocks)]
                         if cfg.use_normalization_before_and_after else None)
        self.patterns = [cache[f"blocks.{i}.attn.hook_pattern"][0]  # (H, T, T)
                         for i in range(self.n_layers)]
        # W_V (H, d, dh) and W_O (H, dh, d), grouped-query heads expanded
        self.W_V = [b.attn.W_V.detach() for b in model.blocks]
        self.W_O = [b.attn.W_O.detach() for b in model.blocks]
        self._folded: dict[int, tuple] = {}

    @staticmethod
    def cache_names(model) -> list[str]:
        names = ["ln_final.hook_scale"]
        for i in range(model.cfg.n_layers):
            names += [f"blocks.{i}.ln1.hook_scale", f"blocks.{i}.ln2.hook_scale",
                      f"blocks.{i}.ln1_post.hook_scale", f"blocks.{i}.ln2_post.hook_scale",
                      f"blocks.{i}.attn.hook_pattern"]
        return [n for n in names if n in model.hook_dict]

    def folded(self, layer: int) -> tuple[torch.Tensor, ...]:
        """(W_O^T (H, d, dh), mix (H, T, T), M (H, dh, d), W_O^T with heads flattened
        (d, H * dh)) of ``layer`` (see the class docstring), computed once."""
        if layer not in self._folded:
            ln1 = self.ln1[layer]
            mix = self.patterns[layer].transpose(1, 2)                  # [h, k, q]
            if ln1.scale is not None:
                mix = mix / ln1.scale[None]                             # / s[k]
            m = ln1.fold_right(self.W_V[layer].transpose(1, 2))         # (H, dh, d)
            w_ot = self.W_O[layer].transpose(1, 2).contiguous()
            self._folded[layer] = (w_ot, mix.contiguous(), m.contiguous(),
                                   w_ot.transpose(0, 1).reshape(self.d_model, -1))
        return self._folded[layer]

    def backward(self, reads: dict[str, Reads], b: int, t: int, writes: set[str],
                 skips: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``backward_iter``'s gradients as one dict."""
        return dict(self.backward_iter(reads, b, t, writes, skips))

    def backward_iter(self, reads: dict[str, Reads], b: int, t: int, writes: set[str],
                      skips: dict[int, torch.Tensor] | None = None
                      ) -> Iterator[tuple[str, torch.Tensor]]:
        """Transpose of the frozen map from the sites in ``writes`` (plus ``hook_embed``) to
        the reads, for a batch of ``b`` rows: ``reads[site]`` says which row reads which
        direction at which position (all positions < t: later positions cannot affect
        earlier ones, so they are left out). Yields (site, (t, b, d_site) gradient) for
        each write site, from the top layer down, ``hook_embed`` last; a site above the
        highest read (or at it, when nothing there can reach it) is left out: its gradient
        is zero. A gradient is not changed after it is yielded; the consumer may drop it
        (a long prompt then holds a few (t, b, d) tensors, not one per site).

        Every ``blocks.L.hook_mlp_out`` must be in ``writes`` (an MLP left in place is not
        linear); a ``blocks.L.attn.hook_z`` in ``writes`` is replaced (its gradient stops
        there). ``skips[L]`` is layer L's skip-transcoder matrix (d, d): its output follows
        its input, ``x_in W_skip``, as the residual stream does."""
        skips = skips or {}
        missing = [mlp_write(i) for i in range(self.n_layers) if mlp_write(i) not in writes]
        if missing:
            raise DataError(f"an attribution graph needs every MLP replaced by a transcoder; "
                            f"not replaced: {', '.join(missing)}")
        some = next(iter(reads.values())).vecs
        shape, like = (t, b, self.d_model), {"dtype": some.dtype, "device": some.device}
        # g: the gradient at resid_post of the current layer; None while it is zero.
        # ``owned``: g is no output (it may be changed in place)
        g: torch.Tensor | None = None
        owned = True
        top = self.n_layers - 1
        if UNEMBED_INPUT in reads:
            r = reads[UNEMBED_INPUT]
            g = torch.zeros(shape, **like)
            _scatter_add(g, r, self.ln_final.back_from_output(r.vecs, r.pos))
        else:  # nothing above the highest read: the gradient there is zero, not computed
            top = max(_layer(site) for site in reads)
        out: dict[str, torch.Tensor] = {}
        for layer in reversed(range(top + 1)):
            if g is not None:
                yield mlp_write(layer), g
                owned = False
            skip = None
            if layer in skips and g is not None:   # centre(g W_skip^T) / s, less the / s
                s_t = self.ln2[layer].centre_right(skips[layer].T)
                skip = (g.reshape(-1, self.d_model) @ s_t).view(shape)
            if self.parallel:   # attention and MLP both read resid_pre
                g_next, owned_next = self._attention_back(layer, g, owned, reads, writes,
                                                          out, t, b)
                g, owned = self._mlp_back(layer, g_next, owned_next, skip, reads, shape)
            else:               # the MLP reads resid_mid, the attention resid_pre
                g, owned = self._mlp_back(layer, g, owned, skip, reads, shape, sparse_ok=True)
                g, owned = self._attention_back(layer, g, owned, reads, writes, out, t, b)
            yield from out.items()   # a replaced hook_z's
            out.clear()
        yield "hook_embed", g if g is not None else torch.zeros(shape, **like)

    def _mlp_back(self, layer: int, g, owned: bool, skip, reads: dict, shape,
                  sparse_ok: bool = False) -> tuple[torch.Tensor | Reads | None, bool]:
        """g plus what the MLP's input (its transcoder's read and skip term) passes back;
        with ``sparse_ok``, where g is zero, the reads alone, as ``Reads`` (at the highest
        read layer: the attention below then needs no dense product of them)."""
        ln2 = self.ln2[layer]
        if skip is not None:
            inv = ln2.inverse_scale(shape[0])
            g = g + skip if inv is None else torch.addcmul(g, skip, inv)
            owned = True
        r = reads.get(mlp_read(layer))
        if r is not None:
            if g is None and sparse_ok:
                return Reads(r.rows, r.pos, ln2.back_from_normalized(r.vecs, r.pos)), True
            if g is None:
                g, owned = torch.zeros(shape, dtype=r.vecs.dtype, device=r.vecs.device), True
            elif not owned:
                g, owned = g.clone(), True
            _scatter_add(g, r, ln2.back_from_normalized(r.vecs, r.pos))
        return g, owned

    def _post_norm_back(self, layer: int, g2, sparse, t: int):
        """(dense (t*b, d), sparse ``Reads``) gradients at the attention's output projection
        from the residual stream's ``g2`` / ``sparse``: the same, or through layer's frozen
        post-attention RMSNorm (``* w / s`` per position)."""
        if self.ln1_post is None:
            return g2, sparse
        post = self.ln1_post[layer]
        if g2 is not None:
            b = g2.shape[0] // t
            g2 = (g2.view(t, b, -1) * (post.w / post.scale[:t, None])).view(t * b, -1)
        if sparse is not None:
            sparse = Reads(sparse.rows, sparse.pos, post.back_from_output(sparse.vecs,
                                                                          sparse.pos))
        return g2, sparse

    def _attention_back(self, layer: int, g, owned: bool, reads: dict, writes: set,
                        out: dict, t: int, b: int) -> tuple[torch.Tensor | None, bool]:
        """g (at the attention's output: (t, b, d), ``Reads`` where it is sparse, or None:
        zero) plus what the attention passes back to its input through LN1, with the
        directions read at its ``hook_z`` and at its input; records the gradient at a
        replaced ``hook_z``."""
        w_ot, mix, m, w_o_flat = self.folded(layer)
        h, dh = w_ot.shape[0], w_ot.shape[2]
        d = self.d_model
        z = z_site(layer)
        replaced = z in writes
        sparse = g if isinstance(g, Reads) else None
        g2 = g.reshape(t * b, d) if isinstance(g, torch.Tensor) else None
        # the attention's output branch: g through a frozen post-norm, where there is one
        ga, sparse_a = self._post_norm_back(layer, g2, sparse, t)
        if replaced and ga is not None:   # replaced: record; only hook_z's reads go on
            out[z] = (ga @ w_o_flat).view(t, b, h * dh)
        elif replaced and sparse_a is not None:
            out[z] = sparse_a.vecs.new_zeros(t, b, h * dh)
            _scatter_add(out[z], sparse_a, sparse_a.vecs @ w_o_flat)
        # what reaches hook_z: densely from g, sparsely from sparse g and hook_z's reads
        dense_z = None if replaced else ga
        sparse_z = [reads[z]] if z in reads else []
        if sparse_a is not None and not replaced:
            sparse_z.append(Reads(sparse_a.rows, sparse_a.pos, sparse_a.vecs @ w_o_flat))
        sz = Reads.cat(sparse_z) if sparse_z else None
        acc = None
        for head in range(h):
            part = None if sz is None else sz.vecs.reshape(-1, h, dh)[:, head]   # (n, dh)
            if dense_z is not None:
                gz = (dense_z @ w_ot[head]).view(t, b, dh)
                if sz is not None:
                    _scatter_add(gz, sz, part)
                gv = (_causal_mm(mix[head, :t, :t], gz.view(t, b * dh)) if self.causal
                      else mix[head, :t, :t] @ gz.view(t, b * dh)).view(t * b, dh)
            elif sz is not None:   # a few (row, position) vectors: outer products
                gv = part.new_zeros(t, b, dh)
                gv.index_add_(1, sz.rows, mix[head, :t][:, sz.pos].unsqueeze(-1) * part)
                gv = gv.view(t * b, dh)
            else:
                break
            if acc is None:
                acc = torch.addmm(g2, gv, m[head]) if g2 is not None else gv @ m[head]
            else:
                acc.addmm_(gv, m[head])
        direct = reads.get(attn_input(layer))
        if acc is None:
            if direct is None and sparse is None:
                return g, owned
            acc = g2.clone() if g2 is not None else m.new_zeros(t * b, d)
        acc = acc.view(t, b, d)
        if sparse is not None:   # the residual stream passes it on
            _scatter_add(acc, sparse, sparse.vecs)
        if direct is not None:
            _scatter_add(acc, direct, self.ln1[layer].back_from_output(direct.vecs,
                                                                        direct.pos))
        return acc, True
