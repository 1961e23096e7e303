"""Feature absorption on pycode's first-letter task (Chanin et al. 2024, "A is for
Absorption"), following SAEBench's procedure (``sae_bench/evals/absorption``).

The task. A token of pycode's vocabulary is labelled with its first letter when, after
stripping one leading space (the byte-level BPE writes it as ``Ġ``, which decodes to " "),
it is made of ASCII letters only: ``self`` and `` self`` are "s", `` Return`` is "r";
``_init``, ``x1``, ``\\n   `` and partial UTF-8 pieces have no label (:func:`first_letter`).

Contexts. SAEBench embeds each word in an in-context-learning prompt ("{word} has the first
letter: X" after ten solved examples) and reads the word's position. pycode is a 4-layer
GPT trained on Python source only: it has no in-context learning to steer, and English
prompts are far from anything it (or an SAE harvested from it) has seen. So each token is
read where it really occurs: one occurrence, drawn at random (seeded) from pycode's
held-out split of the standard library, as BOS + the ``context_tokens - 2`` tokens before
it + the token. Every context has the same length and the token is always last, as in
SAEBench (one prompt per word, one read position), and the activation is in the
distribution the dictionary was trained on (a window may cross a file boundary, as the
packed contexts of a harvest do). Token types are split into train and test per
letter (seeded, SAEBench's 80/20), so a probe must generalise to tokens it has not seen.

The procedure, per letter l (the 26 one-vs-rest problems are fitted together):
1. ground-truth probe: a class-balanced L2 logistic regression on the activations ``x``
   (N, d) at the hook the dictionary reads; its weight p_l (d,) is the letter's direction;
2. k-sparse probing on the latents ``a`` (N, m) (the repo's encoding rule,
   ``features.dashboard._encode_dense``): an L1-penalised one-vs-rest probe over all
   latents ranks them; for k = 1..max_k a logistic regression on the top k gives a test F1;
   the main latents are the top k at the last k whose F1 beats every smaller k's by more
   than ``f1_jump_threshold`` (feature splitting: num_split_latents = that k);
3. on the held-out tokens of l that the probe gets right (probe true positives), with
   p = p_l/|p_l|, P = x.p (the probe projection) and c_i = a_i (W_dec_i . p) (latent i's
   contribution to it), and cos_i = cos(W_dec_i, p):
   - absorption fraction (SAEBench's ``absorption_fraction``): the absorbers are the at
     most ``max_absorbing_latents`` non-main latents with cos_i >= 0.1 and c_i > 0 of the
     largest c_i, A = their sum, M = the main latents' sum. It is 0 when M >= P or
     A / P < 0.4 (or P <= 0); 1 when M <= 0; else min(A, P - M) / (min(A, P - M) + M);
   - full absorption (SAEBench's ``is_full_absorption``): every main latent is silent, the
     top contributor has cos >= 0.025, P > 0, and its c / P >= 0.4;
   per letter: mean absorption fraction and full-absorption rate over the probe true
   positives; the summary averages them over the letters evaluated.

One deliberate difference: SAEBench weighs a latent's activation by cos_i alone, which is
its contribution to P only when decoder rows have unit norm. This repository folds the
activation normalisation into the decoder (the shipped pycode rows have norm ~2.6), so
c_i = a_i (W_dec_i . p) is used: the same number for unit-norm rows, the right one else.

Letters with fewer than ``min_tokens_per_letter`` labelled tokens (in pycode: j and z) are
skipped but stay as negatives for the others; letters whose ground-truth probe has a test
F1 <= ``min_probe_f1`` are skipped too (SAEBench's ``min_GT_probe_f1``: without a probe
that finds the letter there is nothing to absorb). The result names each skipped letter
with its reason; when no letter is left, :func:`run` raises DataError.

What pycode shows: it does not encode first letters. The probes reach test F1 0-0.29
(mean 0.12; training F1 only ~0.25) and AUROC 0.45-0.64 at blocks.2.hook_resid_post, and
no better on the token embeddings W_E themselves (a 4096-token code model has no use for
spelling), while properties it does use are read easily at the same place with the same
probe (leading space: AUROC 0.84, upper-case initial: 0.95). So with SAEBench's gate every letter is skipped and the evaluation
refuses on pycode; ``min_probe_f1=0`` runs the whole procedure against the weak probes
(for testing it; its numbers then measure noise, not absorption).

Scope: pycode only. Othello has no text; another text model would need a text corpus and
a vocabulary walk over its own tokenizer (the labelling rule takes token strings, so that
is a small change), but it cannot be checked offline here, so it is refused rather than
run untested. Dictionaries whose decoder writes another space than the one they read
(transcoders, CLT layers) are refused: their decoder rows cannot be compared with a probe
at the hook they read.

Shapes: N tokens (rows), d = d_in of the hook, m = d_sae latents, L letters, k latents.
"""
from __future__ import annotations

import math
import string
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from interp.errors import DataError, unknown

LETTERS = string.ascii_lowercase
MODEL = "pycode"


@dataclass(frozen=True)
class AbsorptionConfig:
    """Options of :func:`run`; the defaults are SAEBench's where it has one."""

    letters: tuple[str, ...] = tuple(LETTERS)  # letters to evaluate (all serve as negatives)
    seed: int = 0                   # the occurrence of each token, the split, token caps
    context_tokens: int = 16        # BOS + the tokens before the read token + the token
    max_tokens_per_letter: int | None = None  # cap the token types of each letter (None: all)
    test_fraction: float = 0.2      # held-out token types per letter (SAEBench: 0.2)
    min_tokens_per_letter: int = 20  # letters with fewer token types are skipped
    min_probe_f1: float = 0.6       # letters whose probe has test F1 <= this are skipped
    max_k: int = 10                 # largest k of the k-sparse probes (SAEBench: 10)
    f1_jump_threshold: float = 0.03  # F1 gain that counts as a split latent (SAEBench: 0.03)
    l1_decay: float = 0.01          # L1 penalty of the latent-ranking probe (SAEBench: 0.01)
    l1_probe_steps: int = 200       # full-batch Adam steps of the latent-ranking probe
    probe_l2: float = 1.0           # L2 penalty of the logistic probes (sklearn's C = 1)
    full_absorption_cos_threshold: float = 0.025
    absorption_fraction_cos_threshold: float = 0.1
    projection_proportion_threshold: float = 0.4
    max_absorbing_latents: int = 3
    batch_size: int = 1024          # contexts per forward pass

    def __post_init__(self) -> None:
        bad = [c for c in self.letters if c not in LETTERS]
        if bad or not self.letters:
            raise DataError(f"letters must be lower-case a-z, got {list(self.letters)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise DataError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
        if self.context_tokens < 2 or self.max_k < 1 or self.min_tokens_per_letter < 2:
            raise DataError("context_tokens and min_tokens_per_letter must be >= 2 and "
                            "max_k >= 1")


# ------------------------------------------------------------------ the labelling rule
def first_letter(token: str) -> str | None:
    """The lower-case first letter of a decoded token made of ASCII letters after at most
    one leading space (SAEBench's ``get_alpha_tokens`` rule); None for any other token."""
    word = token[1:] if token.startswith(" ") else token
    if word and word.isascii() and word.isalpha():
        return word[0].lower()
    return None


def letter_of_tokens(token_strings: list[str]) -> dict[int, str]:
    """{token id: first letter} over a vocabulary given as decoded strings (index = id)."""
    out = {}
    for token_id, text in enumerate(token_strings):
        letter = first_letter(text)
        if letter is not None:
            out[token_id] = letter
    return out


# ------------------------------------------------------------------ contexts
def sample_occurrences(stream: np.ndarray, token_ids: np.ndarray, context_tokens: int,
                       rng: np.random.Generator) -> dict[int, int]:
    """{token id: stream position} of one random occurrence of each of ``token_ids`` that
    has ``context_tokens - 2`` tokens before it in ``stream``; ids that never occur there
    are left out. Drawing the first hit of a random permutation of all hits picks one
    occurrence per token uniformly."""
    hits = np.flatnonzero(np.isin(stream, token_ids))
    hits = hits[hits >= context_tokens - 2]
    hits = hits[rng.permutation(len(hits))]
    ids, first = np.unique(stream[hits], return_index=True)
    return {int(t): int(hits[i]) for t, i in zip(ids, first)}


def occurrence_contexts(stream: np.ndarray, positions: np.ndarray, context_tokens: int,
                        bos_id: int) -> torch.Tensor:
    """(N, context_tokens) BOS + the stream up to and including each position (last)."""
    offsets = np.arange(-(context_tokens - 2), 1)
    body = stream[positions[:, None] + offsets[None, :]].astype(np.int64)
    bos = np.full((len(positions), 1), bos_id, dtype=np.int64)
    return torch.from_numpy(np.concatenate([bos, body], axis=1))


def pycode_tokens() -> tuple[list[str], np.ndarray, int]:
    """pycode's vocabulary as decoded strings, the held-out split as one token stream
    (files joined by ``<|endoftext|>``) and the BOS id."""
    from interp.data import pycode
    from interp.models.zoo import model_dir

    tokenizer = pycode.load_tokenizer(model_dir(MODEL) / "tokenizer.json")
    vocab = [tokenizer.decode([i], skip_special_tokens=False)
             for i in range(tokenizer.get_vocab_size())]
    stream = pycode.encode_corpus(tokenizer, "test")
    return vocab, stream, tokenizer.token_to_id(pycode.BOS_TOKEN)


@dataclass
class LetterData:
    """The labelled tokens, read in their contexts."""

    token_ids: torch.Tensor    # (N,) token read at the last position
    letter_idx: torch.Tensor   # (N,) index into LETTERS
    x: torch.Tensor            # (N, d) activation at the dictionary's hook
    acts: torch.Tensor         # (N, m) latent activations (the repo's encoding rule)
    train: torch.Tensor        # (N,) bool: the token type is in the training split
    vocab: list[str]           # the decoded vocabulary (for examples in the result)


def choose_tokens(letters_by_id: dict[int, str], occurrences: dict[int, int],
                  cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """The token ids to read: those with an occurrence, at most ``cap`` per letter (a
    seeded sample), in id order."""
    by_letter: dict[str, list[int]] = {}
    for token_id in sorted(occurrences):
        by_letter.setdefault(letters_by_id[token_id], []).append(token_id)
    chosen = []
    for ids in by_letter.values():
        if cap is not None and len(ids) > cap:
            ids = sorted(rng.choice(ids, size=cap, replace=False).tolist())
        chosen.extend(ids)
    return np.asarray(sorted(chosen), dtype=np.int64)


@torch.no_grad()
def read_activations(model, sae, contexts: torch.Tensor, batch_size: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, d), acts (N, m)) at the last position of each context: the activation at the
    hook the dictionary reads and its latents by the store's encoding rule (eval mode)."""
    from interp.features.dashboard import _encode_dense, hook_acts
    from interp.hooks import sae_hook

    hook = sae_hook(sae)
    rows = [acts[hook][:, -1] for _, acts in hook_acts(model, contexts, [hook], batch_size)]
    x = torch.cat(rows).float()
    was_training = sae.training
    sae.eval()
    try:
        acts = _encode_dense(sae, x).float()
    finally:
        sae.train(was_training)
    return x, acts


def build_letter_data(model, sae, cfg: AbsorptionConfig) -> LetterData:
    """Label pycode's vocabulary, read one held-out occurrence of each labelled token and
    split the token types into train and test per letter."""
    from interp.probes.sparse import train_test_split

    vocab, stream, bos_id = pycode_tokens()
    letters_by_id = letter_of_tokens(vocab)
    rng = np.random.default_rng(cfg.seed)
    occurrences = sample_occurrences(stream, np.fromiter(letters_by_id, dtype=np.int64),
                                     cfg.context_tokens, rng)
    token_ids = choose_tokens(letters_by_id, occurrences, cfg.max_tokens_per_letter, rng)
    positions = np.asarray([occurrences[int(t)] for t in token_ids], dtype=np.int64)
    contexts = occurrence_contexts(stream, positions, cfg.context_tokens, bos_id)
    x, acts = read_activations(model, sae, contexts, cfg.batch_size)
    letter_idx = torch.tensor([LETTERS.index(letters_by_id[int(t)]) for t in token_ids])
    train_rows, _ = train_test_split(letter_idx, cfg.test_fraction, cfg.seed)
    train = torch.zeros(len(token_ids), dtype=torch.bool)
    train[train_rows] = True
    return LetterData(torch.from_numpy(token_ids), letter_idx, x, acts, train, vocab)


# ------------------------------------------------------------------ probes
def balanced_weights(y_LN: torch.Tensor) -> torch.Tensor:
    """(L, N) sample weights, each row by ``probes.sparse.balanced_weights`` (sklearn's
    ``class_weight="balanced"``: n / (2 n_class)); every row needs both classes."""
    from interp.probes.sparse import balanced_weights as balanced_row

    return torch.stack([balanced_row(row) for row in y_LN])


def _logistic_objective(xb_LNd: torch.Tensor, y_LN: torch.Tensor, sw_LN: torch.Tensor,
                        theta_Ld: torch.Tensor, reg_d: torch.Tensor) -> torch.Tensor:
    """(L,) each problem's weighted BCE summed over rows + its L2 term."""
    z = torch.einsum("lnd,ld->ln", xb_LNd, theta_Ld)
    loss = (sw_LN * F.binary_cross_entropy_with_logits(z, y_LN, reduction="none")).sum(1)
    return loss + 0.5 * (reg_d * theta_Ld ** 2).sum(1)


@torch.no_grad()
def fit_balanced_logistic(x: torch.Tensor, y_LN: torch.Tensor, l2: float = 1.0,
                          iters: int = 50, tol: float = 1e-6
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """L class-balanced logistic regressions at once, each minimising
    sum_n w_n BCE(y_ln, x_ln . w_l + b_l) + l2/2 |w_l|^2 (sklearn's LogisticRegression with
    C = 1/l2 and class_weight="balanced"), by Newton steps with step halving (the objective
    is convex; halving keeps a step from overshooting on separable data).

    ``x``: (N, d) shared by every problem or (L, N, d); ``y_LN`` 0/1. Returns (w (L, d),
    b (L,)). Float64 inside: Newton's linear systems need it."""
    y = y_LN.double()
    L, N = y.shape
    x = x.double()
    x = x.expand(L, *x.shape) if x.ndim == 2 else x
    xb = torch.cat([x, torch.ones(L, N, 1, dtype=x.dtype)], dim=2)
    d1 = xb.shape[2]
    reg = torch.full((d1,), float(l2), dtype=x.dtype)
    reg[-1] = 1e-8  # the bias is not penalised (a tiny term keeps the Hessian regular)
    sw = balanced_weights(y).double()
    theta = torch.zeros(L, d1, dtype=x.dtype)
    obj = _logistic_objective(xb, y, sw, theta, reg)
    for _ in range(iters):
        p = torch.sigmoid(torch.einsum("lnd,ld->ln", xb, theta))
        grad = torch.einsum("lnd,ln->ld", xb, sw * (p - y)) + reg * theta
        hess = torch.einsum("lnd,lne->lde", xb * (sw * p * (1 - p))[..., None], xb)
        step = torch.linalg.solve(hess + torch.diag(reg), grad)
        scale = torch.ones(L, 1, dtype=x.dtype)
        for _ in range(30):  # halve each problem's step until its objective does not rise
            new_obj = _logistic_objective(xb, y, sw, theta - scale * step, reg)
            worse = new_obj > obj + 1e-12 * obj.abs()
            if not worse.any():
                break
            scale = torch.where(worse[:, None], scale / 2, scale)
        theta = theta - scale * step
        done = (obj - new_obj).abs().max() <= tol * (1 + obj.abs().max())
        obj = new_obj
        if done:
            break
    return theta[:, :-1].float(), theta[:, -1].float()


def one_hot_targets(letter_idx: torch.Tensor, letters: list[int]) -> torch.Tensor:
    """(L, N) 0/1: row l marks the tokens of letter ``letters[l]``."""
    return (letter_idx[None, :] == torch.tensor(letters)[:, None]).float()


def l1_probe_gradients(acts_csr: torch.Tensor, acts_t_csr: torch.Tensor,
                       targets_NL: torch.Tensor, pos_weight_L: torch.Tensor,
                       weight_mL: torch.Tensor, bias_L: torch.Tensor, l1_decay: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d weight, d loss / d bias) of the latent-ranking probe's loss: the mean
    over tokens and probes of BCE with ``pos_weight``, whose derivative in the logit z is
    sigmoid(z) (1 + (pw - 1) y) - pw y, plus ``l1_decay`` * mean over probes of sum |w|
    (subgradient sign(w), 0 at 0 as autograd takes it). Written out so the products run on
    sparse matrices: autograd through sparse products was several times slower."""
    N, L = targets_NL.shape
    logits = acts_csr @ weight_mL + bias_L
    dlogits = (torch.sigmoid(logits) * (1 + (pos_weight_L - 1) * targets_NL)
               - pos_weight_L * targets_NL) / (N * L)
    return acts_t_csr @ dlogits + (l1_decay / L) * weight_mL.sign(), dlogits.sum(0)


def rank_latents_l1(acts: torch.Tensor, y_LN: torch.Tensor, l1_decay: float,
                    steps: int, lr: float = 0.01, end_lr: float = 1e-5) -> torch.Tensor:
    """(L, m) weights of L one-vs-rest probes over all latents, trained as SAEBench trains
    its latent-ranking probe (loss: :func:`l1_probe_gradients`), by Adam with an
    exponential decay from ``lr`` to ``end_lr``; full-batch here (pycode's vocabulary is
    one batch), on the latents as sparse matrices."""
    import warnings

    with warnings.catch_warnings():  # "sparse CSR support is in beta": used for products only
        warnings.simplefilter("ignore", UserWarning)
        acts_csr = acts.to_sparse_csr()
        acts_t_csr = acts.T.contiguous().to_sparse_csr()
    n_pos = y_LN.sum(1).clamp_min(1)
    pos_weight = (y_LN.shape[1] - n_pos) / n_pos
    weight = torch.zeros(acts.shape[1], y_LN.shape[0])
    bias = torch.zeros(y_LN.shape[0])
    opt = torch.optim.Adam([weight, bias], lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(end_lr / lr) ** (1 / steps))
    targets = y_LN.T.contiguous()
    for _ in range(steps):
        weight.grad, bias.grad = l1_probe_gradients(acts_csr, acts_t_csr, targets,
                                                    pos_weight, weight, bias, l1_decay)
        opt.step()
        sched.step()
    return weight.T.contiguous()


def f1_scores(scores_LN: torch.Tensor, y_LN: torch.Tensor) -> torch.Tensor:
    """(L,) F1 of the predictions ``score > 0`` against 0/1 labels (0 with no positive)."""
    pred = scores_LN > 0
    truth = y_LN > 0
    tp = (pred & truth).sum(1).float()
    denom = pred.sum(1).float() + truth.sum(1).float()
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))


def split_latents(f1_by_k: list[float], ranked: list[int], jump: float) -> list[int]:
    """SAEBench's feature-splitting rule: walk k = 1, 2, ...; while the k-probe's F1 beats
    the best so far by more than ``jump``, the main latents are the top k; stop at the
    first k that does not."""
    best, main = -math.inf, []
    for k, f1 in enumerate(f1_by_k, start=1):
        if f1 > best + jump:
            best, main = f1, ranked[:k]
        else:
            break
    return main


def k_sparse_probing(acts: torch.Tensor, y_LN: torch.Tensor, train: torch.Tensor,
                     cfg: AbsorptionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(ranked (L, max_k) latent ids, test F1 (L, max_k) of the probe on the top k): the
    latents ranked by the L1 probe's weight (largest first: latents that predict the letter,
    not its absence), then one balanced logistic regression per (letter, k) on the top k."""
    acts_train, acts_test = acts[train], acts[~train]
    weights = rank_latents_l1(acts_train, y_LN[:, train], cfg.l1_decay, cfg.l1_probe_steps)
    max_k = min(cfg.max_k, acts.shape[1])
    ranked = weights.topk(max_k, dim=1).indices
    f1 = torch.zeros(len(ranked), max_k)
    for k in range(1, max_k + 1):
        chosen = ranked[:, :k]
        x_train = acts_train[:, chosen].permute(1, 0, 2)   # (L, N_train, k)
        w, b = fit_balanced_logistic(x_train, y_LN[:, train], cfg.probe_l2)
        x_test = acts_test[:, chosen].permute(1, 0, 2)
        f1[:, k - 1] = f1_scores(torch.einsum("lnk,lk->ln", x_test, w) + b[:, None],
                                 y_LN[:, ~train])
    return ranked, f1


# ------------------------------------------------------------------ absorption
EPS = 1e-8  # a latent below this is silent (SAEBench's EPS)


@dataclass
class AbsorptionScores:
    """Per probe-true-positive token of one letter."""

    probe_projection: torch.Tensor     # (n,) P = x . p
    main_projection: torch.Tensor      # (n,) M: the main latents' summed contribution
    absorption_fraction: torch.Tensor  # (n,) in [0, 1]
    full_absorption: torch.Tensor      # (n,) bool
    top_latent: torch.Tensor           # (n,) the non-main latent that contributes most
    top_contribution: torch.Tensor     # (n,) its contribution c_i


def latent_probe_alignment(W_dec: torch.Tensor, probe: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unit probe p (d,), W_dec . p (m,), cos(W_dec_i, p) (m,)) for decoder rows W_dec
    (m, d): a latent's contribution to the probe projection is its activation times
    W_dec_i . p, which is the cosine only for a unit-norm row."""
    p = probe.float() / probe.float().norm().clamp_min(1e-12)
    W = W_dec.detach().float()
    along = W @ p
    return p, along, along / W.norm(dim=1).clamp_min(1e-12)


def absorption_scores(x: torch.Tensor, acts: torch.Tensor, W_dec: torch.Tensor,
                      probe: torch.Tensor, main: list[int], cfg: AbsorptionConfig
                      ) -> AbsorptionScores:
    """SAEBench's absorption fraction and full-absorption flag (module docstring, step 3)
    for rows x (n, d) with latents acts (n, m), vectorised over the rows."""
    p, along, cos = latent_probe_alignment(W_dec, probe)
    contrib = acts.float() * along                       # (n, m)
    P = x.float() @ p
    is_main = torch.zeros(acts.shape[1], dtype=torch.bool)
    is_main[main] = True
    M = contrib[:, is_main].sum(1)
    candidate = ~is_main & (cos >= cfg.absorption_fraction_cos_threshold)
    absorbing = torch.where(candidate & (contrib > 0), contrib, torch.zeros_like(contrib))
    k = min(cfg.max_absorbing_latents, acts.shape[1])
    A = absorbing.topk(k, dim=1).values.sum(1)
    positive = P > 0
    proportion = torch.where(positive, A / P.where(positive, torch.ones_like(P)), 0.0)
    none = (M >= P) | (proportion < cfg.projection_proportion_threshold) | ~positive
    absorbed = torch.minimum(A, P - M)
    partial = (absorbed / (absorbed + M).clamp_min(1e-12)).clamp(0.0, 1.0)
    fraction = torch.where(none, 0.0, torch.where(M <= 0, 1.0, partial))
    others = contrib.masked_fill(is_main, -math.inf)
    top_contribution, top_latent = others.max(dim=1)
    overall_value, overall_latent = contrib.max(dim=1)
    main_silent = (acts[:, is_main].abs() < EPS).all(1)
    full = (main_silent & (cos[overall_latent] >= cfg.full_absorption_cos_threshold)
            & positive & (overall_value >= cfg.projection_proportion_threshold * P))
    return AbsorptionScores(P, M, fraction, full, top_latent, top_contribution)


def absorbing_latents(scores: AbsorptionScores, token_text: list[str], cos: torch.Tensor,
                      n_examples: int = 5) -> list[dict]:
    """The latents that absorb the letter: for every token with a positive absorption
    fraction or full absorption, the non-main latent contributing most; each with how
    many tokens it takes (and how many fully), its cosine with the probe and examples,
    most frequent first."""
    absorbed = (scores.absorption_fraction > 0) | scores.full_absorption
    table: dict[int, dict] = {}
    for row in torch.nonzero(absorbed).flatten().tolist():
        latent = int(scores.top_latent[row])
        entry = table.setdefault(latent, {"latent": latent, "count": 0, "full": 0,
                                          "cosine": round(float(cos[latent]), 4),
                                          "tokens": []})
        entry["count"] += 1
        entry["full"] += int(scores.full_absorption[row])
        if len(entry["tokens"]) < n_examples:
            entry["tokens"].append(token_text[row])
    return sorted(table.values(), key=lambda e: (-e["count"], e["latent"]))


# ------------------------------------------------------------------ the evaluation
def applicable(model_name: str, model=None) -> str | None:
    """Why absorption cannot run on ``model_name`` (None: it can), from the name (and the
    model, when loaded) before any work: the task needs pycode (module docstring)."""
    from interp.provenance import model_name_of

    name = (model_name_of(model) if model is not None else None) or model_name
    if name == MODEL:
        return None
    textless = name == "othello" or (
        model is not None and getattr(model, "tokenizer", None) is None)
    why = "it has no text tokens" if textless else \
        "its corpus and vocabulary walk are not wired in here"
    return (f"absorption's first-letter task needs a model over text with its corpus here, "
            f"which is pycode; {name!r} is not ({why})")


def check_applies(model, sae, model_name: str | None) -> str:
    """The model's name, once the task is known to apply: pycode, and a dictionary that
    belongs to it and whose decoder writes the space it reads."""
    from interp.provenance import check_dictionary, model_name_of

    name = model_name or model_name_of(model) or "?"
    why = applicable(name, model)
    if why:
        raise DataError(why)
    if sae.cfg.transcoder:
        raise DataError("absorption compares decoder rows with a probe at the hook the "
                        "dictionary reads, and a transcoder writes another space; it "
                        "applies to SAEs")
    check_dictionary(sae, model=model)
    return name


def one_thread():
    """torch on one thread: every array here is small (``interp.distributed.torch_threads``;
    the ranking probe of a 400 x 30 test took 0.04 s on one thread, 4 s on two busy ones)."""
    from interp.distributed import torch_threads

    return torch_threads(1)


def enough_tokens(data: LetterData, cfg: AbsorptionConfig) -> tuple[list[str], dict]:
    """(letters to evaluate, {skipped letter: reason}) by the number of labelled tokens."""
    counts = torch.bincount(data.letter_idx, minlength=len(LETTERS))
    keep, skipped = [], {}
    for letter in cfg.letters:
        n = int(counts[LETTERS.index(letter)])
        if n < cfg.min_tokens_per_letter:
            skipped[letter] = (f"{n} labelled tokens with a held-out occurrence, fewer than "
                               f"min_tokens_per_letter={cfg.min_tokens_per_letter}")
        else:
            keep.append(letter)
    return keep, skipped


def ground_truth_probes(data: LetterData, letters: list[str], cfg: AbsorptionConfig
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights (L, d), scores (L, N) on every row, test F1 (L,)) of the letters' probes
    on the activations, trained on the training token types."""
    y = one_hot_targets(data.letter_idx, [LETTERS.index(c) for c in letters])
    w, b = fit_balanced_logistic(data.x[data.train], y[:, data.train], cfg.probe_l2)
    scores = w @ data.x.T + b[:, None]
    test = ~data.train
    return w, scores, f1_scores(scores[:, test], y[:, test])


def letter_result(letter: str, data: LetterData, probe: torch.Tensor, scores: torch.Tensor,
                  main: list[int], W_dec: torch.Tensor, cfg: AbsorptionConfig) -> dict:
    """One letter's absorption over its held-out probe true positives."""
    rows = (~data.train) & (data.letter_idx == LETTERS.index(letter)) & (scores > 0)
    text = [data.vocab[int(t)] for t in data.token_ids[rows]]
    res = absorption_scores(data.x[rows], data.acts[rows], W_dec, probe, main, cfg)
    n = int(rows.sum())
    n_full = int(res.full_absorption.sum())
    return {
        "n_probe_true_positives": n,
        "mean_absorption_fraction": float(res.absorption_fraction.sum()) / max(n, 1),
        "full_absorption_rate": n_full / max(n, 1),
        "n_full_absorption": n_full,
        "absorbing_latents": absorbing_latents(res, text,
                                               latent_probe_alignment(W_dec, probe)[2]),
    }


def make_config(letters, seed: int, options: dict) -> AbsorptionConfig:
    """The config from :func:`run`'s arguments; an unknown option is named with the valid
    ones."""
    valid = [f.name for f in fields(AbsorptionConfig) if f.name not in ("letters", "seed")]
    for name in options:
        if name not in valid:
            raise unknown("absorption option", name, valid)
    chosen = tuple(LETTERS) if letters is None else tuple(str(c).lower() for c in letters)
    return AbsorptionConfig(letters=chosen, seed=int(seed), **options)


def evaluate_letters(data: LetterData, sae, cfg: AbsorptionConfig
                     ) -> tuple[dict, dict, dict]:
    """({letter: result}, {skipped letter: reason}, {letter: ground-truth probe test F1}):
    the probes, k-sparse probing and absorption of every letter with enough tokens and a
    ground-truth probe above the gate (the latent probes run only for those)."""
    letters, skipped = enough_tokens(data, cfg)
    if not letters:
        return {}, skipped, {}
    weights, scores, f1 = ground_truth_probes(data, letters, cfg)
    probe_f1 = {c: round(float(f1[i]), 4) for i, c in enumerate(letters)}
    good = [i for i, c in enumerate(letters) if probe_f1[c] > cfg.min_probe_f1]
    for c in letters:
        if probe_f1[c] <= cfg.min_probe_f1:
            skipped[c] = f"probe test F1 {probe_f1[c]:.3f} <= min_probe_f1={cfg.min_probe_f1}"
    if not good:
        return {}, skipped, probe_f1
    y = one_hot_targets(data.letter_idx, [LETTERS.index(letters[i]) for i in good])
    ranked, f1_by_k = k_sparse_probing(data.acts, y, data.train, cfg)
    results = {}
    for row, i in enumerate(good):
        letter = letters[i]
        of_letter = data.letter_idx == LETTERS.index(letter)
        f1s = [round(float(v), 4) for v in f1_by_k[row]]
        main = split_latents(f1s, ranked[row].tolist(), cfg.f1_jump_threshold)
        results[letter] = {
            "n_tokens": int(of_letter.sum()),
            "n_test_tokens": int((of_letter & ~data.train).sum()),
            "probe_f1": probe_f1[letter],
            "f1_by_k": f1s,
            "ranked_latents": ranked[row].tolist(),
            "main_latents": main,
            "num_split_latents": len(main),
            **letter_result(letter, data, weights[i], scores[i], main, sae.W_dec, cfg),
        }
    return results, skipped, probe_f1


def no_letter_error(skipped: dict, probe_f1: dict, hook: str, cfg: AbsorptionConfig
                    ) -> DataError:
    """The one-line refusal when every letter was skipped: for want of a working probe
    (the model does not encode first letters at ``hook``), or of tokens."""
    if probe_f1:
        best = max(probe_f1, key=probe_f1.get)
        return DataError(
            f"absorption has no ground truth at {hook}: no letter's probe reaches test F1 > "
            f"{cfg.min_probe_f1} (best: {best} {probe_f1[best]:.3f}, of {len(probe_f1)} "
            f"letters), so the model does not encode first letters there; it applies to "
            f"models that do (SAEBench recommends >= 2B parameters); min_probe_f1=0 runs it "
            f"against the weak probes")
    reasons = "; ".join(f"{c}: {r}" for c, r in sorted(skipped.items()))
    return DataError(f"no letter could be evaluated ({reasons})")


def summarize(results: dict) -> dict:
    """SAEBench's mean metrics over the letters evaluated."""
    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in results.values()]))

    return {"mean_absorption_fraction": mean("mean_absorption_fraction"),
            "mean_full_absorption_rate": mean("full_absorption_rate"),
            "n_letters": len(results),
            "mean_num_split_latents": mean("num_split_latents"),
            "mean_probe_f1": mean("probe_f1")}


def run(model, sae, model_name: str | None = None, *, letters=None, seed: int = 0,
        **options) -> dict:
    """Feature absorption of ``sae`` on pycode's first-letter task (module docstring):
    ``{"summary", "details", "config", "seconds"}``. ``letters``: the letters to evaluate
    (default a-z; every labelled token still serves as a negative); ``options``: the
    fields of :class:`AbsorptionConfig`. Raises DataError when the task does not apply
    (another model, a transcoder) or no letter can be evaluated."""
    from interp.hooks import sae_hook

    start = time.perf_counter()
    cfg = make_config(letters, seed, options)
    name = check_applies(model, sae, model_name)
    if cfg.context_tokens > model.cfg.n_ctx:
        raise DataError(f"context_tokens={cfg.context_tokens} exceeds the model's n_ctx="
                        f"{model.cfg.n_ctx}")
    with one_thread():
        data = build_letter_data(model, sae, cfg)
        results, skipped, probe_f1 = evaluate_letters(data, sae, cfg)
    hook = sae_hook(sae)
    if not results:
        raise no_letter_error(skipped, probe_f1, hook, cfg)
    details = {"letters": results, "skipped": skipped, "probe_f1": probe_f1,
               "n_tokens": len(data.token_ids), "n_train_tokens": int(data.train.sum()),
               "n_test_tokens": int((~data.train).sum())}
    config = {"model": name, "hook": hook, "d_sae": int(sae.cfg.d_sae),
              **asdict(cfg), "letters": list(cfg.letters)}
    return {"summary": summarize(results), "details": details, "config": config,
            "seconds": time.perf_counter() - start}
