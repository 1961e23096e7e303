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
from interp.graphs.linear import UNEMBED_INPUT, Reads, attn_input, capped_logits
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
    token), as circuit-tracer does. (With a soft cap, the model's probabilities pick them;
    the values are the logits before the cap, which the unembedding's input reads.)"""
    probs = capped_logits(model, nodes.logits).softmax(-1)
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


@dataclass
class AttentionPairs:
    """An attention score split into node pairs: ``score = (q . k) / scale`` with the query
    ``q = sum_i query_shares[i] + query_bias`` and the key ``k = sum_j key_shares[j] +
    key_bias`` (shares: the graph's non-target nodes, in its order; biases: everything that
    is no node: ``b_Q``/``b_K``, positional embeddings, LayerNorm and dictionary biases,
    the BOS position), so that ``pair_terms().sum() + query_bias_terms.sum() +
    key_bias_terms.sum() + bias_bias == score``."""

    score: float
    scale: float
    query_shares: torch.Tensor      # (n, d_head) each node's share of the query
    key_shares: torch.Tensor        # (n, d_head) each node's share of the key
    query_bias: torch.Tensor        # (d_head,)
    key_bias: torch.Tensor          # (d_head,)
    top: list[tuple[int, int, float]]  # the largest pair terms: (query node, key node, term)

    def pair_terms(self) -> torch.Tensor:
        """(n, n): ``[i, j]`` is query node i's share dotted with key node j's, over scale."""
        return self.query_shares @ self.key_shares.T / self.scale

    @property
    def query_bias_terms(self) -> torch.Tensor:
        """(n,) the query bias dotted with each key node's share, over scale."""
        return self.key_shares @ self.query_bias / self.scale

    @property
    def key_bias_terms(self) -> torch.Tensor:
        """(n,) each query node's share dotted with the key bias, over scale."""
        return self.query_shares @ self.key_bias / self.scale

    @property
    def bias_bias(self) -> float:
        return float(self.query_bias @ self.key_bias) / self.scale


def attention_pairs(model, graph: AttributionGraph, target: Target, top: int = 10
                    ) -> AttentionPairs:
    """The node-pair terms of the attention score behind ``target`` (an ``attn_query`` or
    ``attn_key`` target of ``graph``): each node's share of the query and of the key
    vector (rows of the frozen model over ``attention_side_reads``), their products, and
    the ``top`` largest pair terms by absolute value. See ``AttentionPairs``."""
    from dataclasses import replace

    if target.kind not in ("attn_query", "attn_key"):
        raise DataError(f"attention_pairs takes an attention target (attn_query or "
                        f"attn_key), not a {target.kind} target")
    info = target.info
    layer, head = info["layer"], info["head"]
    nodes = graph.nodes
    n_cols = nodes.n_columns
    keep = torch.cat([graph.selected, torch.arange(nodes.n_features, n_cols)])
    computer = _RowComputer(nodes)
    shares = {}
    for kind in ("attn_query", "attn_key"):
        reads = attention_side_reads(model, replace(target, kind=kind))
        shares[kind] = computer.rows(reads, n_cols)[:, keep].T         # (n, d_head)
    names = {f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k"}
    with torch.no_grad():
        _, cache = model.run_with_cache(nodes.tokens[None].to(model.cfg.device),
                                        names_filter=lambda h: h in names)
    q = cache[f"blocks.{layer}.attn.hook_q"][0, info["query"], head].float().cpu()
    keys = cache[f"blocks.{layer}.attn.hook_k"][0, info["key"]].float().cpu()
    k = keys[head // (model.cfg.n_heads // keys.shape[0])]          # grouped-query heads
    scale = float(model.blocks[layer].attn.attn_scale)
    out = AttentionPairs(float(q @ k) / scale, scale, shares["attn_query"],
                         shares["attn_key"], q - shares["attn_query"].sum(0),
                         k - shares["attn_key"].sum(0), [])
    terms = out.pair_terms()
    best = terms.flatten().abs().topk(min(top, terms.numel())).indices
    out.top = [(int(i) // terms.shape[1], int(i) % terms.shape[1],
                float(terms.flatten()[i])) for i in best]
    return out


# ------------------------------------------------------------------ rows
ReadList = list[list[tuple[str, int, torch.Tensor]]]
# at most this many bytes per (t, rows, d_model) gradient: a batch of rows on a long prompt
# runs in several passes (the same rows; less memory: 1,024 tokens fit in 4 GB)
GRADIENT_BYTES = 1 << 26


def structured_reads(reads: ReadList) -> dict[str, Reads]:
    """Rows given as lists of (site, position, direction): the same as ``Reads`` by site."""
    by_site: dict[str, tuple[list, list, list]] = {}
    for r, row in enumerate(reads):
        for site, pos, vec in row:
            rows, poss, vecs = by_site.setdefault(site, ([], [], []))
            rows.append(r)
            poss.append(pos)
            vecs.append(vec)
    return {site: Reads(torch.tensor(rows), torch.tensor(poss), torch.stack(vecs).float())
            for site, (rows, poss, vecs) in by_site.items()}


class _RowComputer:
    """Rows of the adjacency, a batch at a time (see the module docstring).

    The frozen model's transpose gives each write site's gradient as (T, B, d); a block's
    features at one position are then one (k, d) @ (d, B) product, and its features before
    position t are consecutive columns (features are stored by block, position, latent),
    written as one slice of the batch's rows."""

    def __init__(self, nodes: PromptNodes):
        self.nodes = nodes
        self.skips = {b.layer: b.skip for b in nodes.blocks if b.skip is not None}
        self.writes = set(nodes.error_sites)
        self.error_index = {site: i for i, site in enumerate(nodes.error_sites)}
        # per block: its first column, its features before each position (T + 1,), the
        # slots of its features in a (T * k_max) padded layout, and per write its
        # act-scaled decoder vectors padded by position, (T, k_max, d)
        self.blocks: list[tuple[int, torch.Tensor, torch.Tensor, dict]] = []
        for i, b in enumerate(nodes.blocks):
            idx = nodes.block_features(i)
            if len(idx) == 0:
                continue
            if not torch.equal(idx, torch.arange(int(idx[0]), int(idx[0]) + len(idx))):
                raise RuntimeError("features are not stored block by block")
            pos, lat = nodes.features[idx, 1], nodes.features[idx, 2]
            counts = torch.bincount(pos, minlength=nodes.n_pos)
            before = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
            k_max = int(counts.max())
            slot = torch.arange(len(idx)) - before[pos]
            flat = pos * k_max + slot                  # increasing: by position, latent
            per_write = {}
            for w, dec in zip(b.writes, b.decoders):
                vecs = torch.zeros(nodes.n_pos, k_max, dec.shape[1])
                vecs[pos, slot] = dec[lat] * nodes.activations[idx, None]
                per_write[w] = vecs
            self.blocks.append((int(idx[0]), before, flat, per_write))

    def rows(self, reads: ReadList, n_columns: int, out: torch.Tensor | None = None
             ) -> torch.Tensor:
        """(len(reads), n_columns) rows: row r is the direct effect of every column node on
        the sum over ``reads[r]`` of (direction . activation at site, position). Written
        into ``out`` (zeros, (len(reads), n_columns)) when given."""
        t = 1 + max(p for r in reads for _, p, _ in r)   # later positions cannot matter
        out = torch.zeros(len(reads), n_columns) if out is None else out
        self.batch(structured_reads(reads), t, out)
        return out

    def batch(self, reads: dict[str, Reads], t: int, out: torch.Tensor) -> None:
        """Write the rows of a batch reading at positions < ``t`` into ``out`` (b,
        n_columns), zeros: only the columns of nodes before ``t`` are written (the others'
        edges are zero). On a long prompt the batch runs in passes of consecutive rows,
        each with gradients of at most ``GRADIENT_BYTES`` (t', rows, d) and its own t'."""
        b = out.shape[0]
        per_pass = max(1, GRADIENT_BYTES // (4 * t * self.nodes.frozen.d_model))
        if b <= per_pass:
            return self._pass(reads, t, out)
        for r0 in range(0, b, per_pass):
            r1 = min(r0 + per_pass, b)
            part = {}
            for site, r in reads.items():
                m = (r.rows >= r0) & (r.rows < r1)
                if m.any():
                    part[site] = Reads(r.rows[m] - r0, r.pos[m], r.vecs[m])
            t_part = 1 + max(int(r.pos.max()) for r in part.values())
            self._pass(part, t_part, out[r0:r1])

    def _pass(self, reads: dict[str, Reads], t: int, out: torch.Tensor) -> None:
        nodes = self.nodes
        b = out.shape[0]
        written = set()
        # each site's gradient is used as it comes and then dropped
        for site, g in nodes.frozen.backward_iter(reads, b, t, self.writes, self.skips):
            for i, (start, before, flat, per_write) in enumerate(self.blocks):
                n = int(before[t])
                vecs = per_write.get(site)
                if n == 0 or vecs is None:
                    continue
                # per position (k, d) @ (d, B): a batched GEMM, rows in column order
                vals = torch.bmm(vecs[:t], g.transpose(1, 2)).view(-1, b)   # (t * k, B)
                part = vals.index_select(0, flat[:n]).T                      # (B, n)
                if i in written:   # a CLT layer writes several sites
                    out[:, start:start + n] += part
                else:
                    out[:, start:start + n] = part
                    written.add(i)
            if site in self.error_index:
                start = nodes.error_column(self.error_index[site], 0)
                out[:, start:start + t] = torch.bmm(g, nodes.errors[site][:t, :, None])[..., 0].T
            elif site == "hook_embed":
                start = nodes.token_column(0)
                out[:, start:start + t] = torch.bmm(g, nodes.token_vectors[:t, :, None])[..., 0].T


def abs_row_sums(rows: torch.Tensor) -> torch.Tensor:
    """(n,) sum of |row| of each row (no |rows| copy)."""
    return torch.linalg.vector_norm(rows, 1, dim=1)


def partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, target_weights:
                      torch.Tensor, n_columns: int, row_sums: torch.Tensor | None = None,
                      max_iter: int = 256) -> torch.Tensor:
    """(n_columns,) each column node's influence on the targets through the rows known so
    far: w (N + N^2 + ...) with N the row-normalised |A| (``interp.graphs.prune``'s rule on
    a partial matrix). ``row_sums``: ``abs_row_sums(rows)`` if known.

    Without a normalised copy of ``rows`` (a long prompt's rows take gigabytes): what each
    row passes on, summed over path lengths, needs only N's columns of the features that
    have rows (a (rows, rows) block); then one pass over ``rows``, a slice at a time, gives
    every column's influence."""
    r = rows.shape[0]
    inv = 1 / (abs_row_sums(rows) if row_sums is None else row_sums).clamp(min=1e-10)
    has_row = torch.nonzero(row_nodes < n_columns)[:, 0]     # feature rows
    is_target = row_nodes >= n_columns
    block = rows[:, row_nodes[has_row]].abs_() * inv[:, None]   # N[:, features with rows]
    p = torch.zeros(r)
    p[is_target] = target_weights[row_nodes[is_target] - n_columns]
    passed = torch.zeros(r)
    for _ in range(max_iter):
        if not p.any():
            return weighted_abs_sum(rows, passed * inv)
        passed += p
        step = p @ block
        p = torch.zeros(r)
        p[has_row] = step
    raise DataError("influence did not converge: the graph has a cycle")


def weighted_abs_sum(rows: torch.Tensor, w: torch.Tensor, slice_bytes: int = 1 << 27
                     ) -> torch.Tensor:
    """``w @ |rows|``, a slice of rows at a time (at most ``slice_bytes`` of |rows| held),
    skipping rows of weight zero."""
    out = torch.zeros(rows.shape[1])
    step = max(1, slice_bytes // (4 * max(1, rows.shape[1])))
    nonzero = torch.nonzero(w)[:, 0]
    for i in range(0, len(nonzero), step):
        idx = nonzero[i:i + step]
        out += w[idx] @ rows[idx].abs_()
    return out


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
            computer.rows([t.reads for t in batch], n_cols,
                          out=adjacency[n_cols + i:n_cols + i + len(batch), :n_cols])
        for start in range(0, n_f, batch_size):
            chunk = torch.arange(start, min(start + batch_size, n_f))
            feature_reads.rows(computer, chunk, adjacency[start:start + len(chunk), :n_cols])
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
        self.w_enc = [b.encoder.W_enc.detach() for b in nodes.blocks]   # (d_in, d_sae)

    def __call__(self, idx: torch.Tensor) -> tuple[dict[str, Reads], int]:
        """(reads, t) of the rows of features ``idx``, in that order."""
        feats = self.nodes.features[idx]
        rows = torch.arange(len(idx))
        by_site: dict[str, list[Reads]] = {}
        for blk in feats[:, 0].unique().tolist():
            m = feats[:, 0] == blk
            site = self.nodes.blocks[blk].read
            by_site.setdefault(site, []).append(
                Reads(rows[m], feats[m, 1], self.w_enc[blk][:, feats[m, 2]].T))
        return ({site: Reads.cat(parts) for site, parts in by_site.items()},
                int(feats[:, 1].max()) + 1)

    def rows(self, computer: _RowComputer, idx: torch.Tensor, out: torch.Tensor) -> None:
        """Write the rows of features ``idx`` into ``out`` (len(idx), n_columns), zeros."""
        reads, t = self(idx)
        computer.batch(reads, t, out)


def _capped(computer: _RowComputer, targets: list[Target], weights: torch.Tensor,
            nodes: PromptNodes, cap: int, batch_size: int, update_interval: int, progress
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjacency over the ``cap`` most influential features: rows in visiting order
    (targets first, then features ranked by their influence through the rows so far, a
    queue of ``update_interval`` batches per ranking, by position within the queue), then
    squared over the visited features, errors, tokens and targets."""
    n_f, n_cols, n_t = nodes.n_features, nodes.n_columns, len(targets)
    rows = torch.zeros(n_t + cap, n_cols)
    row_nodes = torch.zeros(n_t + cap, dtype=torch.long)
    row_sums = torch.zeros(n_t + cap)
    for i in range(0, n_t, batch_size):
        batch = targets[i:i + batch_size]
        computer.rows([t.reads for t in batch], n_cols, out=rows[i:i + len(batch)])
        row_nodes[i:i + len(batch)] = torch.arange(i, i + len(batch)) + n_cols
    row_sums[:n_t] = abs_row_sums(rows[:n_t])
    filled = n_t
    visited = torch.zeros(n_f, dtype=torch.bool)
    feature_reads = _FeatureReads(nodes)
    while filled < n_t + cap:
        influence = partial_influence(rows[:filled], row_nodes[:filled], weights, n_cols,
                                      row_sums[:filled])
        order = torch.argsort(influence[:n_f], descending=True)
        size = min(update_interval * batch_size, n_t + cap - filled)
        pending = order[~visited[order]][:size]
        # the queue in batches of nearby positions: a batch runs only through the positions
        # below its rows (on a long prompt the (t, t) pattern products dominate). Every
        # feature in the queue is visited before the next ranking, so the order within it
        # decides nothing (but the rounding of the next ranking's sums)
        where = nodes.features[pending]
        pending = pending[torch.argsort(where[:, 1] * len(nodes.blocks) + where[:, 0],
                                        stable=True)]
        for chunk in pending.split(batch_size):
            feature_reads.rows(computer, chunk, rows[filled:filled + len(chunk)])
            row_sums[filled:filled + len(chunk)] = abs_row_sums(rows[filled:filled + len(chunk)])
            row_nodes[filled:filled + len(chunk)] = chunk
            visited[chunk] = True
            filled += len(chunk)
            if progress:
                progress(filled - n_t, cap)
    selected = torch.nonzero(visited)[:, 0]
    keep = torch.cat([selected, torch.arange(n_f, n_cols)])
    # the kept columns, then the buffer is freed before the square is built (on a long
    # prompt the buffer is most of the memory, the kept columns a small part of it)
    kept = torch.empty(n_t + cap, len(keep))
    for start in range(0, n_t + cap, 1024):
        torch.index_select(rows[start:start + 1024], 1, keep, out=kept[start:start + 1024])
    del rows
    position = torch.full((n_f,), -1, dtype=torch.long)
    position[selected] = torch.arange(len(selected))
    adjacency = torch.zeros(len(keep) + n_t, len(keep) + n_t)
    adjacency[position[row_nodes[n_t:]], :len(keep)] = kept[n_t:]
    adjacency[len(keep):, :len(keep)] = kept[:n_t]
    return adjacency, selected
