"""Plotly figures for SAEs: training curves, latent density, FVU over k'."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def read_train_log(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of a ``train_log.jsonl``."""
    train, evals = [], []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        (evals if "eval" in row else train).append(row)
    return train, evals


def training_curves(log_path: str | Path, title: str = "") -> go.Figure:
    """Loss, FVU, L0 and dead fraction against tokens; held-out FVU as markers."""
    train, evals = read_train_log(log_path)
    if not train:
        raise ValueError(f"{log_path} has no training rows yet")
    tokens = [r["tokens"] for r in train]
    per_step = train[0]["tokens"] / train[0]["step"]
    fig = make_subplots(rows=2, cols=2, subplot_titles=("loss", "FVU", "L0", "dead latents"),
                        horizontal_spacing=0.1, vertical_spacing=0.15)
    fig.add_trace(go.Scatter(x=tokens, y=[r["loss"] for r in train], name="loss"), 1, 1)
    fig.add_trace(go.Scatter(x=tokens, y=[r["fvu"] for r in train], name="train FVU"), 1, 2)
    if evals:
        fig.add_trace(go.Scatter(x=[e["step"] * per_step for e in evals],
                                 y=[e["eval"]["fvu"] for e in evals], mode="markers",
                                 name="held-out FVU", marker=dict(size=9)), 1, 2)
    fig.add_trace(go.Scatter(x=tokens, y=[r["l0"] for r in train], name="L0"), 2, 1)
    fig.add_trace(go.Scatter(x=tokens, y=[100 * r["dead_fraction"] for r in train],
                             name="dead %"), 2, 2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="training tokens", row=2)
    fig.update_layout(title=title or f"training of {Path(log_path).parent.name}", height=560,
                      showlegend=False, margin=dict(l=50, r=20, t=70, b=50))
    return fig


def density_histogram(density: list[float] | np.ndarray, title: str = "") -> go.Figure:
    """Histogram of log10 firing frequency per latent; dead latents counted apart."""
    d = np.asarray(density, dtype=np.float64)
    alive = d[d > 0]
    fig = go.Figure(go.Histogram(x=np.log10(alive), nbinsx=60, marker_color="#4c78a8"))
    fig.update_layout(
        title=title or f"latent density ({len(alive):,} alive, {int((d == 0).sum()):,} dead)",
        xaxis_title="log10 fraction of tokens a latent fires on", yaxis_title="latents",
        height=340, bargap=0.02, margin=dict(l=50, r=20, t=60, b=50))
    return fig


def fvu_by_k(eval_by_k: dict, title: str = "HierarchicalTopK: FVU at every k'") -> go.Figure:
    ks = sorted(eval_by_k, key=int)
    fig = go.Figure(go.Scatter(x=[int(k) for k in ks], y=[eval_by_k[k]["fvu"] for k in ks],
                               mode="lines+markers"))
    fig.update_layout(title=title, xaxis_title="k' (active latents)", yaxis_title="FVU",
                      xaxis_type="log", yaxis_type="log", height=340,
                      margin=dict(l=50, r=20, t=60, b=50))
    return fig
