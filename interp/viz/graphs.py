"""Graph views for the app and notebooks: an attribution graph (``interp graph``, our JSON)
or a Marks-style circuit (``interp circuit``, networkx) on one grid, filtered by
thresholds, with pinned nodes, supernodes and notes; and what a feature node's card shows
(its decoder's direct logit effects, its top activations on the model's own data).

The grid (:func:`grid_layout`, the one layout rule of both views): x = token position (a
column per position, the token as its tick label), y = layer (token embeddings at the
bottom, targets at the top; an attention-output SAE's row ``attn.L`` a little below
``mlp.L``). The nodes of one cell (position, row) sit on a small lattice inside it: as many
lattice rows as the row's band holds at ``pitch`` pixels, then as many lattice columns as
needed. A column is as wide as its most crowded cell's lattice (each lattice column one
pitch wide, nodes centred in it), at least ``min_column_px``: no node comes closer than
the pitch (or the narrowest column) to another, in its cell or in the next position's. The
pitch shrinks until the columns fit the figure's width; past ``min_pitch`` every x is
scaled down together. x is in pixels of that width, y in rows.

:func:`graph_view` turns a graph document into a :class:`GraphView` (nodes kept by the
thresholds, supernodes merged with their edges summed, "pinned only"), :func:`circuit_view`
does the same for a circuit, and :func:`graph_figure` draws either with plotly (WebGL
``Scattergl`` for attribution graphs: thousands of nodes stay fluid; node ids as
``customdata`` for click selection).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

from interp.errors import DataError

SUPERNODE_PREFIX = "super|"  # a supernode's id in a view (and in a graph file's "pinned")

KIND_COLOURS = {"token": "#54a24b", "feature": "#4c78a8", "error": "#9d9da0",
                "target": "#e45756", "supernode": "#b279a2"}
KIND_NAMES = {"token": "embedding", "feature": "feature", "error": "error",
              "target": "target", "supernode": "supernode"}
KIND_SYMBOLS = {"token": "circle", "feature": "circle", "error": "square",
                "target": "triangle-up", "supernode": "diamond"}
ATTN_OFFSET = 0.45  # an attention-SAE row sits this far below its layer's MLP row
EDGE_COLOURS = {1: "31,119,180", -1: "214,39,40"}  # positive blue, negative red (rgb)
SYMBOL_CODES = {"circle": 0, "square": 1, "diamond": 2, "triangle-up": 5}  # plotly's numbers


# ------------------------------------------------------------------ the layout
@dataclass
class Layout:
    """Where :func:`grid_layout` put each node: ``xy`` (x in pixels of the figure's width,
    y in rows), ``cap`` the largest marker diameter (pixels) that keeps a node clear of its
    neighbours, the x centre of each column, the rows and the pixels per row."""

    xy: dict[str, tuple[float, float]]
    cap: dict[str, float]
    column_x: dict
    width: float
    rows: list[float]
    row_px: float
    pitch: float  # the lattice pitch after scaling (pixels)


def grid_layout(items: list[tuple[str, object, float, float]], *, width_px: float = 850.0,
                row_px: float = 90.0, pitch: float = 36.0, min_pitch: float = 4.0,
                band: float = 0.8, min_column_px: float = 12.0) -> Layout:
    """Lay ``items`` = [(id, column, row, weight)] out on the grid (module docstring).
    ``column`` is any sortable key (a position); rows are floats (layers, or a layer minus
    ``ATTN_OFFSET``); within a cell heavier items come first (top left). ``band``: the share
    of the distance to the nearest other row that a row's cells may fill. The lattice pitch
    is the largest of ``pitch``, ``pitch - 1``, ... ``min_pitch`` at which the columns fit in
    ``width_px`` (a smaller pitch puts more lattice rows in a band: crowded cells grow
    upwards before they grow sideways; a few positions get roomy cells); at ``min_pitch``
    the columns are scaled to fit."""
    rows = sorted({float(r) for _, _, r, _ in items})
    gaps = {r: min([abs(r - o) for o in rows if o != r] + [1.0]) for r in rows}
    band_px = {r: band * min(gaps[r], 1.0) * row_px for r in rows}
    cells: dict[tuple, list[tuple[float, str]]] = {}
    for node, col, row, weight in items:
        cells.setdefault((col, float(row)), []).append((-float(weight), node))
    for cell in cells.values():
        cell.sort()
    n_columns = len({col for col, _ in cells}) or 1
    min_column_px = min(min_column_px, width_px / n_columns)  # many positions: narrower

    def shapes(p: float):
        shape: dict[tuple, tuple[int, int]] = {}   # cell -> (lattice rows, lattice columns)
        slots: dict = {}                            # column -> its widest cell's columns
        for (col, row), cell in cells.items():
            n = len(cell)
            c = math.ceil(n / max(1, int(band_px[row] // p)))
            shape[(col, row)] = (math.ceil(n / c), c)
            slots[col] = max(slots.get(col, 1), c)
        widths = {c: max(min_column_px, k * p if k > 1 else 0.0) for c, k in slots.items()}
        return shape, widths

    p = float(pitch)
    shape, col_px = shapes(p)
    while sum(col_px.values()) > width_px and p - 1 >= min_pitch:
        p -= 1
        shape, col_px = shapes(p)
    columns = sorted(col_px)
    total = sum(col_px.values()) or 1.0
    scale = width_px / total              # the columns fill the width
    node_pitch = p * min(scale, 1.0)      # never wider than chosen, narrower when crowded
    column_x, x0 = {}, 0.0
    for c in columns:
        column_x[c] = (x0 + col_px[c] / 2) * scale
        x0 += col_px[c]
    xy, cap = {}, {}
    for (col, row), cell in cells.items():
        r, c = shape[(col, row)]
        n = len(cell)
        dy_px = min(p, band_px[row] / r) if r > 1 else band_px[row]
        room = 0.9 * min(node_pitch if c > 1 else col_px[col] * scale, dy_px)
        for k, (_, node) in enumerate(cell):
            i, j = divmod(k, c)
            in_row = min(c, n - i * c)  # the last lattice row may be partly filled: centred
            xy[node] = (column_x[col] + (j - (in_row - 1) / 2) * node_pitch,
                        row + ((r - 1) / 2 - i) * dy_px / row_px)
            cap[node] = max(room, 1.0)
    return Layout(xy, cap, column_x, width_px, rows, row_px, node_pitch)


# ------------------------------------------------------------------ views
@dataclass
class ViewNode:
    id: str
    kind: str            # token, feature, error, target, supernode
    column: int          # the position
    row: float           # the layer row (0 = embeddings)
    influence: float     # marker size (attribution graphs: influence; circuits: |effect|)
    label: str           # one line, for selectors and tables
    hover: str           # the hover card (HTML)
    members: tuple[str, ...] = ()  # a supernode's nodes


@dataclass
class GraphView:
    """What a figure draws: kept nodes (in document order), kept edges ``(source, target,
    weight, influence)`` strongest |weight| first, tick labels of the columns and rows."""

    nodes: dict[str, ViewNode]
    edges: list[tuple[str, str, float, float]]
    columns: dict[int, str]
    rows: dict[float, str]
    title: str = ""
    pinned: set[str] = field(default_factory=set)
    notes: dict[str, str] = field(default_factory=dict)
    webgl: bool = True
    row_px: float = 90.0

    def incoming(self, node: str) -> list[tuple[str, float]]:
        """(source, weight) of the edges into ``node``, largest |weight| first."""
        return [(s, w) for s, t, w, _ in self.edges if t == node]

    def outgoing(self, node: str) -> list[tuple[str, float]]:
        return [(t, w) for s, t, w, _ in self.edges if s == node]


def n_layers(doc: dict) -> int:
    layers = [b["layer"] for b in doc.get("blocks") or []] + [
        n["layer"] for n in doc["nodes"] if n["kind"] in ("feature", "error")]
    return max(layers, default=-1) + 1


def node_row(node: dict, layers: int) -> float:
    """The grid row of a graph document's node: embeddings 0, layer L's MLP L + 1 (an
    attention-output SAE's ``attn.L`` and its error ``ATTN_OFFSET`` lower), targets at the
    top (``layers + 1``)."""
    kind = node["kind"]
    if kind == "token":
        return 0.0
    if kind == "target":
        return layers + 1.0
    attn = str(node.get("block", "")).startswith("attn.") or str(
        node.get("site", "")).endswith("attn.hook_z")
    return node["layer"] + 1.0 - (ATTN_OFFSET if attn else 0.0)


def token_text(label: str) -> str:
    """A token label as a tick: visible newlines and tabs, at most 12 characters."""
    text = str(label).replace("\n", "⏎").replace("\t", "→")
    return text if len(text) <= 12 else text[:11] + "…"


def node_label(node: dict, token_labels: list[str]) -> str:
    """One line naming a graph document's node (selectors, edge tables)."""
    kind, pos = node["kind"], node.get("position")
    tok = token_text(token_labels[pos]) if isinstance(pos, int) and 0 <= pos < len(
        token_labels) else ""
    if kind == "feature":
        return f"{node['block']} #{node['latent']} @{pos} {tok}"
    if kind == "error":
        attn = " attn" if str(node.get("site", "")).endswith("attn.hook_z") else ""
        return f"error L{node['layer']}{attn} @{pos} {tok}"
    if kind == "token":
        return f"token {tok!r} @{pos}"
    return f"target {node.get('label', '')}"


def node_hover(node: dict, token_labels: list[str], note: str | None = None) -> str:
    """The hover card of a graph document's node: block, latent, position (and token),
    activation, influence, label and note if any."""
    pos = node.get("position")
    tok = token_labels[pos] if isinstance(pos, int) and 0 <= pos < len(token_labels) else ""
    where = f"@ {pos} ({token_text(tok)!r})"
    kind = node["kind"]
    if kind == "feature":
        head = (f"<b>{node['block']} latent {node['latent']}</b> {where}<br>"
                f"activation {node.get('activation', float('nan')):.3f}")
    elif kind == "error":
        head = (f"<b>error {node.get('site', '')}</b> {where}<br>"
                f"norm {node.get('norm', float('nan')):.3f}")
    elif kind == "token":
        head = f"<b>token {token_text(tok)!r}</b> @ {pos}"
    else:
        head = (f"<b>{node.get('label', 'target')}</b><br>"
                f"value {node.get('value', float('nan')):.3f}")
    out = f"{head}<br>influence {node.get('influence', 0.0):.4f}"
    if node.get("label") and kind == "feature":
        out += f"<br>{node['label']}"
    if note:
        out += f"<br><i>note: {note}</i>"
    return out


def score_cutoff(scores: np.ndarray, share: float) -> float:
    """The smallest score among the top scores holding ``share`` of their sum (the rule of
    ``interp.graphs.prune.cumulative_threshold``); 0 keeps everything (share >= 1)."""
    if share >= 1.0 or scores.size == 0:
        return 0.0
    ordered = np.sort(scores)[::-1]
    cum = np.cumsum(ordered) / max(float(ordered.sum()), 1e-30)
    return float(ordered[min(int(np.searchsorted(cum, share)), len(ordered) - 1)])


def kept_nodes(doc: dict, node_threshold: float = 1.0, max_features: int | None = None,
               always: set[str] = frozenset()) -> set[str]:
    """The ids a view keeps: tokens and targets; feature and error nodes whose cumulative
    influence share is within ``node_threshold``; at most the ``max_features`` most
    influential features; the ids in ``always`` (pinned nodes, supernode members) whatever
    the thresholds."""
    keep, features = set(), []
    for n in doc["nodes"]:
        if n["id"] in always or n["kind"] in ("token", "target"):
            keep.add(n["id"])
        elif n.get("cumulative", 0.0) <= node_threshold + 1e-9:
            if n["kind"] == "feature":
                features.append((-n.get("influence", 0.0), n["id"]))
            else:
                keep.add(n["id"])
    features.sort()
    if max_features is not None:
        features = features[:max(0, max_features)]
    return keep | {i for _, i in features}


def graph_view(doc: dict, *, node_threshold: float = 1.0, edge_threshold: float = 1.0,
               max_features: int | None = None, pinned_only: bool = False,
               marks: dict | None = None) -> GraphView:
    """The view of a graph document: nodes by :func:`kept_nodes`; edges holding
    ``edge_threshold`` of the document's edge influence (``score_cutoff``); ``marks``
    (``interp.graphs.io.annotations`` of the document: pinned ids, supernodes, notes; None:
    none) with supernodes drawn as one node at their members' mean position, their edges
    summed (edges inside one dropped); ``pinned_only``: only pinned nodes and supernodes,
    and the edges between them."""
    ann = marks or {"pinned": [], "supernodes": [], "notes": {}}
    pinned, notes = set(ann["pinned"]), dict(ann["notes"])
    labels = list(doc.get("token_labels") or [])
    by_id = {n["id"]: n for n in doc["nodes"]}
    supers = [s for s in ann["supernodes"] if any(m in by_id for m in s["members"])]
    owner = {m: SUPERNODE_PREFIX + s["name"] for s in supers for m in s["members"] if m in by_id}
    if pinned_only:
        keep = {i for i in by_id if i in pinned or owner.get(i) in pinned}
    else:
        keep = kept_nodes(doc, node_threshold, max_features, pinned | set(owner))
    layers = n_layers(doc)
    nodes: dict[str, ViewNode] = {}
    for n in doc["nodes"]:
        if n["id"] in keep and n["id"] not in owner:
            nodes[n["id"]] = ViewNode(n["id"], n["kind"], int(n["position"]),
                                      node_row(n, layers), float(n.get("influence", 0.0)),
                                      node_label(n, labels),
                                      node_hover(n, labels, notes.get(n["id"])))
    for s in supers:
        members = [by_id[m] for m in s["members"] if m in by_id and m in keep]
        if members:
            sid = SUPERNODE_PREFIX + s["name"]
            nodes[sid] = supernode(s["name"], members, layers, labels, notes.get(sid))
    edges = merged_edges(doc["edges"], nodes, owner, edge_threshold)
    columns = {p: token_text(x) for p, x in enumerate(labels)}
    for v in nodes.values():
        columns.setdefault(v.column, str(v.column))
    has_attn = any(v.row % 1 for v in nodes.values())
    scores = doc.get("scores") or {}
    n_super = sum(v.kind == "supernode" for v in nodes.values())
    title = (f"{doc.get('model', '')}: {sum(v.kind == 'feature' for v in nodes.values())} "
             f"features{f', {n_super} supernodes' if n_super else ''}, {len(edges)} edges")
    if scores.get("replacement") is not None:
        title += (f" (replacement score {scores['replacement']:.3f}, completeness "
                  f"{scores.get('completeness', float('nan')):.3f})")
    return GraphView(nodes, edges, columns, layer_rows(layers, has_attn), title, pinned, notes,
                     webgl=True, row_px=110.0 if has_attn else 90.0)


def layer_rows(layers: int, attention: bool) -> dict[float, str]:
    """Tick labels of the rows of a graph of ``layers`` layers (``node_row``)."""
    rows = {0.0: "embeddings", layers + 1.0: "targets"}
    for layer in range(layers):
        rows[layer + 1.0] = f"mlp {layer}" if attention else f"L{layer}"
        if attention:
            rows[layer + 1.0 - ATTN_OFFSET] = f"attn {layer}"
    return rows


def supernode(name: str, members: list[dict], layers: int, labels: list[str],
              note: str | None = None) -> ViewNode:
    """One node for ``members`` (graph document nodes): at their mean position, in the row
    of theirs nearest their mean row, its influence their sum."""
    rows = [node_row(m, layers) for m in members]
    mean_row = sum(rows) / len(rows)
    row = min(rows, key=lambda r: abs(r - mean_row))
    pos = round(sum(m["position"] for m in members) / len(members))
    inf = sum(float(m.get("influence", 0.0)) for m in members)
    names = ", ".join(node_label(m, labels) for m in members[:6])
    more = f" and {len(members) - 6} more" if len(members) > 6 else ""
    hover = (f"<b>supernode {name}</b> ({len(members)} nodes)<br>{names}{more}"
             f"<br>influence {inf:.4f}" + (f"<br><i>note: {note}</i>" if note else ""))
    return ViewNode(SUPERNODE_PREFIX + name, "supernode", pos, row, inf, f"supernode {name}",
                    hover, tuple(m["id"] for m in members))


def merged_edges(edges: list[dict], nodes: dict, owner: dict[str, str],
                 edge_threshold: float = 1.0) -> list[tuple[str, str, float, float]]:
    """The document's ``edges`` between kept ``nodes``, each end mapped to its supernode
    (``owner``: member id -> supernode id), edges with the same ends summed (weight and
    influence), edges inside a supernode dropped; kept when their influence reaches the
    cutoff of ``edge_threshold`` over the document's edges (a sum of edges is kept when any
    share of it would be). Strongest |weight| first."""
    scores = np.array([e.get("influence", abs(e["weight"])) for e in edges], dtype=np.float64)
    cutoff = score_cutoff(scores, edge_threshold)
    summed: dict[tuple[str, str], list[float]] = {}
    for e in edges:
        s, t = owner.get(e["source"], e["source"]), owner.get(e["target"], e["target"])
        if s == t or s not in nodes or t not in nodes:
            continue
        acc = summed.setdefault((s, t), [0.0, 0.0])
        acc[0] += e["weight"]
        acc[1] += e.get("influence", abs(e["weight"]))
    kept = [(s, t, w, inf) for (s, t), (w, inf) in summed.items() if inf >= cutoff]
    kept.sort(key=lambda e: -abs(e[2]))
    return kept


def circuit_view(g, title: str | None = None) -> GraphView:
    """A Marks-style circuit (``interp.circuits.graph``: networkx, nodes ``hook|pos|latent``)
    on the same grid: x = position (``all`` for nodes summed over positions), y = the hook
    (in the circuit's hook order, upstream at the bottom), the metric on top at the last
    position; size by |effect|."""
    from interp.circuits.attribution import OUTPUT

    hooks = list(g.graph.get("hooks") or sorted({d["hook"] for n, d in g.nodes(data=True)
                                                 if n != OUTPUT}))
    positions = [d["position"] for n, d in g.nodes(data=True) if n != OUTPUT] or [0]
    last = max(positions)
    nodes: dict[str, ViewNode] = {}
    for n, d in g.nodes(data=True):
        if n == OUTPUT:
            nodes[n] = ViewNode(n, "target", last, float(len(hooks)), 0.0, "metric",
                                f"<b>metric</b> {g.graph.get('metric', '')}")
            continue
        effect = float(d.get("effect", 0.0))
        pos = "all positions" if d["position"] == -1 else f"@ {d['position']}"
        what = "error" if d["kind"] == "error" else f"latent {d['latent']}"
        kind = "error" if d["kind"] == "error" else "feature"
        act = d.get("activation")
        hover = (f"<b>{d['hook']} {what}</b> {pos}<br>effect {effect:+.4f}"
                 + (f"<br>activation {act:.3f}" if isinstance(act, float)
                    and math.isfinite(act) else ""))
        nodes[n] = ViewNode(n, kind, int(d["position"]), float(hooks.index(d["hook"])),
                            abs(effect) if math.isfinite(effect) else 0.0,
                            f"{d['hook']} {pos} {what} ({effect:+.4f})", hover)
    edges = [(u, v, float(d.get("effect", 0.0)), abs(float(d.get("effect", 0.0))))
             for u, v, d in g.edges(data=True) if u in nodes and v in nodes]
    edges.sort(key=lambda e: -abs(e[2]))
    columns = {p: ("all" if p == -1 else str(p)) for p in sorted(set(positions))}
    rows = {float(i): _short_hook(h) for i, h in enumerate(hooks)}
    rows[float(len(hooks))] = "metric"
    return GraphView(nodes, edges, columns, rows, title or g.graph.get("task") or "circuit",
                     webgl=False, row_px=110.0)


def _short_hook(hook: str) -> str:
    from interp.hooks import layer_of

    layer = layer_of(hook)
    return hook if layer is None else f"L{layer} {hook.split('.')[-1].removeprefix('hook_')}"


# ------------------------------------------------------------------ the figure
def graph_figure(view: GraphView, *, selected: str | None = None, max_edges: int = 3000,
                 width_px: float = 850.0, title: str | None = None) -> go.Figure:
    """``view`` on the grid: nodes coloured by kind, sized by influence (never wider than
    their cell's lattice), pinned ones ringed, the selected one ringed in orange with all
    its edges drawn on top; the ``max_edges`` strongest edges blue (positive) or red
    (negative), width and opacity by |weight| in three steps. One node trace (the last;
    ``customdata`` = node ids) so a click names its node; WebGL (``Scattergl``) when
    ``view.webgl``, else SVG."""
    Scatter = go.Scattergl if view.webgl else go.Scatter
    items = [(i, v.column, v.row, v.influence) for i, v in view.nodes.items()]
    layout = grid_layout(items, width_px=width_px, row_px=view.row_px)
    while layout.pitch < 7 and layout.row_px < 2 * view.row_px:  # crowded: a taller figure
        layout = grid_layout(items, width_px=width_px, row_px=layout.row_px * 1.2)
    fig = go.Figure(_edge_traces(Scatter, view, layout.xy, selected, max_edges))
    # legend entries (edges and nodes are drawn without legends): empty SVG traces, which
    # cost the browser nothing (every WebGL trace is a draw call of its own)
    for sign in (1, -1):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", hoverinfo="skip",
                                 name="excites" if sign > 0 else "inhibits",
                                 line=dict(color=f"rgb({EDGE_COLOURS[sign]})", width=2)))
    for kind in KIND_COLOURS:
        if any(v.kind == kind for v in view.nodes.values()):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=KIND_NAMES[kind],
                                     marker=dict(color=KIND_COLOURS[kind], size=10,
                                                 symbol=KIND_SYMBOLS[kind]),
                                     hoverinfo="skip"))
    fig.add_trace(_node_trace(Scatter, view, layout, selected))
    _axes(fig, view, layout, title)
    return fig


def _edge_traces(Scatter, view: GraphView, xy: dict, selected: str | None,
                 max_edges: int) -> list:
    """The ``max_edges`` strongest edges faintly, in (sign, |weight| step) traces; the
    selected node's edges strongly on top."""
    drawn = view.edges[:max_edges]
    if selected in view.nodes:
        drawn = [e for e in drawn if selected not in (e[0], e[1])]
    peak = max((abs(e[2]) for e in view.edges), default=1.0) or 1.0
    fade = 1.0 if len(drawn) <= 300 else 0.5  # many edges: the selected node's carry detail
    steps = ((0.0, 0.5, 0.10), (0.1, 1.0, 0.25), (0.35, 2.2, 0.5))  # (|w| share from, px, alpha)
    out = []
    for sign in (1, -1):
        for k, (lo, width, alpha) in enumerate(steps):
            hi = steps[k + 1][0] if k + 1 < len(steps) else math.inf
            part = [e for e in drawn if (e[2] >= 0) == (sign > 0)
                    and lo <= abs(e[2]) / peak < hi]
            if part:
                out.append(_edge_trace(Scatter, part, xy,
                                       f"rgba({EDGE_COLOURS[sign]},{alpha * fade:.2f})", width))
    if selected in view.nodes:
        mine = [e for e in view.edges if selected in (e[0], e[1])]
        local = max((abs(e[2]) for e in mine), default=1.0) or 1.0
        for sign in (1, -1):
            for lo, hi, width in ((0.0, 0.25, 1.2), (0.25, math.inf, 3.0)):
                part = [e for e in mine if (e[2] >= 0) == (sign > 0)
                        and lo <= abs(e[2]) / local < hi]
                if part:
                    out.append(_edge_trace(Scatter, part, xy,
                                           f"rgba({EDGE_COLOURS[sign]},0.9)", width))
    return out


def _node_trace(Scatter, view: GraphView, layout: Layout, selected: str | None):
    """All nodes in one trace: numbers, not per-point strings, for colour, symbol and ring
    (plotly validates numeric arrays at numpy speed: 5,000 nodes in milliseconds)."""
    ids = list(view.nodes)
    kinds = list(KIND_COLOURS)
    kind = np.array([kinds.index(view.nodes[i].kind) for i in ids], dtype=np.int8)
    influence = np.array([view.nodes[i].influence for i in ids], dtype=np.float64)
    top = max((v.influence for v in view.nodes.values() if v.kind != "supernode"),
              default=1.0) or 1.0
    sizes = 6 + 14 * np.sqrt(np.clip(influence / top, 0.0, 1.0))
    big = np.isin(kind, [kinds.index(k) for k in ("token", "target", "supernode")])
    sizes[big] = np.maximum(sizes[big], 10)
    sizes = np.maximum(np.minimum(sizes, [layout.cap[i] for i in ids]), 3.0)
    ring = np.zeros(len(ids), dtype=np.int8)   # 0 none, 1 pinned, 2 selected
    ring[[k for k, i in enumerate(ids) if i in view.pinned]] = 1
    if selected in view.nodes:
        k = ids.index(selected)
        ring[k] = 2
        sizes[k] = max(sizes[k], 12.0)
    text = np.array([i.removeprefix(SUPERNODE_PREFIX) if view.nodes[i].kind == "supernode"
                     else "" for i in ids], dtype=object)
    last = len(kinds) - 1
    return Scatter(
        x=np.round([layout.xy[i][0] for i in ids], 2),
        y=np.round([layout.xy[i][1] for i in ids], 4),
        mode="markers+text" if any(text) else "markers", text=text, textposition="top center",
        textfont=dict(size=11, color=KIND_COLOURS["supernode"]),
        customdata=np.array(ids, dtype=object),
        hovertext=np.array([view.nodes[i].hover for i in ids], dtype=object),
        hoverinfo="text", showlegend=False, name="nodes",
        marker=dict(size=np.round(sizes, 1), color=kind, cmin=0, cmax=last,
                    colorscale=[[k / last, KIND_COLOURS[x]] for k, x in enumerate(kinds)],
                    symbol=np.array([SYMBOL_CODES[KIND_SYMBOLS[x]] for x in kinds])[kind],
                    opacity=0.95,
                    line=dict(width=np.array([0.0, 2.0, 3.0])[ring], color=ring, cmin=0, cmax=2,
                              colorscale=[[0, "rgba(0,0,0,0)"], [0.5, "#222222"],
                                          [1, "#ff7f0e"]])))


def _axes(fig: go.Figure, view: GraphView, layout: Layout, title: str | None) -> None:
    """Columns as token ticks (every other one shaded), rows as layer ticks, the height
    from the rows."""
    cols = sorted(layout.column_x)
    row_values = sorted(view.rows)
    lo, hi = min(row_values + layout.rows), max(row_values + layout.rows)
    shapes = [dict(type="rect", xref="x", yref="paper", layer="below", line_width=0,
                   fillcolor="rgba(0,0,0,0.035)", y0=0, y1=1,
                   x0=(layout.column_x[cols[k - 1]] + layout.column_x[c]) / 2,
                   x1=((layout.column_x[c] + layout.column_x[cols[k + 1]]) / 2
                       if k + 1 < len(cols) else layout.width))
              for k, c in enumerate(cols) if k % 2 == 1]
    many = len(cols) > 40
    fig.update_layout(
        title=dict(text=title if title is not None else view.title, font=dict(size=14)),
        template="plotly_white", height=int(layout.row_px * (hi - lo + 1.1)) + 150,
        shapes=shapes, margin=dict(l=90, r=20, t=60, b=70 if many else 50),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        hovermode="closest", clickmode="event+select", dragmode="zoom", uirevision="graph",
        xaxis=dict(tickmode="array", tickvals=[round(layout.column_x[c], 2) for c in cols],
                   ticktext=[view.columns.get(c, str(c)) for c in cols], showgrid=False,
                   zeroline=False, range=[0, layout.width], title="position",
                   tickangle=-90 if many else 0, tickfont=dict(size=10 if many else 12)),
        yaxis=dict(tickmode="array", tickvals=row_values,
                   ticktext=[view.rows[r] for r in row_values], range=[lo - 0.55, hi + 0.55],
                   showgrid=True, gridcolor="rgba(0,0,0,0.06)", zeroline=False))


def _edge_trace(Scatter, edges, xy, colour: str, width: float):
    """One trace of line segments (NaN between them: one WebGL draw for all)."""
    n = len(edges)
    xs = np.full(3 * n, np.nan)
    ys = np.full(3 * n, np.nan)
    xs[0::3] = [xy[e[0]][0] for e in edges]
    xs[1::3] = [xy[e[1]][0] for e in edges]
    ys[0::3] = [xy[e[0]][1] for e in edges]
    ys[1::3] = [xy[e[1]][1] for e in edges]
    return Scatter(x=np.round(xs, 2), y=np.round(ys, 4), mode="lines", hoverinfo="skip",
                   line=dict(color=colour, width=width), showlegend=False)


# ------------------------------------------------------------------ the feature card
@dataclass
class GraphDictionaries:
    """The replacement a graph was traced over, cut into its blocks (``interp.graphs.
    nodes.blocks_of``), with each dictionary's spec (shipped name or folder) by the short
    name the graph's nodes record."""

    blocks: list
    specs: dict[str, str]

    def block(self, name: str):
        for b in self.blocks:
            if b.name == name:
                return b
        raise DataError(f"the graph's dictionaries have no block {name}; they have "
                        f"{', '.join(b.name for b in self.blocks)}")


def graph_dictionaries(dictionaries: list[str]) -> GraphDictionaries:
    """Load the dictionaries a graph names (``doc["dictionaries"]``) as its blocks."""
    from interp.graphs.nodes import blocks_of
    from interp.sae.replacement import expand, load_dictionary

    dicts, names, specs = [], [], {}
    for spec in dictionaries:
        for one in expand(spec):
            d, name = load_dictionary(one)
            dicts.append(d)
            names.append(name)
            specs[name] = one
    return GraphDictionaries(blocks_of(dicts, names), specs)


def logit_effects(model, block, latent: int, m: int = 8) -> dict[str, list[tuple[int, float]]]:
    """The direct effect on the logits of a block's latent: its decoder row at every site
    it writes (a CLT layer's: every later MLP output), each as the residual direction it
    writes through ln_final (``interp.features.logits.output_directions``, the rule the
    feature stores use), summed, through the unembedding. {"boosted": [(token, value)],
    "suppressed": [...]}, ``m`` each."""
    from types import SimpleNamespace

    import torch

    from interp.features.logits import output_directions

    total = None
    for site, dec in zip(block.writes, block.decoders):
        row = SimpleNamespace(W_dec=dec[latent:latent + 1].detach().float(),  # a one-latent
                              cfg=SimpleNamespace(transcoder=False))          # dictionary
        d = output_directions(row, model, site)
        if d is None:
            raise DataError(f"{site} does not map to the residual stream linearly: "
                            f"no logit effects")
        total = d if total is None else total + d
    effects = (total @ model.W_U.detach().float().cpu())[0]
    m = min(m, effects.shape[0])
    top, bottom = torch.topk(effects, m), torch.topk(effects, m, largest=False)
    return {"boosted": [(int(i), float(v)) for v, i in zip(top.values, top.indices)],
            "suppressed": [(int(i), float(v)) for v, i in zip(bottom.values, bottom.indices)]}


def top_activations(model, blocks: list, block_name: str, latent: int, contexts,
                    token_names: list[str], k: int = 5, window: tuple[int, int] = (8, 2)
                    ) -> list[dict]:
    """The ``k`` largest activations of (block, latent) over ``contexts`` (N, T) token ids
    (at most one per context), each as an example window ``interp.viz.features.
    example_html`` draws: {"value", "tokens", "acts", "max_index", "context", "position"}."""
    from interp.graphs.nodes import feature_activations

    acts = feature_activations(model, blocks, contexts, [(block_name, int(latent))])[..., 0]
    best, where = acts.max(dim=1)            # per context
    order = best.argsort(descending=True)[:k]
    out = []
    for c in order.tolist():
        value = float(best[c])
        if value <= 0:
            break
        p = int(where[c])
        lo, hi = max(0, p - window[0]), min(acts.shape[1], p + window[1] + 1)
        out.append({"value": value, "context": c, "position": p, "max_index": p - lo,
                    "tokens": [token_names[int(t)] for t in contexts[c, lo:hi]],
                    "acts": [float(a) for a in acts[c, lo:hi]]})
    return out
