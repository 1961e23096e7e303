"""Figures of merit for the embedded models: ``interp model eval othello|pycode``.

othello
  - legal-move top-1 accuracy: at every position of held-out games whose game goes on,
    is the model's most likely next token a legal move?
  - board-state probe: a linear probe per square (3 classes: empty / mine / theirs, from
    the view of the player to move) on the residual stream after each block; mean test
    accuracy over squares and positions, at the best layer.
pycode
  - held-out next-token loss (nats/token) on the test split of the corpus.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.data import othello as oth
from interp.errors import unknown
from interp.models.zoo import model_dir

# Evaluation games use seeds no training batch uses (training: (0, step)).
EVAL_SEED = 987_654_321


@torch.inference_mode()
def othello_legal_move_accuracy(model, n_games: int = 2000, batch_size: int = 250) -> dict:
    games = oth.generate_games(n_games, EVAL_SEED)
    toks = torch.from_numpy(games.tokens(with_bos=True)[:, : model.cfg.n_ctx])
    # legal set before move t+1: at t=0 the opening moves, then legal_next of move t
    start = oth.OthelloBoard().legal_moves()
    legal = np.zeros((n_games, model.cfg.n_ctx, oth.VOCAB_SIZE), dtype=bool)
    legal[:, 0, oth.SQUARE_TO_TOKEN[start]] = True
    sq_legal = games.legal_mask()[:, : model.cfg.n_ctx - 1]  # (N, T-1, 64)
    legal[:, 1:, 1:61] = sq_legal[..., list(oth.PLAYABLE)]
    goes_on = games.moves[:, : model.cfg.n_ctx] >= 0  # a next move exists at position t
    preds = []
    for i in range(0, n_games, batch_size):
        logits = model(toks[i:i + batch_size])
        preds.append(logits.argmax(-1).numpy())
    pred = np.concatenate(preds)  # (N, T)
    hits = np.take_along_axis(legal, pred[..., None], axis=-1)[..., 0]
    acc = float(hits[goes_on].mean())
    per_pos = [float(hits[:, t][goes_on[:, t]].mean()) for t in range(model.cfg.n_ctx)]
    return {"legal_move_top1_accuracy": acc, "n_games": n_games,
            "n_predictions": int(goes_on.sum()), "accuracy_by_position": per_pos}


def fit_linear_probe(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor,
                     y_te: torch.Tensor, n_classes: int, steps: int = 100,
                     weight_decay: float = 1e-4) -> torch.Tensor:
    """Independent multinomial logistic regressions, one per output head, fit jointly.

    x (N, d); y (N, H) class ids. Returns test accuracy per head (H,). The heads share no
    parameters, so one joint fit equals H separate logistic regressions. Full-batch L-BFGS
    on standardized inputs (``steps`` iterations) reaches the regularized optimum.
    """
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    n_heads = y_tr.shape[1]
    W = torch.zeros(x_tr.shape[1], n_heads * n_classes, requires_grad=True)
    b = torch.zeros(n_heads * n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = (x_tr @ W + b).view(-1, n_heads, n_classes)
        loss = (F.cross_entropy(logits.flatten(0, 1), y_tr.flatten())
                + weight_decay * W.square().sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (x_te @ W + b).view(-1, n_heads, n_classes).argmax(-1)
    return (pred == y_te).float().mean(0)


@torch.inference_mode()
def _residuals(model, toks: torch.Tensor, batch_size: int = 250) -> list[torch.Tensor]:
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    outs: list[list[torch.Tensor]] = [[] for _ in names]
    for i in range(0, toks.shape[0], batch_size):
        _, cache = model.run_with_cache(toks[i:i + batch_size], names_filter=names)
        for j, n in enumerate(names):
            outs[j].append(cache[n])
    return [torch.cat(o) for o in outs]


def othello_board_probe(model, n_train: int = 600, n_test: int = 200) -> dict:
    games = oth.generate_games(n_train + n_test, EVAL_SEED + 1)
    T = model.cfg.n_ctx
    toks = torch.from_numpy(games.tokens(with_bos=True)[:, :T])
    # position t+1 has just read move t (position 0 is BOS): label = board after move t
    labels = torch.from_numpy(games.board_state()[:, : T - 1].astype(np.int64))  # (N, T-1, 64)
    valid = torch.from_numpy(games.valid()[:, : T - 1])
    resid = _residuals(model, toks)
    by_layer = []
    for layer, r in enumerate(tqdm(resid, desc="board probes", leave=False)):
        x = r[:, 1:]  # (N, T-1, d)
        tr, te = slice(0, n_train), slice(n_train, None)
        xtr, ytr = x[tr][valid[tr]], labels[tr][valid[tr]]
        xte, yte = x[te][valid[te]], labels[te][valid[te]]
        acc = fit_linear_probe(xtr, ytr, xte, yte, n_classes=3)
        by_layer.append({"layer": layer, "hook": f"blocks.{layer}.hook_resid_post",
                         "mean_accuracy": float(acc.mean()),
                         "min_square_accuracy": float(acc.min())})
    best = max(by_layer, key=lambda d: d["mean_accuracy"])
    return {"board_probe_best_layer": best["layer"],
            "board_probe_mean_accuracy": best["mean_accuracy"],
            "board_probe_by_layer": by_layer, "probe_train_games": n_train,
            "probe_test_games": n_test,
            "baseline_majority_accuracy": _majority_baseline(labels, valid, n_train)}


def _majority_baseline(labels: torch.Tensor, valid: torch.Tensor, n_train: int) -> float:
    """Accuracy of predicting each square's most common state (per square and position)."""
    tr, te = labels[:n_train], labels[n_train:]
    vtr, vte = valid[:n_train], valid[n_train:]
    counts = torch.stack([((tr == c) & vtr[..., None]).sum(0) for c in range(3)])  # (3,T,64)
    mode = counts.argmax(0)
    hit = (te == mode) & vte[..., None]
    return float(hit.sum() / (vte.sum() * 64))


@torch.inference_mode()
def pycode_heldout_loss(model, max_contexts: int | None = None, batch_size: int = 64) -> dict:
    from interp.data import pycode

    tok = pycode.load_tokenizer(model_dir("pycode") / "tokenizer.json")
    stream = pycode.encode_corpus(tok, "test")
    bos = tok.token_to_id(pycode.BOS_TOKEN)
    n = model.cfg.n_ctx - 1
    n_ctx = len(stream) // n
    if max_contexts:
        n_ctx = min(n_ctx, max_contexts)
    windows = torch.from_numpy(stream[: n_ctx * n].astype(np.int64)).view(n_ctx, n)
    total, count = 0.0, 0
    for i in tqdm(range(0, n_ctx, batch_size), desc="held-out loss", leave=False):
        w = windows[i:i + batch_size]
        inp = torch.cat([torch.full((w.shape[0], 1), bos), w], 1)
        logits = model(inp)[:, :-1]  # position j predicts w[:, j]
        total += F.cross_entropy(logits.flatten(0, 1), w.flatten(), reduction="sum").item()
        count += w.numel()
    loss = total / count
    return {"heldout_loss": loss, "heldout_perplexity": math.exp(loss),
            "heldout_tokens": count, "unigram_entropy": _unigram_entropy(stream, tok)}


def _unigram_entropy(stream: np.ndarray, tok) -> float:
    counts = np.bincount(stream, minlength=tok.get_vocab_size()).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def evaluate_embedded(name: str, write: bool = False, quick: bool = False) -> dict:
    from interp.models import load

    model = load(name)
    if name == "othello":
        res = othello_legal_move_accuracy(model, n_games=200 if quick else 2000)
        res.update(othello_board_probe(model, *((200, 100) if quick else (600, 200))))
    elif name == "pycode":
        res = pycode_heldout_loss(model, max_contexts=100 if quick else None)
    else:
        raise unknown("embedded model to evaluate", name, ["othello", "pycode"])
    if write:
        path = Path(model_dir(name)) / "metrics.json"
        path.write_text(json.dumps(res, indent=2) + "\n")
    return res
