"""Othello boards for feature pages, prompts and profiles.

A :class:`Position` is the board after a sequence of moves as the othello model sees it at
the token of the last move (``interp.data.othello`` conventions: squares ``row * 8 + col``,
``a1`` = 0, ``h8`` = 63; the token at position p >= 1 is move p-1): every square empty /
mine / theirs from the view of the player to move next, the square just played, the squares
it flipped, and the legal moves of the player to move. It comes from the readable reference
engine (``OthelloBoard``), so it agrees with ``OthelloGames.board_state()``,
``flipped_mask()`` and ``legal_mask()`` by construction (tested).

Drawn three ways:
- :func:`board_svg`: a small SVG (one per example of a feature; :func:`boards_html` lays
  out a grid of them with their activations). Each piece and mark carries ``class`` and
  ``data-sq`` attributes (``mine``, ``theirs``, ``played``, ``flipped``, ``legal``), so a
  test can read the board back from the markup.
- :func:`board_figure`: a plotly board whose legal moves are clickable points (customdata:
  the square's name), for prompts built by clicking (``apps/app_board.py``).
- :func:`board_heatmaps`: one 8x8 heatmap per state of per-square values (a latent's or a
  neuron's board profile, a probe's weights), rows 1..8 top to bottom, columns a..h.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.data.othello import (BOS, EMPTY, MINE, PAD, THEIRS, TOKEN_TO_SQUARE,
                                 OthelloBoard, parse_square, square_name)
from interp.errors import DataError

COLS = "abcdefgh"
# colours: a light board; mine blue, theirs red (the player to move's view, not black/white)
BOARD_BG, GRID, MINE_C, THEIRS_C = "#e3ece3", "#9db59d", "#1d4ed8", "#dc2626"
PLAYED_C, FLIPPED_C, LEGAL_C = "#111111", "#fde047", "#15803d"
LEGEND_HTML = (f"<span style='color:{MINE_C}'>&#9679;</span> mine &nbsp; "
               f"<span style='color:{THEIRS_C}'>&#9679;</span> theirs (the player to move's "
               f"view) &nbsp; <b>&#9633;</b> just played &nbsp; <span style='color:#a16207'>"
               f"&#9679;</span> flipped by it &nbsp; <span style='color:{LEGAL_C}'>&#9675;"
               f"</span> legal next move")


@dataclass
class Position:
    """The board after ``moves`` (square indices), from the view of the player to move."""

    moves: list[int]
    state: np.ndarray                 # (64,) int8 EMPTY / MINE / THEIRS
    to_move: int                      # BLACK / WHITE: whose view ``state`` is
    played: int | None = None         # the last move's square
    flipped: list[int] = field(default_factory=list)  # squares the last move flipped
    legal: list[int] = field(default_factory=list)    # legal moves of the player to move
    over: bool = False                # neither player can move

    @property
    def names(self) -> list[str]:
        return [square_name(m) for m in self.moves]

    @property
    def text(self) -> str:
        """The moves as a prompt (``f5 d6 c3``)."""
        return " ".join(self.names)

    def squares(self, kind: str) -> list[int]:
        """Squares of one kind: mine, theirs, empty, played, flipped or legal."""
        states = {"empty": EMPTY, "mine": MINE, "theirs": THEIRS}
        if kind in states:
            return [int(s) for s in np.nonzero(self.state == states[kind])[0]]
        if kind == "played":
            return [] if self.played is None else [self.played]
        if kind in ("flipped", "legal"):
            return list(getattr(self, kind))
        raise DataError(f"unknown square kind {kind!r}; valid: empty, mine, theirs, played, "
                        f"flipped, legal")


def position(moves: Sequence[int | str]) -> Position:
    """The position after ``moves`` (square indices or names such as ``"f5"``); an illegal
    move is a DataError naming it and the legal moves there."""
    board, flipped, played, done = OthelloBoard(), [], None, []
    for i, m in enumerate(moves):
        sq = parse_square(m) if isinstance(m, str) else int(m)
        legal = board.legal_moves()
        if sq not in legal:
            raise DataError(f"move {i + 1} ({square_name(sq) if 0 <= sq < 64 else sq}) is not "
                            f"legal after {' '.join(square_name(d) for d in done) or 'the start'}"
                            f"; legal: {' '.join(square_name(s) for s in legal) or 'none'}")
        flipped, played = board.play(sq), sq
        done.append(sq)
    legal = board.legal_moves()
    return Position(moves=done, state=board.state_from(board.to_move), to_move=board.to_move,
                    played=played, flipped=flipped, legal=legal, over=board.is_over())


def moves_of_tokens(token_ids: Sequence[int]) -> list[int]:
    """The squares of a token sequence (BOS skipped, stopping at PAD or a non-move token)."""
    out = []
    for t in token_ids:
        t = int(t)
        if t == BOS and not out:
            continue
        if t == PAD or not 0 <= t < len(TOKEN_TO_SQUARE) or TOKEN_TO_SQUARE[t] < 0:
            break
        out.append(int(TOKEN_TO_SQUARE[t]))
    return out


def position_at(token_ids: Sequence[int], pos: int) -> Position:
    """The position the model sees at token ``pos`` of a context (BOS at 0): the board after
    the moves of tokens 1..pos."""
    return position(moves_of_tokens(list(token_ids)[:pos + 1]))


# ------------------------------------------------------------------ SVG boards
def board_svg(p: Position, size: int = 150, title: str | None = None) -> str:
    """``p`` as an SVG of ``size`` px (coordinates on the top and left edge); ``title``
    shows on hover."""
    m = 11                                   # margin for the coordinates
    c = (size - m) / 8                       # one square
    r = c * 0.4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
           f'viewBox="0 0 {size} {size}" class="othello-board" '
           f'data-moves="{html.escape(p.text)}">']
    if title:
        out.append(f"<title>{html.escape(title)}</title>")
    out.append(f'<rect x="{m}" y="{m}" width="{8 * c:.1f}" height="{8 * c:.1f}" '
               f'fill="{BOARD_BG}" stroke="{GRID}"/>')
    for i in range(1, 8):
        v = m + i * c
        out.append(f'<line x1="{v:.1f}" y1="{m}" x2="{v:.1f}" y2="{m + 8 * c:.1f}" '
                   f'stroke="{GRID}" stroke-width="0.6"/>')
        out.append(f'<line x1="{m}" y1="{v:.1f}" x2="{m + 8 * c:.1f}" y2="{v:.1f}" '
                   f'stroke="{GRID}" stroke-width="0.6"/>')
    font = 'font-size="8" fill="#555" text-anchor="middle" font-family="sans-serif"'
    for i in range(8):
        out.append(f'<text x="{m + (i + .5) * c:.1f}" y="8" {font}>{COLS[i]}</text>')
        out.append(f'<text x="5" y="{m + (i + .5) * c + 3:.1f}" {font}>{i + 1}</text>')

    def centre(sq: int) -> tuple[float, float]:
        row, col = divmod(sq, 8)
        return m + (col + .5) * c, m + (row + .5) * c

    for sq in range(64):
        x, y = centre(sq)
        name = square_name(sq)
        if p.state[sq] in (MINE, THEIRS):
            kind = "mine" if p.state[sq] == MINE else "theirs"
            out.append(f'<circle class="{kind}" data-sq="{name}" cx="{x:.1f}" cy="{y:.1f}" '
                       f'r="{r:.1f}" fill="{MINE_C if kind == "mine" else THEIRS_C}"/>')
        if sq in p.flipped:
            out.append(f'<circle class="flipped" data-sq="{name}" cx="{x:.1f}" cy="{y:.1f}" '
                       f'r="{r * .38:.1f}" fill="{FLIPPED_C}"/>')
        if sq in p.legal:
            out.append(f'<circle class="legal" data-sq="{name}" cx="{x:.1f}" cy="{y:.1f}" '
                       f'r="{r * .45:.1f}" fill="none" stroke="{LEGAL_C}" '
                       f'stroke-width="1.4"/>')
    if p.played is not None:
        row, col = divmod(p.played, 8)
        out.append(f'<rect class="played" data-sq="{square_name(p.played)}" '
                   f'x="{m + col * c + .8:.1f}" y="{m + row * c + .8:.1f}" '
                   f'width="{c - 1.6:.1f}" height="{c - 1.6:.1f}" fill="none" '
                   f'stroke="{PLAYED_C}" stroke-width="2.2"/>')
    out.append("</svg>")
    return "".join(out)


def board_card(p: Position, header: str, footer: str = "", size: int = 150) -> str:
    """A board with a header line (e.g. the activation) and an optional footer (HTML)."""
    return (f"<div class='othello-card' style='display:inline-block;margin:4px 6px 8px 0;"
            f"vertical-align:top;width:{size + 4}px'>"
            f"<div style='font-size:0.85em;white-space:nowrap;overflow:hidden'>{header}</div>"
            f"{board_svg(p, size, title=p.text)}"
            f"<div style='font-size:0.78em;line-height:1.5'>{footer}</div></div>")


def boards_html(cards: Sequence[str], legend: bool = True) -> str:
    """Cards (``board_card``) in a wrapping grid, with the colour legend below."""
    grid = "<div class='othello-grid' style='display:flex;flex-wrap:wrap'>" + "".join(
        cards) + "</div>"
    return grid + (f"<div style='font-size:0.8em;color:#444;margin-bottom:6px'>"
                   f"{LEGEND_HTML}</div>" if legend else "")


# ------------------------------------------------------------------ clickable board
def board_figure(p: Position, title: str | None = None, size: int = 400) -> go.Figure:
    """``p`` as a plotly figure: pieces, flips and the last move's frame as shapes (they
    scale with the figure), and the legal moves as clickable points whose ``customdata``
    is the square's name (the last trace); hovering a piece names it."""
    fig = go.Figure()
    fig.add_shape(type="rect", x0=-.5, y0=-.5, x1=7.5, y1=7.5, fillcolor=BOARD_BG,
                  line_color=GRID, layer="below")
    for i in range(1, 8):
        fig.add_shape(type="line", x0=i - .5, x1=i - .5, y0=-.5, y1=7.5, line_color=GRID,
                      line_width=1, layer="below")
        fig.add_shape(type="line", y0=i - .5, y1=i - .5, x0=-.5, x1=7.5, line_color=GRID,
                      line_width=1, layer="below")

    def disc(sq: int, r: float, **style) -> None:
        row, col = divmod(sq, 8)
        fig.add_shape(type="circle", x0=col - r, x1=col + r, y0=row - r, y1=row + r, **style)

    pieces = []
    for kind, color in (("mine", MINE_C), ("theirs", THEIRS_C)):
        for sq in p.squares(kind):
            disc(sq, .4, fillcolor=color, line_color=color)
            pieces.append((sq, kind))
    for sq in p.flipped:
        disc(sq, .15, fillcolor=FLIPPED_C, line_color=FLIPPED_C)
    for sq in p.legal:
        disc(sq, .2, line=dict(color=LEGAL_C, width=2))
    if p.played is not None:
        row, col = divmod(p.played, 8)
        fig.add_shape(type="rect", x0=col - .47, x1=col + .47, y0=row - .47, y1=row + .47,
                      line=dict(color=PLAYED_C, width=3))
    fig.add_trace(go.Scatter(     # hover labels of the pieces (invisible markers)
        x=[s % 8 for s, _ in pieces], y=[s // 8 for s, _ in pieces], mode="markers",
        name="pieces", marker=dict(size=size / 12, color="rgba(0,0,0,0)"),
        text=[f"{square_name(s)}: {k}" + (" (flipped)" if s in p.flipped else "")
              for s, k in pieces], hovertemplate="%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(     # the click targets: one point per legal move
        x=[s % 8 for s in p.legal], y=[s // 8 for s in p.legal], mode="markers",
        name="legal: click to play", customdata=[square_name(s) for s in p.legal],
        marker=dict(size=size / 12, color="rgba(21,128,61,0.12)"),
        hovertemplate="play %{customdata}<extra></extra>"))
    fig.update_xaxes(range=[-.55, 7.55], tickvals=list(range(8)), ticktext=list(COLS),
                     side="top", showgrid=False, zeroline=False, fixedrange=True)
    fig.update_yaxes(range=[7.55, -.55], tickvals=list(range(8)),
                     ticktext=[str(i) for i in range(1, 9)], showgrid=False, zeroline=False,
                     fixedrange=True, scaleanchor="x", constrain="domain")
    fig.update_layout(title=title, height=size + (30 if title else 0), showlegend=False,
                      plot_bgcolor="white", dragmode=False, clickmode="event+select",
                      margin=dict(l=24, r=6, t=50 if title else 24, b=6))
    return fig


# ------------------------------------------------------------------ heatmaps
def _grid(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape == (64,):
        a = a.reshape(8, 8)
    if a.shape != (8, 8):
        raise DataError(f"board values are 64 squares (or 8 x 8), got shape {a.shape}")
    return a


def board_heatmaps(values_by_state: Mapping[str, np.ndarray], title: str | None = None,
                   value_name: str = "value", symmetric: bool = True,
                   cols: int | None = None, height: int = 300) -> go.Figure:
    """One 8x8 heatmap per entry of ``values_by_state`` ({state name: 64 values by square
    index, or (8, 8) rows 1..8 by columns a..h}), on one colour scale (centred on 0 when
    ``symmetric``): a latent's or neuron's board profile, or a probe's weights per square
    (e.g. ``{"mine": w[:, 1], "theirs": w[:, 2]}``)."""
    grids = {k: _grid(v) for k, v in values_by_state.items()}
    if not grids:
        raise DataError("give at least one state's 64 values")
    cols = cols or len(grids)
    rows = -(-len(grids) // cols)
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()] + [np.zeros(1)])
    top = float(np.abs(finite).max()) or 1.0
    lo, hi = (-top, top) if symmetric else (float(finite.min()), float(finite.max()) or 1.0)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(grids),
                        horizontal_spacing=0.035, vertical_spacing=0.12)
    names = np.array([[f"{COLS[c]}{r + 1}" for c in range(8)] for r in range(8)])
    for i, (state, g) in enumerate(grids.items()):
        fig.add_trace(go.Heatmap(
            z=g, x=list(COLS), y=[str(r) for r in range(1, 9)], customdata=names,
            zmin=lo, zmax=hi, colorscale="RdBu_r" if symmetric else "Viridis",
            showscale=i == 0, colorbar=dict(title=value_name, thickness=12),
            hovertemplate=f"%{{customdata}} {state}: %{{z:.3f}}<extra></extra>"),
            i // cols + 1, i % cols + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i + 1 if i else ''}",
                         constrain="domain", row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(side="bottom", constrain="domain", tickmode="array", tickvals=list(COLS),
                     tickfont_size=9)
    fig.update_yaxes(tickmode="array", tickvals=[str(r) for r in range(1, 9)], tickfont_size=9)
    fig.update_layout(title=title, height=height * rows + (30 if title else 0),
                      margin=dict(l=30, r=20, t=70 if title else 40, b=20))
    return fig
