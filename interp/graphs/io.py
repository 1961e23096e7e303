"""Attribution graphs on disk: our JSON, circuit-tracer's graph JSON, and a figure.

Our JSON (``FORMAT``) holds the pruned graph: the prompt, the targets, the scores, every
kept node (kind, block, layer, position, latent, activation, influence and its cumulative
share) and every kept edge (weight: the exact direct effect; influence), with the settings
that made it. Node ids: ``mlp.3|12|77`` (feature), ``err|blocks.3.hook_mlp_out|12``,
``tok|12``, ``target|0``.

circuit-tracer's graph JSON (``tracer_document``) is the schema its frontend and
Neuronpedia read (``metadata``, ``qParams``, ``nodes``, ``links``), for graphs of MLP
transcoders with logit targets: node ids ``{layer}_{feature}_{pos}`` (features),
``0_{layer}_{pos}`` (errors), ``E_{token}_{pos}``, ``{n_layers + 1}_{token}_{pos}``
(logits), as circuit-tracer 0.5 writes them.
"""
from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

from interp.errors import CorruptArtifactError, DataError
from interp.graphs.build import AttributionGraph
from interp.graphs.prune import Pruned

FORMAT = "interp-graph/1"
KIND_COLOURS = {"feature": "#4c78a8", "error": "#bab0ac", "token": "#54a24b",
                "target": "#e45756"}


def node_id(graph: AttributionGraph, i: int) -> str:
    kind = graph.node_kind(i)
    if kind == "feature":
        b, p, f = graph.feature_of(i)
        return f"{graph.nodes.blocks[b].name}|{p}|{f}"
    if kind == "error":
        site, pos = graph.error_of(i)
        return f"err|{site}|{pos}"
    if kind == "token":
        return f"tok|{i - graph.token_start}"
    return f"target|{i - graph.target_start}"


def _node(graph: AttributionGraph, pruned: Pruned, i: int) -> dict:
    from interp.hooks import layer_of

    kind = graph.node_kind(i)
    n_layers = graph.nodes.frozen.n_layers
    out = {"id": node_id(graph, i), "kind": kind,
           "influence": float(pruned.node_influence[i]),
           "cumulative": float(pruned.cumulative[i])}
    if kind == "feature":
        b, p, f = graph.feature_of(i)
        block = graph.nodes.blocks[b]
        sel = int(graph.selected[i])
        out.update(block=block.name, layer=block.layer, position=p, latent=f,
                   dictionary=block.dictionary,
                   activation=float(graph.nodes.activations[sel]),
                   pre_activation=float(graph.nodes.pre_activations[sel]))
    elif kind == "error":
        site, pos = graph.error_of(i)
        out.update(site=site, layer=layer_of(site), position=pos,
                   norm=float(graph.nodes.errors[site][pos].norm()))
    elif kind == "token":
        pos = i - graph.token_start
        out.update(layer=-1, position=pos, token=int(graph.nodes.tokens[pos]),
                   label=graph.token_labels[pos])
    else:
        t = graph.targets[i - graph.target_start]
        pos = max(p for _, p, _ in t.reads)
        out.update(target=t.kind, label=t.label, weight=t.weight, value=t.value,
                   layer=n_layers, position=pos, info=t.info)
    return out


def graph_document(graph: AttributionGraph, pruned: Pruned, *, model: str,
                   dictionaries: list[str], prompt: str, settings: dict,
                   scores: dict | None = None, validation: list[dict] | None = None) -> dict:
    """Our JSON of ``graph`` pruned by ``pruned`` (see the module docstring)."""
    kept = pruned.node_mask.nonzero()[:, 0].tolist()
    ids = {i: node_id(graph, i) for i in kept}
    dst, src = pruned.edge_mask.nonzero(as_tuple=True)
    edges = [{"source": ids[s], "target": ids[d], "weight": float(graph.adjacency[d, s]),
              "influence": float(pruned.edge_influence[d, s])}
             for d, s in zip(dst.tolist(), src.tolist()) if s in ids and d in ids]
    return {
        "format": FORMAT, "model": model, "dictionaries": dictionaries, "prompt": prompt,
        "tokens": graph.nodes.tokens.tolist(), "token_labels": graph.token_labels,
        "blocks": [{"name": b.name, "layer": b.layer, "reads": b.read, "writes": b.writes,
                    "dictionary": b.dictionary, "d_sae": b.d_sae} for b in graph.nodes.blocks],
        "targets": [{"kind": t.kind, "label": t.label, "weight": t.weight, "value": t.value,
                     "info": t.info} for t in graph.targets],
        "settings": settings, "scores": scores or {},
        "counts": {"active_features": graph.nodes.n_features,
                   "attributed_features": graph.n_selected, "nodes": graph.n_nodes,
                   "kept_nodes": len(kept), "kept_features": sum(
                       graph.node_kind(i) == "feature" for i in kept),
                   "kept_edges": len(edges)},
        "seconds": graph.meta.get("seconds"),
        "validation": validation or [],
        "nodes": [_node(graph, pruned, i) for i in kept],
        "edges": edges,
    }


def save_graph(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)
    return path


def load_graph(path: str | Path) -> dict:
    """A graph JSON ``save_graph`` wrote; anything else is refused in one line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptArtifactError(f"{path} is not a readable graph JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptArtifactError(f"{path} is not an attribution graph ({FORMAT}); "
                                   f"`interp graph` writes one")
    missing = [k for k in ("nodes", "edges", "targets", "tokens") if k not in doc]
    if missing:
        raise CorruptArtifactError(f"{path} misses {', '.join(missing)}")
    return doc


# ------------------------------------------------------------------ circuit-tracer's JSON
def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def tracer_document(graph: AttributionGraph, pruned: Pruned, *, slug: str, scan: str,
                    node_threshold: float) -> dict:
    """circuit-tracer's frontend graph JSON (see the module docstring). Graphs with
    attention SAEs or targets other than logits have no form there and are refused."""
    if any(not b.name.startswith("mlp.") for b in graph.nodes.blocks):
        raise DataError("circuit-tracer's graph JSON holds MLP transcoder features only; "
                        "this graph has attention-SAE features (write our JSON instead)")
    if any(t.kind != "logit" for t in graph.targets):
        raise DataError("circuit-tracer's graph JSON holds logit targets only; this graph "
                        "traces from " + ", ".join(sorted({t.kind for t in graph.targets})))
    nodes = {i: _tracer_node(graph, pruned, i)
             for i in pruned.node_mask.nonzero()[:, 0].tolist()}
    dst, src = pruned.edge_mask.nonzero(as_tuple=True)
    links = [{"source": nodes[s]["node_id"], "target": nodes[d]["node_id"],
              "weight": float(graph.adjacency[d, s])}
             for d, s in zip(dst.tolist(), src.tolist()) if s in nodes and d in nodes]
    linked = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes.values()
            if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    return {"metadata": {"slug": slug, "scan": scan, "transcoder_list": [],
                         "prompt_tokens": graph.token_labels,
                         "prompt": " ".join(graph.token_labels), "node_threshold": node_threshold,
                         "schema_version": 1},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                        "sg_pos": ""},
            "nodes": used, "links": links}


def _tracer_node(graph: AttributionGraph, pruned: Pruned, i: int) -> dict:
    """Node ``i`` in circuit-tracer's frontend schema."""
    n_layers, n_pos = graph.nodes.frozen.n_layers, graph.nodes.n_pos
    tokens = graph.nodes.tokens.tolist()
    kind = graph.node_kind(i)
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "clerp": "", "influence": float(pruned.cumulative[i]), "activation": None}
    if kind == "feature":
        b, p, f = graph.feature_of(i)
        layer = graph.nodes.blocks[b].layer
        return {**base, "node_id": f"{layer}_{f}_{p}", "feature": _cantor(layer, f),
                "layer": str(layer), "ctx_idx": p, "feature_type": "cross layer transcoder",
                "jsNodeId": f"{layer}_{f}-0",
                "activation": float(graph.nodes.activations[graph.selected[i]])}
    if kind == "error":
        site, p = graph.error_of(i)
        layer = int(site.split(".")[1])
        return {**base, "node_id": f"0_{layer}_{p}", "feature": -1, "layer": str(layer),
                "ctx_idx": p, "feature_type": "mlp reconstruction error",
                "jsNodeId": f"{layer}_{p}-0"}
    if kind == "token":
        p = i - graph.token_start
        return {**base, "node_id": f"E_{tokens[p]}_{p}", "feature": p, "layer": "E",
                "ctx_idx": p, "feature_type": "embedding", "jsNodeId": f"E_{tokens[p]}-{p}"}
    k = i - graph.target_start
    t = graph.targets[k]
    tok, prob = t.info["token"], t.info["probability"]
    label = t.label.removeprefix("logit ")
    return {**base, "node_id": f"{n_layers + 1}_{tok}_{n_pos - 1}", "feature": tok,
            "layer": str(n_layers + 1), "ctx_idx": n_pos - 1, "feature_type": "logit",
            "token_prob": prob, "is_target_logit": k == 0, "jsNodeId": f"L_{tok}-{n_pos - 1}",
            "clerp": f'Output "{label}" (p={prob:.3f})', "influence": None}


# ------------------------------------------------------------------ figure
def figure(doc: dict, max_edges: int = 800) -> go.Figure:
    """The pruned graph on a grid: x = position (token labels), y = layer (tokens at the
    bottom, targets at the top); size by influence, colour by kind; the strongest edges."""
    nodes = doc["nodes"]
    where = {}
    by_cell: dict[tuple, list] = {}
    for n in nodes:
        by_cell.setdefault((n["position"], n["layer"]), []).append(n)
    for (pos, layer), cell in by_cell.items():
        for j, n in enumerate(sorted(cell, key=lambda n: -n["influence"])):
            spread = 0.8 * (j / max(len(cell) - 1, 1) - 0.5) if len(cell) > 1 else 0.0
            where[n["id"]] = (pos + spread * 0.9, layer + (0.15 if n["kind"] == "error" else 0))
    fig = go.Figure()
    edges = sorted(doc["edges"], key=lambda e: -abs(e["weight"]))[:max_edges]
    for sign, colour in ((1, "rgba(76,120,168,0.35)"), (-1, "rgba(228,87,86,0.35)")):
        xs, ys = [], []
        for e in edges:
            if (e["weight"] > 0) == (sign > 0) and e["source"] in where and e["target"] in where:
                (x0, y0), (x1, y1) = where[e["source"]], where[e["target"]]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
        fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", line=dict(color=colour, width=1),
                                   hoverinfo="skip", name="positive" if sign > 0 else "negative"))
    peak = max((n["influence"] for n in nodes), default=1.0) or 1.0
    for kind, colour in KIND_COLOURS.items():
        ks = [n for n in nodes if n["kind"] == kind]
        if not ks:
            continue
        fig.add_trace(go.Scattergl(
            x=[where[n["id"]][0] for n in ks], y=[where[n["id"]][1] for n in ks],
            mode="markers", name=kind,
            marker=dict(color=colour, size=[6 + 18 * (n["influence"] / peak) ** 0.5 for n in ks],
                        line=dict(width=0.5, color="white")),
            text=[_hover(n) for n in ks], hoverinfo="text"))
    labels = doc["token_labels"]
    n_layers = max((b["layer"] for b in doc["blocks"]), default=0) + 1
    fig.update_layout(
        title=f"{doc['model']}: {doc['counts']['kept_features']} features, "
              f"{doc['counts']['kept_edges']} edges (replacement score "
              f"{doc['scores'].get('replacement', float('nan')):.3f})",
        xaxis=dict(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels,
                   title="position"),
        yaxis=dict(tickmode="array", tickvals=list(range(-1, n_layers + 1)),
                   ticktext=["tokens"] + [f"L{i}" for i in range(n_layers)] + ["targets"],
                   title="layer"),
        height=650, template="plotly_white")
    return fig


def _hover(n: dict) -> str:
    if n["kind"] == "feature":
        head = f"{n['block']} latent {n['latent']} @ {n['position']}<br>act {n['activation']:.3f}"
    elif n["kind"] == "error":
        head = f"error {n['site']} @ {n['position']}<br>norm {n['norm']:.3f}"
    elif n["kind"] == "token":
        head = f"token {n['label']!r} @ {n['position']}"
    else:
        head = f"{n['label']}<br>value {n['value']:.3f}"
    return f"{head}<br>influence {n['influence']:.4f}"
