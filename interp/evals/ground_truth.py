"""Ground-truth interpretability of a dictionary: which built-in property of the embedded
model each latent follows, with "the latent fires" read as a classifier of the property.

Over M labelled positions (held-out Othello games or held-out Python source), with
``fires`` (M, m) = activation > 0 for each of m latents (the feature store's encoding rule,
``interp.features.dashboard.dictionary_acts``, at the hook the dictionary reads) and
``labels`` (M, P) for P binary properties:

    TP = fires^T @ labels   (m, P)      f = fires.sum(0)  (m,)      y = labels.sum(0)  (P,)
    precision = TP / f      recall = TP / y      F1 = 2 TP / (f + y)

one matrix product for every (latent, property) pair, accumulated over chunks of contexts so
memory stays (positions of a chunk x m). A latent is alive when it fires at least
``min_fires`` times in the sample (dead: never; rare: in between, too few to judge); a
property is eligible when it holds at least ``min_positives`` times. Each alive latent's best
property is the eligible one with the highest F1 among those it is positively associated
with (precision above the property's base rate, ``TP * M > f * y``): a latent that fires
everywhere has F1 = 2b / (1 + b) with any property of base rate b (0.67 at b = 0.5) while
telling nothing about it, so chance-level pairs are not matches.

Summary: the fraction of alive latents whose best F1 is >= 0.5 and >= 0.8; the number of
distinct properties that are some alive latent's best match at F1 >= 0.5 (a dictionary with
100 copies of one feature covers one property, not 100); dead and rare latent counts.

Properties:
- othello: ``othello-{state}-{square}`` for the six ``interp.graphs.othello.SQUARE_STATES``
  (empty / mine / theirs from the player to move's view, legal, flipped by the last move,
  the last move's square) on each of the 64 squares, at every position that holds a real
  move (``square_state_labels``: position p has read moves 0..p-1); games from
  ``interp.features.othello.profile_games`` (``PROFILE_SEED + seed``, apart from training);
- pycode: per-token classes of ``interp.data.pycode_labels`` on the held-out split, as the
  probing datasets name them (``pycode-in-string``, ``-in-comment``, ``-keyword``,
  ``-in-brackets``, ``-indented``) plus every bracket depth and indentation level as its own
  property (``pycode-bracket-depth-2``, ``pycode-indent-3``; the last one "N+" merges the
  deeper levels), at every position but BOS (an end-of-text token has the labels'
  all-false / zero convention, so it counts as depth 0 and level 0).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import numpy as np
import torch

from interp.data.pycode_labels import TokenLabels
from interp.errors import DataError, MismatchError, UsageError
from interp.hooks import default_n_ctx, sae_hook

GROUND_TRUTH_MODELS = ("othello", "pycode")
# contexts per model when n_contexts is None: ~15k labelled positions each (othello games
# hold 60, pycode contexts 127), enough for properties that hold a few hundred times, within
# the evaluation's time budget on two cores (the model's forward pass is most of the cost)
DEFAULT_CONTEXTS = {"othello": 256, "pycode": 128}
MATCH_THRESHOLDS = (0.5, 0.8)  # F1 levels reported as "matched"
COVER_THRESHOLD = 0.5          # F1 at which a best match counts as covering its property
MAX_BRACKET_DEPTH = 4          # pycode-bracket-depth-4+ holds depths 4 and deeper
MAX_INDENT_LEVEL = 6           # pycode-indent-6+ holds levels 6 and deeper
TOP_MATCHES = 20               # latents listed in details["top"]


@dataclass
class PropertySample:
    """Contexts with binary ground truth at their positions."""

    tokens: torch.Tensor    # (N, T) int64 token ids
    labels: torch.Tensor    # (N, T, P) bool: property p holds at the position
    valid: torch.Tensor     # (N, T) bool: the position has ground truth (not BOS or padding)
    names: list[str]        # P property names
    source: str             # where the contexts come from, for the result's config


# ------------------------------------------------------------------ properties
def othello_sample(n_games: int, seed: int, n_ctx: int) -> PropertySample:
    """``n_games`` held-out games (``PROFILE_SEED + seed``) with the 6 x 64 square-state
    indicators the board profiles use, on the model's first ``n_ctx`` positions."""
    from interp.data.othello import square_name
    from interp.features.othello import PROFILE_SEED, profile_games
    from interp.graphs.othello import SQUARE_STATES, square_state_labels

    games = profile_games(n_games, PROFILE_SEED + seed)
    labels, valid = square_state_labels(games)                   # (N, 61, 6, 64), (N, 61)
    tokens = torch.from_numpy(games.tokens(with_bos=True))[:, :n_ctx].long()
    t = tokens.shape[1]
    names = [f"othello-{state}-{square_name(sq)}" for state in SQUARE_STATES
             for sq in range(64)]                                # state-major, as reshaped
    flat = torch.from_numpy(labels[:, :t].reshape(len(games), t, len(names)))
    return PropertySample(tokens, flat, torch.from_numpy(valid[:, :t]), names,
                          f"othello games of seed PROFILE_SEED + {seed}")


def pycode_properties(labels: TokenLabels) -> dict[str, np.ndarray]:
    """Binary indicators from ``TokenLabels`` (any shape): the probing datasets' five classes,
    then each bracket depth and indentation level (the deepest merged, ``N+``)."""
    depth = np.asarray(labels.bracket_depth)
    level = np.asarray(labels.indent_level)
    props = {f"pycode-{k}": v for k, v in labels.binary_classes().items()}
    for d in range(MAX_BRACKET_DEPTH):
        props[f"pycode-bracket-depth-{d}"] = depth == d
    props[f"pycode-bracket-depth-{MAX_BRACKET_DEPTH}+"] = depth >= MAX_BRACKET_DEPTH
    for lv in range(MAX_INDENT_LEVEL):
        props[f"pycode-indent-{lv}"] = level == lv
    props[f"pycode-indent-{MAX_INDENT_LEVEL}+"] = level >= MAX_INDENT_LEVEL
    return props


@functools.lru_cache(maxsize=2)
def _pycode_split(n_ctx: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Every held-out context of ``n_ctx`` tokens (C, n_ctx) and its indicators
    (C, n_ctx, P), cached: packing and labelling the split takes seconds, and an
    evaluation of several dictionaries of one model reuses it."""
    from interp.data.sources import PycodeSource

    contexts, labels = PycodeSource(split="test").labelled_contexts(n_ctx)
    props = pycode_properties(labels)
    indicators = np.stack(list(props.values()), axis=-1)
    contexts.flags.writeable = indicators.flags.writeable = False
    return contexts, indicators, tuple(props)


def pycode_sample(n_contexts: int, seed: int, n_ctx: int) -> PropertySample:
    """``n_contexts`` contexts drawn at random (by ``seed``) from the whole held-out split,
    so the sample spans many files rather than the first few."""
    contexts, labels, names = _pycode_split(n_ctx)
    if not 0 < n_contexts <= len(contexts):
        raise DataError(f"n_contexts={n_contexts}: the pycode test split holds "
                        f"{len(contexts)} contexts of {n_ctx} tokens; use 1..{len(contexts)}")
    rows = np.sort(np.random.default_rng(seed).choice(len(contexts), n_contexts,
                                                      replace=False))
    valid = torch.ones(n_contexts, n_ctx, dtype=torch.bool)
    valid[:, 0] = False                                          # BOS has no label
    return PropertySample(torch.from_numpy(contexts[rows].copy()),
                          torch.from_numpy(labels[rows].copy()), valid, list(names),
                          f"pycode test split, {n_contexts} of {len(contexts)} contexts "
                          f"drawn with seed {seed}")


def property_sample(model_name: str, n_contexts: int, seed: int, n_ctx: int
                    ) -> PropertySample:
    """The labelled sample of an embedded model; a DataError naming the models that have
    built-in properties for any other."""
    check_model_name(model_name)
    if model_name == "othello":
        return othello_sample(n_contexts, seed, n_ctx)
    return pycode_sample(n_contexts, seed, n_ctx)


def check_model_name(model_name: str) -> None:
    """Refuse, before any work, a model without built-in properties."""
    if model_name not in GROUND_TRUTH_MODELS:
        raise DataError(f"no built-in ground-truth properties for model {model_name!r}; "
                        f"they exist for {', '.join(GROUND_TRUTH_MODELS)}")


# ------------------------------------------------------------------ counts and scores
@dataclass
class MatchCounts:
    """Co-occurrence counts of latents firing and properties holding (float64, exact)."""

    true_positives: torch.Tensor   # (m, P) positions where the latent fires and p holds
    fires: torch.Tensor            # (m,) positions where the latent fires
    positives: torch.Tensor        # (P,) positions where the property holds
    n_positions: int = 0

    @staticmethod
    def zeros(n_latents: int, n_properties: int) -> "MatchCounts":
        return MatchCounts(torch.zeros(n_latents, n_properties, dtype=torch.float64),
                           torch.zeros(n_latents, dtype=torch.float64),
                           torch.zeros(n_properties, dtype=torch.float64))

    def add_(self, fires_MF: torch.Tensor, labels_MP: torch.Tensor) -> None:
        """Add M positions: ``fires_MF`` (M, m) and ``labels_MP`` (M, P) booleans. The
        product runs in float32, exact while a chunk has fewer than 2^24 positions."""
        if fires_MF.shape[0] >= 2 ** 24:
            raise DataError(f"a chunk of {fires_MF.shape[0]} positions is too large for "
                            f"exact float32 counts; use smaller chunks")
        f, y = fires_MF.float(), labels_MP.float()
        self.true_positives += (f.T @ y).double()
        self.fires += f.sum(0).double()
        self.positives += y.sum(0).double()
        self.n_positions += int(fires_MF.shape[0])


def precision_recall_f1(true_positives: torch.Tensor, fires: torch.Tensor,
                        positives: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m, P) precision TP / f, recall TP / y and F1 2 TP / (f + y) of every latent as a
    classifier of every property; 0 where a denominator is 0 (a latent that never fires
    predicts nothing, a property that never holds cannot be recalled)."""
    tp = true_positives.double()
    f, y = fires.double()[:, None], positives.double()[None, :]
    precision = torch.where(f > 0, tp / f.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(y > 0, tp / y.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(f + y > 0, 2 * tp / (f + y).clamp_min(1), torch.zeros_like(tp))
    return precision, recall, f1


@dataclass
class BestMatches:
    """Each latent's best property and each property's best latent."""

    alive: torch.Tensor          # (m,) bool: fires at least min_fires times
    eligible: torch.Tensor       # (P,) bool: holds at least min_positives times
    property: torch.Tensor       # (m,) int64 best property, -1 when none (dead, no match)
    precision: torch.Tensor      # (m,) of the best property (0 when none)
    recall: torch.Tensor         # (m,)
    f1: torch.Tensor             # (m,)
    latent_of_property: torch.Tensor  # (P,) int64 alive latent with the highest F1, -1: none
    f1_of_property: torch.Tensor      # (P,) its F1 (0 when none)


def best_matches(counts: MatchCounts, min_fires: int, min_positives: int) -> BestMatches:
    """Best (latent, property) pairs by F1 among alive latents, eligible properties and
    positively associated pairs (``TP * M > f * y``: the property is more frequent where
    the latent fires than overall, so an always-on latent matches nothing)."""
    precision, recall, f1 = precision_recall_f1(counts.true_positives, counts.fires,
                                                counts.positives)
    alive = counts.fires >= min_fires
    eligible = counts.positives >= min_positives
    above_chance = (counts.true_positives * counts.n_positions
                    > counts.fires[:, None] * counts.positives[None, :])
    allowed = above_chance & alive[:, None] & eligible[None, :]
    scored = torch.where(allowed, f1, torch.full_like(f1, -1.0))   # -1: not a candidate
    best_f1, best_p = scored.max(1)
    by_prop_f1, by_prop_latent = scored.max(0)
    has, prop_has = best_f1 >= 0, by_prop_f1 >= 0
    rows = torch.arange(len(best_p))
    zero = torch.zeros_like(best_f1)
    return BestMatches(alive, eligible, torch.where(has, best_p, -1),
                       torch.where(has, precision[rows, best_p], zero),
                       torch.where(has, recall[rows, best_p], zero),
                       torch.where(has, best_f1, zero),
                       torch.where(prop_has, by_prop_latent, -1),
                       torch.where(prop_has, by_prop_f1, torch.zeros_like(by_prop_f1)))


def distinct_covered(best: BestMatches, threshold: float = COVER_THRESHOLD) -> int:
    """How many distinct properties are the best match of some alive latent at
    F1 >= ``threshold``: copies of one feature count once."""
    hit = best.alive & (best.property >= 0) & (best.f1 >= threshold)
    return int(torch.unique(best.property[hit]).numel())


@torch.no_grad()
def count_matches(model, sae, sample: PropertySample, batch_size: int = 64) -> MatchCounts:
    """Counts over the labelled positions of ``sample``, ``batch_size`` contexts at a time
    (the dense codes of one chunk are (batch_size x T x m))."""
    from interp.features.dashboard import dictionary_acts

    counts = MatchCounts.zeros(sae.cfg.d_sae, len(sample.names))
    for s in range(0, sample.tokens.shape[0], batch_size):
        acts = dictionary_acts(model, sae, sample.tokens[s:s + batch_size], batch_size)
        valid = sample.valid[s:s + batch_size]
        counts.add_(acts[valid] > 0, sample.labels[s:s + batch_size][valid])
    return counts


# ------------------------------------------------------------------ the result
def summarize(counts: MatchCounts, best: BestMatches) -> dict[str, float]:
    """The headline numbers (see the module docstring); means over alive latents are 0
    when none is alive (``alive_latents`` then says so)."""
    alive = best.alive
    n_alive = int(alive.sum())
    f1 = best.f1[alive]
    out = {"n_latents": int(alive.numel()), "alive_latents": n_alive,
           "dead_latents": int((counts.fires == 0).sum()),
           "rare_latents": int(((counts.fires > 0) & ~alive).sum()),
           "n_positions": counts.n_positions, "n_properties": int(best.eligible.sum()),
           "mean_best_f1": float(f1.mean()) if n_alive else 0.0,
           "mean_best_precision": float(best.precision[alive].mean()) if n_alive else 0.0,
           "mean_best_recall": float(best.recall[alive].mean()) if n_alive else 0.0}
    for t in MATCH_THRESHOLDS:
        out[f"frac_alive_f1_ge_{t}"] = float((f1 >= t).double().mean()) if n_alive else 0.0
    covered = distinct_covered(best)
    out[f"properties_covered_f1_ge_{COVER_THRESHOLD}"] = covered
    out[f"frac_properties_covered_f1_ge_{COVER_THRESHOLD}"] = (
        covered / out["n_properties"] if out["n_properties"] else 0.0)
    return out


def _rounded(t: torch.Tensor) -> list[float]:
    return [round(float(v), 4) for v in t]


def describe_matches(counts: MatchCounts, best: BestMatches, names: list[str]) -> dict:
    """Per alive latent (columns: latent, property, precision, recall, f1, fires,
    positives), per eligible property (its best latent and F1, and how many latents have it
    as their best match at F1 >= 0.5), and the ``TOP_MATCHES`` best latents as rows."""
    idx = torch.nonzero(best.alive).flatten()
    prop = best.property[idx]
    latents = {"latent": idx.tolist(),
               "property": [names[p] if p >= 0 else None for p in prop.tolist()],
               "precision": _rounded(best.precision[idx]), "recall": _rounded(best.recall[idx]),
               "f1": _rounded(best.f1[idx]), "fires": [int(v) for v in counts.fires[idx]],
               "positives": [int(counts.positives[p]) if p >= 0 else 0 for p in prop.tolist()]}
    covering = best.alive & (best.property >= 0) & (best.f1 >= COVER_THRESHOLD)
    n_best = torch.bincount(best.property[covering], minlength=len(names))
    pidx = torch.nonzero(best.eligible).flatten().tolist()
    properties = {"property": [names[p] for p in pidx],
                  "positives": [int(counts.positives[p]) for p in pidx],
                  "best_latent": [int(best.latent_of_property[p]) for p in pidx],
                  "best_f1": [round(float(best.f1_of_property[p]), 4) for p in pidx],
                  "latents_matched": [int(n_best[p]) for p in pidx]}
    order = torch.argsort(best.f1[idx], descending=True, stable=True)[:TOP_MATCHES].tolist()
    top = [{k: v[i] for k, v in latents.items()} for i in order]
    return {"latents": latents, "properties": properties, "top": top}


def _check_model(model, sae, model_name: str) -> str:
    """The hook the dictionary reads, after refusing a dictionary of another model and a
    model that is not ``model_name`` (the properties are ``model_name``'s tokens)."""
    from interp.provenance import check_dictionary, model_name_of

    loaded = model_name_of(model)
    if loaded and loaded != model_name:
        raise MismatchError(f"the model is {loaded!r} but the properties asked for are "
                            f"{model_name!r}'s; pass the model of that name")
    check_dictionary(sae, model=model, model_name=model_name)
    return sae_hook(sae)


def run(model, sae, model_name: str, *, seed: int = 0, n_contexts: int | None = None,
        min_fires: int = 5, min_positives: int = 10, batch_size: int = 64) -> dict:
    """Ground-truth match of every latent of ``sae`` (any dictionary kind with a hook it
    reads) on ``n_contexts`` held-out contexts of ``model_name`` (othello games or pycode
    contexts; ``DEFAULT_CONTEXTS`` when None); the result of ``interp.evals``: summary,
    details, config, seconds."""
    start = time.perf_counter()
    check_model_name(model_name)
    n_contexts = DEFAULT_CONTEXTS[model_name] if n_contexts is None else int(n_contexts)
    for option, value in (("n_contexts", n_contexts), ("min_fires", min_fires),
                          ("min_positives", min_positives), ("batch_size", batch_size)):
        if value < 1:
            raise UsageError(f"{option}={value}: it must be at least 1")
    hook = _check_model(model, sae, model_name)
    sample = property_sample(model_name, n_contexts, seed, default_n_ctx(model))
    counts = count_matches(model, sae, sample, batch_size)
    best = best_matches(counts, min_fires, min_positives)
    config = {"model": model_name, "hook": hook, "d_sae": int(sae.cfg.d_sae), "seed": seed,
              "n_contexts": n_contexts, "n_ctx": int(sample.tokens.shape[1]),
              "min_fires": min_fires, "min_positives": min_positives,
              "batch_size": batch_size, "match_thresholds": list(MATCH_THRESHOLDS),
              "cover_threshold": COVER_THRESHOLD, "data": sample.source,
              "properties_defined": len(sample.names)}
    return {"summary": summarize(counts, best),
            "details": describe_matches(counts, best, sample.names), "config": config,
            "seconds": round(time.perf_counter() - start, 3)}
