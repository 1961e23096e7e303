"""The graph view (``interp.viz.graphs``): the grid layout (no two nodes too close, however
crowded a cell; tokens at the bottom, targets on top, attention below MLP), thresholds,
supernodes (edges summed), annotations saved into the graph file and read back, the
Marks-style circuit on the same grid, a feature node's card against the feature stores'
rule, and the Graphs page run headless (streamlit's AppTest)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from graph_fixtures import synthetic_graph
from interp.errors import CorruptArtifactError, DataError
from interp.graphs.io import (FORMAT, annotations, find_graphs, load_graph, save_annotations,
                              save_graph)
from interp.viz.graphs import (SUPERNODE_PREFIX, circuit_view, graph_figure, graph_view,
                               grid_layout, kept_nodes, node_row, score_cutoff)

APP = str(Path(__file__).resolve().parents[1] / "apps" / "interp_app.py")


def pixel_distances(layout, ids):
    """Pairwise distances in pixels (x is in pixels, y in rows of ``row_px``)."""
    pts = np.array([(layout.xy[i][0], layout.xy[i][1] * layout.row_px) for i in ids])
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    return d[np.triu_indices(len(ids), 1)]


# ------------------------------------------------------------------ layout
def test_crowded_cells_never_bring_two_nodes_closer_than_the_pitch():
    # 60 nodes in one cell, 12 in its neighbour, single nodes elsewhere, two rows
    items = [(f"a{i}", 30, 1.0, float(i)) for i in range(60)]
    items += [(f"b{i}", 29, 1.0, 1.0) for i in range(12)]
    items += [(f"c{i}", 31, 2.0, 1.0) for i in range(5)]
    items += [(f"t{p}", p, 0.0, 1.0) for p in range(40)]
    layout = grid_layout(items, width_px=850, row_px=90)
    ids = [i for i, *_ in items]
    narrowest = min(850 / 40, 12.0)
    assert pixel_distances(layout, ids).min() >= 0.99 * min(layout.pitch, narrowest)
    # every node of a cell stays in its column: columns' x ranges never interleave
    spans = {}
    for node, col, _, _ in items:
        x = layout.xy[node][0]
        lo, hi = spans.get(col, (x, x))
        spans[col] = (min(lo, x), max(hi, x))
    ordered = [spans[c] for c in sorted(spans)]
    assert all(a[1] < b[0] for a, b in zip(ordered, ordered[1:]))
    # ... and in its row's band (half-way to the next row)
    assert all(abs(layout.xy[n][1] - r) < 0.5 for n, _, r, _ in items)
    # heavier nodes first (top left of the lattice)
    assert layout.xy["a59"][1] >= layout.xy["a0"][1]
    # a marker never outgrows the room its neighbours leave
    assert max(layout.cap[f"a{i}"] for i in range(60)) <= layout.pitch


def test_5000_nodes_fit_without_overlap():
    doc = synthetic_graph(5000, 2000)
    view = graph_view(doc)
    fig = graph_figure(view)
    nodes = fig.data[-1]
    assert len(nodes.x) == 5000 and list(nodes.customdata) == list(view.nodes)
    assert type(nodes).__name__ == "Scattergl"
    pts = np.stack([np.asarray(nodes.x, float), np.asarray(nodes.y, float)], 1)
    rows = sorted(view.rows)
    # one pixel scale for y: the figure's plot height over its y range
    px_per_row = (fig.layout.height - 150) / (rows[-1] - rows[0] + 1.1)
    pts[:, 1] *= px_per_row
    from scipy.spatial import cKDTree

    d, _ = cKDTree(pts).query(pts, k=2)
    assert d[:, 1].min() >= 4.0  # pixels
    sizes = np.asarray(nodes.marker.size)
    assert (sizes <= d[:, 1] + 1e-6).mean() > 0.99  # markers do not overlap


def test_tokens_at_the_bottom_targets_on_top_attention_below_mlp():
    assert node_row({"kind": "token"}, 6) == 0.0
    assert node_row({"kind": "target", "layer": 6}, 6) == 7.0
    mlp2 = node_row({"kind": "feature", "block": "mlp.2", "layer": 2}, 6)
    attn2 = node_row({"kind": "feature", "block": "attn.2", "layer": 2}, 6)
    mlp1 = node_row({"kind": "feature", "block": "mlp.1", "layer": 1}, 6)
    err = node_row({"kind": "error", "site": "blocks.2.attn.hook_z", "layer": 2}, 6)
    assert mlp1 < attn2 == err < mlp2
    doc = synthetic_graph(300, 600)
    view = graph_view(doc)
    fig = graph_figure(view)
    ys = dict(zip(fig.data[-1].customdata, fig.data[-1].y))
    tokens = [ys[i] for i, v in view.nodes.items() if v.kind == "token"]
    features = [ys[i] for i, v in view.nodes.items() if v.kind in ("feature", "error")]
    assert max(tokens) < min(features) and max(features) < ys["target|0"]
    assert list(fig.layout.xaxis.ticktext[:3]) == [
        doc["token_labels"][0], doc["token_labels"][1], doc["token_labels"][2]]


# ------------------------------------------------------------------ thresholds
def small_doc() -> dict:
    """tok|0 -> a, b -> c -> d -> target, with influences and cumulative shares."""
    def feat(i, pos, layer, inf, cum):
        return {"id": i, "kind": "feature", "block": f"mlp.{layer}", "layer": layer,
                "position": pos, "latent": 1, "activation": 1.0, "influence": inf,
                "cumulative": cum}
    nodes = [{"id": "tok|0", "kind": "token", "layer": -1, "position": 0, "label": "x",
              "influence": 0.5, "cumulative": 0.3},
             {"id": "tok|1", "kind": "token", "layer": -1, "position": 1, "label": "y",
              "influence": 0.0, "cumulative": 1.0},
             feat("a", 1, 0, 0.40, 0.45), feat("b", 1, 0, 0.20, 0.80), feat("c", 1, 1, 0.1, 0.9),
             feat("d", 1, 2, 0.05, 0.95),
             {"id": "target|0", "kind": "target", "label": "logit y", "layer": 3, "position": 1,
              "value": 1.0, "influence": 0.0, "cumulative": 1.0}]
    edges = [("tok|0", "a", 1.0, 0.5), ("a", "c", 1.0, 0.3), ("b", "c", 2.0, 0.2),
             ("a", "d", -0.5, 0.05), ("c", "d", 0.3, 0.04), ("d", "target|0", 1.0, 0.01)]
    return {"format": FORMAT, "model": "othello", "dictionaries": [], "prompt": "x y",
            "tokens": [0, 1], "token_labels": ["x", "y"], "blocks": [], "targets": [],
            "scores": {}, "nodes": nodes,
            "edges": [{"source": s, "target": t, "weight": w, "influence": i}
                      for s, t, w, i in edges]}


def test_node_threshold_max_features_and_pins():
    doc = small_doc()
    assert kept_nodes(doc, 1.0) == {n["id"] for n in doc["nodes"]}
    assert kept_nodes(doc, 0.5) == {"tok|0", "tok|1", "target|0", "a"}
    assert kept_nodes(doc, 1.0, max_features=2) == {"tok|0", "tok|1", "target|0", "a", "b"}
    assert "d" in kept_nodes(doc, 0.5, always={"d"})
    view = graph_view(doc, node_threshold=0.85)
    assert set(view.nodes) == {"tok|0", "tok|1", "target|0", "a", "b"}
    assert {(s, t) for s, t, *_ in view.edges} == {("tok|0", "a")}  # both ends kept


def test_edge_threshold_keeps_the_share_of_influence():
    scores = np.array([0.5, 0.3, 0.2, 0.05, 0.04, 0.01])
    assert score_cutoff(scores, 1.0) == 0.0
    assert score_cutoff(scores, 0.5) == 0.3   # 0.5 alone is 0.455 of 1.1: the next one too
    doc = small_doc()
    view = graph_view(doc, edge_threshold=0.5)
    assert {(s, t) for s, t, *_ in view.edges} == {("tok|0", "a"), ("a", "c")}
    assert [abs(w) for *_, w, _ in view.edges] == sorted(
        (abs(w) for *_, w, _ in view.edges), reverse=True)


def test_supernode_is_one_node_with_summed_edges():
    doc = small_doc()
    marks = {"pinned": [], "notes": {},
             "supernodes": [{"name": "ab", "members": ["a", "b"]},
                            {"name": "cd", "members": ["c", "d"]}]}
    view = graph_view(doc, marks=marks)
    ab, cd = SUPERNODE_PREFIX + "ab", SUPERNODE_PREFIX + "cd"
    assert {"a", "b", "c", "d"}.isdisjoint(view.nodes) and {ab, cd} <= set(view.nodes)
    edges = {(s, t): w for s, t, w, _ in view.edges}
    # a->c 1.0 + b->c 2.0 + a->d -0.5; c->d is inside cd and dropped
    assert edges == {("tok|0", ab): 1.0, (ab, cd): pytest.approx(2.5),
                     (cd, "target|0"): 1.0}
    assert view.nodes[ab].influence == pytest.approx(0.6)
    assert set(view.nodes[ab].members) == {"a", "b"}
    # members hidden by the threshold still belong to their supernode
    assert ab in graph_view(doc, node_threshold=0.1, marks=marks).nodes
    # the figure draws a supernode as one named marker
    fig = graph_figure(view)
    assert "ab" in list(fig.data[-1].text)


def test_pinned_only_shows_the_pinned_subgraph():
    doc = small_doc()
    marks = {"pinned": ["a", "c", SUPERNODE_PREFIX + "grp"], "notes": {"c": "a note"},
             "supernodes": [{"name": "grp", "members": ["d"]}]}
    view = graph_view(doc, pinned_only=True, marks=marks)
    assert set(view.nodes) == {"a", "c", SUPERNODE_PREFIX + "grp"}
    assert {(s, t) for s, t, *_ in view.edges} == {
        ("a", "c"), ("a", SUPERNODE_PREFIX + "grp"), ("c", SUPERNODE_PREFIX + "grp")}
    assert "a note" in view.nodes["c"].hover
    fig = graph_figure(view, selected="c")
    ring = dict(zip(fig.data[-1].customdata, fig.data[-1].marker.line.color))
    assert ring["c"] == 2 and ring["a"] == 1   # selected, pinned


# ------------------------------------------------------------------ annotations on disk
def test_annotations_round_trip_through_the_graph_file(tmp_path):
    doc = small_doc()
    path = save_graph(doc, tmp_path / "graphs" / "g.json")
    assert annotations(load_graph(path)) == {"pinned": [], "supernodes": [], "notes": {}}
    before = json.loads(path.read_text())
    save_annotations(path, pinned=["a", "super|ab"],
                     supernodes=[{"name": "ab", "members": ["a", "b"]}])
    save_annotations(path, notes={"c": "fires on x"})
    back = load_graph(path)
    assert annotations(back) == {"pinned": ["a", "super|ab"], "notes": {"c": "fires on x"},
                                 "supernodes": [{"name": "ab", "members": ["a", "b"]}]}
    assert {k: v for k, v in back.items() if k not in ("pinned", "supernodes", "notes")} \
        == before                                  # nothing else changed
    assert [p.name for p in path.parent.iterdir()] == ["g.json"]  # no temporary file left
    assert find_graphs(tmp_path) == [path]
    # malformed annotations are refused on reading and never written
    with pytest.raises(DataError, match="two supernodes"):
        save_annotations(path, supernodes=[{"name": "ab", "members": ["a"]},
                                           {"name": "cd", "members": ["a"]}])
    assert annotations(load_graph(path))["supernodes"] == [{"name": "ab", "members": ["a", "b"]}]
    bad = dict(back, notes=["c"])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CorruptArtifactError, match="notes"):
        load_graph(tmp_path / "bad.json")


def test_annotations_are_written_only_into_a_graph_file(tmp_path):
    other = tmp_path / "circuit.json"
    text = json.dumps({"format": "interp-circuit/1", "nodes": [], "edges": []})
    other.write_text(text)
    with pytest.raises(CorruptArtifactError, match="not an attribution graph"):
        save_annotations(other, pinned=["a"])
    assert other.read_text() == text


# ------------------------------------------------------------------ circuits on the grid
def test_circuit_nodes_of_one_position_spread_within_their_cell():
    from interp.circuits.graph import FORMAT as CIRCUIT, from_json
    from interp.viz.circuits import circuit_figure

    hook = "blocks.3.hook_resid_post"
    nodes = [{"id": f"{hook}|20|{i}", "hook": hook, "layer": 3, "position": 20, "latent": i,
              "kind": "latent", "effect": 0.1 * (i + 1), "activation": 1.0} for i in range(30)]
    nodes += [{"id": f"{hook}|20|err", "hook": hook, "layer": 3, "position": 20, "latent": None,
               "kind": "error", "effect": -0.5, "activation": 3.0},
              {"id": "output", "hook": "output", "layer": 10**6, "position": -1, "latent": None,
               "kind": "output", "effect": float("nan"), "activation": float("nan")}]
    edges = [{"source": n["id"], "target": "output", "effect": n["effect"]} for n in nodes[:-1]]
    g = from_json({"format": CIRCUIT, "metadata": {"hooks": [hook], "task": "t"},
                   "nodes": nodes, "edges": edges})
    assert isinstance(g, nx.DiGraph)
    view = circuit_view(g)
    assert view.nodes["output"].row > view.nodes[f"{hook}|20|0"].row
    fig = circuit_figure(g, "t", selected=f"{hook}|20|5")
    trace = fig.data[-1]
    assert type(trace).__name__ == "Scatter"   # SVG: a circuit has a few hundred nodes
    pts = np.stack([np.asarray(trace.x, float), np.asarray(trace.y, float) * 110], 1)
    d = [np.hypot(*(a - b)) for a, b in itertools.combinations(pts, 2)]
    assert min(d) >= 10.0
    assert f"{hook}|20|5" in list(trace.customdata)


# ------------------------------------------------------------------ the feature card
def test_logit_effects_follow_the_feature_stores_rule():
    import torch

    from interp.features.logits import logit_effects as store_effects
    from interp.models import load
    from interp.sae.replacement import load_dictionary
    from interp.viz.graphs import graph_dictionaries, logit_effects, top_activations
    from interp.viz.prompts import corpus_contexts

    model = load("othello").requires_grad_(False)
    gd = graph_dictionaries(["othello/plt"])
    assert gd.specs["othello--plt--L2"] == "othello/plt/L2"
    block = gd.block("mlp.2")
    sae, _ = load_dictionary("othello/plt/L2")
    ref = store_effects(sae, model, block.writes[0], 8)
    latent = int(np.argmax(ref["pos_values"][:, 0]))
    ours = logit_effects(model, block, latent, 8)
    assert [t for t, _ in ours["boosted"]] == ref["pos_ids"][latent].tolist()
    assert np.allclose([v for _, v in ours["suppressed"]], ref["neg_values"][latent], atol=1e-5)
    with pytest.raises(DataError, match="no block"):
        gd.block("attn.2")
    contexts = corpus_contexts("othello", 16, 20)
    from interp.data.othello import token_names
    from interp.graphs.nodes import feature_activations

    top = top_activations(model, gd.blocks, "mlp.2", latent, contexts, token_names(), k=3)
    acts = feature_activations(model, gd.blocks, contexts, [("mlp.2", latent)])[..., 0]
    assert top and top[0]["value"] == pytest.approx(float(acts.max()))
    assert [e["value"] for e in top] == sorted((e["value"] for e in top), reverse=True)
    e = top[0]
    assert e["acts"][e["max_index"]] == pytest.approx(e["value"])
    assert isinstance(torch.as_tensor(contexts), torch.Tensor)


# ------------------------------------------------------------------ the page, headless
def test_graphs_page_selects_pins_groups_and_restores(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from app_fixtures import write_store_run

    run = write_store_run(tmp_path / "run")
    path = save_graph(synthetic_graph(300, 900, n_pos=12, seed=3), run / "graphs" / "g.json")
    monkeypatch.setenv("INTERP_RUN", str(run))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/graphs.py")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    assert at.selectbox(key="graph_file").value == str(path)
    doc = load_graph(path)
    features = sorted((n for n in doc["nodes"] if n["kind"] == "feature"),
                      key=lambda n: -n["influence"])
    first, second = features[0]["id"], features[1]["id"]
    assert at.session_state["graph_sel"] == first
    md = "\n".join(m.value for m in at.markdown)
    captions = "\n".join(c.value for c in at.caption)
    assert "Logit effects" in md and ("Top activations" in md     # the feature card (a
                                      or "never fires on 128" in captions)  # random latent)
    # select another node with the selector: its edges are listed
    at.selectbox(key="graph_node").set_value(second).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["graph_sel"] == second
    at.button(key="graph_pin").click().run()
    at.selectbox(key="graph_node").set_value(first).run()
    at.button(key="graph_pin").click().run()
    at.text_input(key=f"graph_note_{first}").set_value("the top feature")
    at.button[[b.label for b in at.button].index("save note")].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect(key=f"graph_super_members_{first}").value == [first]  # the selected
    at.multiselect(key=f"graph_super_members_{first}").set_value([first, second])
    at.text_input(key="graph_super_name").set_value("top two")
    at.button[[b.label for b in at.button].index("group")].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    marks = annotations(load_graph(path))
    assert marks == {"pinned": [second, first], "notes": {first: "the top feature"},
                     "supernodes": [{"name": "top two", "members": [first, second]}]}
    assert at.session_state["graph_sel"] == SUPERNODE_PREFIX + "top two"
    at.toggle(key="graph_pinned_only").set_value(True).run()
    assert not at.exception
    # a fresh session (the graph opened again) draws what the file holds
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/graphs.py")
    at.run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    nodes = spec["data"][-1]
    assert "top two" in nodes["text"] and first not in nodes["customdata"]
    assert "pinned:" in "\n".join(c.value for c in at.caption)
    # a truncated graph file: its one-line error, nothing else
    bad = run / "graphs" / "bad.json"
    bad.write_text(path.read_text()[:3000])
    at.text_input(key="graph_path").set_value(str(bad)).run()
    assert not at.exception and len(at.error) == 1 and "not a readable graph" in at.error[0].value
    at.text_input(key="graph_path").set_value("").run()
    # trace a new graph from the page: written into RUN/graphs and opened
    at.radio(key="graph_mode").set_value("trace a new graph").run()
    at.text_area(key="graph_trace_prompt").set_value("f5 d6 c3 d3 c4")
    at.text_input(key="graph_trace_name").set_value("short")
    at.number_input(key="graph_trace_max").set_value(64)
    at.button[[b.label for b in at.button].index("trace")].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    traced = load_graph(run / "graphs" / "short.json")
    assert traced["prompt"] == "f5 d6 c3 d3 c4" and traced["dictionaries"] == ["othello/plt"]
    assert at.radio(key="graph_mode").value == "open a graph"
    assert at.selectbox(key="graph_file").value == str(run / "graphs" / "short.json")
    assert "5 d6 c3" in "\n".join(c.value for c in at.caption)
