"""What the app's pages share: the run folder, cached loaders (models, SAEs, stores: one per
process with ``st.cache_resource``; query results with ``st.cache_data``), links between
pages, and the entry to the feature view (``app_feature``: the Features page shows it whole,
other pages compactly).

Everything here reads: the app never trains or harvests. The logic lives in the library
(``interp.viz``, ``interp.features``, ...); this module only wires it to Streamlit.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from interp.errors import InterpError
from interp.sae.core import DEFAULT_ARCH
from interp.viz.runs import hooks_text

# page key -> (script, title, icon); the key is the page's URL path and its ?page= name
PAGES = {
    "overview": ("app_pages/overview.py", "Overview", ":material/dashboard:"),
    "activations": ("app_pages/activations.py", "Activations", ":material/table_rows:"),
    "features": ("app_pages/features.py", "Features", ":material/search:"),
    "circuits": ("app_pages/circuits.py", "Circuits", ":material/hub:"),
    "graphs": ("app_pages/graphs.py", "Graphs", ":material/account_tree:"),
    "probes": ("app_pages/probes.py", "Probes", ":material/target:"),
    "ablations": ("app_pages/ablations.py", "Ablations", ":material/content_cut:"),
    "evals": ("app_pages/evals.py", "Evals", ":material/fact_check:"),
}
EMBEDDED = ("othello", "pycode")


def default_run() -> str:
    return os.environ.get("INTERP_RUN", "runs/demo")  # `interp app RUN` sets it


def run_path() -> Path:
    return Path(st.session_state.get("run") or default_run())


def existing_run() -> Path:
    """The run folder; the page stops, saying how to make one, if it does not exist."""
    run = run_path()
    if not run.exists():
        st.error(f"No run folder at {run.resolve()}. Create one with `interp harvest ... "
                 f"--out {run}` or `make demo`.")
        st.stop()
    return run


def page_link(page: str, label: str, **query) -> None:
    """A link to another page of the app with query parameters (deep link)."""
    st.page_link(PAGES[page][0], label=label,
                 query_params={k: str(v) for k, v in query.items() if v is not None})


def feature_link(sae_key: str, latent: int, label: str | None = None) -> None:
    page_link("features", label or f"latent {latent}", sae=sae_key, latent=latent)


def show_error(e: Exception) -> None:
    st.error(str(e) if isinstance(e, InterpError) else f"{type(e).__name__}: {e}")


# ------------------------------------------------------------------ cached loaders
@st.cache_resource(show_spinner="loading the model")
def model(name: str):
    from interp.models import load

    m = load(name)
    m.eval()
    return m.requires_grad_(False)


@st.cache_resource(show_spinner="loading the SAE")
def sae(spec: str, model_name: str | None = None):
    """An SAE by registry name or folder; checked against ``model_name``'s model when given
    (another model's SAE, or a hook it lacks, is an InterpError the page shows)."""
    from interp.provenance import check_dictionary
    from interp.runs import resolve_sae

    loaded = resolve_sae(spec).sae
    if model_name:
        check_dictionary(loaded, name=spec, model=model(model_name), model_name=model_name)
    return loaded.eval()


@st.cache_resource
def feature_store(path: str):
    from interp.features import FeatureStore

    return FeatureStore(path)


@st.cache_resource
def activation_store(path: str):
    from interp.activations.store import open_store

    return open_store(path)


def _run_stamp(run: Path) -> tuple:
    """Changes when SAEs or feature stores are added to the run (cache key)."""
    files = list(run.glob("saes/**/cfg.json")) + list(run.glob("features/*.duckdb"))
    return tuple(sorted((str(p), p.stat().st_mtime) for p in files))


@st.cache_data(show_spinner=False)
def _sae_infos(run: str, model_name: str | None, stamp: tuple):
    from interp.viz.runs import list_saes

    return list_saes(run if Path(run).exists() else None, model_name)


@st.cache_data(show_spinner=False)
def _store_problems(run: str, stamp: tuple) -> dict[str, str]:
    from interp.features import FeatureStore, find_feature_stores

    problems = {}
    for path in find_feature_stores(run):
        try:
            FeatureStore(path).close()
        except InterpError as e:
            problems[str(path)] = str(e)
        except Exception as e:  # not ours to explain, but never hidden
            problems[str(path)] = f"{path}: {type(e).__name__}: {e}"
    return problems


def store_problems(run: Path) -> dict[str, str]:
    """{path: one-line error} of the run's feature stores that cannot be opened (corrupt,
    truncated, another file); ``sae_infos`` leaves them out, so pages show these instead."""
    return _store_problems(str(run), _run_stamp(run)) if run.exists() else {}


def show_store_problems(run: Path) -> bool:
    """An ``st.error`` per unreadable feature store of the run, with how to rebuild it; True
    when there was one."""
    problems = store_problems(run)
    for path, message in problems.items():
        st.error(message)
        st.caption(f"Rebuild it with `interp features --run {run} --sae SAE --tokens 100000 "
                   f"--out {path}` (the build replaces the file).")
    return bool(problems)


def sae_infos(run: Path, model_name: str | None = None):
    """The run's SAEs and the shipped ones of its model (``interp.viz.runs.list_saes``)."""
    return _sae_infos(str(run), model_name, _run_stamp(run) if run.exists() else ())


def run_model(run: Path) -> str | None:
    from interp.runs import read_run_json

    return read_run_json(run).get("model") if run.exists() else None


# widgets whose choices depend on the model: reset when the model changes
MODEL_KEYS = ("circuit_task", "circuit_saes", "circuit_params", "circuit_node", "probe_kind",
              "probe_square", "probe_prop", "probe_sources", "probe_params", "ablate_sae",
              "ablate_prompt", "ablate_latents", "ablate_answer", "ablate_wrong")


def model_context(run: Path) -> str:
    """The model of the run, or (with no run folder) one chosen in the sidebar."""
    name = run_model(run)
    if not name:
        st.sidebar.info(f"No run folder at {run}: pages use the shipped SAEs of a model.")
        name = st.sidebar.selectbox("model", EMBEDDED, key="model_choice")
    if st.session_state.get("_model") != name:
        for key in MODEL_KEYS:
            st.session_state.pop(key, None)
        st.session_state["_model"] = name
    return name


@st.cache_data(show_spinner=False)
def feature_page(path: str, latent: int) -> dict:
    return feature_store(path).feature(latent)


@st.cache_data(show_spinner="correlating latents with ground-truth labels")
def label_correlations(model_name: str, sae_spec: str):
    from interp.viz.labels import latent_label_correlations

    return latent_label_correlations(model(model_name), sae(sae_spec), model_name)


def default_sae(infos) -> str | None:
    """The SAE a page starts with: the run's first, else the shipped one of the default
    architecture (TopK) at the hook with the most SAEs, else the first."""
    if not infos:
        return None
    run = [i.name for i in infos if i.source == "run"]
    if run:
        return run[0]
    hooks = [i.hook for i in infos]
    default = sorted((i for i in infos if i.arch == DEFAULT_ARCH),
                     key=lambda i: -hooks.count(i.hook))
    return (default or infos)[0].name


def store_for(infos, hook: str | None = None, name: str | None = None):
    """The SAE info with a feature store: by SAE name first, else the first that writes
    ``hook`` (circuit nodes sit where a dictionary writes: a transcoder's output hook)."""
    with_store = [i for i in infos if i.feature_store is not None]
    for i in with_store:
        if name is not None and i.name == name:
            return i
    for i in with_store:
        if hook is not None and i.writes == hook:
            return i
    return None


# ------------------------------------------------------------------ the feature view
def show_transcoder_hooks(meta: dict) -> None:
    """A transcoder's feature store (``hook_out`` in its metadata): what its latents read
    and write, and where their logit effects come from. Nothing for an SAE's."""
    if meta.get("hook_out"):
        st.caption(f"transcoder latent: {hooks_text(meta['hook'], meta['hook_out'], '`')}; "
                   f"its logit effects are its decoder row at `{meta['hook_out']}` through "
                   f"the unembedding")


def render_feature(info, latent: int, compact: bool = False, model_name: str | None = None
                   ) -> None:
    """A feature page (Neuronpedia-like; ``app_feature.render_feature``): density,
    histogram, logit effects, top examples drawn for the model (Othello boards, Python
    code, token chips), interval samples, the board profile, similar decoder directions,
    correlated neurons, the loss change on ablation, activations on a typed prompt and the
    ground-truth labels it follows. ``compact``: numbers and top examples only."""
    from app_feature import render_feature as render

    render(info, latent, compact, model_name)


def render_labels(info, latent: int, model_name: str | None) -> None:
    st.markdown("**Correlated ground-truth labels**")
    if model_name not in EMBEDDED or info.source == "store" and info.folder is None:
        st.caption("Only for the embedded models (othello, pycode), whose tokens come with "
                   "ground truth; skipped here.")
        return
    if not st.toggle("correlate with the ground truth (one pass over 64 held-out contexts)",
                     key=f"labels_{info.name}"):
        return
    try:
        lc = label_correlations(model_name, info.spec)
    except InterpError as e:
        show_error(e)
        return
    top = lc.top(int(latent), 5)
    if not top or not np.isfinite(top[0]["r"]):
        st.caption(f"Latent {latent} does not fire on the {lc.n_tokens:,} labelled tokens.")
        return
    st.dataframe([{"property": t["property"], "Pearson r": round(t["r"], 3),
                   "positive tokens": t["positives"]} for t in top], hide_index=True)
    best = top[0]["property"]
    page_link("probes", f"probe '{best}' on this SAE", property=best, sae=info.name)
