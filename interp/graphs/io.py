"""Attribution graphs on disk: our JSON, circuit-tracer's graph JSON, and a figure.

Our JSON (``FORMAT``) holds the pruned graph: the prompt, the targets, the scores, every
kept node (kind, block, layer, position, latent, activation, influence and its cumulative
share) and every kept edge (weight: the exact direct effect; influence), with the settings
that made it. Node ids: ``mlp.3|12|77`` (feature), ``err|blocks.3.hook_mlp_out|12``,
``tok|12``, ``target|0``.

A graph file also keeps what a researcher made of it in the app (optional top-level fields,
absent from what ``interp graph`` writes; ``load_graph`` reads files with and without them,
``save_annotations`` rewrites only them): ``"pinned"`` (node ids, or ``super|NAME`` for a
supernode: ``interp.viz.graphs.SUPERNODE_PREFIX``), ``"supernodes"`` (``[{"name",
"members": [node ids]}]``: drawn as one node, its edges summed) and ``"notes"`` (``{node id:
text}``).

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
    """Write ``doc`` atomically (a temporary file beside it, then a rename): a reader sees
    the old file or the new one, never half of one."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(doc) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
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
    problem = _annotation_problem(doc)
    if problem:
        raise CorruptArtifactError(f"{path}: {problem}")
    return doc


def find_graphs(run: str | Path) -> list[Path]:
    """The graph files (``FORMAT``) of a run folder: ``RUN/graphs/**/*.json`` (other JSON
    there, such as circuit-tracer's, left out)."""
    out = []
    for path in sorted(Path(run).glob("graphs/**/*.json")):
        try:
            with open(path) as f:
                head = f.read(200)
        except (OSError, UnicodeDecodeError):
            continue
        if f'"format": "{FORMAT}"' in head:
            out.append(path)
    return out


# ------------------------------------------------------------------ annotations
ANNOTATIONS = ("pinned", "supernodes", "notes")


def _annotation_problem(doc: dict) -> str | None:
    """What is wrong with the annotation fields of ``doc`` (None: absent or well formed)."""
    pinned, supers, notes = (doc.get(k) for k in ANNOTATIONS)
    if pinned is not None and not (isinstance(pinned, list)
                                   and all(isinstance(p, str) for p in pinned)):
        return '"pinned" must be a list of node ids'
    if supers is not None:
        if not isinstance(supers, list) or not all(
                isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"]
                and isinstance(s.get("members"), list)
                and all(isinstance(m, str) for m in s["members"]) for s in supers):
            return '"supernodes" must be a list of {"name": text, "members": [node ids]}'
        names = [s["name"] for s in supers]
        if len(set(names)) < len(names):
            return "two supernodes have the same name"
        members = [m for s in supers for m in s["members"]]
        if len(set(members)) < len(members):
            return "a node belongs to two supernodes"
    if notes is not None and not (isinstance(notes, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in notes.items())):
        return '"notes" must map node ids to text'
    return None


def annotations(doc: dict) -> dict:
    """The annotation fields of a graph document (empty ones when it has none):
    {"pinned": [ids], "supernodes": [{"name", "members"}], "notes": {id: text}}."""
    return {"pinned": list(doc.get("pinned") or []),
            "supernodes": [{"name": s["name"], "members": list(s["members"])}
                           for s in doc.get("supernodes") or []],
            "notes": dict(doc.get("notes") or {})}


def save_annotations(path: str | Path, *, pinned: list[str] | None = None,
                     supernodes: list[dict] | None = None,
                     notes: dict[str, str] | None = None) -> dict:
    """Write the given annotation fields into the graph file at ``path`` (the others kept):
    the file is read again and checked to be a graph (``FORMAT``) first, so nothing but a
    graph file is ever rewritten, and replaced atomically. Returns the written document."""
    doc = load_graph(path)
    for key, value in (("pinned", pinned), ("supernodes", supernodes), ("notes", notes)):
        if value is not None:
            doc[key] = value
    problem = _annotation_problem(doc)
    if problem:
        raise DataError(problem)
    save_graph(doc, path)
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
def figure(doc: dict, max_edges: int = 3000) -> go.Figure:
    """The graph as the app's graph view draws it (``interp.viz.graphs``, one layout rule):
    x = position (token labels), y = layer (tokens at the bottom, targets at the top), the
    nodes of a cell spread within it; size by influence, colour by kind; the strongest
    edges by sign and |weight|."""
    from interp.viz.graphs import graph_figure, graph_view

    return graph_figure(graph_view(doc, marks=annotations(doc)), max_edges=max_edges)
