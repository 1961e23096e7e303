"""Sparse feature circuits as networkx graphs: build, prune, JSON round trip, plotly figure.

Node keys are strings ``"hook|position|latent"`` (``latent`` is ``err`` for an error node)
and ``"output"`` for the metric; node attributes: hook, layer, position, latent (None for
an error), kind ("latent", "error", "output"), effect (the node's attribution score) and
activation (its mean clean value; for an error node the mean norm). Edge attributes:
effect (the edge's attribution).
"""
from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from interp.circuits.attribution import ALL_POSITIONS, OUTPUT, Edge, Node
from interp.errors import CorruptArtifactError
from interp.hooks import layer_of

FORMAT = "interp-circuit/1"


def node_key(node: Node) -> str:
    pos = "all" if node.position == ALL_POSITIONS else node.position
    return f"{node.hook}|{pos}|{'err' if node.is_error else node.latent}"


def _layer(hook: str) -> int:
    layer = layer_of(hook)
    return -1 if layer is None else layer


def build_graph(node_scores: dict[Node, float], edges: list[Edge],
                activations: dict[Node, float] | None = None,
                metadata: dict | None = None) -> nx.DiGraph:
    """The graph of the given nodes and edges, with the metric as ``output``."""
    g = nx.DiGraph(**(metadata or {}))
    hooks_order: list[str] = []
    for node, effect in node_scores.items():
        if node.hook not in hooks_order:
            hooks_order.append(node.hook)
        err = node.is_error
        g.add_node(node_key(node), hook=node.hook, layer=_layer(node.hook),
                   position=node.position, latent=None if err else node.latent,
                   kind="error" if err else "latent", effect=float(effect),
                   activation=float((activations or {}).get(node, float("nan"))))
    g.add_node(OUTPUT, hook=OUTPUT, layer=10**6, position=-1, latent=None, kind="output",
               effect=float("nan"), activation=float("nan"))
    for e in edges:
        up = node_key(e.upstream)
        down = OUTPUT if e.downstream == OUTPUT else node_key(e.downstream)
        if up in g and down in g:
            g.add_edge(up, down, effect=float(e.weight))
    g.graph.setdefault("hooks", hooks_order)
    return g


def prune(g: nx.DiGraph, node_threshold: float = 0.0, edge_threshold: float = 0.0,
          top_nodes: int | None = None) -> nx.DiGraph:
    """Keep nodes with |effect| >= node_threshold (or the top_nodes largest), edges with
    |effect| >= edge_threshold, then only what still connects to the output."""
    h = g.copy()
    scored = [n for n, d in h.nodes(data=True) if n != OUTPUT]
    keep = {n for n in scored if abs(h.nodes[n]["effect"]) >= node_threshold}
    if top_nodes is not None:
        ranked = sorted(keep, key=lambda n: -abs(h.nodes[n]["effect"]))
        keep = set(ranked[:top_nodes])
    h.remove_nodes_from([n for n in scored if n not in keep])
    h.remove_edges_from([(u, v) for u, v, d in h.edges(data=True)
                         if abs(d["effect"]) < edge_threshold])
    if OUTPUT in h:
        reach = nx.ancestors(h, OUTPUT) | {OUTPUT}
        h.remove_nodes_from([n for n in list(h) if n not in reach])
    return h


def to_json(g: nx.DiGraph) -> dict:
    return {"format": FORMAT, "metadata": dict(g.graph),
            "nodes": [{"id": n, **d} for n, d in g.nodes(data=True)],
            "edges": [{"source": u, "target": v, **d} for u, v, d in g.edges(data=True)]}


def save_graph(g: nx.DiGraph, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(g), indent=1, allow_nan=True) + "\n")
    return path


def load_graph(path: str | Path) -> nx.DiGraph:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptArtifactError(f"no circuit file at {path}") from None
    except json.JSONDecodeError as e:
        raise CorruptArtifactError(f"{path} is not valid JSON ({e})") from e
    if data.get("format") != FORMAT:
        raise CorruptArtifactError(f"{path} is not a circuit file (format {data.get('format')!r}, "
                                   f"expected {FORMAT!r})")
    return from_json(data)


def from_json(data: dict) -> nx.DiGraph:
    """The graph of a ``to_json`` dict."""
    g = nx.DiGraph(**data.get("metadata", {}))
    for n in data["nodes"]:
        n = dict(n)
        g.add_node(n.pop("id"), **n)
    for e in data["edges"]:
        e = dict(e)
        g.add_edge(e.pop("source"), e.pop("target"), **e)
    return g


def figure(g: nx.DiGraph, title: str | None = None):
    """Plotly figure: x = position, y = hook (upstream at the bottom), the output on top;
    edges blue (positive) / red (negative), their width by |effect|."""
    import plotly.graph_objects as go

    hooks = list(g.graph.get("hooks") or sorted({d["hook"] for _, d in g.nodes(data=True)
                                                 if d["hook"] != OUTPUT}))
    xy: dict[str, tuple[float, float]] = {}
    slots: dict[tuple[int, int], int] = {}
    for n, d in g.nodes(data=True):
        if n == OUTPUT:
            continue
        key = (hooks.index(d["hook"]), d["position"])
        k = slots.get(key, 0)
        slots[key] = k + 1
        xy[n] = (d["position"] + 0.12 * k, key[0] + 0.08 * (k % 3))
    positions = [d["position"] for n, d in g.nodes(data=True) if n != OUTPUT] or [0]
    xy[OUTPUT] = (max(positions), len(hooks))
    max_e = max([abs(d["effect"]) for _, _, d in g.edges(data=True)] or [1.0]) or 1.0
    fig = go.Figure()
    for u, v, d in g.edges(data=True):
        (x0, y0), (x1, y1) = xy[u], xy[v]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="text",
                                 text=f"{u} -> {v}: {d['effect']:.4f}", showlegend=False,
                                 line=dict(width=0.5 + 5 * abs(d["effect"]) / max_e,
                                           color="#1f77b4" if d["effect"] >= 0 else "#d62728")))
    names = list(xy)
    effects = [g.nodes[n]["effect"] if n != OUTPUT else 0.0 for n in names]
    fig.add_trace(go.Scatter(
        x=[xy[n][0] for n in names], y=[xy[n][1] for n in names], mode="markers+text",
        text=[n.split("|")[-1] if n != OUTPUT else "metric" for n in names],
        textposition="top center", customdata=names, showlegend=False,
        hovertext=[f"{n}<br>effect {e:.4f}" for n, e in zip(names, effects)],
        hoverinfo="text",
        marker=dict(size=14, color=effects, colorscale="RdBu", cmid=0,
                    symbol=["square" if g.nodes[n]["kind"] == "error" else "circle"
                            for n in names])))
    fig.update_layout(title=title or "circuit", xaxis_title="position",
                      yaxis=dict(tickvals=list(range(len(hooks) + 1)),
                                 ticktext=hooks + ["metric"]), height=500)
    return fig


def faithfulness_figure(curve: list[dict], title: str = "faithfulness vs circuit size"):
    import plotly.graph_objects as go

    fig = go.Figure()
    for key in ("faithfulness", "completeness"):
        fig.add_trace(go.Scatter(x=[c["nodes"] for c in curve], y=[c[key] for c in curve],
                                 mode="lines+markers", name=key))
    fig.update_layout(title=title, xaxis_title="nodes in the circuit", xaxis_type="log",
                      yaxis_title="fraction of the metric")
    return fig
