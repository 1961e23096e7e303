"""The nodes of an attribution graph on one prompt: what each dictionary of a replacement
model computes there.

A replacement (``interp.sae.replacement``) is cut into *blocks*, one encoder each: a
per-layer transcoder (PLT or skip PLT), one layer of a cross-layer transcoder, or an
attention-output SAE at ``attn.hook_z``. A block reads one site and writes one or more (a
CLT layer writes every MLP output from its own layer on). On the prompt:

- a feature node is (block, position, latent) with a nonzero activation; its value on a
  write site is ``activation * W_dec row`` (the decoder vectors here are pre-scaled by it);
- an error node is (write site, position): the true value there minus everything the
  dictionaries write (their features, biases and skip terms), so that the replacement's
  output is the model's, exactly;
- a token node is a position's token embedding (``hook_embed``; positional embeddings are
  constants, as in circuit-tracer).

Position 0 (BOS) has no feature and no error node: its activations are the same in every
context, no dictionary was trained on them (harvests leave them out, see
``interp.hooks.with_first_position``), and they are constants here, like the biases.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.errors import DataError
from interp.graphs.linear import (FINAL_NORMALIZED, FrozenTransformer, capped, mlp_read,
                                  mlp_write, uncapped_logits, z_site)
from interp.hooks import flat_units, layer_of
from interp.sae.clt import CrossLayerTranscoder
from interp.sae.core import SparseAutoencoder


@dataclass
class Block:
    """One encoder of the replacement (see the module docstring)."""

    name: str                    # "mlp.3", "attn.3"
    layer: int
    read: str                    # the site it encodes
    writes: list[str]            # the sites it writes, in order
    encoder: SparseAutoencoder   # a CLT layer's own core dictionary
    decoders: list[torch.Tensor]  # per write: (d_sae, d_site)
    dictionary: str              # the name of the dictionary it belongs to
    skip: torch.Tensor | None = None  # a skip transcoder's W_skip (d_in, d_out)

    @property
    def d_sae(self) -> int:
        return self.encoder.cfg.d_sae

    def encoder_direction(self, latent: int) -> torch.Tensor:
        """The direction whose dot product with the read gives the latent's pre-activation
        (up to a constant)."""
        return self.encoder.W_enc[:, latent].detach()


def blocks_of(dictionaries: list, names: list[str]) -> list[Block]:
    """The blocks of a replacement's dictionaries, in the model's order (attention before
    MLP within a layer); anything a graph cannot hold is refused in one line."""
    out: list[Block] = []
    for d, name in zip(dictionaries, names):
        if isinstance(d, CrossLayerTranscoder):
            out += _clt_blocks(d, name)
        else:
            out.append(_dictionary_block(d, name))
    out.sort(key=lambda b: (b.layer, 0 if b.name.startswith("attn") else 1))
    for d in dictionaries:
        scales = [d.activation_scale] + ([d.activation_scale_out]
                                         if hasattr(d, "activation_scale_out") else [])
        if any(not torch.all(s == 1) for s in scales):
            raise DataError("a dictionary with an unfolded activation scale: save and load it "
                            "(saving folds the scale into the weights)")
    return out


def _clt_blocks(d: CrossLayerTranscoder, name: str) -> list[Block]:
    md = d.cfg.metadata
    out = []
    for i, (h_in, h_out) in enumerate(zip(md["hook_names"], md["hook_names_out"])):
        layer = layer_of(h_out)
        _check_mlp_hooks(h_in, h_out, name)
        blocks = d.decoder_blocks(i).detach()
        writes = list(md["hook_names_out"][i:])
        out.append(Block(f"mlp.{layer}", layer, h_in, writes, d.encoders[i].eval(),
                         [blocks[:, j] for j in range(len(writes))], name))
    return out


def _check_mlp_hooks(h_in: str, h_out: str, name: str) -> None:
    layer = layer_of(h_out)
    if layer is None or h_out != mlp_write(layer) or h_in != mlp_read(layer):
        raise DataError(f"{name} reads {h_in} and writes {h_out}; an attribution graph takes "
                        f"transcoders from blocks.L.ln2.hook_normalized to "
                        f"blocks.L.hook_mlp_out (the MLP they replace)")


def _dictionary_block(d: SparseAutoencoder, name: str) -> Block:
    md = d.cfg.metadata or {}
    h_in = md.get("hook_name")
    d = d.eval()
    if d.cfg.transcoder:
        h_out = md.get("hook_name_out")
        _check_mlp_hooks(h_in, h_out, name)
        layer = layer_of(h_out)
        return Block(f"mlp.{layer}", layer, h_in, [h_out], d, [d.W_dec.detach()], name,
                     skip=d.W_skip.detach() if d.cfg.skip else None)
    layer = layer_of(h_in or "")
    if layer is None or h_in != z_site(layer):
        raise DataError(f"{name} is an SAE at {h_in}; an attribution graph takes transcoders "
                        f"(MLPs) and attention-output SAEs (blocks.L.attn.hook_z)")
    return Block(f"attn.{layer}", layer, h_in, [h_in], d, [d.W_dec.detach()], name)


@dataclass
class PromptNodes:
    """Every node's value on one prompt, and the frozen model to connect them."""

    tokens: torch.Tensor                 # (T,)
    blocks: list[Block]
    features: torch.Tensor               # (n_f, 3) long: block index, position, latent
    activations: torch.Tensor            # (n_f,)
    pre_activations: torch.Tensor        # (n_f,) z before the activation rule
    error_sites: list[str]               # the write sites, in the model's order
    errors: dict[str, torch.Tensor]      # site -> (T, d_site), zero at position 0
    token_vectors: torch.Tensor          # (T, d_model) hook_embed
    logits: torch.Tensor                 # (d_vocab,) at the last position
    frozen: FrozenTransformer
    cache: dict = field(repr=False, default_factory=dict)  # the forward pass's values

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    def block_features(self, b: int) -> torch.Tensor:
        """Indices (into ``features``) of block ``b``'s active features."""
        return torch.nonzero(self.features[:, 0] == b)[:, 0]

    # node columns: features, then errors (site-major), then tokens
    def error_column(self, site: int, pos: int | torch.Tensor):
        return self.n_features + site * self.n_pos + pos

    def token_column(self, pos: int | torch.Tensor):
        return self.n_features + len(self.error_sites) * self.n_pos + pos

    @property
    def n_columns(self) -> int:
        return self.n_features + (len(self.error_sites) + 1) * self.n_pos


@torch.no_grad()
def prompt_nodes(model, blocks: list[Block], tokens: torch.Tensor) -> PromptNodes:
    """One forward pass of the model on ``tokens`` (T,): every block's codes (features),
    every write site's error, the token embeddings, the frozen patterns and scales."""
    if tokens.ndim != 1:
        raise DataError("an attribution graph is of one prompt: give a 1-D token sequence")
    sites = sorted({w for b in blocks for w in b.writes},
                   key=lambda s: (layer_of(s), 0 if s.endswith("hook_z") else 1))
    names = set(FrozenTransformer.cache_names(model)) | {b.read for b in blocks} | set(sites)
    names |= {"hook_embed", FINAL_NORMALIZED}
    logits, cache = model.run_with_cache(tokens[None].to(model.cfg.device),
                                         names_filter=lambda h: h in names)
    cache = {k: v for k, v in cache.items()}
    last = logits[0, -1].float()
    if capped(model):  # the graph traces the logits before the cap
        last = uncapped_logits(model, cache[FINAL_NORMALIZED][0, -1]).float()
    t = tokens.shape[0]
    written = {s: torch.zeros(t, flat_units(cache[s]).shape[-1]) for s in sites}
    feats, acts, pres = [], [], []
    for i, b in enumerate(blocks):
        x_in = flat_units(cache[b.read], b.encoder.cfg.d_in)[0].float()
        out = b.encoder(x_in)
        codes = out.dense()
        codes[0] = 0  # BOS: constant, no nodes
        y_hat = out.x_hat.reshape(t, len(b.writes), -1)
        for j, w in enumerate(b.writes):
            written[w] += y_hat[:, j]
        pos, lat = torch.nonzero(codes, as_tuple=True)   # row-major: by position, latent
        feats.append(torch.stack([torch.full_like(pos, i), pos, lat], 1))
        acts.append(codes[pos, lat])
        pres.append(b.encoder.encode_pre(x_in)[pos, lat])
    errors = {}
    for s in sites:
        err = flat_units(cache[s])[0].float() - written[s]
        err[0] = 0
        errors[s] = err
    return PromptNodes(tokens=tokens, blocks=blocks, features=torch.cat(feats),
                       activations=torch.cat(acts), pre_activations=torch.cat(pres),
                       error_sites=sites, errors=errors,
                       token_vectors=cache["hook_embed"][0].float(),
                       logits=last, frozen=FrozenTransformer(model, cache),
                       cache=cache)


@torch.no_grad()
def feature_activations(model, blocks: list[Block], tokens: torch.Tensor,
                        features: list[tuple[str, int]], batch_size: int = 64
                        ) -> torch.Tensor:
    """(N, T, F) the activation of each ``(block name, latent)`` of ``features`` at every
    position of the prompts ``tokens`` (N, T), computed as ``prompt_nodes`` computes a
    node's (position 0 is zero): what a graph's feature does on many other prompts, for
    profiling it against ground truth."""
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 2:
        raise DataError("give the prompts as a 2-D (N, T) token array")
    names = [b.name for b in blocks]
    wanted: dict[int, list[tuple[int, int]]] = {}   # block -> [(column, latent)]
    for col, (name, latent) in enumerate(features):
        if name not in names:
            raise DataError(f"no dictionary at {name}; the blocks: {', '.join(names)}")
        b = names.index(name)
        if not 0 <= latent < blocks[b].d_sae:
            raise DataError(f"latent {latent} is outside 0..{blocks[b].d_sae - 1} of {name}")
        wanted.setdefault(b, []).append((col, latent))
    reads = {blocks[b].read for b in wanted}
    n, t = tokens.shape
    out = torch.zeros(n, t, len(features))
    if not wanted:
        return out
    top = max(blocks[b].layer for b in wanted)   # no layer above the highest read is run
    for start in range(0, n, batch_size):
        batch = tokens[start:start + batch_size]
        _, cache = model.run_with_cache(batch.to(model.cfg.device), stop_at_layer=top + 1,
                                        names_filter=lambda h: h in reads)
        for b, cols in wanted.items():
            enc = blocks[b].encoder
            x_in = flat_units(cache[blocks[b].read], enc.cfg.d_in).float()
            codes = enc.inference_codes(x_in.reshape(-1, enc.cfg.d_in))
            lats = torch.tensor([lat for _, lat in cols])
            if codes.acts is not None:
                picked = codes.acts[:, lats]
            else:   # k kept per row: each wanted latent's value where it was kept
                hit = codes.indices[:, :, None] == lats
                picked = (codes.values[:, :, None] * hit).sum(1)
            col_idx = torch.tensor([c for c, _ in cols])
            out[start:start + len(batch), :, col_idx] = picked.reshape(len(batch), t, -1)
    out[:, 0] = 0
    return out
