"""The interp app: browse a run folder. Start it with ``interp app runs/NAME``.

A multipage Streamlit app (``st.navigation``); each page is a small script in
``app_pages/`` over library code (``interp.viz`` and the pipeline's own modules):

- Overview: the run's model, hooks and SAEs (and the shipped SAEs of its model), training
  curves, FVU vs L0, latent densities;
- Activations: per-unit histograms and top contexts of the run's activation store;
- Features: feature stores: search by id, token or density; feature pages;
- Circuits: discover (inference only) or load a circuit; prune it with sliders; open a node;
- Probes: k-sparse probes on neurons or SAE latents for a ground-truth property;
- Ablations: ablate or steer latents on a prompt; the next-token distribution before/after.

It only reads what the pipeline wrote (run.json, the activation store, SAE folders, feature
stores, circuit JSON); it never trains or harvests. Deep links: ``?page=features&sae=NAME&
latent=123`` (any page's key for ``page``), or the page's own path ``/features?sae=...``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # app_common, for the pages

from app_common import PAGES, default_run  # noqa: E402

st.set_page_config(page_title="interp", layout="wide")
wanted = st.query_params.get("page", "overview")
if wanted not in PAGES:
    wanted = "overview"
pages = [st.Page(script, title=title, icon=icon, url_path=key, default=key == wanted)
         for key, (script, title, icon) in PAGES.items()]
nav = st.navigation(pages)
if "run" not in st.session_state:
    st.session_state["run"] = default_run()
st.sidebar.text_input("run folder", key="run")
st.sidebar.caption("interp workbench: reads the run folder, never trains.")
nav.run()
