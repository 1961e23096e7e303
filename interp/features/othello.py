"""Board profiles (the Othello-GPT literature's view of a unit) of any dictionary's latents
(residual SAEs, transcoders, attention SAEs) and of MLP neurons, from ground truth over
generated games.

For every square and every square-state of ``interp.graphs.othello.SQUARE_STATES`` (empty,
mine, theirs from the player to move's view; legal; flipped by the last move; the last
move's square), at every position of ``n_games`` random games that holds a real move:

- ``corr`` (F, 6, 64): the Pearson correlation of the unit's activation with the indicator
  (``interp.graphs.othello.board_profile``, which names graph nodes the same way);
- ``mean_when`` (F, 6, 64): the unit's mean activation over the positions where the
  indicator holds, ``sum(a * y) / sum(y)`` (NaN where it never holds);
- ``mean_act`` (F,): its mean over every position (the level to compare ``mean_when`` to).

Activations are the feature store's (``interp.features.dashboard.dictionary_acts``);
features are profiled in chunks, so memory stays (positions x chunk).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.data.othello import OthelloGames, generate_games
from interp.errors import DataError
from interp.graphs.othello import SQUARE_STATES, BoardProfile, board_profile, square_state_labels

PROFILE_GAMES = 128
PROFILE_SEED = 424_242   # games apart from training (seeds (0, step)) and harvests
STATS = ("corr", "mean_when")


@dataclass
class SquareProfile:
    """Units against the board's square-states (see the module docstring)."""

    profile: BoardProfile        # names, corr, when_on, base_rate, frequency, n_positions
    mean_when: torch.Tensor      # (F, 6, 64)
    mean_act: torch.Tensor       # (F,)

    @property
    def corr(self) -> torch.Tensor:
        return self.profile.corr

    def values(self, f: int, stat: str = "corr",
               states: tuple[str, ...] = SQUARE_STATES) -> dict[str, np.ndarray]:
        """{state: (64,) values by square} of unit ``f`` (``stat``: corr or mean_when), for
        ``interp.viz.othello.board_heatmaps``."""
        if stat not in STATS:
            raise DataError(f"unknown statistic {stat!r}; valid: {', '.join(STATS)}")
        t = getattr(self, stat)[int(f)]
        return {s: t[SQUARE_STATES.index(s)].numpy() for s in states}

    def top(self, f: int, k: int = 5) -> list[tuple[str, float]]:
        return self.profile.top(int(f), k)


def profile_games(n_games: int = PROFILE_GAMES, seed: int = PROFILE_SEED) -> OthelloGames:
    return generate_games(n_games, np.random.default_rng(seed))


def square_profile(acts: torch.Tensor, games: OthelloGames, names: list[str] | None = None,
                   chunk: int = 256) -> SquareProfile:
    """The square profile of units whose activations on ``games.tokens()`` are ``acts``
    (N, T, F) on the first T <= 61 positions (BOS first)."""
    labels, valid = square_state_labels(games)
    n, t, f = acts.shape
    if n != valid.shape[0] or t > valid.shape[1]:
        raise DataError(f"activations of shape {tuple(acts.shape)} do not match the games' "
                        f"tokens {valid.shape} (N games, T <= 61 positions, F units)")
    mask = valid[:, :t]
    y = torch.from_numpy(labels[:, :t][mask].reshape(int(mask.sum()), -1)).float()  # (M, 384)
    count = y.sum(0)
    parts, means, mean_act = [], [], []
    for s in range(0, f, chunk):
        a = acts[..., s:s + chunk]
        parts.append(board_profile(a, games))
        x = a[torch.from_numpy(mask)].float()                                   # (M, c)
        means.append(torch.where(count > 0, (x.T @ y) / count.clamp_min(1),
                                 torch.full((x.shape[1], y.shape[1]), float("nan"))))
        mean_act.append(x.mean(0))
    shape = (f, len(SQUARE_STATES), 64)
    first = parts[0]
    profile = BoardProfile(names or [str(i) for i in range(f)],
                           torch.cat([p.corr for p in parts]),
                           torch.cat([p.when_on for p in parts]), first.base_rate,
                           torch.cat([p.frequency for p in parts]), first.n_positions)
    return SquareProfile(profile, torch.cat(means).reshape(shape), torch.cat(mean_act))


def _game_tokens(model, games: OthelloGames) -> torch.Tensor:
    return torch.from_numpy(games.tokens(with_bos=True))[:, :model.cfg.n_ctx]


def dictionary_profile(model, sae, games: OthelloGames | None = None,
                       batch_size: int = 32) -> SquareProfile:
    """The square profile of every latent of a dictionary of the othello model."""
    from interp.features.dashboard import dictionary_acts

    games = games if games is not None else profile_games()
    acts = dictionary_acts(model, sae, _game_tokens(model, games), batch_size)
    return square_profile(acts, games)


@torch.no_grad()
def neuron_profile(model, layer: int, neurons: list[int], games: OthelloGames | None = None,
                   batch_size: int = 32) -> SquareProfile:
    """The square profile of MLP neurons ``neurons`` of ``layer``
    (``blocks.L.mlp.hook_post`` units)."""
    from interp.features.dashboard import hook_acts

    hook = f"blocks.{layer}.mlp.hook_post"
    if hook not in model.hook_dict:
        raise DataError(f"the model has no {hook}")
    games = games if games is not None else profile_games()
    tokens = _game_tokens(model, games)
    idx = torch.tensor([int(u) for u in neurons])
    acts = torch.zeros(*tokens.shape, len(idx))
    for sl, cache in hook_acts(model, tokens, [hook], batch_size):
        x = cache[hook]
        if int(idx.max()) >= x.shape[-1]:
            raise DataError(f"neurons {neurons} out of range: {hook} has {x.shape[-1]}")
        acts[sl] = x[..., idx]
    return square_profile(acts, games, [f"L{layer}.n{u}" for u in neurons])


@torch.no_grad()
def probe_profile(model, units: list[int], weights: list[float], hook: str | None = None,
                  sae=None, games: OthelloGames | None = None, batch_size: int = 32,
                  name: str = "probe") -> SquareProfile:
    """The square profile of a linear probe's logit ``sum_u w_u x_u`` over the units it
    reads: a hook's units (``hook``, e.g. neurons at ``blocks.L.mlp.hook_post``) or a
    dictionary's latents (``sae``). The probe's bias shifts ``mean_when`` and ``mean_act``
    alike and leaves ``corr`` unchanged, so it is not needed."""
    from interp.features.dashboard import dictionary_acts, hook_acts

    if (hook is None) == (sae is None):
        raise DataError("a probe reads either a hook's units or a dictionary's latents: give "
                        "one of hook and sae")
    if len(units) != len(weights) or not units:
        raise DataError(f"a probe needs one weight per unit ({len(units)} units, "
                        f"{len(weights)} weights)")
    games = games if games is not None else profile_games()
    tokens = _game_tokens(model, games)
    idx = torch.tensor([int(u) for u in units])
    w = torch.tensor([float(v) for v in weights])
    if sae is not None:
        logit = dictionary_acts(model, sae, tokens, batch_size)[..., idx] @ w
    else:
        if hook not in model.hook_dict:
            raise DataError(f"the model has no {hook}")
        logit = torch.zeros(tokens.shape)
        for sl, cache in hook_acts(model, tokens, [hook], batch_size):
            x = cache[hook]
            if int(idx.max()) >= x.shape[-1]:
                raise DataError(f"units {units} out of range: {hook} has {x.shape[-1]}")
            logit[sl] = x[..., idx] @ w
    return square_profile(logit[..., None], games, [name])
