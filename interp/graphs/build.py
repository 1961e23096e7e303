"""Attribution graphs: the direct effect of every node on every other, on one prompt, in the
replacement model with attention patterns and normalisation scales frozen.

``attribute(model, replacement, tokens, targets)`` returns an ``AttributionGraph`` whose
adjacency ``A[t, s]`` is the direct effect of source node ``s`` on node ``t``: for a
feature source, its activation times the derivative of ``t``'s pre-activation along its
decoder vectors; for an error or token source, the derivative along its vector. In the
frozen model these are exact: moving ``s`` moves ``t`` by exactly ``A[t, s]`` (scaled by
the move) when every other node is held, which ``interp.graphs.validate`` checks.

Rows are computed ``batch_size`` targets at a time by the frozen model's transpose
(``interp.graphs.linear``), so the cost grows with the number of rows (active features
attributed, at most ``max_feature_nodes``), not with the dictionaries' width; each batch
runs only through the layers and positions below its rows. Rows come in circuit-tracer's
order: the targets first, then features by their influence on the targets so far
(recomputed every ``update_interval`` batches), so a cap keeps the most influential ones.

Node order (as circuit-tracer's): selected features (by block, position, latent), error
nodes (site-major), token nodes, targets.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from interp.errors import DataError
from interp.graphs.linear import UNEMBED_INPUT, attn_input
from interp.graphs.nodes import PromptNodes, blocks_of, prompt_nodes

# default targets: the top logits until their probabilities add up to this, at most MAX
DESIRED_LOGIT_PROB = 0.95
MAX_LOGITS = 10


@dataclass
class Target:
    """A node the graph is traced from. ``reads`` are (site, position, direction) whose
    dot products with the frozen model's activations sum to the target's value (up to a
    constant); ``weight`` is its share in the influence (a logit's probability)."""

    kind: str                   # "logit", "logitdiff", "feature", "attn_query", "attn_key"
    label: str
    weight: float
    reads: list[tuple[str, int, torch.Tensor]]
    value: float | None = None  # the target's value on the prompt
    info: dict = field(default_factory=dict)


@dataclass
class AttributionGraph:
    """See the module docstring. ``adjacency`` is (n_nodes, n_nodes); rows of features that
    were not attributed (none unless capped: they are not nodes) do not exist."""

    nodes: PromptNodes
    targets: list[Target]
    selected: torch.Tensor        # (n_sel,) indices into nodes.features, sorted
    adjacency: torch.Tensor       # (n_nodes, n_nodes)
    token_labels: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def n_selected(self) -> int:
        return int(self.selected.shape[0])

    @property
    def n_errors(self) -> int:
        return len(self.nodes.error_sites) * self.nodes.n_pos

    @property
    def n_tokens(self) -> int:
        return self.nodes.n_pos

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def error_start(self) -> int:
        return self.n_selected

    @property
    def token_start(self) -> int:
        return self.n_selected + self.n_errors

    @property
    def target_start(self) -> int:
        return self.token_start + self.n_tokens

    def target_weights(self) -> torch.Tensor:
        """(n_nodes,) the targets' weights, zero elsewhere: where influence starts."""
        w = torch.zeros(self.n_nodes)
        w[self.target_start:] = torch.tensor([t.weight for t in self.targets])
        return w

    def node_kind(self, i: int) -> str:
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        return "token" if i < self.target_start else "target"

    def feature_of(self, i: int) -> tuple[int, int, int]:
        """(block, position, latent) of feature node ``i``."""
        b, p, f = self.nodes.features[self.selected[i]].tolist()
        return b, p, f

    def error_of(self, i: int) -> tuple[str, int]:
        site, pos = divmod(i - self.error_start, self.nodes.n_pos)
        return self.nodes.error_sites[site], pos


# ------------------------------------------------------------------ targets
def logit_targets(nodes: PromptNodes, model, tokens: list[int] | None = None,
                  labels=None) -> list[Target]:
    """Logit targets at the last position: ``tokens``, or the most likely ones until their
    probabilities reach ``DESIRED_LOGIT_PROB`` (at most ``MAX_LOGITS``). Each reads the
    unembedding column minus the mean column (a logit's share that is not common to every
    token), as circuit-tracer does."""
    probs = nodes.logits.softmax(-1)
    if tokens is None:
        top = probs.sort(descending=True)
        n = int((top.values.cumsum(0) < DESIRED_LOGIT_PROB).sum()) + 1
        tokens = top.indices[: min(n, MAX_LOGITS)].tolist()
    w_u = model.W_U.detach().float()
    mean = w_u.mean(1)
    last = nodes.n_pos - 1
    out = []
    for tok in tokens:
        vec = w_u[:, tok] - mean
        label = labels(tok) if labels else str(tok)
        out.append(Target("logit", f"logit {label}", float(probs[tok]),
                          [(UNEMBED_INPUT, last, vec)], value=float(nodes.logits[tok]),
                          info={"token": int(tok), "probability": float(probs[tok])}))
    return out


def logitdiff_target(nodes: PromptNodes, model, a: int, b: int, labels=None) -> Target:
    w_u = model.W_U.detach().float()
    name = (lambda t: labels(t) if labels else str(t))
    return Target("logitdiff", f"logit {name(a)} - {name(b)}", 1.0,
                  [(UNEMBED_INPUT, nodes.n_pos - 1, w_u[:, a] - w_u[:, b])],
                  value=float(nodes.logits[a] - nodes.logits[b]),
                  info={"tokens": [int(a), int(b)]})


def feature_target(nodes: PromptNodes, block: str, pos: int, latent: int) -> Target:
    """A feature's pre-activation at ``pos`` (active or not) as a target."""
    names = [b.name for b in nodes.blocks]
    if block not in names:
        raise DataError(f"no dictionary at {block}; the graph's blocks: {', '.join(names)}")
    b = nodes.blocks[names.index(block)]
    if not 0 < pos < nodes.n_pos:
        raise DataError(f"position {pos} is outside 1..{nodes.n_pos - 1} (position 0, BOS, "
                        f"has no features)")
    if not 0 <= latent < b.d_sae:
        raise DataError(f"latent {latent} is outside 0..{b.d_sae - 1} of {block}")
    from interp.hooks import flat_units

    x_in = flat_units(nodes.cache[b.read], b.encoder.cfg.d_in)[0, pos].float()
    with torch.no_grad():
        value = float(b.encoder.encode_pre(x_in[None])[0, latent])
    return Target("feature", f"{block}[{latent}]@{pos}", 1.0,
                  [(b.read, pos, b.encoder_direction(latent))], value=value,
                  info={"block": block, "position": pos, "latent": latent})


def attention_targets(nodes: PromptNodes, model, layer: int, head: int, query: int,
                      key: int) -> list[Target]:
    """The pre-softmax score of ``head`` at ``layer`` from ``query`` to ``key``, as two
    targets: its query side (each node's share of the query, dotted with the whole key)
    and its key side (the whole query, dotted with each node's share of the key). The
    score is bilinear in the nodes: ``interp.graphs.build.attention_pairs`` gives the
    node-pair terms."""
    cfg = model.cfg
    if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
        raise DataError(f"no head {layer}.{head}: the model has {cfg.n_layers} layers of "
                        f"{cfg.n_heads} heads")
    if not 0 <= key <= query < nodes.n_pos:
        raise DataError(f"attention from query {query} to key {key}: need 0 <= key <= query "
                        f"< {nodes.n_pos} (causal attention)")
    if cfg.positional_embedding_type == "rotary":
        raise DataError("attention-score targets are not supported with rotary embeddings "
                        "yet (the query and key are rotated by position)")
    attn = model.blocks[layer].attn
    names = {f"blocks.{layer}.attn.{h}" for h in ("hook_q", "hook_k", "hook_attn_scores")}
    with torch.no_grad():
        _, cache = model.run_with_cache(nodes.tokens[None].to(cfg.device),
                                        names_filter=lambda h: h in names)
    q = cache[f"blocks.{layer}.attn.hook_q"][0, query, head].float()
    keys = cache[f"blocks.{layer}.attn.hook_k"][0, key].float()       # (n_kv_heads, dh)
    k = keys[head // (cfg.n_heads // keys.shape[0])]                   # grouped-query heads
    scale = float(attn.attn_scale)
    score = float(q @ k) / scale
    recorded = float(cache[f"blocks.{layer}.attn.hook_attn_scores"][0, head, query, key])
    if not math.isclose(score, recorded, rel_tol=1e-3, abs_tol=1e-3):
        raise DataError(f"the score recomputed from the cached query and key ({score:.4f}) "
                        f"is not the model's ({recorded:.4f}); this attention is not the "
                        f"standard one an attribution graph decomposes")
    w_q, w_k = attn.W_Q[head].detach().float(), attn.W_K[head].detach().float()  # (d, dh)
    site = attn_input(layer)
    info = {"layer": layer, "head": head, "query": query, "key": key, "score": score}
    label = f"attn {layer}.{head} {query}->{key}"
    return [Target("attn_query", f"{label} (query side)", 1.0,
                   [(site, query, w_q @ k / scale)], value=score, info=info),
            Target("attn_key", f"{label} (key side)", 1.0,
                   [(site, key, w_k @ q / scale)], value=score, info=info)]


def attention_side_reads(model, target: Target) -> list[list[tuple[str, int, torch.Tensor]]]:
    """The reads of the d_head coordinates of the query (``attn_query``) or key
    (``attn_key``) behind an attention target, minus their biases: rows with them give
    each node's share of the query or key vector, whose products are the score's node-pair
    terms (``attention_pairs``)."""
    info = target.info
    attn = model.blocks[info["layer"]].attn
    if target.kind == "attn_query":
        w, pos = attn.W_Q[info["head"]], info["query"]
    else:
        w, pos = attn.W_K[info["head"]], info["key"]
    site = attn_input(info["layer"])
    return [[(site, pos, w[:, j].detach().float())] for j in range(w.shape[1])]


# ------------------------------------------------------------------ rows
class _RowComputer:
    """Rows of the adjacency, a batch at a time (see the module docstring)."""

    def __init__(self, nodes: PromptNodes, chunk: int = 1 << 24):
        self.nodes = nodes
        self.skips = {b.layer: b.skip for b in nodes.blocks if b.skip is not None}
        self.writes = set(nodes.error_sites)
        # per block and write: act-scaled decoder vectors padded by position (T, k_max, d)
        # and their columns (T, k_max), -1 for padding
        self.padded: list[list[tuple[str, torch.Tensor, torch.Tensor]]] = []
        for i, b in enumerate(nodes.blocks):
            idx = nodes.block_features(i)
            pos, lat = nodes.features[idx, 1], nodes.features[idx, 2]
            counts = torch.bincount(pos, minlength=nodes.n_pos)
            k_max = int(counts.max()) if len(idx) else 0
            slot = torch.arange(len(idx)) - torch.cumsum(counts, 0)[pos] + counts[pos]
            cols = torch.full((nodes.n_pos, k_max), -1, dtype=torch.long)
            cols[pos, slot] = idx
            per_write = []
            for w, dec in zip(b.writes, b.decoders):
                vecs = torch.zeros(nodes.n_pos, k_max, dec.shape[1])
                vecs[pos, slot] = dec[lat] * nodes.activations[idx, None]
                per_write.append((w, vecs, cols))
            self.padded.append(per_write)

    def rows(self, reads: list[list[tuple[str, int, torch.Tensor]]], n_columns: int
             ) -> torch.Tensor:
        """(len(reads), n_columns) rows: row r is the direct effect of every column node on
        the sum over ``reads[r]`` of (direction . activation at site, position)."""
        nodes = self.nodes
        b = len(reads)
        t = 1 + max(p for r in reads for _, p, _ in r)   # later positions cannot matter
        inject: dict[str, torch.Tensor] = {}
        for r, row in enumerate(reads):
            for site, pos, vec in row:
                if site not in inject:
                    inject[site] = torch.zeros(b, t, vec.shape[-1])
                inject[site][r, pos] += vec
        grads = nodes.frozen.backward(inject, self.writes, self.skips)
        out = torch.zeros(b, n_columns)
        for per_write in self.padded:
            for w, vecs, cols in per_write:
                g = grads.get(w)
                if g is None or vecs.shape[1] == 0:
                    continue
                # (T, B, d) @ (T, d, k) per position: a batched GEMM, no gather
                vals = torch.bmm(g.transpose(0, 1), vecs[:t].transpose(1, 2))  # (T, B, k)
                c = cols[:t]
                valid = c >= 0
                out[:, c[valid]] += vals.permute(1, 0, 2)[:, valid]
        for s, site in enumerate(nodes.error_sites):
            g = grads.get(site)
            if g is not None:
                start = nodes.error_column(s, 0)
                out[:, start:start + t] = torch.einsum("btd,td->bt", g, nodes.errors[site][:t])
        start = nodes.token_column(0)
        out[:, start:start + t] = torch.einsum("btd,td->bt", grads["hook_embed"],
                                               nodes.token_vectors[:t])
        return out


def partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, target_weights:
                      torch.Tensor, n_columns: int, max_iter: int = 256) -> torch.Tensor:
    """(n_columns,) each column node's influence on the targets through the rows known so
    far: w (N + N^2 + ...) with N the row-normalised |A| (``interp.graphs.prune``'s rule on
    a partial matrix)."""
    from interp.graphs.prune import normalize_rows

    norm = normalize_rows(rows)
    n_t = len(target_weights)
    weights = torch.zeros(n_columns + n_t)
    weights[n_columns:] = target_weights
    influence = torch.zeros(n_columns)
    prod = weights
    for _ in range(max_iter):
        step = prod[row_nodes] @ norm          # (n_columns,)
        if not step.any():
            return influence
        influence += step
        prod = torch.zeros(n_columns + n_t)
        prod[:n_columns] = step
    raise DataError("influence did not converge: the graph has a cycle")


# ------------------------------------------------------------------ attribute
def attribute(model, replacement, tokens: torch.Tensor, targets=None, *,
              max_feature_nodes: int | None = None, batch_size: int = 256,
              update_interval: int = 4, token_labels: list[str] | None = None,
              progress=None) -> AttributionGraph:
    """The attribution graph of ``tokens`` (T,) over ``replacement`` (an
    ``interp.sae.replacement.Replacement``). ``targets``: a list of ``Target`` or a
    callable ``nodes -> list[Target]``; None: the default logits (``logit_targets``).
    ``progress(done, total)`` is called after each batch of rows."""
    started = time.perf_counter()
    blocks = blocks_of(replacement.dictionaries, replacement.names)
    nodes = prompt_nodes(model, blocks, torch.as_tensor(tokens).long().cpu())
    missing = [f"blocks.{i}.hook_mlp_out" for i in range(model.cfg.n_layers)
               if f"blocks.{i}.hook_mlp_out" not in nodes.error_sites]
    if missing:
        raise DataError(f"an attribution graph needs every MLP replaced by a transcoder; "
                        f"{', '.join(replacement.names)} leave {', '.join(missing)} in place")
    if callable(targets):
        targets = targets(nodes)
    targets = targets or logit_targets(nodes, model)
    n_f, n_cols, n_t = nodes.n_features, nodes.n_columns, len(targets)
    cap = n_f if max_feature_nodes is None else min(max_feature_nodes, n_f)
    computer = _RowComputer(nodes)
    feature_reads = _FeatureReads(nodes)
    setup = time.perf_counter() - started

    weights = torch.tensor([t.weight for t in targets])
    if cap == n_f:
        # every feature: rows go straight to their place in the square adjacency, and
        # features come by block, then position (batches then span few layers)
        adjacency = torch.zeros(n_cols + n_t, n_cols + n_t)
        for i in range(0, n_t, batch_size):
            batch = targets[i:i + batch_size]
            adjacency[n_cols + i:n_cols + i + len(batch), :n_cols] = computer.rows(
                [t.reads for t in batch], n_cols)
        for chunk in torch.arange(n_f).split(batch_size):
            adjacency[chunk, :n_cols] = computer.rows(feature_reads(chunk), n_cols)
            if progress:
                progress(int(chunk[-1]) + 1, n_f)
        selected = torch.arange(n_f)
    else:
        adjacency, selected = _capped(computer, targets, weights, nodes, cap, batch_size,
                                      update_interval, progress)
    meta = {"seconds_setup": setup, "seconds": time.perf_counter() - started,
            "n_active_features": n_f, "max_feature_nodes": max_feature_nodes,
            "batch_size": batch_size}
    labels = token_labels or [str(int(t)) for t in nodes.tokens]
    return AttributionGraph(nodes, targets, selected, adjacency, labels, meta)


class _FeatureReads:
    """The reads of feature rows: each feature's encoder direction at its block's read."""

    def __init__(self, nodes: PromptNodes):
        self.nodes = nodes

    def __call__(self, idx: torch.Tensor) -> list[list[tuple[str, int, torch.Tensor]]]:
        out = []
        for b, p, f in self.nodes.features[idx].tolist():
            block = self.nodes.blocks[b]
            out.append([(block.read, p, block.encoder.W_enc[:, f].detach())])
        return out


def _capped(computer: _RowComputer, targets: list[Target], weights: torch.Tensor,
            nodes: PromptNodes, cap: int, batch_size: int, update_interval: int, progress
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjacency over the ``cap`` most influential features: rows in visiting order
    (targets first, then features ranked by their influence through the rows so far),
    then squared over the visited features, errors, tokens and targets."""
    n_f, n_cols, n_t = nodes.n_features, nodes.n_columns, len(targets)
    rows = torch.zeros(n_t + cap, n_cols)
    row_nodes = torch.zeros(n_t + cap, dtype=torch.long)
    for i in range(0, n_t, batch_size):
        batch = targets[i:i + batch_size]
        rows[i:i + len(batch)] = computer.rows([t.reads for t in batch], n_cols)
        row_nodes[i:i + len(batch)] = torch.arange(i, i + len(batch)) + n_cols
    filled = n_t
    visited = torch.zeros(n_f, dtype=torch.bool)
    feature_reads = _FeatureReads(nodes)
    while filled < n_t + cap:
        influence = partial_influence(rows[:filled], row_nodes[:filled], weights, n_cols)
        order = torch.argsort(influence[:n_f], descending=True)
        size = min(update_interval * batch_size, n_t + cap - filled)
        pending = order[~visited[order]][:size]
        for chunk in pending.split(batch_size):
            rows[filled:filled + len(chunk)] = computer.rows(feature_reads(chunk), n_cols)
            row_nodes[filled:filled + len(chunk)] = chunk
            visited[chunk] = True
            filled += len(chunk)
            if progress:
                progress(filled - n_t, cap)
    selected = torch.nonzero(visited)[:, 0]
    keep = torch.cat([selected, torch.arange(n_f, n_cols)])
    position = torch.full((n_f,), -1, dtype=torch.long)
    position[selected] = torch.arange(len(selected))
    adjacency = torch.zeros(len(keep) + n_t, len(keep) + n_t)
    for start in range(n_t, n_t + cap, 4096):   # column selection a slice at a time
        sl = slice(start, min(start + 4096, n_t + cap))
        adjacency[position[row_nodes[sl]], :len(keep)] = rows[sl][:, keep]
    adjacency[len(keep):, :len(keep)] = rows[:n_t][:, keep]
    return adjacency, selected
