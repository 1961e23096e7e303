"""Sparse probing of a dictionary's latents on the embedded models' built-in properties,
by two published protocols, on the same latent activations.

Every property of one model is labelled on the same contexts (``interp.probes.datasets``:
othello's probe games, pycode's held-out code), so the latents are encoded once, by the rule
the feature store uses (``interp.features.dashboard.dictionary_acts``: the hook the
dictionary reads -- a transcoder's input, an attention SAE's concatenated heads -- the
architecture's inference codes, zero at BOS). Per binary property, ``balanced_rows`` takes
up to ``max_examples`` labelled tokens with as many positives as negatives (both protocols
probe balanced data in their standard setting, so chance accuracy is 0.5), and one
stratified split gives the training and held-out (test) examples.

- **SAEBench** (Karvonen et al. 2025, ``sparse_probing``): the k latents with the largest
  ``|mean over positives - mean over negatives|`` on the training split, k in {1, 2, 5};
  a logistic regression on those k latents (``interp.probes.sparse.sparse_probe``:
  class-balanced, standardised inputs); held-out accuracy.
- **sae-probes** (Kantamneni et al. 2025, "Are sparse autoencoders useful? A case study
  in sparse probing"): each latent divided by its mean nonzero activation on the training
  split (``mean_nonzero_scale``: a latent that fires at 0.1 and one that fires at 10 then
  meet the same penalty), the top k latents by mean difference among those alive on the
  training split, k in {1, 2, 4, 16, 64, 256, 512} (clipped to the alive latents); a
  logistic regression with an L1 (or L2) penalty whose C is chosen from a small grid by
  AUC on a validation split carved out of the training split, then refitted on the whole
  training split; held-out AUC and F1 (of the positive class).

Summary: the mean over the probed properties of SAEBench's accuracy at each k and of
sae-probes' AUC and F1 at each nominal k. Multi-class properties (``othello-state-SQ``,
``pycode-indent-level``) and properties with too few positives are skipped, each with its
reason in ``details["skipped"]``.

Shapes: N contexts of T tokens, m latents; E examples of one property.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from interp.errors import DataError, MismatchError, UsageError, unknown
from interp.probes.datasets import (OTHELLO_KINDS, PYCODE_PROPS, ProbeDataset, builtin_names,
                                    example_rows, make_dataset)
from interp.probes.sparse import mean_diff, metrics, sparse_probe, train_test_split

# four squares, one per quadrant, none on an edge (a corner or edge square is never flipped)
# and none of the four starting squares (never empty, never legal): every kind occurs there
OTHELLO_SQUARES = ("b2", "c5", "f6", "g7")
DEFAULT_PROPERTIES: dict[str, tuple[str, ...]] = {
    "othello": tuple(f"othello-{kind}-{sq}" for sq in OTHELLO_SQUARES for kind in OTHELLO_KINDS),
    "pycode": tuple(f"pycode-{p}" for p in PYCODE_PROPS),
}
MIN_PER_CLASS = 20  # fewer positives (or negatives) than this leave a split too small to score


@dataclass
class ProbingConfig:
    """Options of a probing evaluation; ``validate`` refuses values that cannot work."""

    properties: tuple[str, ...] = ()                  # built-in binary properties to probe
    seed: int = 0                                     # example sampling and splits
    n_contexts: int = 256                             # contexts every property is labelled on
    max_examples: int = 1000                          # labelled tokens per property (balanced)
    test_fraction: float = 0.25                       # held-out share of each property
    val_fraction: float = 0.2                         # share of the training split choosing C
    saebench_ks: tuple[int, ...] = (1, 2, 5)          # SAEBench's k
    sae_probes_ks: tuple[int, ...] = (1, 2, 4, 16, 64, 256, 512)  # sae-probes' k
    penalty: Literal["l1", "l2"] = "l1"               # sae-probes' regulariser
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse penalties tried on validation

    def validate(self) -> "ProbingConfig":
        if self.penalty not in ("l1", "l2"):
            raise unknown("penalty", str(self.penalty), ["l1", "l2"])
        for name in ("saebench_ks", "sae_probes_ks"):
            ks = getattr(self, name)
            if not ks or any(int(k) != k or k < 1 for k in ks):
                raise UsageError(f"{name} must be positive integers, got {list(ks)}")
        if not self.Cs or any(not c > 0 for c in self.Cs):
            raise UsageError(f"Cs must be positive numbers, got {list(self.Cs)}")
        for name in ("test_fraction", "val_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise UsageError(f"{name} must lie strictly between 0 and 1, "
                                 f"got {getattr(self, name)}")
        if self.n_contexts < 1:
            raise UsageError(f"n_contexts must be 1 or more, got {self.n_contexts}")
        if self.max_examples < 4 * MIN_PER_CLASS:
            raise UsageError(f"max_examples must be at least {4 * MIN_PER_CLASS}, "
                             f"got {self.max_examples}")
        return self


# ------------------------------------------------------------------ the evaluation
def run(model, sae, model_name: str, *, properties: Sequence[str] | None = None,
        seed: int = ProbingConfig.seed, n_contexts: int = ProbingConfig.n_contexts,
        max_examples: int = ProbingConfig.max_examples,
        test_fraction: float = ProbingConfig.test_fraction,
        val_fraction: float = ProbingConfig.val_fraction,
        saebench_ks: Sequence[int] = ProbingConfig.saebench_ks,
        sae_probes_ks: Sequence[int] = ProbingConfig.sae_probes_ks,
        penalty: str = ProbingConfig.penalty,
        Cs: Sequence[float] = ProbingConfig.Cs) -> dict:
    """Sparse probing of ``sae``'s latents on ``model_name``'s built-in properties
    (``DEFAULT_PROPERTIES`` unless ``properties`` names others), by SAEBench's and
    sae-probes' protocols (module docstring). Returns ``{"summary", "details", "config",
    "seconds"}``; a model without built-in properties is a one-line DataError."""
    start = time.perf_counter()
    if isinstance(properties, str):  # one property, not its characters
        properties = [properties]
    names = tuple(properties) if properties is not None else default_properties(model_name)
    cfg = ProbingConfig(names, int(seed), int(n_contexts), int(max_examples),
                        float(test_fraction), float(val_fraction),
                        tuple(int(k) for k in saebench_ks), tuple(int(k) for k in sae_probes_ks),
                        penalty, tuple(float(c) for c in Cs)).validate()  # type: ignore[arg-type]
    hook = check_inputs(model, sae, model_name, cfg.properties)
    results, skipped, phases = probe_properties(model, sae, cfg)
    if not results:
        raise DataError(f"no property of {model_name} could be probed: "
                        + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    return {"summary": summarize(results, cfg),
            "details": {"hook": hook, "d_sae": int(sae.cfg.d_sae), "properties": results,
                        "skipped": skipped, "phase_seconds": phases},
            "config": {**asdict(cfg), "model": model_name},
            "seconds": time.perf_counter() - start}


def probe_properties(model, sae, cfg: ProbingConfig
                     ) -> tuple[dict[str, dict], dict[str, str], dict[str, float]]:
    """({property: both protocols' results}, {property: why skipped}, {phase: seconds}):
    the datasets, the latents encoded once on their shared contexts, the probes."""
    clock = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(phase: str) -> None:
        nonlocal clock
        phases[phase] = time.perf_counter() - clock
        clock = time.perf_counter()

    datasets, skipped = property_datasets(cfg.properties, cfg.n_contexts)
    lap("datasets")
    results: dict[str, dict] = {}
    if not datasets:
        return results, skipped, phases
    with lean_compute():
        acts_NTM = latent_acts(model, sae, datasets[0].tokens)
        check_finite(acts_NTM)
        lap("activations")
        for ds in datasets:
            try:
                results[ds.name] = probe_property(acts_NTM, ds, cfg)
            except DataError as e:
                skipped[ds.name] = str(e)
        lap("probes")
    return results, skipped, phases


def models_with_properties() -> list[str]:
    """The models whose ground truth gives built-in properties (from their names'
    prefixes in ``builtin_names``)."""
    return sorted({name.split("-", 1)[0] for name in builtin_names()})


def default_properties(model_name: str) -> tuple[str, ...]:
    """The fixed set of binary properties probed by default on ``model_name``."""
    if model_name not in DEFAULT_PROPERTIES:
        raise DataError(f"sparse probing needs built-in properties, and model {model_name!r} "
                        f"has none; models with built-in properties: "
                        f"{', '.join(models_with_properties())}")
    return DEFAULT_PROPERTIES[model_name]


def check_inputs(model, sae, model_name: str, properties: Sequence[str]) -> str:
    """Refuse, before any work, a model without built-in properties, a property of another
    model, a model that is not ``model_name``, a cross-layer transcoder (its latents live
    in one encoder per layer) and a dictionary of another model or hook; return the hook
    the dictionary reads."""
    from interp.provenance import check_dictionary, model_name_of
    from interp.sae.clt import CrossLayerTranscoder

    if model_name not in models_with_properties():
        default_properties(model_name)  # raises, naming the models that have properties
    foreign = [p for p in properties if not p.startswith(f"{model_name}-")]
    if foreign:
        raise DataError(f"property {foreign[0]!r} is not one of {model_name}'s; its built-in "
                        f"properties are "
                        f"{', '.join(n for n in builtin_names() if n.startswith(model_name))}")
    loaded_as = model_name_of(model)
    if loaded_as in models_with_properties() and loaded_as != model_name:
        raise MismatchError(f"the model is {loaded_as!r}, not {model_name!r}: its properties "
                            f"would be labelled on another model's tokens")
    if isinstance(sae, CrossLayerTranscoder):
        raise DataError("a cross-layer transcoder has one encoder per layer; sparse probing "
                        "takes one dictionary (an SAE, a transcoder or an attention SAE)")
    return check_dictionary(sae, model=model, model_name=model_name)


def property_datasets(properties: Sequence[str], n_contexts: int
                      ) -> tuple[list[ProbeDataset], dict[str, str]]:
    """The binary properties' datasets (one model's share their contexts, so the latents
    are encoded once) and {property: why it is skipped} for the multi-class ones."""
    datasets, skipped = [], {}
    for name in dict.fromkeys(properties):
        ds = make_dataset(name, n_contexts)
        if ds.per_sequence or int(ds.labels.max()) > 1:
            skipped[name] = "multi-class property (probing takes binary ones)"
            continue
        if datasets and not torch.equal(ds.tokens, datasets[0].tokens):
            raise DataError(f"property {name} is labelled on other contexts than "
                            f"{datasets[0].name}; probe them in separate runs")
        datasets.append(ds)
    return datasets, skipped


@torch.no_grad()
def latent_acts(model, sae, tokens: torch.Tensor) -> torch.Tensor:
    """(N, T, m) latent activations by the feature store's rule, with the dictionary in
    eval mode (its inference rule: batch-top-k archs apply their threshold); the
    dictionary's mode is restored afterwards."""
    from interp.features.dashboard import dictionary_acts

    was_training = sae.training
    sae.eval()
    try:
        return dictionary_acts(model, sae, tokens)
    finally:
        sae.train(was_training)


@contextlib.contextmanager
def lean_compute() -> Iterator[None]:
    """Inside: torch on one thread and sklearn without its per-call checks. The tiny
    models' forward passes and a probe's arrays (examples x k) are small, so a thread pool
    spends its time waking and synchronising threads: on a busy two-core machine two
    threads were measured 7x slower than one for the activations and 25x for the probes.
    sklearn's parameter and finiteness checks cost more than the fits; the parameters are
    ours and fixed, and finiteness is checked once by ``check_finite``."""
    import sklearn

    from interp.distributed import torch_threads

    with torch_threads(1), sklearn.config_context(assume_finite=True,
                                                   skip_parameter_validation=True):
        yield


def check_finite(acts_NTM: torch.Tensor) -> None:
    """A dictionary whose activations hold NaN or inf cannot be probed (and sklearn is told
    to assume finite inputs)."""
    if not bool(torch.isfinite(acts_NTM).all()):
        raise DataError("the dictionary's activations hold NaN or inf on the probe contexts; "
                        "check its weights (e.g. with `interp eval`)")


# ------------------------------------------------------------------ one property
def balanced_rows(ds: ProbeDataset, max_examples: int, seed: int) -> torch.Tensor:
    """(E, 2) (context, position) of labelled tokens with as many positives as negatives:
    ``example_rows``' sample (positives up to half the budget), its larger class cut at
    random to the size of the smaller. Too few of either class is a DataError."""
    rows = example_rows(ds, max_examples, seed)
    y = ds.labels[rows[:, 0], rows[:, 1]]
    by_class = [torch.nonzero(y == c).flatten() for c in (1, 0)]
    n = min(len(idx) for idx in by_class)
    if n < MIN_PER_CLASS:
        raise DataError(f"{int((y == 1).sum())} positive and {int((y == 0).sum())} negative "
                        f"tokens (at least {MIN_PER_CLASS} of each needed): use more contexts")
    g = torch.Generator().manual_seed(seed)
    keep = torch.cat([idx[torch.randperm(len(idx), generator=g)[:n]] for idx in by_class])
    return rows[keep.sort().values]


def probe_property(acts_NTM: torch.Tensor, ds: ProbeDataset, cfg: ProbingConfig) -> dict:
    """Both protocols on one binary property: its balanced examples, one stratified split."""
    rows = balanced_rows(ds, cfg.max_examples, cfg.seed)
    x_EM = acts_NTM[rows[:, 0], rows[:, 1]]
    y_E = ds.labels[rows[:, 0], rows[:, 1]]
    split = train_test_split(y_E, cfg.test_fraction, cfg.seed)
    return {"description": ds.description, "examples": len(y_E),
            "positives": int(y_E.sum()), "test_examples": len(split[1]),
            "saebench": saebench_probes(x_EM, y_E, split, cfg.saebench_ks),
            "sae_probes": sae_probes_probes(x_EM, y_E, split, cfg)}


def saebench_probes(x_EM: torch.Tensor, y_E: torch.Tensor,
                    split: tuple[torch.Tensor, torch.Tensor], ks: Sequence[int]) -> dict:
    """SAEBench: per k, the top-k latents by |difference of class means| on the training
    split and a logistic regression on them (``interp.probes.sparse.sparse_probe``);
    {"k1": {k, accuracy, balanced_accuracy, auroc, f1, latents}, ...} under the nominal k,
    with ``k`` the number of latents used (at most the dictionary's)."""
    used = {k: min(k, x_EM.shape[1]) for k in ks}
    fits = {r.k: r for r in sparse_probe(x_EM, y_E, ks=sorted(set(used.values())),
                                         method="mean_diff", dense=False, split=split)}
    return {f"k{k}": {"k": u, **fits[u].test, "latents": fits[u].units}
            for k, u in used.items()}


def mean_nonzero_scale(x_EM: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale (m,), alive (m,)): each latent's mean activation over the examples where it is
    nonzero, and whether it is nonzero anywhere; a dead latent's scale is 1 (dividing by it
    leaves its zeros as they are)."""
    fired_M = (x_EM != 0).sum(0)
    alive_M = fired_M > 0
    scale_M = torch.where(alive_M, x_EM.sum(0) / fired_M.clamp_min(1), torch.ones(()))
    return scale_M, alive_M


def rank_latents(x_EM: torch.Tensor, y_E: torch.Tensor, alive_M: torch.Tensor) -> torch.Tensor:
    """The alive latents' ids, largest |difference of class means| first (ties by id)."""
    score_M = mean_diff(x_EM, y_E).masked_fill(~alive_M, -torch.inf)
    order = torch.sort(score_M, descending=True, stable=True).indices
    return order[:int(alive_M.sum())]


def sae_probes_probes(x_EM: torch.Tensor, y_E: torch.Tensor,
                      split: tuple[torch.Tensor, torch.Tensor], cfg: ProbingConfig) -> dict:
    """sae-probes: normalise by the training split's mean nonzero activations, rank the
    alive latents by mean difference, and per k (clipped to the alive latents) a penalised
    logistic regression with C chosen on validation; {"k1": {k, auc, f1, ..., C}, ...}
    under the nominal k, with ``k`` the number of latents actually used."""
    tr, te = split
    scale_M, alive_M = mean_nonzero_scale(x_EM[tr])
    if not bool(alive_M.any()):
        raise DataError("no latent is active on the property's training examples")
    xn_EM = x_EM / scale_M
    ranking = rank_latents(xn_EM[tr], y_E[tr], alive_M)
    fit, val = train_test_split(y_E[tr], cfg.val_fraction, cfg.seed)
    out: dict = {"alive_latents": len(ranking), "top_latents": ranking[:16].tolist()}
    for k in cfg.sae_probes_ks:
        used = ranking[:min(k, len(ranking))]
        out[f"k{k}"] = {"k": len(used), **fit_validated_probe(
            xn_EM[:, used].numpy(), y_E.numpy(), tr.numpy(), te.numpy(),
            tr[fit].numpy(), tr[val].numpy(), cfg)}
    return out


def fit_validated_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                        fit: np.ndarray, val: np.ndarray, cfg: ProbingConfig) -> dict:
    """The C of ``cfg.Cs`` with the best validation AUC (fitted on ``fit``, scored on
    ``val``; ties to the stronger penalty), refitted on ``train``; held-out metrics on
    ``test`` (``interp.probes.sparse.metrics``: auroc, f1, accuracy, balanced accuracy)."""
    val_auc = []
    for c in sorted(cfg.Cs):
        clf = fit_logistic_penalised(x[fit], y[fit], cfg.penalty, c, cfg.seed)
        val_auc.append(rank_auc(y[val], clf.decision_function(x[val])))
    best = int(np.argmax(val_auc))
    c_best = sorted(cfg.Cs)[best]
    clf = fit_logistic_penalised(x[train], y[train], cfg.penalty, c_best, cfg.seed)
    scores = torch.from_numpy(clf.decision_function(x[test]))
    held_out = metrics(scores, torch.from_numpy(y[test]))
    return {"auc": held_out.pop("auroc"), **held_out, "C": c_best, "val_auc": val_auc[best],
            "nonzero_weights": int(np.count_nonzero(clf.coef_))}


def rank_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic: the chance that a random positive scores
    above a random negative (ties count half), from the positives' mid-ranks. The same
    number as ``sklearn.metrics.roc_auc_score`` (tested), without its per-call input checks,
    which cost more than the fits when C is chosen (hundreds of calls per run)."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("a validation split holds a single class; use more examples")
    rank_sum = float(rankdata(scores)[pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def fit_logistic_penalised(x: np.ndarray, y: np.ndarray, penalty: str, c: float, seed: int):
    """A class-balanced sklearn logistic regression with an L1 or L2 penalty of inverse
    strength ``c``, fitted by liblinear (both penalties, and fast at these sizes); its
    convergence warnings are kept out of the evaluation's output."""
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # sklearn >= 1.8 sets the penalty by l1_ratio (``penalty`` is deprecated there)
    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    kind = {"l1_ratio": 1.0 if penalty == "l1" else 0.0} if new_api else {"penalty": penalty}
    clf = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", max_iter=1000,
                             random_state=seed, **kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(x, y)


# ------------------------------------------------------------------ summary
def summarize(results: dict[str, dict], cfg: ProbingConfig) -> dict:
    """Means over the probed properties: SAEBench's accuracy per k, sae-probes' AUC and F1
    per nominal k (a property with fewer alive latents contributes its clipped k)."""
    def mean(protocol: str, k: int, metric: str) -> float:
        return float(np.mean([r[protocol][f"k{k}"][metric] for r in results.values()]))

    summary: dict[str, float] = {"properties": len(results)}
    for k in cfg.saebench_ks:
        summary[f"saebench_accuracy_k{k}"] = mean("saebench", k, "accuracy")
    for k in cfg.sae_probes_ks:
        summary[f"sae_probes_auc_k{k}"] = mean("sae_probes", k, "auc")
    for k in cfg.sae_probes_ks:
        summary[f"sae_probes_f1_k{k}"] = mean("sae_probes", k, "f1")
    return summary
