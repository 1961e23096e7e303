"""What an Othello feature holds: its activations over many games against the board's ground
truth (``interp.data.othello``), to name the nodes of an attribution graph.

At token position p >= 1 the model has read moves 0..p-1 (position 0 is BOS) and predicts
move p; the ground truth there is the board after move p-1 from the view of the player to
move (``OthelloGames.board_state``). Per square, six indicators (``SQUARE_STATES``): empty,
mine, theirs (the player to move's view), legal (for the player to move), flipped (by move
p-1) and played (move p-1's square). A feature's profile is the Pearson correlation of its
activation with each indicator over every position that holds a real move (N games x up to
60 positions), and how often the indicator holds where the feature fires (weighted by its
activation: ``sum(a * y) / sum(a)``, against the indicator's base rate); it is named by its
strongest square-state, e.g. "c4 theirs" (or "c4 not empty" for a negative correlation).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.data.othello import (EMPTY, MAX_MOVES, MINE, THEIRS, OthelloGames, parse_square,
                                 square_name)
from interp.errors import DataError

SQUARE_STATES = ("empty", "mine", "theirs", "legal", "flipped", "played")


def square_state_labels(games: OthelloGames) -> tuple[np.ndarray, np.ndarray]:
    """(N, 61, 6, 64) bool indicators (``SQUARE_STATES``) at every token position of
    ``games.tokens()`` (BOS first), and (N, 61) bool: the position holds a real move (false
    at BOS and on padding after a game's end)."""
    n = len(games)
    state = games.board_state()                                   # (N, 60, 64)
    played = np.zeros((n, MAX_MOVES, 64), dtype=bool)
    rows, cols = np.nonzero(games.valid())
    played[rows, cols, games.moves[rows, cols]] = True
    per_move = np.stack([state == EMPTY, state == MINE, state == THEIRS, games.legal_mask(),
                         games.flipped_mask(), played], axis=2)   # (N, 60, 6, 64)
    labels = np.zeros((n, MAX_MOVES + 1, len(SQUARE_STATES), 64), dtype=bool)
    labels[:, 1:] = per_move
    valid = np.zeros((n, MAX_MOVES + 1), dtype=bool)
    valid[:, 1:] = games.valid()
    return labels, valid


@dataclass
class BoardProfile:
    """Features against the board's square-states (see the module docstring)."""

    features: list[str]       # a label per feature (F)
    corr: torch.Tensor        # (F, 6, 64) Pearson correlation with each indicator
    when_on: torch.Tensor     # (F, 6, 64) the indicator's activation-weighted mean
    base_rate: torch.Tensor   # (6, 64) the indicator's mean over every position
    frequency: torch.Tensor   # (F,) the fraction of positions where the feature is active
    n_positions: int

    def top(self, f: int, k: int = 5, positive: bool = False) -> list[tuple[str, float]]:
        """Feature ``f``'s ``k`` strongest square-states ("c4 theirs", correlation), by
        absolute correlation (only positive ones with ``positive``); a negative one reads
        "c4 not theirs"."""
        c = self.corr[f].flatten()
        order = torch.argsort(c if positive else c.abs(), descending=True)[:k]
        out = []
        for i in order.tolist():
            s, sq = divmod(i, 64)
            v = float(c[i])
            out.append((f"{square_name(sq)} {'' if v >= 0 else 'not '}{SQUARE_STATES[s]}", v))
        return out

    def table(self, f: int, k: int = 3, positive: bool = True) -> list[dict]:
        """Feature ``f``'s ``k`` strongest square-states as rows: the correlation, how often
        the state holds where the feature fires (activation-weighted) and its base rate."""
        rows = []
        for label, v in self.top(f, k, positive):
            sq, _, state = label.partition(" ")
            state = state.removeprefix("not ")
            s, q = SQUARE_STATES.index(state), parse_square(sq)
            rows.append({"square-state": label, "corr": v, "when active": float(
                self.when_on[f, s, q]), "base rate": float(self.base_rate[s, q])})
        return rows

    def name(self, f: int) -> str:
        """The strongest square-state of feature ``f`` with its correlation."""
        label, v = self.top(f, 1)[0]
        return f"{label} ({v:+.2f})"

    def grid(self, f: int, state: str) -> np.ndarray:
        """(8, 8) correlations of feature ``f`` with ``state`` on every square, rows 1..8,
        columns a..h (row r, column c is square ``r * 8 + c``)."""
        return self.corr[f, SQUARE_STATES.index(state)].reshape(8, 8).numpy()


def board_profile(acts: torch.Tensor, games: OthelloGames,
                  features: list[str] | None = None) -> BoardProfile:
    """The board profile of features whose activations on ``games.tokens()`` are ``acts``
    (N, T, F) on the first T <= 61 positions (e.g. from
    ``interp.graphs.nodes.feature_activations``)."""
    labels, valid = square_state_labels(games)
    n, t = acts.shape[:2]
    if n != valid.shape[0] or t > valid.shape[1]:
        raise DataError(f"activations of shape {tuple(acts.shape)} do not match the games' "
                         f"tokens {valid.shape} (N games, T <= 61 positions with BOS first, "
                         f"F features)")
    labels, valid = labels[:, :t], valid[:, :t]
    mask = torch.from_numpy(valid)
    x = acts[mask].double()                                       # (M, F)
    y = torch.from_numpy(labels[valid].reshape(int(mask.sum()), -1)).double()  # (M, 6*64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    den = xc.norm(dim=0)[:, None] * yc.norm(dim=0)[None, :]
    corr = torch.where(den > 0, xc.T @ yc / den.clamp(min=1e-30), torch.zeros_like(den))
    when_on = (x.T @ y) / x.sum(0)[:, None].clamp(min=1e-30)
    f, shape = acts.shape[-1], (len(SQUARE_STATES), 64)
    return BoardProfile(features or [str(i) for i in range(f)],
                        corr.reshape(f, *shape).float(), when_on.reshape(f, *shape).float(),
                        y.mean(0).reshape(shape).float(), (x > 0).double().mean(0).float(),
                        int(x.shape[0]))


def profile_features(model, blocks, games: OthelloGames, features: list[tuple[str, int]],
                     batch_size: int = 64) -> BoardProfile:
    """Run the model on ``games`` and profile ``features`` ((block name, latent) of
    ``blocks``, e.g. ``graph.nodes.blocks``) against their boards, on as many positions as
    the model's context holds (60 of the 61 with BOS for the embedded model)."""
    from interp.graphs.nodes import feature_activations

    tokens = torch.from_numpy(games.tokens())[:, :model.cfg.n_ctx]
    acts = feature_activations(model, blocks, tokens, features, batch_size)
    return board_profile(acts, games, [f"{b}[{lat}]" for b, lat in features])
