"""Figures and snippets for raw activations (shared by notebooks and the app)."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go


def unit_histogram(values: np.ndarray, title: str, bins: int = 80,
                   log_y: bool = True) -> go.Figure:
    """Histogram of one activation dimension's values."""
    fig = go.Figure(go.Histogram(x=np.asarray(values, dtype=np.float32), nbinsx=bins,
                                 marker_color="#4c78a8"))
    fig.update_layout(title=title, xaxis_title="activation", yaxis_title="rows",
                      bargap=0.02, height=320, margin=dict(l=40, r=20, t=50, b=40))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def context_html(pieces: list[str], position: int, window: int = 12, sep: str = "") -> str:
    """One context as HTML: ``window`` tokens either side, the token at ``position`` marked.

    Whitespace is made visible (newline as ⏎, tab as →) so code stays on one line; ``sep``
    joins the pieces (" " for vocabularies without spaces, such as Othello squares).
    """
    lo, hi = max(0, position - window), min(len(pieces), position + window + 1)
    out = []
    for i in range(lo, hi):
        text = pieces[i].replace("\n", "⏎").replace("\t", "→")
        text = html.escape(text).replace(" ", "&nbsp;")
        if i == position:
            out.append(f'<b style="background:#f58518;color:white;padding:0 2px">{text}</b>')
        else:
            out.append(f'<span style="color:#333">{text}</span>')
    prefix = "…" if lo > 0 else ""
    suffix = "…" if hi < len(pieces) else ""
    return f'<code>{prefix}{sep.join(out)}{suffix}</code>'
