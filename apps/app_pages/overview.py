"""Overview: the run's model, hooks and SAEs; training curves; FVU vs L0; densities."""
import json
from pathlib import Path

import streamlit as st

import app_common as C
from interp.runs import read_run_json
from interp.viz.runs import (fvu_l0_figure, replacement_evals, replacement_layers_figure,
                             replacement_row)

st.title("Overview")
run = C.existing_run()

meta = read_run_json(run)
model_name = meta.get("model")
infos = C.sae_infos(run, model_name)
ours = [i for i in infos if i.source != "shipped"]
stores = [i for i in infos if i.feature_store is not None]
cols = st.columns(4)
# a model folder by its name (a path does not fit the metric); the whole path on hover
cols[0].metric("model", Path(str(model_name)).name if model_name else "?",
               help=str(model_name) if model_name and "/" in str(model_name) else None)
cols[1].metric("hooks", len(meta.get("hooks") or []))
cols[2].metric("SAEs in the run", len(ours))
cols[3].metric("feature stores", len(stores))
if meta.get("hooks"):
    st.markdown("**Hooks harvested:** " + ", ".join(f"`{h}`" for h in meta["hooks"]))
with st.expander("run.json", expanded=False):
    st.json(meta)

st.subheader("SAEs")
if not infos:
    st.info("No SAEs in this run yet (train one with `interp train`), and none shipped for "
            "its model.")
    st.stop()
st.dataframe([i.row() for i in infos], hide_index=True, width="stretch")
st.caption("`run`: trained in this run (RUN/saes/); `shipped`: in saes/registry.json for "
           "this model (`interp saes`); `store`: known only from a feature store.")
st.plotly_chart(fvu_l0_figure(infos), width="stretch")

replacements = replacement_evals(run, model_name)
if replacements:
    st.subheader("Replacement models")
    st.dataframe([replacement_row(ev) for ev in replacements], hide_index=True,
                 width="stretch")
    st.caption("Every MLP a transcoder set or a cross-layer transcoder covers replaced by "
               "its prediction, error terms dropped (`interp eval SET_OR_CLT`): CE-loss "
               "recovered against all those MLPs zero-ablated, KL and top-1 agreement with "
               "the model; for othello the legal-move top-1 accuracy of both.")
    st.plotly_chart(replacement_layers_figure(replacements), width="stretch")

left, right = st.columns(2)
with left:
    st.subheader("Training curves")
    logged = [i for i in infos if i.train_log is not None]
    if logged:
        pick = st.selectbox("SAE", [i.name for i in logged], key="curves_sae")
        from interp.viz.sae import training_curves

        info = next(i for i in logged if i.name == pick)
        try:
            st.plotly_chart(training_curves(info.train_log, f"training of {info.name}"),
                            width="stretch")
        except (ValueError, json.JSONDecodeError) as e:
            st.warning(f"{info.train_log}: {e}")
    else:
        st.info("No SAE here has a train_log.jsonl.")
with right:
    st.subheader("Latent density")
    from interp.viz.sae import density_histogram

    broken = C.show_store_problems(run)
    if stores:
        pick = st.selectbox("feature store", [i.name for i in stores], key="density_sae")
        info = next(i for i in stores if i.name == pick)
        s = C.feature_store(str(info.feature_store)).summary()
        st.plotly_chart(density_histogram(
            s["density"], f"{info.name}: {s['d_sae'] - s['dead']:,} latents fired, "
            f"{s['dead']:,} never, over {s['n_tokens']:,} tokens"), width="stretch")
        C.page_link("features", "browse its features", sae=info.feature_store.stem)
    else:
        if not broken:
            st.info("No feature store in this run: build one with `interp features --run "
                    f"{run} --sae SAE --tokens 100000` (until then, the SAEs' held-out "
                    "evaluation densities are shown).")
        dens = {}
        for i in infos:
            if i.folder is not None and (i.folder / "metrics.json").exists():
                ev = json.loads((i.folder / "metrics.json").read_text()).get("eval") or {}
                if ev.get("density"):
                    dens[i.name] = ev["density"]
        if dens:
            pick = st.selectbox("SAE", list(dens), key="density_eval_sae")
            st.plotly_chart(density_histogram(dens[pick], f"{pick}: held-out density"),
                            width="stretch")
