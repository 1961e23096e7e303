"""Probes: k-sparse probes for a ground-truth property on neurons (a hook's units) and SAE
latents, F1 against k, and the probes' top units (SAE latents link to their feature pages).
Deep link: ``?page=probes&property=othello-mine-d3&sae=NAME``."""
import numpy as np
import streamlit as st

import app_common as C
from interp.errors import InterpError
from interp.probes.datasets import OTHELLO_KINDS, PYCODE_PROPS


@st.cache_data(show_spinner="fitting probes")
def cached_probes(model_name: str, prop: str, sources: tuple, sae_specs: tuple, ks: tuple,
                  method: str, contexts: int, examples: int) -> dict:
    from interp.probes.experiment import compare_sources

    saes = {name: C.sae(spec, model_name) for name, spec in sae_specs}
    return compare_sources(C.model(model_name), prop, list(sources), saes, ks=list(ks),
                           method=method, n_contexts=contexts, max_examples=examples)


@st.cache_data(show_spinner="the probe's board profile (128 games)")
def cached_probe_profile(model_name: str, source: str, spec: str | None, units: tuple,
                         weights: tuple) -> dict:
    """{state: 64 correlations} of a probe's logit with each square-state."""
    from interp.features.othello import probe_profile

    m = C.model(model_name)
    reads = dict(sae=C.sae(spec, model_name)) if spec else dict(hook=source.split(":", 1)[1])
    prof = probe_profile(m, list(units), list(weights), **reads)
    return {k: v.tolist() for k, v in prof.values(0, "corr").items()}


st.title("Probes")
run = C.run_path()
model_name = C.model_context(run)
if model_name not in C.EMBEDDED:
    st.info("Built-in probing properties exist for the embedded models (othello, pycode); "
            "probe your own labelled text with `interp probe --task FILE.csv`.")
    st.stop()
m = C.model(model_name)
infos = [i for i in C.sae_infos(run, model_name) if i.folder is not None and i.hook]
qp = st.query_params
want = qp.get("property") or ""

c = st.columns(3)
if model_name == "othello":
    parts = want.split("-") if want.startswith("othello-") else []
    kinds = list(OTHELLO_KINDS) + ["state"]
    if len(parts) == 3 and "probe_kind" not in st.session_state and parts[1] in kinds:
        st.session_state["probe_kind"], st.session_state["probe_square"] = parts[1], parts[2]
    kind = c[0].selectbox("property", kinds, key="probe_kind",
                          help="the square's state after the move just read (from the view of "
                          "the player to move), legal next move, or just flipped; state: all "
                          "three, one vs rest")
    st.session_state.setdefault("probe_square", "d3")
    square = c[1].text_input("square", key="probe_square")
    prop = f"othello-{kind}-{square.strip().lower()}"
else:
    props = [f"pycode-{p}" for p in PYCODE_PROPS] + [f"pycode-indent-{n}" for n in (1, 2, 3)] \
        + ["pycode-indent-level"]
    if want in props and "probe_prop" not in st.session_state:
        st.session_state["probe_prop"] = want
    prop = c[0].selectbox("property", props, key="probe_prop")
method = c[2].selectbox("selector", ["f_stat", "mean_diff", "l1", "greedy", "exact"],
                        key="probe_method", help="exact: the best single unit (k = 1 only)")

layers = m.cfg.n_layers
hooks = [f"hook:blocks.{l}.mlp.hook_post" for l in range(layers)] + \
    [f"hook:blocks.{l}.hook_resid_post" for l in range(layers)]
sae_sources = {f"sae:{i.name}": i for i in infos}
want_sae = qp.get("sae")
default = [f"sae:{want_sae}"] if f"sae:{want_sae}" in sae_sources else []
if not default:
    hook = infos[0].hook if infos else f"blocks.{layers // 2}.hook_resid_post"
    default = [f"hook:{hook}"] if f"hook:{hook}" in hooks else hooks[:1]
    default += [f"sae:{C.default_sae(infos)}"] if infos else []
sources = st.multiselect("sources (neurons / residual units at a hook, or SAE latents)",
                         hooks + list(sae_sources), default=default, key="probe_sources")
c = st.columns(3)
ks = c[0].multiselect("k", [1, 2, 4, 8, 16, 32, 64], default=[1, 2, 4, 8], key="probe_ks")
contexts = c[1].number_input("contexts", 4, 1024, 32, key="probe_contexts",
                             help="games / code contexts the labelled tokens come from")
examples = c[2].number_input("examples (at most)", 100, 50_000, 2000, 100,
                             key="probe_examples")
if method == "exact" and ks != [1]:
    st.caption("the exact selector fits k = 1 only")
    ks = [1]

if st.button("run probes", type="primary", key="probe_run", disabled=not sources or not ks):
    st.session_state["probe_params"] = dict(
        model_name=model_name, prop=prop, sources=tuple(sources),
        sae_specs=tuple((s[4:], sae_sources[s].spec) for s in sources if s in sae_sources),
        ks=tuple(sorted(ks)), method=method, contexts=int(contexts), examples=int(examples))
params = st.session_state.get("probe_params")
if not params or params["model_name"] != model_name:
    st.info("Choose a property and sources, then run the probes (a few seconds at these "
            "sizes: the model runs over the contexts once per source).")
    st.stop()
try:
    res = cached_probes(**params)
except InterpError as e:
    C.show_error(e)
    st.stop()

from interp.probes.experiment import f1_figure  # noqa: E402

st.caption(f"{res['dataset']}: {res['description']}; selector {res['method']}")
st.plotly_chart(f1_figure(res), width="stretch")
rows = []
for source, r in res["sources"].items():
    for p in r["results"]:
        rows.append({"source": source, "k": "dense" if p["k"] is None else str(p["k"]),
                     "F1": round(p["test"]["f1"], 3), "accuracy": round(p["test"]["accuracy"], 3),
                     "AUROC": round(p["test"]["auroc"], 3),
                     "units": ", ".join(map(str, (p["units"] or [])[:8]))})
st.dataframe(rows, hide_index=True, width="stretch")

st.subheader("Top units of the largest sparse probe")
all_infos = C.sae_infos(run, model_name)
cols = st.columns(max(1, len(res["sources"])))
for col, (source, r) in zip(cols, res["sources"].items()):
    with col:
        st.markdown(f"**{source}**")
        units = r.get("top_units") or []
        if not units:
            st.caption("one vs rest: see the table's units per class")
            continue
        info = None
        if source.startswith("sae:"):
            info = C.store_for(all_infos, name=source[4:])
        for u in units[:8]:
            label = f"unit {u['unit']} (weight {u['weight']:+.3f})"
            if info is not None:
                C.feature_link(info.feature_store.stem, u["unit"],
                               f"latent {u['unit']} (weight {u['weight']:+.3f})")
            else:
                st.markdown(f"- {label}")
        if source.startswith("sae:") and info is None:
            st.caption("no feature store for this SAE in the run: its latents have no page")

if model_name == "othello":
    from interp.viz.othello import board_heatmaps

    st.subheader("Board profile of the largest sparse probe")
    st.caption("The correlation of each source's probe logit (its largest sparse probe, the "
               "units and weights above) with every square's state over 128 held-out games: "
               "a probe for one square's state lights that square, and shows what else it "
               "reads (the Othello-GPT view of a probe).")
    specs = dict(params["sae_specs"])
    for source, r in res["sources"].items():
        largest = [p for p in r["results"] if p["k"] is not None]
        if "per_class" in r or not largest:
            st.caption(f"{source}: one vs rest (no single probe to profile)")
            continue
        p = largest[-1]
        try:
            values = cached_probe_profile(model_name, source, specs.get(source[4:]),
                                          tuple(p["units"]), tuple(p["weights"]))
        except InterpError as e:
            C.show_error(e)
            continue
        st.plotly_chart(board_heatmaps({k: np.array(v) for k, v in values.items()},
                                       title=f"{source}: k = {p['k']} probe for "
                                             f"{params['prop']}",
                                       value_name="r", height=230), width="stretch")
