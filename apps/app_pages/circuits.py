"""Circuits: discover a circuit on a built-in task (inference and gradients only) or load a
saved one; prune it with sliders; the circuit on the graph view's grid (x = position,
y = hook); pick a node (click it in the graph, or the selector) to see its edges and open its
feature page; the faithfulness curve."""
import json

import streamlit as st

import app_common as C
from interp.circuits.graph import faithfulness_figure, from_json, load_graph, prune, to_json
from interp.errors import InterpError
from interp.data.othello import square_name
from interp.viz.circuits import (circuit_figure, discover_circuit, node_choices,
                                 node_label, node_latent, prompt_task, tasks_for)
from interp.viz.runs import find_circuits


YOUR_PROMPT = "your prompt"


@st.cache_data(show_spinner="finding the circuit (attribution, edges, faithfulness)")
def cached_discover(model_name: str, sae_names: tuple, specs: tuple, task: str, prompts: int,
                    method: str, max_nodes: int, prompt: tuple | None = None) -> dict:
    """``prompt``: (text, answer, wrong, counterfactual or "") for the task YOUR_PROMPT."""
    from interp.circuits.discover import saes_for

    saes = saes_for(list(specs))
    m = C.model(model_name)
    if task == YOUR_PROMPT:
        text, answer, wrong, patch = prompt
        task = prompt_task(model_name, m, text, answer, wrong, patch or None)
    data = discover_circuit(m, saes, task, prompts, method, max_nodes)
    data["saes"] = {hook: name for hook, name in zip(saes, sae_names)}
    return data


def your_prompt(model_name: str) -> tuple[str, str, str, str]:
    """One prompt (on a board for othello: click legal moves), the answer and wrong tokens
    and an optional counterfactual prompt of the same length."""
    from interp.viz.prompts import default_prompt

    if model_name == "othello":
        from app_board import board_prompt

        text, pos = board_prompt("circuit_prompt", default=default_prompt(model_name),
                                 label="prompt (moves as squares, e.g. f5 d6 c3; or click a "
                                       "legal move on the board)")
        legal = [square_name(q) for q in pos.legal]
        illegal = [square_name(q) for q in pos.squares("empty") if q not in pos.legal]
        answer, wrong = (legal or ["c4"])[0], (illegal or ["a1"])[0]
    else:
        st.session_state.setdefault("circuit_prompt", default_prompt(model_name))
        text = st.text_area("prompt", key="circuit_prompt", height=90)
        answer, wrong = ")", "]"
    st.session_state.setdefault("circuit_answer", answer)  # then the user's own
    st.session_state.setdefault("circuit_wrong", wrong)
    c = st.columns(3)
    answer = c[0].text_input("answer token", key="circuit_answer",
                             help="a move for othello (a legal one, say); \\n for a newline")
    wrong = c[1].text_input("wrong token", key="circuit_wrong",
                            help="the metric is logit(answer) - logit(wrong) at the last "
                                 "position")
    patch = c[2].text_input("counterfactual prompt (optional, same length)",
                            key="circuit_patch", help="nodes are patched to their values on "
                            "it; without one, zero ablation")
    return text, answer.strip(), wrong.strip(), patch.strip()


st.title("Circuits")
run = C.run_path()
model_name = C.model_context(run)
infos = [i for i in C.sae_infos(run, model_name) if i.folder is not None and i.hook]
tasks = tasks_for(model_name)
mode = st.radio("circuit", ["discover", "load a saved circuit"], horizontal=True,
                key="circuit_mode")

data = None
if mode == "discover":
    if not infos:
        st.info(f"Circuit discovery needs an SAE of {model_name} (in the run or shipped); "
                f"this run has none.")
        st.stop()
    c = st.columns([1, 2])
    task = c[0].selectbox("task", tasks + [YOUR_PROMPT], key="circuit_task",
                          help="a built-in task (many prompts), or one prompt of your own "
                               "with the two tokens whose logit difference is the metric")
    names = [i.name for i in infos]
    chosen = c[1].multiselect("SAEs to splice (one per hook)", names,
                              default=[C.default_sae(infos)],
                              key="circuit_saes")
    prompt = your_prompt(model_name) if task == YOUR_PROMPT else None
    c = st.columns(3)
    prompts = (c[0].slider("prompts", 4, 64, 16, 4, key="circuit_prompts")
               if prompt is None else 1)
    method = c[1].selectbox("attribution", ["atp", "ig"], key="circuit_method",
                            help="attribution patching (one pass) or integrated gradients")
    max_nodes = c[2].slider("max nodes", 5, 200, 30, 5, key="circuit_max_nodes")
    if st.button("run discovery", type="primary", key="circuit_run"):
        st.session_state["circuit_params"] = dict(
            model_name=model_name, sae_names=tuple(chosen),
            specs=tuple(next(i.spec for i in infos if i.name == n) for n in chosen),
            task=task, prompts=prompts, method=method, max_nodes=max_nodes, prompt=prompt)
    params = st.session_state.get("circuit_params")
    if params and params["model_name"] == model_name:
        try:
            data = cached_discover(**params)
        except InterpError as e:
            C.show_error(e)
            st.stop()
        what = (f"{params['prompts']} prompts" if params["task"] != YOUR_PROMPT else
                f"logit({params['prompt'][1]}) - logit({params['prompt'][2]}) after "
                f"{params['prompt'][0][-60:]!r}, "
                + ("against its counterfactual" if params["prompt"][3] else "zero ablation"))
        st.caption(f"{params['task']} over {', '.join(params['sae_names'])}: {what}, "
                   f"{params['method']}, found in {data['seconds']:.1f} s")
else:
    files = find_circuits(run) if run.exists() else []
    c = st.columns(2)
    pick = c[0].selectbox("saved in the run", ["(none)"] + [str(p) for p in files],
                          key="circuit_file")
    typed = c[1].text_input("or a circuit JSON path (`interp circuit --out`)",
                            key="circuit_path")
    path = typed or (pick if pick != "(none)" else None)
    if path:
        try:
            g0 = load_graph(path)
        except InterpError as e:
            C.show_error(e)
            st.stop()
        data = {"graph": to_json(g0), "curve": [], "saes": {},
                "faithfulness": {k: g0.graph.get(k) for k in ("faithfulness", "completeness")}}

if data is None:
    st.info("Run a discovery or choose a saved circuit.")
    st.stop()

g = from_json(data["graph"])
f = data["faithfulness"]
c = st.columns(4)
c[0].metric("nodes", g.number_of_nodes() - 1)
c[1].metric("edges", g.number_of_edges())
c[2].metric("faithfulness", "-" if f.get("faithfulness") is None else f"{f['faithfulness']:.3f}")
c[3].metric("completeness", "-" if f.get("completeness") is None else f"{f['completeness']:.3f}")
if f.get("faithfulness_note"):
    st.warning(f["faithfulness_note"])

effects = [abs(d["effect"]) for n, d in g.nodes(data=True) if d.get("kind") != "output"]
edge_w = [abs(d["effect"]) for _, _, d in g.edges(data=True)]
c = st.columns(2)
top_n = max(effects or [0.0])
top_e = max(edge_w or [0.0])
node_t = c[0].slider("node threshold |effect|", 0.0, float(top_n) or 1.0, 0.0,
                     (float(top_n) or 1.0) / 100, format="%.4f", key="circuit_node_t")
edge_t = c[1].slider("edge threshold |effect|", 0.0, float(top_e) or 1.0, 0.0,
                     (float(top_e) or 1.0) / 100, format="%.4f", key="circuit_edge_t")
pruned = prune(g, node_threshold=node_t, edge_threshold=edge_t)
st.caption(f"after pruning: {pruned.number_of_nodes() - 1} nodes, {pruned.number_of_edges()} "
           f"edges (only what still reaches the metric). Click a node to open it.")

choices = node_choices(pruned)
st.session_state["_circuit_choices"] = choices
if choices and st.session_state.get("circuit_node") not in choices:
    st.session_state["circuit_node"] = choices[0]


def on_click() -> None:
    """A click on a latent node selects it (before the page runs, so the figure rings it)."""
    event = st.session_state.get("circuit_plot")
    points = event["selection"]["points"] if event else []
    keys = [p.get("customdata") for p in points]
    if keys and keys[0] in st.session_state.get("_circuit_choices", []):
        st.session_state["circuit_node"] = keys[0]


st.plotly_chart(circuit_figure(pruned, g.graph.get("task") or "circuit",
                               selected=st.session_state.get("circuit_node")),
                width="stretch", on_select=on_click, selection_mode="points", key="circuit_plot")
left, right = st.columns([3, 2])
with left:
    if choices:
        node = st.selectbox("node", choices, key="circuit_node",
                            format_func=lambda n: node_label(pruned, n))
        edges_in = sorted(pruned.in_edges(node, data="effect"), key=lambda e: -abs(e[2]))
        edges_out = sorted(pruned.out_edges(node, data="effect"), key=lambda e: -abs(e[2]))
        with st.expander(f"its edges: {len(edges_in)} in, {len(edges_out)} out"):
            st.dataframe([{"edge": f"from {node_label(pruned, u)}", "effect": round(w, 4)}
                          for u, _, w in edges_in[:50]]
                         + [{"edge": f"to {node_label(pruned, v)}", "effect": round(w, 4)}
                            for _, v, w in edges_out[:50]], hide_index=True, width="stretch")
        hook, latent = node_latent(pruned, node)
        info = C.store_for(C.sae_infos(run, model_name) if run.exists() else [], hook,
                           data["saes"].get(hook))
        if info is None and C.show_store_problems(run):
            pass  # an unreadable store may be this hook's: its error says so
        elif info is None:
            st.caption(f"No feature store for an SAE at {hook} in this run: build one with "
                       f"`interp features --run {run} --sae SAE --tokens 100000` to see its "
                       f"feature page.")
        else:
            C.feature_link(info.feature_store.stem, latent,
                           f"open the feature page of {info.name} latent {latent}")
            C.render_feature(info, latent, compact=True, model_name=model_name)
    else:
        st.info("No latent node left at these thresholds.")
with right:
    if data["curve"]:
        st.plotly_chart(faithfulness_figure(data["curve"]), width="stretch")
    st.download_button("download the circuit JSON", json.dumps(data["graph"], indent=1),
                       file_name="circuit.json", mime="application/json")
