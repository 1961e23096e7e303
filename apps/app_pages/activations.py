"""Activations: per-unit histograms and top-activating contexts of the run's store."""
import streamlit as st

import app_common as C
from interp.errors import InterpError
from interp.models import token_strings
from interp.viz.activations import context_html, unit_histogram


@st.cache_data
def cached_top(path: str, hook: str, unit: int, k: int):
    return C.activation_store(path).top_rows(unit, k, hook)


@st.cache_data
def cached_values(path: str, hook: str, unit: int, max_rows: int):
    return C.activation_store(path).unit_values(unit, hook, max_rows=max_rows)


st.title("Activations")
run = C.existing_run()
if not (run / "activations").exists():
    st.info(f"{run} has no activation store (`interp harvest ... --out {run}` writes one).")
    st.stop()
try:
    store = C.activation_store(str(run))
except InterpError as e:
    st.error(str(e))
    st.stop()

summary = store.summary()
cols = st.columns(4)
cols[0].metric("model", str(summary["model"]))
cols[1].metric("tokens", f"{summary['n_rows']:,}")
cols[2].metric("contexts", f"{summary['n_contexts']:,}")
cols[3].metric("dtype", summary["dtype"])

c = st.columns(3)
hook = c[0].selectbox("hook point", store.hooks)
d_in = store.d_in(hook)
unit = int(c[1].number_input(f"unit (0..{d_in - 1})", min_value=0, max_value=d_in - 1,
                             value=0, step=1))
k = int(c[2].slider("top contexts", 5, 50, 15))

values = cached_values(str(run), hook, unit, 200_000)
st.plotly_chart(unit_histogram(values, f"{hook} unit {unit} over {len(values):,} tokens"),
                width="stretch")
c = st.columns(3)
c[0].metric("mean", f"{values.mean():.3f}")
c[1].metric("std", f"{values.std():.3f}")
c[2].metric("fraction > 0", f"{(values > 0).mean():.3f}")

st.markdown(f"**Top {k} tokens for unit {unit}**")
rows, vals = cached_top(str(run), hook, unit, k)
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
