"""What the Graphs page (and the Circuits page's grid view) share: cached loaders of graph
files, views and feature cards, and the widgets that move a graph's selection.

A graph file is read once per version (path, mtime, size: writing annotations makes a new
version) and kept as one object per process (``st.cache_resource``: views never change it);
a feature card (logit effects, top activations over the model's own data) is computed once
per (dictionaries, block, latent) (``st.cache_data``). The logic lives in
``interp.viz.graphs``; this module only wires it to Streamlit.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

import app_common as C
from interp.distributed import torch_threads

SAMPLE = {"othello": 128, "pycode": 64}  # contexts of the model's own data per feature card


def file_version(path: str) -> tuple:
    p = Path(path)
    st_ = p.stat()
    return (str(p.resolve()), st_.st_mtime_ns, st_.st_size)


@st.cache_resource(max_entries=4, show_spinner="reading the graph")
def _doc(version: tuple) -> dict:
    from interp.graphs.io import load_graph

    return load_graph(version[0])


def load_doc(path: str) -> dict:
    """The graph document at ``path`` (shared, never modified: copy before changing)."""
    return _doc(file_version(path))


@st.cache_resource(max_entries=8, show_spinner=False)
def _view(version: tuple, node_threshold: float, edge_threshold: float,
          max_features: int | None, pinned_only: bool):
    from interp.graphs.io import annotations
    from interp.viz.graphs import graph_view

    doc = _doc(version)
    return graph_view(doc, node_threshold=node_threshold, edge_threshold=edge_threshold,
                      max_features=max_features, pinned_only=pinned_only,
                      marks=annotations(doc))


def view(path: str, **kw):
    """``interp.viz.graphs.graph_view`` of the file's current version (its annotations
    included), cached per settings."""
    return _view(file_version(path), **kw)


@st.cache_resource(show_spinner="loading the graph's dictionaries")
def dictionaries(specs: tuple[str, ...]):
    from interp.viz.graphs import graph_dictionaries

    return graph_dictionaries(list(specs))


@st.cache_data(show_spinner=False)
def contexts(model_name: str, n: int):
    from interp.viz.prompts import corpus_contexts

    m = C.model(model_name)
    return corpus_contexts(model_name, n, m.cfg.n_ctx)


def token_names(model_name: str, ids) -> list[str]:
    from interp.models import token_strings

    return token_strings(model_name, [int(i) for i in ids])


@st.cache_data(show_spinner="computing the feature card (logit effects, top activations)")
def feature_card(model_name: str, specs: tuple[str, ...], block: str, latent: int) -> dict:
    """{"boosted", "suppressed": [(token, value)], "examples": [example windows]} of a
    graph's feature: its decoder's direct logit effects and its top activations over
    ``SAMPLE`` contexts of the model's own data."""
    from interp.viz.graphs import logit_effects, top_activations

    m = C.model(model_name)
    gd = dictionaries(specs)
    b = gd.block(block)
    effects = logit_effects(m, b, latent, 8)
    out = {k: [(token_names(model_name, [t])[0], v) for t, v in effects[k]]
           for k in ("boosted", "suppressed")}
    ctx = contexts(model_name, SAMPLE.get(model_name, 64))
    out["examples"] = []
    out["n_contexts"] = 0
    if ctx is not None:
        vocab = token_names(model_name, range(m.cfg.d_vocab))
        with torch_threads(1):  # the browser drawing the selection needs the other core
            out["examples"] = top_activations(m, gd.blocks, block, latent, ctx, vocab, k=5)
        out["n_contexts"] = int(ctx.shape[0])
    return out




def store_info(run: Path, model_name: str, spec: str | None):
    """The run's SAE info with a feature store of the dictionary ``spec`` (a shipped name or
    a folder), matched by name or folder (never by hook alone: another dictionary's
    features would be a wrong page); None when there is none."""
    if not spec or not run.exists():
        return None
    target = Path(spec).resolve() if Path(spec).exists() else None
    for info in C.sae_infos(run, model_name):
        if info.feature_store is None:
            continue
        if info.name == spec or info.spec == spec or (
                target is not None and info.folder is not None
                and info.folder.resolve() == target):
            return info
    return None


def select(node: str | None) -> None:
    """Move the selection (the plot, the edge tables and the node selector follow)."""
    if node:
        st.session_state["graph_sel"] = node


def on_plot_select(key: str, state_key: str = "graph_sel") -> None:
    """Callback of a graph plot: the clicked node (its ``customdata``) becomes the
    selection."""
    event = st.session_state.get(key)
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    ids = [p.get("customdata") for p in points if isinstance(p.get("customdata"), str)]
    if ids:
        st.session_state[state_key] = ids[0]


def on_row_select(key: str, ids: list[str]) -> None:
    """Callback of an edge table: the other end of the clicked row becomes the selection."""
    event = st.session_state.get(key)
    rows = event["selection"]["rows"] if event else []
    if rows and rows[0] < len(ids):
        st.session_state["graph_sel"] = ids[rows[0]]


def on_node_pick() -> None:
    st.session_state["graph_sel"] = st.session_state.get("graph_node")
