"""Evals: the results of ``interp evals`` for the run's dictionaries and the shipped ones of
its model, side by side: a table of every summary metric, sparse probing against k,
ground-truth matching (with each dictionary's best-matched latents linked to their feature
pages), absorption by letter, LLM explanation scores."""
import pandas as pd
import streamlit as st

import app_common as C
from interp.errors import InterpError
from interp.evals.suite import comparison_rows
from interp.viz.evals import (absorption_figure, evals_folders, ground_truth_figure,
                              llm_figure, load_docs, probing_figure)

def evaluate_here(run, infos) -> None:
    """Run the default evaluations of one dictionary from the page (inference only, under a
    minute for a 2,048-latent SAE): a run's SAE writes beside its weights, a shipped one
    into RUN/evals/NAME, as ``interp evals NAME --run RUN`` does."""
    from interp.evals.suite import DEFAULT_EVALS, EVALS_FILE, make_target, owns_evals_file, \
        run_target
    from interp.outputs import Plan, claim, eval_folder

    with st.expander("run the evaluations of a dictionary (probing, absorption, ground "
                     "truth; `interp evals` adds an LLM's explanations)",
                     expanded=not folders):
        if not run.exists():
            st.caption(f"No run folder at {run}: results are written into the run "
                       f"(`interp evals NAME --out FOLDER` writes them anywhere).")
            return
        c = st.columns([4, 1])
        names = [i.name for i in infos if i.folder is not None]
        pick = c[0].selectbox("dictionary", names, key="evals_run_pick")
        if not c[1].button("evaluate", type="primary", key="evals_run"):
            return
        info = next(i for i in infos if i.name == pick)
        try:
            t = make_target(info.spec, eval_folder(info.spec, None, str(run)),
                            list(DEFAULT_EVALS), False, run)
            path = t.out / EVALS_FILE
            with claim(Plan(path, False, files={path: owns_evals_file})), \
                    st.status(f"evaluating {pick}", expanded=True) as status:
                run_target(t, C.model(t.model_name), {}, report=st.write)
                status.update(label=f"evaluated {pick}: {path}", state="complete")
        except InterpError as e:
            C.show_error(e)
            return
        st.rerun()


st.title("Evals")
run = C.run_path()
model_name = C.model_context(run)
infos = C.sae_infos(run, model_name)
folders = evals_folders(run if run.exists() else None, infos)
evaluate_here(run, infos)
if not folders:
    st.info(f"No evaluation results for {model_name}'s dictionaries yet: `interp evals "
            f"RUN/saes/NAME` writes them beside a run's SAE, `interp evals SHIPPED_NAME --run "
            f"{run}` into {run}/evals/ (or evaluate one above).")
    st.stop()
names = list(folders)
chosen = st.multiselect("dictionaries", names, default=names[:6], key="evals_chosen")
docs = load_docs({n: folders[n] for n in chosen})
if not docs:
    st.info("Choose dictionaries to compare.")
    st.stop()

rows = comparison_rows(docs)
table = pd.DataFrame(rows).set_index(["evaluation", "metric"])
st.dataframe(table.style.format(precision=3, na_rep="-"), width="stretch",
             height=min(38 + 35 * len(table), 600))
st.caption("Means over properties, letters or latents (see each section); `-`: not run for "
           "that dictionary. Each dictionary's results sit in its evals.json: "
           + "; ".join(f"{n}: `{folders[n]}`" for n in docs))

for n, d in docs.items():
    for ev, why in (d.get("skipped") or {}).items():
        st.caption(f"{n}: {ev} not run: {why}")

for title, make, note in (
        ("Sparse probing", probing_figure,
         "SAEBench's protocol: the top-k latents by class-mean difference, logistic "
         "regression, held-out accuracy; sae-probes': latents scaled by their mean nonzero "
         "activation, L1 logistic regression with C chosen by validation AUC. Balanced "
         "classes: 0.5 is chance."),
        ("Ground-truth match", ground_truth_figure,
         "For each alive latent, the built-in property it matches best with 'the latent "
         "fires' read as a classifier (precision above the property's base rate)."),
        ("Absorption", absorption_figure,
         "Chanin et al.'s first-letter task on pycode's tokens: where the main latents of a "
         "letter stay silent though a probe reads the letter, and another latent carries it."),
        ("LLM explanations", llm_figure,
         "Explain from top and sampled activations, then score the explanation: detection "
         "(which excerpts fire at all) and fuzzing (are the marked tokens the active ones).")):
    fig = make(docs)
    if fig is None:
        continue
    st.subheader(title)
    st.plotly_chart(fig, width="stretch")
    st.caption(note)

gt = {n: d["evals"]["ground_truth"] for n, d in docs.items() if "ground_truth" in d["evals"]}
if gt:
    st.subheader("Best-matched latents")
    pick = st.selectbox("dictionary", list(gt), key="evals_gt_pick")
    store = C.store_for(infos, name=pick)
    top = gt[pick]["details"]["top"]
    st.dataframe([{k: r[k] for k in ("latent", "property", "precision", "recall", "f1")}
                  for r in top], hide_index=True, width="stretch")
    if store is not None:
        cols = st.columns(5)
        for i, r in enumerate(top[:10]):
            with cols[i % 5]:
                C.feature_link(store.feature_store.stem, r["latent"],
                               f"latent {r['latent']}: {r['property']}")
    else:
        st.caption(f"No feature store of {pick} in this run: `interp features --run {run} "
                   f"--sae {pick}` builds one, and its latents link to their pages.")

llm = {n: d["evals"]["llm"] for n, d in docs.items() if "llm" in d["evals"]}
if llm:
    st.subheader("Explanations")
    pick = st.selectbox("dictionary", list(llm), key="evals_llm_pick")
    st.dataframe([{"latent": r["latent"], "explanation": r["explanation"],
                   "detection": (r.get("detection") or {}).get("balanced_accuracy"),
                   "fuzzing": (r.get("fuzzing") or {}).get("balanced_accuracy")}
                  for r in llm[pick]["details"]["latents"]], hide_index=True, width="stretch")
