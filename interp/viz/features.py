"""Figures and HTML for feature pages (``interp.features.FeatureStore.feature`` dicts)."""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots



def feature_histogram(page: dict, title: str | None = None) -> go.Figure:
    """The latent's activation histogram (log-spaced bins, log x axis), as steps."""
    edges = np.asarray(page["histogram"]["edges"], dtype=np.float64)
    counts = np.asarray(page["histogram"]["counts"], dtype=np.float64)
    title = title or (f"latent {page['latent']}: {page['count']:,} activations "
                      f"(density {page['density']:.3g}, max {page['max_act']:.3g})")
    fig = go.Figure()
    if len(counts):
        edges = edges.copy()
        finite = edges[np.isfinite(edges) & (edges > 0)]
        step = finite[1] / finite[0] if len(finite) > 1 else 10.0
        if edges[0] <= 0:  # the underflow bin (0, first edge): draw it one bin wide
            edges[0] = edges[1] / step
        if not np.isfinite(edges[-1]):
            edges[-1] = edges[-2] * step
        fig.add_trace(go.Scatter(x=edges, y=np.append(counts, counts[-1]), mode="lines",
                                 line_shape="hv", fill="tozeroy", line_color="#4c78a8",
                                 hovertemplate="from %{x:.3g}: %{y:,} tokens<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="activation", yaxis_title="tokens",
                      xaxis_type="log", height=320, margin=dict(l=50, r=20, t=50, b=40),
                      showlegend=False)
    return fig


def logit_effects_figure(page: dict, n: int = 10, title: str | None = None) -> go.Figure:
    """The tokens the latent's decoder direction boosts and suppresses most (direct path)."""
    logits = page.get("logits")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("suppressed", "boosted"),
                        horizontal_spacing=0.18)
    if logits:
        for col, key, color in ((1, "suppressed", "#e45756"), (2, "boosted", "#4c78a8")):
            rows = logits[key][:n][::-1]
            fig.add_trace(go.Bar(x=[r["value"] for r in rows],
                                 y=[repr(r["token"]) for r in rows], orientation="h",
                                 marker_color=color, hovertemplate="%{y}: %{x:.3f}<extra></extra>"),
                          1, col)
    fig.update_layout(title=title or f"latent {page['latent']}: logit effects "
                      f"(decoder row through the unembedding)" if logits else
                      "no logit effects for this hook", height=40 + 28 * n,
                      showlegend=False, margin=dict(l=90, r=20, t=60, b=30))
    return fig


def example_html(example: dict, max_act: float | None = None, sep: str = "") -> str:
    """One example window as HTML: each token shaded by the latent's activation on it
    (relative to ``max_act``, default the example's own max), the activating token
    outlined; hovering shows the value. ``sep`` joins tokens (" " for Othello squares)."""
    acts = [float(a) for a in example["acts"]]
    top = max_act if max_act else max(acts + [1e-12])
    out = []
    for i, (tok, a) in enumerate(zip(example["tokens"], acts)):
        text = html.escape(str(tok).replace("\n", "⏎").replace("\t", "→")).replace(" ", "&nbsp;")
        alpha = max(0.0, min(1.0, a / top)) if top > 0 else 0.0
        style = f"background:rgba(245,133,24,{alpha:.2f});padding:0 1px"
        if i == example.get("max_index"):
            style += ";outline:1px solid #333;font-weight:bold"
        out.append(f'<span title="{a:.3f}" style="{style}">{text}</span>')
    return f'<code>{sep.join(out)}</code>'
