"""A prompt of Othello moves entered by clicking a board (for any page of the app).

``board_prompt(key)`` shows the position of the moves typed so far as a plotly board whose
legal moves are clickable (``st.plotly_chart(on_select=...)``): a click appends that move to
the text box (``st.session_state[key]``, a text area the user can still type in), and the
board follows the text. Buttons take the last move back or clear the game. The page reads
the prompt as before (``interp.viz.prompts.prompt_tokens``), so typed and clicked prompts
are the same thing.

    from app_board import board_prompt
    text, pos = board_prompt("graph_prompt", default="f5 d6 c3")
"""
from __future__ import annotations

import re
from functools import partial

import streamlit as st

from interp.data.othello import square_name
from interp.errors import DataError
from interp.viz.othello import Position, board_figure, position


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", (text or "").strip().lower()) if w]


def parse_moves(text: str) -> tuple[Position, str | None]:
    """The position after the longest legal prefix of ``text``'s moves, and why the rest
    was not played (None when every move was legal)."""
    played: list[str] = []
    for i, w in enumerate(_words(text)):
        try:
            position(played + [w])
        except (DataError, ValueError) as e:
            why = str(e) if isinstance(e, DataError) else f"{w!r} is not a square (a1 .. h8)"
            return position(played), f"the board stops before move {i + 1}: {why}"
        played.append(w)
    return position(played), None


def _clicked(key: str, chart_key: str) -> None:
    """on_select callback: append the clicked legal move to the prompt."""
    event = st.session_state.get(chart_key)
    points = event.selection.points if event is not None else []
    squares = [p.get("customdata") for p in points if isinstance(p.get("customdata"), str)]
    if squares:
        text = (st.session_state.get(key) or "").strip()
        st.session_state[key] = f"{text} {squares[0]}".strip()


def _undo(key: str) -> None:
    st.session_state[key] = " ".join(_words(st.session_state.get(key, ""))[:-1])


def _clear(key: str) -> None:
    st.session_state[key] = ""


def board_prompt(key: str, default: str = "", label: str = "moves (squares, e.g. f5 d6 c3)",
                 size: int = 400) -> tuple[str, Position]:
    """The board and its text box (``key``); returns the text and the position it reaches
    (its longest legal prefix)."""
    st.session_state.setdefault(key, default)
    pos, problem = parse_moves(st.session_state[key])
    left, right = st.columns([size, max(940 - size, 300)], gap="medium")  # ~940 px wide
    with right:
        st.text_area(label, key=key, height=90)
        b = st.columns([3, 2, 4])
        b[0].button("undo move", key=f"{key}_undo", on_click=_undo, args=(key,),
                    disabled=not pos.moves)
        b[1].button("clear", key=f"{key}_clear", on_click=_clear, args=(key,))
        side = "black" if pos.to_move == 0 else "white"
        lines = [f"**{len(pos.moves)} moves**; {'game over' if pos.over else f'{side} to move'}"
                 f" (its pieces are *mine*, blue; the opponent's *theirs*, red)."]
        if pos.played is not None:
            flips = " ".join(square_name(q) for q in pos.flipped)
            lines.append(f"Last move {pos.names[-1]} flipped {flips or 'nothing'}.")
        lines.append("Legal moves (click one on the board): " +
                     (" ".join(square_name(q) for q in pos.legal) or "none"))
        st.markdown("  \n".join(lines))
        if problem:
            st.warning(problem)
    chart_key = f"{key}_board_{len(pos.moves)}_{'-'.join(map(str, pos.moves[-3:]))}"
    with left:
        st.plotly_chart(board_figure(pos, size=size), key=chart_key, width="stretch",
                        on_select=partial(_clicked, key, chart_key), selection_mode="points",
                        config={"displayModeBar": False})
    return st.session_state[key], pos
