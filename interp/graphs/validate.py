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

``validate`` returns the predicted and measured changes and their Pearson correlation.
"""
from __future__ import annotations

import torch

from interp.errors import DataError
from interp.graphs.build import AttributionGraph
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


@torch.no_grad()
def run_intervention(model, graph: AttributionGraph, feature: int | None, factor: float,
                     mode: str, freeze: bool = True) -> dict[str, torch.Tensor]:
    """One forward pass with selected feature ``feature`` (a node index; None: no change)
    scaled by ``factor``; returns {"pre": (n_f,) every active feature's pre-activation,
    "targets": (n_targets,) each target's value}."""
    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    nodes = graph.nodes
    blocks = nodes.blocks
    edit = None
    if feature is not None:
        b, p, f = graph.feature_of(feature)
        edit = (b, p, f)
    held = mode in ("direct", "replacement")
    kept: dict[int, torch.Tensor] = {}     # block -> its read (T, d_in)
    codes: dict[int, torch.Tensor] = {}    # block -> its codes in this pass (T, m)
    prompt_codes = _prompt_codes(graph)

    def keep_read(i):
        def fn(act, hook):
            kept[i] = flat_units(act, blocks[i].encoder.cfg.d_in)[0].float()
        return fn

    def block_codes(i) -> torch.Tensor:
        if i not in codes:
            fresh = blocks[i].encoder(kept[i]).dense()
            fresh[0] = 0
            c = prompt_codes[i].clone() if mode == "direct" else fresh.clone()
            if edit is not None and edit[0] == i:
                c[edit[1], edit[2]] = prompt_codes[i][edit[1], edit[2]] * factor
            codes[i] = c
            codes[("fresh", i)] = fresh
        return codes[i]

    def write(site):
        writers = [(i, blk.writes.index(site)) for i, blk in enumerate(blocks)
                   if site in blk.writes]

        def fn(act, hook):
            flat = flat_units(act)
            if held:
                y = nodes.errors[site].clone()
                for i, j in writers:
                    blk = blocks[i]
                    y += block_codes(i) @ blk.decoders[j] + _bias(blk, j)
                    if blk.skip is not None:
                        y += kept[i] @ blk.skip
                y[0] = flat_units(nodes.cache[site])[0, 0]   # BOS: its own constant value
            else:   # the real model plus the edited feature's change where it writes
                y = flat[0].float().clone()
                for i, j in writers:
                    if edit is not None and edit[0] == i:
                        delta = block_codes(i) - codes[("fresh", i)]
                        y += delta @ blocks[i].decoders[j]
            return y[None].reshape(act.shape).to(act.dtype)
        return fn

    hooks = [(blk.read, keep_read(i)) for i, blk in enumerate(blocks)]
    hooks += [(s, write(s)) for s in nodes.error_sites]
    if freeze:
        hooks += _freeze_hooks(graph)
    # a hook_z site is both read and written: the read must see the incoming value
    order = {name: k for k, name in enumerate(model.hook_dict)}
    hooks.sort(key=lambda h: order[h[0]])
    logits = model.run_with_hooks(nodes.tokens[None].to(model.cfg.device), fwd_hooks=hooks)
    pre = torch.zeros(nodes.n_features)
    for i, blk in enumerate(blocks):
        idx = nodes.block_features(i)
        z = blk.encoder.encode_pre(kept[i])
        pre[idx] = z[nodes.features[idx, 1], nodes.features[idx, 2]]
    return {"pre": pre, "targets": _target_values(graph, logits[0, -1].float(), kept)}


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


def _target_values(graph: AttributionGraph, logits: torch.Tensor, kept: dict) -> torch.Tensor:
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
        else:
            out.append(torch.tensor(float("nan")))  # attention scores: see validate_attention
    return torch.stack(out) if out else torch.zeros(0)


def propagate(graph: AttributionGraph, feature: int, factor: float) -> torch.Tensor:
    """(n_nodes,) the graph's prediction of every node's change when feature node
    ``feature`` is scaled by ``factor``: its own change ``(factor - 1) a``, carried along
    every path (a feature source's edge is its activation times a per-unit weight; an active
    feature passes its pre-activation change on unchanged)."""
    a = graph.adjacency
    n_f = graph.n_selected
    act = graph.nodes.activations[graph.selected]
    per_unit = torch.zeros_like(a[:, :n_f])
    nz = act != 0
    per_unit[:, nz] = a[:, :n_f][:, nz] / act[nz]
    start = torch.zeros(n_f)
    start[feature] = (factor - 1) * act[feature]
    delta_act = start.clone()
    for _ in range(n_f + 1):
        delta = per_unit @ delta_act                   # every node's pre-activation change
        new = start + delta[:n_f]
        new[feature] = start[feature]                  # the scaled feature is set, not fed
        if torch.allclose(new, delta_act, atol=1e-7, rtol=0):
            return delta
        delta_act = new
    raise DataError("the change did not settle: the graph has a cycle")


def direct_prediction(graph: AttributionGraph, feature: int, factor: float) -> torch.Tensor:
    """(n_nodes,) each node's change through its direct edge from ``feature`` alone."""
    return graph.adjacency[:, feature] * (factor - 1)


def validate(model, graph: AttributionGraph, features: list[int], factor: float = 0.0,
             mode: str = "direct", freeze: bool = True) -> dict:
    """Scale each of ``features`` (node indices) by ``factor`` in turn; the predicted and
    measured changes of the downstream features' pre-activations and of the targets, and
    the Pearson correlation over all of them."""
    clean = run_intervention(model, graph, None, 1.0, mode, freeze)
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
        measured_t = run["targets"] - clean["targets"]
        keep_t = ~torch.isnan(measured_t)
        layer_f = graph.nodes.features[sel[f], 0]
        downstream = graph.nodes.features[sel, 0] > layer_f      # later blocks only
        pred = torch.cat([predicted[:n_f][downstream],
                          predicted[graph.target_start:][keep_t]])
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
