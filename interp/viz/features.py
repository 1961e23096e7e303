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


def shade(value: float, top: float, diverging: bool = False) -> str:
    """The background of a token: orange by ``value / top`` (an activation), or, with
    ``diverging``, red for a positive and blue for a negative value (a loss change)."""
    if not top or not np.isfinite(value):
        return "transparent"
    alpha = max(-1.0, min(1.0, value / top))
    if not diverging:
        return f"rgba(245,133,24,{max(alpha, 0.0):.2f})"
    return (f"rgba(220,38,38,{alpha:.2f})" if alpha >= 0
            else f"rgba(37,99,235,{-alpha:.2f})")


def _top(values, top: float | None, diverging: bool) -> float:
    finite = [abs(v) if diverging else v for v in values if np.isfinite(v)]
    return top if top else max(finite + [1e-12])


def tokens_html(tokens: list[str], values: list[float], top: float | None = None,
                max_index: int | None = None, sep: str = "", diverging: bool = False,
                label: str = "") -> str:
    """Tokens as inline chips, each shaded by its value (``shade``; relative to ``top``,
    default the largest), the token at ``max_index`` outlined; hovering shows
    ``label`` and the value. ``sep`` joins tokens (" " for Othello squares)."""
    values = [float(v) for v in values]
    top = _top(values, top, diverging)
    out = []
    for i, (tok, a) in enumerate(zip(tokens, values)):
        text = html.escape(str(tok).replace("\n", "⏎").replace("\t", "→")).replace(" ", "&nbsp;")
        style = f"background:{shade(a, top, diverging)};padding:0 1px"
        if i == max_index:
            style += ";outline:1px solid #333;font-weight:bold"
        out.append(f'<span title="{label}{a:.3f}" style="{style}">{text}</span>')
    return f'<code>{sep.join(out)}</code>'


def example_html(example: dict, max_act: float | None = None, sep: str = "") -> str:
    """One example window as HTML: each token shaded by the latent's activation on it
    (relative to ``max_act``, default the example's own max), the activating token
    outlined; hovering shows the value. ``sep`` joins tokens (" " for Othello squares)."""
    return tokens_html(example["tokens"], example["acts"], max_act, example.get("max_index"),
                       sep)


CODE_STYLE = ("font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
              "font-size:0.82em;line-height:1.45;white-space:pre;overflow-x:auto;"
              "background:#fafafa;border:1px solid #e5e5e5;border-radius:4px;"
              "padding:4px 8px;margin:2px 0 6px 0;tab-size:4")


def code_html(tokens: list[str], values: list[float], top: float | None = None,
              max_index: int | None = None, diverging: bool = False, label: str = "") -> str:
    """Source code as it reads: monospaced, its own line breaks and indentation, each
    token shaded by its value (``shade``), the token at ``max_index`` outlined, the text
    HTML-escaped. A newline that carries a value shows as ``↵`` so its shade is seen. The
    result holds no raw newline (line breaks are ``<br>``), so Markdown leaves it whole."""
    values = [float(v) for v in values]
    top = _top(values, top, diverging)
    out = []
    for i, (tok, a) in enumerate(zip(tokens, values)):
        tok = str(tok)
        marked = a != 0 and "\n" in tok
        text = html.escape(tok.replace("\r", ""))
        if marked:
            text = text.replace("\n", "↵\n", 1)
        text = text.replace("\n", "<br>")
        style = f"background:{shade(a, top, diverging)}"
        if i == max_index:
            style += ";outline:1px solid #333;font-weight:bold"
        out.append(f'<span title="{label}{a:.3f}" style="{style}">{text}</span>')
    return f"<div class='code-example' style='{CODE_STYLE}'>{''.join(out)}</div>"


def code_example_html(example: dict, max_act: float | None = None) -> str:
    """A feature store example (``FeatureStore.feature``) as code (``code_html``); tokens
    outside the context (a window at its start or end) are left out."""
    keep = [i for i, t in enumerate(example["token_ids"]) if t >= 0]
    idx = example.get("max_index")
    return code_html([example["tokens"][i] for i in keep], [example["acts"][i] for i in keep],
                     max_act, keep.index(idx) if idx in keep else None)
