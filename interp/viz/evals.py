"""Evaluation results (``interp evals``) for the app's Evals page and notebooks: where each
dictionary's ``evals.json`` is, and figures that compare dictionaries side by side.

Figures take ``docs`` = {dictionary name: evals document (``interp.evals.suite``)} and draw
one trace per dictionary that holds the evaluation.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.evals.suite import EVALS_FILE, read_evals


def evals_folders(run: str | Path | None, infos: list) -> dict[str, Path]:
    """{dictionary name: folder holding its evals.json}: a run's dictionary in its own
    folder; a shipped one under ``RUN/evals/NAME`` (the user's run of ``interp evals --run``)
    before its shipped folder (the results the project ships)."""
    out: dict[str, Path] = {}
    for info in infos:
        places = []
        if run is not None and info.source == "shipped":
            places.append(Path(run) / "evals" / info.name.replace("/", "__"))
        if info.folder is not None:
            places.append(Path(info.folder))
        for place in places:
            if (place / EVALS_FILE).is_file() and read_evals(place) is not None:
                out[info.name] = place
                break
    return out


def load_docs(folders: dict[str, Path]) -> dict[str, dict]:
    return {name: doc for name, folder in folders.items()
            if (doc := read_evals(folder)) is not None}


def _by_k(summary: dict, prefix: str) -> tuple[list[int], list[float]]:
    """(k, value) of summary keys ``{prefix}{k}``, in k order."""
    pairs = sorted((int(m.group(1)), v) for key, v in summary.items()
                   if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", key))
                   and isinstance(v, (int, float)))
    return [k for k, _ in pairs], [float(v) for _, v in pairs]


def probing_figure(docs: dict[str, dict]) -> go.Figure | None:
    """SAEBench's accuracy and sae-probes' AUC and F1 against k, one line per dictionary
    (means over the probed properties)."""
    panels = (("saebench_accuracy_k", "SAEBench: accuracy (top-k by mean difference)"),
              ("sae_probes_auc_k", "sae-probes: AUC (validated C)"),
              ("sae_probes_f1_k", "sae-probes: F1"))
    have = {n: d["evals"]["probing"]["summary"] for n, d in docs.items()
            if "probing" in d.get("evals", {})}
    if not have:
        return None
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels])
    for i, (name, summary) in enumerate(have.items()):
        for col, (prefix, _) in enumerate(panels, 1):
            ks, vals = _by_k(summary, prefix)
            fig.add_trace(go.Scatter(x=ks, y=vals, mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1,
                                     line=dict(color=_colour(i))), 1, col)
    fig.update_xaxes(type="log", title_text="k (latents)")
    fig.update_yaxes(range=[0.45, 1.0])
    fig.update_layout(height=360, margin=dict(t=60, b=40), legend=dict(orientation="h",
                                                                        y=-0.25))
    return fig


def ground_truth_figure(docs: dict[str, dict]) -> go.Figure | None:
    """Each alive latent's best F1 against any built-in property, as a cumulative curve per
    dictionary: the share of latents matched at least as well as x (x = 0.5, 0.8 are the
    summary's thresholds)."""
    have = {n: d["evals"]["ground_truth"] for n, d in docs.items()
            if "ground_truth" in d.get("evals", {})}
    if not have:
        return None
    fig = go.Figure()
    grid = np.linspace(0, 1, 101)
    for i, (name, res) in enumerate(have.items()):
        f1 = np.asarray(res["details"]["latents"]["f1"], dtype=float)
        share = [(f1 >= x).mean() if len(f1) else 0.0 for x in grid]
        fig.add_trace(go.Scatter(x=grid, y=share, mode="lines", name=name,
                                 line=dict(color=_colour(i))))
    for x in (0.5, 0.8):
        fig.add_vline(x=x, line_dash="dot", line_color="#999")
    fig.update_layout(title="Ground-truth match: share of alive latents whose best property "
                      "F1 is at least x", xaxis_title="F1 of the latent's best property",
                      yaxis_title="share of alive latents", height=360, yaxis_type="log",
                      margin=dict(t=60, b=40))
    return fig


def absorption_figure(docs: dict[str, dict]) -> go.Figure | None:
    """Absorption rate per first letter, one bar group per dictionary."""
    have = {n: d["evals"]["absorption"] for n, d in docs.items()
            if "absorption" in d.get("evals", {})}
    if not have:
        return None
    fig = go.Figure()
    for i, (name, res) in enumerate(have.items()):
        letters = res["details"].get("letters") or {}
        names = sorted(letters)
        fig.add_trace(go.Bar(x=names, y=[letters[x].get("absorption_rate") for x in names],
                             name=name, marker_color=_colour(i)))
    fig.update_layout(title="Absorption rate by first letter (pycode tokens)", barmode="group",
                      xaxis_title="letter", yaxis_title="absorption rate", height=340,
                      margin=dict(t=60, b=40))
    return fig


def llm_figure(docs: dict[str, dict]) -> go.Figure | None:
    """Detection and fuzzing scores (balanced accuracy) of every scored latent, per
    dictionary (0.5 is chance)."""
    have = {n: d["evals"]["llm"] for n, d in docs.items() if "llm" in d.get("evals", {})}
    if not have:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("detection", "fuzzing"))
    for i, (name, res) in enumerate(have.items()):
        for col, task in enumerate(("detection", "fuzzing"), 1):
            scores = [r[task]["balanced_accuracy"] for r in res["details"]["latents"]
                      if r.get(task) and r[task].get("balanced_accuracy") is not None]
            fig.add_trace(go.Box(y=scores, name=name, boxpoints="all", jitter=0.4,
                                 marker_color=_colour(i), showlegend=False), 1, col)
    fig.update_yaxes(range=[0, 1.02], title_text="balanced accuracy")
    fig.update_layout(title="LLM explanations scored", height=360, margin=dict(t=70, b=40))
    return fig


def _colour(i: int) -> str:
    import plotly.express as px

    palette = px.colors.qualitative.D3
    return palette[i % len(palette)]
