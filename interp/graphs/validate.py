"""Checking an attribution graph by intervention in the model itself.

Scale one feature node's activation by ``factor`` in a forward pass of the TransformerLens
model (not the graph's own linear algebra) and measure how every node downstream and every
target moves. Three settings, from the graph's own claim to the real model:

- ``"direct"``: attention patterns and normalisation scales frozen at the prompt's values,
  every other feature and every error held at its value: each node moves by exactly its
  edge from the scaled feature times ``factor - 1``. This checks each edge.
- ``"replacement"``: frozen as above, errors held, but the other features recomputed from
  what they read (the replacement model's own nonlinearity: a feature may switch on or off).
  The graph's prediction is the linear propagation of the change along its paths
  (``propagate``: an active feature passes its pre-activation change on unchanged).
- ``"model"``: the real model (its MLPs, errors recomputed), with only the scaled feature's
  decoder change added where it writes; attention frozen (``freeze=True``) or free.

A list of feature nodes may be scaled together (``run_intervention``, ``propagate``). An
attention target is measured as its head's pre-softmax score (``hook_attn_scores``; with
attention frozen only the patterns are held, so the score moves with its query and key),
and predicted as the sum of its query-side and key-side rows (``score_change``: first order
in the change; the bilinear term of a node feeding both sides is left out).

``validate`` returns the predicted and measured changes and their Pearson correlation.
"""
from __future__ import annotations

import torch

from interp.errors import DataError
from interp.graphs.build import AttributionGraph
from interp.graphs.linear import FINAL_NORMALIZED, capped, uncapped_logits
from interp.hooks import flat_units

MODES = ("direct", "replacement", "model")


def _freeze_hooks(graph: AttributionGraph) -> list:
    """Hooks that set every attention pattern and normalisation scale to its prompt value."""
    cache = graph.nodes.cache
    frozen = graph.nodes.frozen
    names = [n for n in frozen.cache_names(frozen.model) if n in cache]

    def put(act, hook):
        return cache[hook.name].to(act.dtype)
    return [(n, put) for n in names]


ATTENTION_KINDS = ("attn_query", "attn_key")


@torch.no_grad()
def run_intervention(model, graph: AttributionGraph, feature: int | list[int] | None,
                     factor: float, mode: str, freeze: bool = True) -> dict[str, torch.Tensor]:
    """One forward pass with selected feature ``feature`` (a node index, a list of them
    scaled together, or None: no change) scaled by ``factor``; returns {"pre": (n_f,) every
    active feature's pre-activation, "targets": (n_targets,) each target's value (an
    attention target's: the head's pre-softmax score, read at ``hook_attn_scores``)}."""
    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    nodes = graph.nodes
    run = _Pass(graph, mode, feature, factor)
    hooks = [(blk.read, run.keep_read(i)) for i, blk in enumerate(nodes.blocks)]
    hooks += [(s, run.write(s)) for s in nodes.error_sites]
    layers = {t.info["layer"] for t in graph.targets if t.kind in ATTENTION_KINDS}
    hooks += [(f"blocks.{layer}.attn.hook_attn_scores", run.keep_scores(layer))
              for layer in layers]
    if freeze:
        hooks += _freeze_hooks(graph)
    last = {}
    if capped(model):  # targets are logits before the cap (see interp.graphs.linear)
        hooks.append((FINAL_NORMALIZED, lambda act, hook: last.setdefault("x", act)))
    # a hook_z site is both read and written: the read must see the incoming value
    order = {name: k for k, name in enumerate(model.hook_dict)}
    hooks.sort(key=lambda h: order[h[0]])
    logits = model.run_with_hooks(nodes.tokens[None].to(model.cfg.device), fwd_hooks=hooks)
    logits = uncapped_logits(model, last["x"][0, -1]) if last else logits[0, -1]
    pre = torch.zeros(nodes.n_features)
    for i, blk in enumerate(nodes.blocks):
        idx = nodes.block_features(i)
        z = blk.encoder.encode_pre(run.kept[i])
        pre[idx] = z[nodes.features[idx, 1], nodes.features[idx, 2]]
    return {"pre": pre, "targets": _target_values(graph, logits.float(), run.kept,
                                                  run.scores)}


class _Pass:
    """The hooks of one intervention pass (see ``run_intervention`` and the module
    docstring): what each block reads, its codes with the edit, what each site gets."""

    def __init__(self, graph: AttributionGraph, mode: str, feature, factor: float):
        self.nodes, self.mode, self.factor = graph.nodes, mode, factor
        self.held = mode in ("direct", "replacement")
        features = [] if feature is None else (
            [feature] if isinstance(feature, int) else list(feature))
        self.edits: dict[int, list[tuple[int, int]]] = {}   # block -> [(position, latent)]
        for node in features:
            b, p, f = graph.feature_of(node)
            self.edits.setdefault(b, []).append((p, f))
        self.kept: dict[int, torch.Tensor] = {}     # block -> its read (T, d_in)
        self.codes: dict = {}                       # block -> its codes in this pass (T, m)
        self.scores: dict[int, torch.Tensor] = {}   # layer -> (H, T, T) attention scores
        self.prompt_codes = _prompt_codes(graph)

    def keep_read(self, i: int):
        def fn(act, hook):
            self.kept[i] = flat_units(act, self.nodes.blocks[i].encoder.cfg.d_in)[0].float()
        return fn

    def keep_scores(self, layer: int):
        def fn(act, hook):
            self.scores[layer] = act[0].float()
        return fn

    def block_codes(self, i: int) -> torch.Tensor:
        if i not in self.codes:
            fresh = self.nodes.blocks[i].encoder(self.kept[i]).dense()
            fresh[0] = 0
            c = self.prompt_codes[i].clone() if self.mode == "direct" else fresh.clone()
            for p, f in self.edits.get(i, []):
                c[p, f] = self.prompt_codes[i][p, f] * self.factor
            self.codes[i] = c
            self.codes[("fresh", i)] = fresh
        return self.codes[i]

    def write(self, site: str):
        blocks, nodes = self.nodes.blocks, self.nodes
        writers = [(i, blk.writes.index(site)) for i, blk in enumerate(blocks)
                   if site in blk.writes]

        def fn(act, hook):
            if self.held:
                y = nodes.errors[site].clone()
                for i, j in writers:
                    blk = blocks[i]
                    y += self.block_codes(i) @ blk.decoders[j] + _bias(blk, j)
                    if blk.skip is not None:
                        y += self.kept[i] @ blk.skip
                y[0] = flat_units(nodes.cache[site])[0, 0]   # BOS: its own constant value
            else:   # the real model plus the edited features' change where they write
                y = flat_units(act)[0].float().clone()
                for i, j in writers:
                    if i in self.edits:
                        delta = self.block_codes(i) - self.codes[("fresh", i)]
                        y += delta @ blocks[i].decoders[j]
            return y[None].reshape(act.shape).to(act.dtype)
        return fn


def _bias(block, j: int) -> torch.Tensor:
    b = block.encoder.b_dec.detach()
    return b.reshape(len(block.writes), -1)[j]


def _prompt_codes(graph: AttributionGraph) -> dict[int, torch.Tensor]:
    nodes = graph.nodes
    out = {}
    for i, blk in enumerate(nodes.blocks):
        c = torch.zeros(nodes.n_pos, blk.d_sae)
        idx = nodes.block_features(i)
        c[nodes.features[idx, 1], nodes.features[idx, 2]] = nodes.activations[idx]
        out[i] = c
    return out


def _target_values(graph: AttributionGraph, logits: torch.Tensor, kept: dict,
                   scores: dict[int, torch.Tensor]) -> torch.Tensor:
    out = []
    names = [b.name for b in graph.nodes.blocks]
    for t in graph.targets:
        if t.kind == "logit":
            out.append(logits[t.info["token"]] - logits.mean())
        elif t.kind == "logitdiff":
            a, b = t.info["tokens"]
            out.append(logits[a] - logits[b])
        elif t.kind == "feature":
            i = names.index(t.info["block"])
            z = graph.nodes.blocks[i].encoder.encode_pre(kept[i][t.info["position"]][None])
            out.append(z[0, t.info["latent"]])
        elif t.kind in ATTENTION_KINDS:
            info = t.info
            out.append(scores[info["layer"]][info["head"], info["query"], info["key"]])
        else:
            out.append(torch.tensor(float("nan")))
    return torch.stack(out) if out else torch.zeros(0)


def propagate(graph: AttributionGraph, feature: int | list[int], factor: float
              ) -> torch.Tensor:
    """(n_nodes,) the graph's prediction of every node's change when feature node
    ``feature`` (or each of a list of them) is scaled by ``factor``: its own change
    ``(factor - 1) a``, carried along every path (a feature source's edge is its activation
    times a per-unit weight; an active feature passes its pre-activation change on
    unchanged). An attention target's rows are its two sides: the score's first-order
    change is their sum (``score_change``)."""
    a = graph.adjacency
    n_f = graph.n_selected
    act = graph.nodes.activations[graph.selected]
    per_unit = torch.zeros_like(a[:, :n_f])
    nz = act != 0
    per_unit[:, nz] = a[:, :n_f][:, nz] / act[nz]
    scaled = torch.as_tensor(feature).long().reshape(-1)
    start = torch.zeros(n_f)
    start[scaled] = (factor - 1) * act[scaled]
    delta_act = start.clone()
    for _ in range(n_f + 1):
        delta = per_unit @ delta_act                   # every node's pre-activation change
        new = start + delta[:n_f]
        new[scaled] = start[scaled]                    # a scaled feature is set, not fed
        if torch.allclose(new, delta_act, atol=1e-7, rtol=0):
            return delta
        delta_act = new
    raise DataError("the change did not settle: the graph has a cycle")


def ablation_effects(graph: AttributionGraph, target: int = 0) -> torch.Tensor:
    """(n_selected,) for every feature node at once, the graph's prediction of how target
    ``target`` (an index into ``graph.targets``) changes when that feature alone is
    ablated: ``propagate(graph, f, 0.0)`` at the target for every f, by one pass backwards
    over the per-unit edges (``x = d + x U``, U the feature-to-feature edges per unit of
    the source's activation, d the target's). Ranks features by their signed effect."""
    a = graph.adjacency
    n_f = graph.n_selected
    act = graph.nodes.activations[graph.selected]
    inv = torch.where(act != 0, 1 / act, torch.zeros_like(act))
    per_unit = a[:n_f, :n_f] * inv[None, :]
    direct = a[graph.target_start + target, :n_f] * inv
    x = direct.clone()
    for _ in range(n_f + 1):
        new = direct + x @ per_unit
        if torch.allclose(new, x, atol=1e-7, rtol=0):
            return -new * act
        x = new
    raise DataError("the change did not settle: the graph has a cycle")


def direct_prediction(graph: AttributionGraph, feature: int | list[int], factor: float
                      ) -> torch.Tensor:
    """(n_nodes,) each node's change through its direct edges from ``feature`` (or a list
    of features) alone."""
    cols = torch.as_tensor(feature).long().reshape(-1)
    return graph.adjacency[:, cols].sum(1) * (factor - 1)


def score_change(graph: AttributionGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """How predicted target rows become predicted target values: (n_values, n_targets)
    weights and (n_values,) the target each value is measured at. A target is one value,
    except an attention score, whose query-side and key-side targets are one value, the
    sum of their rows (the score's first-order change, bilinear in the nodes)."""
    first: dict[tuple, int] = {}
    rows, measured_at = [], []
    for k, t in enumerate(graph.targets):
        key = (tuple(t.info[x] for x in ("layer", "head", "query", "key"))
               if t.kind in ATTENTION_KINDS else ("target", k))
        if key not in first:
            first[key] = len(rows)
            rows.append(torch.zeros(len(graph.targets)))
            measured_at.append(k)
        rows[first[key]][k] = 1.0
    return torch.stack(rows), torch.tensor(measured_at, dtype=torch.long)


def validate(model, graph: AttributionGraph, features: list[int], factor: float = 0.0,
             mode: str = "direct", freeze: bool = True) -> dict:
    """Scale each of ``features`` (node indices) by ``factor`` in turn; the predicted and
    measured changes of the downstream features' pre-activations and of the targets (an
    attention score once: see ``score_change``), and the Pearson correlation over all of
    them."""
    clean = run_intervention(model, graph, None, 1.0, mode, freeze)
    combine, measured_at = score_change(graph)
    n_f = graph.n_selected
    sel = graph.selected
    pred_all, meas_all = [], []
    for f in features:
        if not 0 <= f < n_f:
            raise DataError(f"node {f} is not a feature node (0..{n_f - 1})")
        run = run_intervention(model, graph, f, factor, mode, freeze)
        predicted = (direct_prediction(graph, f, factor) if mode == "direct"
                     else propagate(graph, f, factor))
        measured_f = (run["pre"] - clean["pre"])[sel]
        measured_t = (run["targets"] - clean["targets"])[measured_at]
        predicted_t = combine @ predicted[graph.target_start:]
        keep_t = ~torch.isnan(measured_t)
        layer_f = graph.nodes.features[sel[f], 0]
        downstream = graph.nodes.features[sel, 0] > layer_f      # later blocks only
        pred = torch.cat([predicted[:n_f][downstream], predicted_t[keep_t]])
        meas = torch.cat([measured_f[downstream], measured_t[keep_t]])
        pred_all.append(pred)
        meas_all.append(meas)
    pred, meas = torch.cat(pred_all), torch.cat(meas_all)
    return {"mode": mode, "attention": "frozen" if freeze else "free", "factor": factor,
            "n_features": len(features), "n_values": int(pred.numel()),
            "pearson": pearson(pred, meas), "predicted": pred, "measured": meas}


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else float("nan")
