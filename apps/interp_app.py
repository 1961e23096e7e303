"""The interp app: browse a run folder. Start it with ``interp app runs/NAME``.

It only reads what the pipeline wrote (run.json, the activation store, ...); it never
trains or harvests. Pages grow with the pipeline: today the run and its activations
(per-unit histograms and top-activating contexts).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from interp.activations.harvest import open_store
from interp.errors import InterpError
from interp.models import token_strings
from interp.viz.activations import context_html, unit_histogram


def default_run() -> str:
    return os.environ.get("INTERP_RUN", "runs/demo")  # `interp app RUN` sets it


@st.cache_resource
def cached_store(path: str):
    return open_store(path)


@st.cache_data
def cached_top(path: str, hook: str, unit: int, k: int):
    return cached_store(path).top_rows(unit, k, hook)


@st.cache_data
def cached_values(path: str, hook: str, unit: int, max_rows: int):
    return cached_store(path).unit_values(unit, hook, max_rows=max_rows)


st.set_page_config(page_title="interp", layout="wide")
st.title("interp")
run = st.sidebar.text_input("run folder", value=default_run())
run_path = Path(run)
if not run_path.exists():
    st.error(f"No run folder at {run_path.resolve()}. Create one with `interp harvest ... "
             f"--out {run}` or `make demo`.")
    st.stop()

run_json = run_path / "run.json"
if run_json.exists():
    with st.expander("run.json", expanded=False):
        st.json(json.loads(run_json.read_text()))

try:
    store = cached_store(str(run_path))
except InterpError as e:
    st.error(str(e))
    st.stop()

summary = store.summary()
st.subheader("Activations")
cols = st.columns(4)
cols[0].metric("model", str(summary["model"]))
cols[1].metric("tokens", f"{summary['n_rows']:,}")
cols[2].metric("contexts", f"{summary['n_contexts']:,}")
cols[3].metric("dtype", summary["dtype"])

hook = st.sidebar.selectbox("hook point", store.hooks)
d_in = store.d_in(hook)
unit = int(st.sidebar.number_input(f"unit (0..{d_in - 1})", min_value=0, max_value=d_in - 1,
                                   value=0, step=1))
k = int(st.sidebar.slider("top contexts", 5, 50, 15))

values = cached_values(str(run_path), hook, unit, 200_000)
st.plotly_chart(unit_histogram(values, f"{hook} unit {unit} over {len(values):,} tokens"),
                use_container_width=True)
c = st.columns(3)
c[0].metric("mean", f"{values.mean():.3f}")
c[1].metric("std", f"{values.std():.3f}")
c[2].metric("fraction > 0", f"{(values > 0).mean():.3f}")

st.markdown(f"**Top {k} tokens for unit {unit}**")
rows, vals = cached_top(str(run_path), hook, unit, k)
ctx, pos = store.locate(rows)
toks = store.tokens(ctx)
model = str(summary["model"])
sep = " " if model == "othello" else ""
lines = []
for v, t, p in zip(vals, toks, pos):
    pieces = token_strings(model, t)
    lines.append(f"<div style='margin:2px 0'><span style='display:inline-block;width:5em'>"
                 f"{v:.3f}</span>{context_html(pieces, int(p), sep=sep)}</div>")
st.markdown("\n".join(lines), unsafe_allow_html=True)
