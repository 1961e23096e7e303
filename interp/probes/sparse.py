"""k-sparse linear probes (Gurnee et al. 2023, "Finding Neurons in a Haystack").

Select k units (neurons, residual dimensions or SAE latents), then fit a logistic regression
on them; report F1, accuracy and AUROC on a held-out split. Classes are balanced by sample
weights. Selectors, all vectorised over units:

============= =========================================================================
``mean_diff`` |mean over positives - mean over negatives| of each unit
``f_stat``    the ANOVA F statistic of each unit (what sklearn's ``f_classif`` computes)
``l1``        an L1-regularised logistic regression path (warm-started, decreasing
              penalty) over the ``pool`` best units by F statistic; the first penalty with
              at least k non-zero weights, its k largest
``greedy``    forward selection: orthogonal matching pursuit (least squares) over the
              ``pool`` best units by F statistic
``exact``     k = 1 only: a one-unit logistic regression fit for every unit at once
              (vectorised Newton steps); the unit with the best training likelihood
============= =========================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import DataError, unknown

SELECTORS = ("mean_diff", "f_stat", "l1", "greedy", "exact")
K_DEFAULT = (1, 2, 4, 8, 16, 32, 64)


# ------------------------------------------------------------------ data checks
def check_xy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x).float()
    y = torch.as_tensor(y)
    if x.ndim != 2:
        raise DataError(f"probe inputs must be (examples, units), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise DataError(f"{x.shape[0]} examples but {tuple(y.shape)} labels")
    if x.shape[0] == 0:
        raise DataError("no examples to probe")
    y = y.long()
    if set(torch.unique(y).tolist()) - {0, 1}:
        raise DataError("binary labels must be 0/1 (one_vs_rest probes several classes)")
    if int(y.sum()) in (0, len(y)):
        raise DataError(f"the labels hold a single class ({int(y[0])}); a probe needs both")
    return x, y


def train_test_split(y: torch.Tensor, test_fraction: float = 0.25, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified index split."""
    g = torch.Generator().manual_seed(seed)
    tr, te = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_te = max(1, int(round(test_fraction * len(idx))))
        te.append(idx[:n_te])
        tr.append(idx[n_te:])
    return torch.cat(tr).sort().values, torch.cat(te).sort().values


# ------------------------------------------------------------------ unit scores
def mean_diff(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    pos, neg = y == 1, y == 0
    return (x[pos].mean(0) - x[neg].mean(0)).abs()


def f_stat(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One-way ANOVA F per unit for two classes (sklearn.feature_selection.f_classif)."""
    x = x.double()
    n = x.shape[0]
    mean = x.mean(0)
    between = torch.zeros_like(mean)
    within = torch.zeros_like(mean)
    for c in (0, 1):
        xc = x[y == c]
        mc = xc.mean(0)
        between += len(xc) * (mc - mean) ** 2
        within += ((xc - mc) ** 2).sum(0)
    f = between / (within / (n - 2)).clamp_min(1e-30)
    constant = within == 0  # a unit constant within each class
    f = torch.where(constant, torch.where(between > 0, math.inf, 0.0).double(), f)
    return f.float()


def exact_single_unit(x: torch.Tensor, y: torch.Tensor, iters: int = 12,
                      weight_decay: float = 1e-4, chunk: int = 512) -> tuple[int, torch.Tensor]:
    """Fit a balanced one-unit logistic regression for every unit at once; return the unit
    whose fit has the lowest training loss, and every unit's loss (U,). Newton's method on
    each unit's (w, b), whose 2x2 systems solve in closed form; units in chunks that stay in
    cache."""
    sw = balanced_weights(y)[:, None]
    yf = y.float()[:, None]
    losses = []
    for lo in range(0, x.shape[1], chunk):
        xs = standardize(x[:, lo:lo + chunk])[0]
        u = xs.shape[1]
        w = torch.zeros(u)
        b = torch.zeros(u)
        for _ in range(iters):
            p = torch.sigmoid(xs * w + b)
            r = sw * (p - yf)
            s = sw * p * (1 - p)
            sx = s * xs
            gw = (r * xs).sum(0) + weight_decay * w
            gb = r.sum(0)
            hww = (sx * xs).sum(0) + weight_decay
            hwb = sx.sum(0)
            hbb = s.sum(0) + 1e-9
            det = (hww * hbb - hwb ** 2).clamp_min(1e-12)
            w = w - (hbb * gw - hwb * gb) / det
            b = b - (hww * gb - hwb * gw) / det
        z = xs * w + b
        bce = F.binary_cross_entropy_with_logits(z, yf.expand_as(z), reduction="none")
        losses.append((sw * bce).sum(0) / sw.sum())
    loss = torch.cat(losses)
    return int(loss.argmin()), loss


# ------------------------------------------------------------------ fitting
def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    n, n1 = len(y), int(y.sum())
    n0 = n - n1
    return torch.where(y == 1, n / (2 * n1), n / (2 * n0)).float()


def standardize(x: torch.Tensor, stats=None):
    mu, sd = stats if stats is not None else (x.mean(0), x.std(0) + 1e-6)
    return (x - mu) / sd, (mu, sd)


@dataclass
class LogisticProbe:
    units: torch.Tensor        # (k,) selected unit ids
    weight: torch.Tensor       # (k,) on standardized inputs
    bias: float
    mu: torch.Tensor
    sd: torch.Tensor

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        return ((x[:, self.units] - self.mu) / self.sd) @ self.weight + self.bias

    def raw_weights(self) -> torch.Tensor:
        """Weights on the raw (unstandardized) units."""
        return self.weight / self.sd


def fit_logistic(x: torch.Tensor, y: torch.Tensor, units: torch.Tensor,
                 weight_decay: float = 1e-4, steps: int = 100) -> LogisticProbe:
    """Class-balanced L2 logistic regression on ``x[:, units]`` (full-batch L-BFGS)."""
    xs, (mu, sd) = standardize(x[:, units])
    sw = balanced_weights(y)
    yf = y.float()
    w = torch.zeros(xs.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = xs @ w + b
        loss = (sw * F.binary_cross_entropy_with_logits(z, yf, reduction="none")).mean() \
            + weight_decay * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LogisticProbe(units, w.detach(), float(b.detach()), mu, sd)


def metrics(scores: torch.Tensor, y: torch.Tensor) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    pred = (scores > 0).long()
    yn, pn = y.numpy(), pred.numpy()
    return {"f1": float(f1_score(yn, pn, zero_division=0)),
            "accuracy": float((pred == y).float().mean()),
            "balanced_accuracy": float(0.5 * ((pred[y == 1] == 1).float().mean()
                                              + (pred[y == 0] == 0).float().mean())),
            "auroc": float(roc_auc_score(yn, scores.numpy()))}


# ------------------------------------------------------------------ selection
def select_units(x: torch.Tensor, y: torch.Tensor, k: int, method: str = "f_stat",
                 pool: int | None = None, f: torch.Tensor | None = None) -> torch.Tensor:
    """The k unit ids chosen by ``method`` on training data (x, y)."""
    if method not in SELECTORS:
        raise unknown("selector", method, SELECTORS)
    u = x.shape[1]
    if not 1 <= k <= u:
        raise DataError(f"k={k} must lie in [1, {u}] (the number of units)")
    if method == "mean_diff":
        return mean_diff(x, y).topk(k).indices
    f = f_stat(x, y) if f is None else f
    if method == "f_stat":
        return f.nan_to_num(0.0).topk(k).indices
    if method == "exact":
        if k != 1:
            raise DataError("the exact selector finds the best single unit: k must be 1")
        return torch.tensor([exact_single_unit(x, y)[0]])
    pool = min(u, pool or max(8 * k, 256))
    cand = f.nan_to_num(0.0).topk(pool).indices
    xc = standardize(x[:, cand])[0].numpy()
    if method == "greedy":
        from sklearn.linear_model import OrthogonalMatchingPursuit

        omp = OrthogonalMatchingPursuit(n_nonzero_coefs=k, fit_intercept=True)
        omp.fit(xc, (y.numpy() - y.float().mean().item()))
        chosen = np.flatnonzero(omp.coef_)
        order = np.argsort(-np.abs(omp.coef_[chosen]))
        return cand[torch.from_numpy(chosen[order][:k].copy())]
    return cand[_l1_path(xc, y.numpy(), k)]


def _l1_path(xc: np.ndarray, y: np.ndarray, k: int) -> torch.Tensor:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    import sklearn

    # sklearn >= 1.8 sets the penalty by l1_ratio alone (``penalty`` is deprecated)
    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    l1 = {"l1_ratio": 1.0} if new_api else {"penalty": "l1"}
    clf = LogisticRegression(solver="saga", class_weight="balanced", warm_start=True,
                             max_iter=200, tol=1e-3, **l1)
    coef = np.zeros(xc.shape[1])
    for c in np.logspace(-4, 1, 16):
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xc, y)
        coef = clf.coef_[0]
        if np.count_nonzero(coef) >= k:
            break
    order = np.argsort(-np.abs(coef))[:k]
    return torch.from_numpy(order.copy())


# ------------------------------------------------------------------ the experiment
@dataclass
class ProbeResult:
    method: str
    k: int | None                 # None: the dense probe
    units: list[int]
    weights: list[float]          # on raw units
    test: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def sparse_probe(x: torch.Tensor, y: torch.Tensor, ks=K_DEFAULT, method: str = "f_stat",
                 dense: bool = True, test_fraction: float = 0.25, seed: int = 0,
                 split: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[ProbeResult]:
    """k-sparse probes for each k in ``ks`` (and the dense probe): selection and fit on the
    training split, metrics on the held-out split."""
    x, y = check_xy(x, y)
    tr, te = split if split is not None else train_test_split(y, test_fraction, seed)
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    if int(ytr.sum()) in (0, len(ytr)) or int(yte.sum()) in (0, len(yte)):
        raise DataError("a split holds a single class: give more examples of the rarer class")
    f = f_stat(xtr, ytr) if method != "mean_diff" else None
    out = []
    ks = [k for k in ks if k <= x.shape[1]]
    if method == "exact":
        ks = [1]
    for k in ks:
        units = select_units(xtr, ytr, k, method, f=f)
        out.append(_fit_eval(method, k, units, xtr, ytr, xte, yte))
    if dense:
        out.append(_fit_eval("dense", None, torch.arange(x.shape[1]), xtr, ytr, xte, yte))
    return out


def _fit_eval(method, k, units, xtr, ytr, xte, yte) -> ProbeResult:
    probe = fit_logistic(xtr, ytr, units)
    return ProbeResult(method, k, units.tolist(), probe.raw_weights().tolist(),
                       test=metrics(probe.decision(xte), yte),
                       train=metrics(probe.decision(xtr), ytr))


def one_vs_rest(x: torch.Tensor, y: torch.Tensor, ks=K_DEFAULT, method: str = "f_stat",
                dense: bool = True, test_fraction: float = 0.25, seed: int = 0
                ) -> dict[int, list[ProbeResult]]:
    """Multi-class labels: a binary probe per class against the rest, on one stratified
    split; {class: [ProbeResult per k]}."""
    y = torch.as_tensor(y).long()
    classes = torch.unique(y).tolist()
    if len(classes) < 2:
        raise DataError(f"the labels hold a single class ({classes}); a probe needs two")
    split = train_test_split(y, test_fraction, seed)
    return {c: sparse_probe(x, (y == c).long(), ks, method, dense, split=split)
            for c in classes}


def macro_average(per_class: dict[int, list[ProbeResult]]) -> list[ProbeResult]:
    """Per k, the one-vs-rest probes' test and train metrics averaged over classes."""
    runs = list(per_class.values())
    out = []
    for i, first in enumerate(runs[0]):
        avg = lambda part: {m: float(np.mean([getattr(r[i], part)[m] for r in runs]))  # noqa: E731
                            for m in first.test}
        out.append(ProbeResult(first.method, first.k, [], [], test=avg("test"),
                               train=avg("train")))
    return out
