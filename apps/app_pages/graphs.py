"""Graphs: attribution graphs (``interp graph``) explored as in circuit-tracer's viewer.

Open a graph of the run (``RUN/graphs/*.json``, or any path) or trace one here (a
replacement set of the run's model, a prompt, targets: written to ``RUN/graphs/NAME.json``).
The graph on a grid (x = position, y = layer); node and edge thresholds; click a node (or a
row of its edge tables, or pick it) to see its edges and, for a feature, its card (logit
effects, top activations over the model's own data, a link to its feature page). Pin nodes
(and show only them), group nodes into supernodes, write notes: all saved into the graph
file and restored when it is opened again.
"""
import re
from functools import partial

import streamlit as st

import app_common as C
import app_graphs as G
from interp.errors import InterpError
from interp.graphs.io import annotations, find_graphs, save_annotations
from interp.viz.graphs import SUPERNODE_PREFIX, graph_figure, node_label

st.title("Graphs")
run = C.run_path()
model_name = C.model_context(run)

pending = st.session_state.pop("_graph_open", None)  # a graph just traced: open it
if pending:
    st.session_state["graph_mode"] = "open a graph"
    st.session_state["graph_file"] = pending
    st.session_state["graph_path"] = ""

mode = st.radio("graph", ["open a graph", "trace a new graph"], horizontal=True,
                key="graph_mode")
if mode == "trace a new graph":
    from interp.runs import registry
    from interp.viz.prompts import default_prompt

    sets = [n for n, e in registry().items()
            if e.get("kind") == "replacement" and e.get("model") == model_name]
    if not sets:
        st.info(f"No replacement set (transcoders, CLT) of {model_name} is shipped; trace "
                f"with `interp graph --transcoders FOLDER ...`.")
        st.stop()
    board_text = None
    if model_name == "othello":  # the prompt on a board (its clicks cannot live in a form)
        from app_board import board_prompt

        board_text, _ = board_prompt("graph_trace_prompt", default=default_prompt(model_name),
                                     label="prompt (moves as squares, e.g. f5 d6 c3; or "
                                           "click a legal move on the board)")
    with st.form("graph_trace"):
        c = st.columns([2, 3])
        specs = c[0].multiselect("transcoders (and attention SAEs)", sets, default=sets[:1]
                                 if f"{model_name}/plt" not in sets else [f"{model_name}/plt"],
                                 key="graph_trace_sets")
        targets = c[1].text_input(
            "targets (separated by ' ; ')", "logits", key="graph_trace_targets",
            help="logits, logit:TOKEN, logitdiff:A,B, feature:L:POS:ID, attn:L.H:Q:K")
        prompt = board_text if board_text is not None else st.text_area(
            "prompt", default_prompt(model_name), key="graph_trace_prompt", height=80)
        c = st.columns(3)
        name = c[0].text_input("name (RUN/graphs/NAME.json)", "graph", key="graph_trace_name")
        max_nodes = c[1].number_input("max feature nodes attributed", 16, 16384, 1024, 64,
                                      key="graph_trace_max")
        replace = c[2].checkbox("replace a graph of this name", key="graph_trace_replace")
        go_trace = st.form_submit_button("trace", type="primary")
    if go_trace:
        from interp.graphs.trace import trace

        out = run / "graphs" / f"{name}.json"
        if not run.exists():
            st.error(f"No run folder at {run}: the graph is written into RUN/graphs/.")
        elif not re.fullmatch(r"[A-Za-z0-9_.-]+", name or ""):
            st.error("name the graph with letters, digits, '_', '.', '-'")
        elif out.exists() and not replace:
            st.error(f"{out} exists: tick 'replace' to trace it again (its pins, supernodes "
                     f"and notes go with it)")
        elif not specs:
            st.error("choose the transcoders of the replacement model")
        else:
            try:
                with st.spinner(f"tracing {prompt[:40]!r} over {', '.join(specs)}"):
                    trace(model_name, specs, prompt,
                          targets=[t.strip() for t in targets.split(" ; ") if t.strip()],
                          max_feature_nodes=int(max_nodes), out=out)
            except InterpError as e:
                C.show_error(e)
                st.stop()
            st.session_state["_graph_open"] = str(out)
            st.rerun()
    st.stop()

files = [str(p) for p in find_graphs(run)] if run.exists() else []
if st.session_state.get("graph_file") not in [None, "(none)"] + files:
    files.append(st.session_state["graph_file"])  # traced or typed before
if "graph_file" not in st.session_state and files:
    st.session_state["graph_file"] = files[0]
c = st.columns(2)
pick = c[0].selectbox("saved in the run (RUN/graphs)", ["(none)"] + files, key="graph_file")
typed = c[1].text_input("or a graph JSON path (`interp graph --out`)", key="graph_path")
path = typed.strip() or (pick if pick != "(none)" else None)
if not path:
    st.info(f"No graph in {run / 'graphs'}: trace one here, or with `interp graph "
            f"--transcoders {model_name}/plt --prompt ... --out {run}/graphs/NAME.json`.")
    st.stop()
try:
    doc = G.load_doc(path)
except (InterpError, OSError) as e:
    C.show_error(e)
    st.stop()
if st.session_state.get("_graph_path") != path:  # another graph: a fresh selection
    st.session_state["_graph_path"] = path
    for key in ("graph_sel", "graph_max_f"):
        st.session_state.pop(key, None)
ann = annotations(doc)


def write(**fields) -> None:
    """Save annotation fields into the graph file (atomically; only a graph file)."""
    try:
        save_annotations(path, **fields)
    except (InterpError, OSError) as e:
        st.session_state["_graph_error"] = str(e)


n_feat = sum(n["kind"] == "feature" for n in doc["nodes"])
c = st.columns(5)
c[0].metric("tokens", len(doc["tokens"]))
c[1].metric("features", f"{n_feat:,}")
c[2].metric("edges", f"{len(doc['edges']):,}")
sc = doc.get("scores") or {}
c[3].metric("replacement score", "-" if sc.get("replacement") is None
            else f"{sc['replacement']:.3f}")
c[4].metric("completeness", "-" if sc.get("completeness") is None
            else f"{sc['completeness']:.3f}")
st.caption(f"{doc.get('model')} over {', '.join(doc.get('dictionaries') or [])}; prompt "
           f"{doc.get('prompt', '')[:120]!r}; targets "
           f"{', '.join(t['label'] for t in doc['targets'])}")

c = st.columns([3, 3, 3, 2])
node_t = c[0].slider("node threshold (cumulative influence)", 0.0, 1.0, 1.0, 0.01,
                     key="graph_node_t", help="keep the feature and error nodes holding this "
                     "share of the influence (tokens, targets, pins always)")
edge_t = c[1].slider("edge threshold (share of edge influence)", 0.0, 1.0, 1.0, 0.01,
                     key="graph_edge_t")
max_f = c[2].slider("max features", 1, max(n_feat, 2), max(n_feat, 2), key="graph_max_f") \
    if n_feat > 1 else None
pinned_only = c[3].toggle("pinned only", key="graph_pinned_only",
                          disabled=not ann["pinned"],
                          help="the subgraph of the pinned nodes and supernodes")
v = G.view(path, node_threshold=node_t, edge_threshold=edge_t,
           max_features=max_f if max_f is not None and max_f < n_feat else None,
           pinned_only=pinned_only and bool(ann["pinned"]))
if st.session_state.get("graph_sel") not in v.nodes:
    ranked = sorted((n for n in v.nodes.values() if n.kind in ("feature", "supernode")),
                    key=lambda n: -n.influence)
    st.session_state["graph_sel"] = ranked[0].id if ranked else next(iter(v.nodes), None)
sel = st.session_state["graph_sel"]
# The figure rings the selected node and draws its edges on top, so a new selection is a new
# figure, which the browser mounts anew: a new WebGL context, the slow part of a click on a
# big graph. So a run draws the figure the previous run drew (nothing to mount; a click
# shows its node at once as plotly's own selection), the new selection's edges and card
# below it, and then runs once more to ring the new node and draw its edges.
drawn = st.session_state.get("graph_drawn")
if drawn not in v.nodes:
    drawn = st.session_state["graph_drawn"] = sel
MAX_EDGES = 3000
st.plotly_chart(graph_figure(v, selected=drawn, max_edges=MAX_EDGES), key="graph_plot",
                on_select=partial(G.on_plot_select, "graph_plot"), selection_mode="points",
                width="stretch", theme=None, config={"displaylogo": False})
shown = min(len(v.edges), MAX_EDGES)
st.caption(f"{len(v.nodes):,} nodes, {len(v.edges):,} edges at these thresholds"
           + (f" (the {shown:,} strongest drawn, and all of the selected node's)"
              if shown < len(v.edges) else "")
           + ". Blue edges excite, red inhibit; size = influence; ringed: pinned. Click a "
             "node to select it; drag to zoom, double-click to zoom out.")
if st.session_state.get("_graph_error"):
    st.error(st.session_state.pop("_graph_error"))
if sel is None:
    st.info("No node at these thresholds.")
    st.stop()

node = v.nodes[sel]
by_id = {n["id"]: n for n in doc["nodes"]}


def label(i: str) -> str:
    """A node's one-line label, also when the view does not draw it (merged, filtered)."""
    if i in v.nodes:
        return v.nodes[i].label
    return node_label(by_id[i], doc["token_labels"]) if i in by_id else i


ranked_ids = sorted(v.nodes, key=lambda i: -v.nodes[i].influence)
st.session_state["graph_node"] = sel
st.selectbox("selected node", list(dict.fromkeys([sel] + ranked_ids[:500])), key="graph_node",
             on_change=G.on_node_pick, format_func=label,
             help="the 500 most influential nodes (click the graph for any other)")
st.markdown(f"**Selected: {node.label}** (`{sel}`) · influence {node.influence:.4f}")

left, right = st.columns(2)
for col, title, edges in ((left, "incoming", v.incoming(sel)), (right, "outgoing",
                                                                 v.outgoing(sel))):
    with col:
        st.markdown(f"**{title} edges** ({len(edges)}): click a row to go there")
        other = [e[0] for e in edges[:200]]
        if edges:
            key = f"graph_{title}_{sel}"
            st.dataframe([{"node": v.nodes[o].label, "weight": round(w, 4)}
                          for o, w in edges[:200]], hide_index=True, width="stretch",
                         height=min(35 * len(other) + 38, 300), key=key,
                         on_select=partial(G.on_row_select, key, other),
                         selection_mode="single-row")
        else:
            st.caption("none at these thresholds")

# ---------------------------------------------------------------- pins, notes, supernodes
pinned = list(ann["pinned"])
c = st.columns([2, 2, 5])
if sel in pinned:
    if c[0].button("unpin", key="graph_unpin"):
        write(pinned=[p for p in pinned if p != sel])
        st.rerun()
else:
    if c[0].button("pin this node", key="graph_pin"):
        write(pinned=pinned + [sel])
        st.rerun()
if pinned and c[1].button(f"clear {len(pinned)} pins", key="graph_clear_pins"):
    st.session_state["graph_pinned_only"] = False
    write(pinned=[])
    st.rerun()
c[2].caption(f"pinned: {', '.join(label(p) for p in pinned)}"
             if pinned else "no pinned node: pin nodes to build a subgraph ('pinned only')")

notes = dict(ann["notes"])
with st.form(f"graph_note_form_{sel}", border=False):
    c = st.columns([6, 1])
    text = c[0].text_input("note on this node", notes.get(sel, ""), key=f"graph_note_{sel}")
    if c[1].form_submit_button("save note"):
        if text.strip():
            notes[sel] = text.strip()
        else:
            notes.pop(sel, None)
        write(notes=notes)
        st.rerun()

supers = ann["supernodes"]
with st.expander("supernodes: group nodes drawn as one (edges summed)",
                 expanded=node.kind == "supernode" or bool(supers)):
    near = [e[0] for e in v.incoming(sel)[:30]] + [e[0] for e in v.outgoing(sel)[:30]]
    pool = [i for i in dict.fromkeys([sel] + pinned + near + ranked_ids[:300])
            if i in by_id and by_id[i]["kind"] in ("feature", "error")]
    with st.form("graph_super_form", border=False):
        c = st.columns([5, 2, 1])
        members = c[0].multiselect("nodes to group", pool, default=[sel] if sel in pool else [],
                                   format_func=label, key=f"graph_super_members_{sel}")
        sname = c[1].text_input("supernode name", key="graph_super_name")
        make = c[2].form_submit_button("group")
    if make:
        taken = {s["name"] for s in supers}
        if not sname.strip() or "|" in sname:
            st.error("name the supernode (no '|')")
        elif sname.strip() in taken:
            st.error(f"a supernode {sname.strip()!r} exists: ungroup it first")
        elif len(members) < 2:
            st.error("choose at least two nodes to group")
        else:
            rest = [{"name": s["name"], "members": [m for m in s["members"] if m not in members]}
                    for s in supers]
            new = rest + [{"name": sname.strip(), "members": list(members)}]
            write(supernodes=[s for s in new if s["members"]])
            st.session_state["graph_sel"] = SUPERNODE_PREFIX + sname.strip()
            st.rerun()
    if supers:
        c = st.columns([5, 2])
        sizes = {s["name"]: len(s["members"]) for s in supers}
        drop = c[0].selectbox("supernodes", list(sizes), key="graph_super_drop",
                              format_func=lambda n: f"{n} ({sizes[n]} nodes)")
        if c[1].button("ungroup", key="graph_ungroup"):
            write(supernodes=[s for s in supers if s["name"] != drop],
                  pinned=[p for p in pinned if p != SUPERNODE_PREFIX + drop])
            st.rerun()

# ---------------------------------------------------------------- the feature card
raw = by_id.get(sel)
if node.kind == "supernode":
    st.markdown("**Members**: " + ", ".join(label(m) for m in node.members))
elif raw is not None and raw["kind"] == "feature":
    st.subheader(f"Feature {raw['block']} #{raw['latent']}")
    c = st.columns(4)
    c[0].metric("position", f"{raw['position']} ({doc['token_labels'][raw['position']]})")
    c[1].metric("activation", f"{raw.get('activation', float('nan')):.3f}")
    c[2].metric("influence", f"{raw.get('influence', 0.0):.4f}")
    c[3].metric("cumulative", f"{raw.get('cumulative', 0.0):.3f}")
    specs = tuple(doc.get("dictionaries") or [])
    card_model = doc.get("model") or model_name
    try:
        card = G.feature_card(card_model, specs, raw["block"], int(raw["latent"]))
    except (InterpError, OSError) as e:
        C.show_error(e)
        card = None
    if card is not None:
        from interp.viz.features import example_html

        fmt = lambda pairs: " ".join(f"`{t!r}` {x:+.2f}" for t, x in pairs)  # noqa: E731
        st.markdown(f"**Logit effects** (direct, decoder row through the unembedding): "
                    f"boosts {fmt(card['boosted'])}  \nsuppresses {fmt(card['suppressed'])}")
        sep = " " if card_model == "othello" else ""
        if card["examples"]:
            top = card["examples"][0]["value"]
            st.markdown(f"**Top activations** over {card['n_contexts']} contexts of "
                        f"{card_model}'s own data")
            st.markdown("\n".join(
                f"<div style='margin:2px 0'><span style='display:inline-block;width:5em'>"
                f"{e['value']:.3f}</span>{example_html(e, top, sep)}</div>"
                for e in card["examples"]), unsafe_allow_html=True)
        elif card["n_contexts"]:
            st.caption(f"it never fires on {card['n_contexts']} contexts of {card_model}'s data")
        try:
            spec = G.dictionaries(specs).specs.get(raw.get("dictionary"))
        except (InterpError, OSError):
            spec = None
        info = G.store_info(run, model_name, spec)
        if info is not None:
            C.feature_link(info.feature_store.stem, int(raw["latent"]),
                           f"open the feature page of {info.name} latent {raw['latent']}")
        elif C.show_store_problems(run):
            pass  # an unreadable store may be this dictionary's: its error says so
        elif spec:
            st.caption(f"No feature store of {spec} in this run: `interp features --run {run} "
                       f"--sae {spec} --tokens 100000` builds one.")
elif raw is not None:
    st.caption({"error": "an error node: what the dictionaries miss at this site and "
                         "position (kept so the replacement is exact)",
                "token": "a token embedding", "target": "a target the graph is traced from"
                }.get(raw["kind"], ""))

if drawn != sel:  # ring the new selection and draw its edges (see above)
    st.session_state["graph_drawn"] = sel
    st.rerun()
