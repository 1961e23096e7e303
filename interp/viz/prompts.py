"""Prompts typed by a user, for the app's ablation page and for notebooks: text to token ids
for any model (Othello games as square names, ``d3 c5 f6``), a default prompt per embedded
model, reference contexts of the same length from the model's own corpus (for mean
ablation), and the next-token table and figure of an ablation or steering report."""
from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interp.errors import DataError

DEFAULT_PROMPTS = {"othello": "f5 d6 c3 d3 c4 f4 c5 b3 c2 e6",
                   "pycode": "def area(width, height):\n    return (width"}


def default_prompt(model_name: str) -> str:
    return DEFAULT_PROMPTS.get(model_name, "The quick brown fox")


def prompt_tokens(model_name: str, model, text: str) -> torch.Tensor:
    """(1, T) token ids of ``text`` with BOS first. Othello prompts are square names
    separated by spaces or commas (``f5 d6 c3``); other models use their tokenizer."""
    if model_name == "othello":
        from interp.data.othello import BOS, token_names

        index = {name: i for i, name in enumerate(token_names())}
        words = [w for w in re.split(r"[\s,]+", text.strip().lower()) if w]
        if not words:
            raise DataError("type at least one move, e.g. 'f5 d6 c3'")
        bad = [w for w in words if w not in index or w.startswith("<")]
        if bad:
            raise DataError(f"not Othello squares: {', '.join(bad)} (use a1 .. h8 except the "
                            f"four centre squares, separated by spaces)")
        return torch.tensor([[BOS] + [index[w] for w in words]], dtype=torch.long)
    if getattr(model, "tokenizer", None) is None:
        raise DataError(f"the model {model_name!r} has no tokenizer to read a text prompt")
    if not text:
        raise DataError("type a prompt")
    return model.to_tokens(text, prepend_bos=True)


def corpus_contexts(model_name: str, n: int, n_ctx: int, seed: int = 0) -> torch.Tensor | None:
    """(n, n_ctx) contexts of an embedded model's held-out data (reference prompts for mean
    ablation); None for other models."""
    if model_name == "othello":
        from interp.data.othello import generate_games

        games = generate_games(n, np.random.default_rng(10_000 + seed))
        toks = games.tokens(with_bos=True)
        if n_ctx > toks.shape[1]:
            raise DataError(f"an Othello prompt has at most {toks.shape[1]} tokens")
        return torch.from_numpy(toks[:, :n_ctx])
    if model_name == "pycode":
        from interp.data.sources import PycodeSource

        it = PycodeSource(split="test").contexts(max(n_ctx, 2))
        return torch.from_numpy(np.stack([next(it)[:n_ctx] for _ in range(n)]).astype(np.int64))
    return None


def token_table(model_name: str, pairs: list[tuple[int, float]], value: str = "p") -> list[dict]:
    """[(token id, value)] as rows {token, id, value} with readable token strings."""
    from interp.models import token_strings

    names = token_strings(model_name, [i for i, _ in pairs])
    return [{"token": repr(s), "id": int(i), value: float(v)} for s, (i, v) in zip(names, pairs)]


def next_token_figure(model_name: str, before: list[tuple[int, float]],
                      after: list[tuple[int, float]], title: str = "next token") -> go.Figure:
    """Top next-token probabilities before and after an intervention, side by side."""
    from interp.models import token_strings

    fig = make_subplots(rows=1, cols=2, subplot_titles=("before", "after"),
                        horizontal_spacing=0.2)
    for col, pairs, color in ((1, before, "#4c78a8"), (2, after, "#f58518")):
        names = token_strings(model_name, [i for i, _ in pairs])
        fig.add_trace(go.Bar(x=[p for _, p in pairs][::-1], y=[repr(s) for s in names][::-1],
                             orientation="h", marker_color=color,
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), 1, col)
    fig.update_xaxes(title_text="probability", range=[0, 1])
    fig.update_layout(title=title, height=60 + 26 * max(len(before), len(after), 1),
                      showlegend=False, margin=dict(l=90, r=20, t=60, b=40))
    return fig


def single_token(model_name: str, model, text: str) -> int:
    """The id of one token typed by the user (an Othello square, or a string the tokenizer
    reads as exactly one token, e.g. ``)``; ``\\n`` and ``\\t`` stand for a newline and a tab)."""
    if model_name == "othello":
        return int(prompt_tokens(model_name, model, text)[0, 1:].reshape(-1)[0]) if len(
            text.split()) == 1 else _not_one(text)
    if "\\" in text:  # typed escapes: \n for a newline, \t for a tab
        text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    ids = model.to_tokens(text, prepend_bos=False)[0] if getattr(model, "tokenizer",
                                                                   None) else None
    if ids is None or len(ids) != 1:
        _not_one(text)
    return int(ids[0])


def _not_one(text: str):
    raise DataError(f"{text!r} is not exactly one token")
