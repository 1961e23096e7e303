"""Train an embedded model from scratch: ``interp model train othello|pycode``.

Othello's loss is the cross-entropy against the exact next-move distribution of the data
(uniform over the legal moves, known from the game engine) instead of against the one move
that was sampled: both have the same minimiser, the exact one with far less variance, which
is what lets a small model learn legality within the CPU budget. pycode uses the usual
next-token loss.

Deterministic given the recipe's seed: batch ``step`` is drawn from a generator seeded with
``(seed, step)``, so a run that is killed resumes from its last checkpoint (in
``.train/NAME/``) and produces the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.data import othello as oth
from interp.data import pycode
from interp.errors import unknown
from interp.models.zoo import REPO_ROOT, ZOO, ZooSpec, model_dir

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout


class Batches:
    """Deterministic training batches for one embedded model."""

    def __init__(self, spec: ZooSpec, work: Path, out_dir: Path):
        self.spec = spec
        self.seed = spec.recipe.seed
        if spec.name == "pycode":
            tok_path = out_dir / "tokenizer.json"
            if not tok_path.exists():
                tok = pycode.train_tokenizer(spec.d_vocab)
                out_dir.mkdir(parents=True, exist_ok=True)
                tok.save(str(tok_path))
            tok = pycode.load_tokenizer(tok_path)
            cache = work / "train_tokens.npy"
            if not cache.exists():
                np.save(cache, pycode.encode_corpus(tok, "train"))
            self.stream = np.load(cache)
            self.bos = tok.token_to_id(pycode.BOS_TOKEN)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n_ctx = self.spec.recipe.batch_size, self.spec.n_ctx
        rng = np.random.default_rng([self.seed, step])
        if self.spec.name == "othello":
            games = oth.generate_games(b, rng)
            toks = games.tokens(with_bos=True)  # (B, 61)
            inp = toks[:, :n_ctx]
            tgt = othello_next_move_distribution(games, n_ctx)
            mask = games.moves[:, :n_ctx] >= 0
        else:
            starts = rng.integers(0, len(self.stream) - n_ctx, size=b)
            windows = np.stack([self.stream[s:s + n_ctx] for s in starts]).astype(np.int64)
            inp = np.concatenate([np.full((b, 1), self.bos), windows[:, :-1]], axis=1)
            tgt, mask = windows, np.ones_like(windows, dtype=bool)
        return torch.from_numpy(inp), torch.from_numpy(tgt), torch.from_numpy(mask)


def othello_next_move_distribution(games: oth.OthelloGames, n_ctx: int) -> np.ndarray:
    """(N, n_ctx, vocab) float32: at position t, uniform over the legal moves before move t+1."""
    legal = np.zeros((len(games), n_ctx, oth.VOCAB_SIZE), dtype=np.float32)
    legal[:, 0, oth.SQUARE_TO_TOKEN[oth.OthelloBoard().legal_moves()]] = 1
    legal[:, 1:, 1:61] = games.legal_mask()[:, : n_ctx - 1][..., list(oth.PLAYABLE)]
    total = legal.sum(-1, keepdims=True)
    return legal / np.maximum(total, 1)


def lr_at(step: int, spec: ZooSpec) -> float:
    """Warmup, cosine to a tenth of lr over ``steps``; then the optional warm restart."""
    r = spec.recipe
    if step >= r.steps and r.restart_steps:
        progress = (step - r.steps) / r.restart_steps
        return r.restart_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def masked_ce(logits: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over unmasked positions; ``tgt`` holds ids or distributions."""
    if tgt.is_floating_point():
        loss = -(tgt * logits.log_softmax(-1)).sum(-1).flatten()
    else:
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none")
    mask = mask.flatten().float()
    return (loss * mask).sum() / mask.sum()


def _save_checkpoint(path: Path, model, opt, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def _resume(ckpt_path: Path, model, opt, name: str) -> int:
    """The step a killed training run stopped at (its checkpoint loaded), else 0."""
    if not ckpt_path.exists():
        return 0
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    log.info(f"resuming {name} from step {state['step']} ({ckpt_path})")
    return int(state["step"])


def _corpus_meta(batches) -> dict:
    """What pycode was trained on: the interpreter's standard library, by digest."""
    files = pycode.corpus_files()
    return {"python_version": pycode.python_version(), "n_files": len(files),
            "digest": pycode.corpus_digest(files), "train_tokens": int(len(batches.stream))}


def train_embedded(name: str, out_dir: Path | None = None, work_dir: Path | None = None,
                   steps: int | None = None, threads: int | None = None,
                   evaluate: bool = True) -> Path:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp.models.io import save_zoo_model

    if name not in ZOO:
        raise unknown("embedded model", name, sorted(ZOO))
    spec = ZOO[name]
    if steps is not None:
        spec = replace(spec, recipe=replace(spec.recipe, steps=steps))
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir or model_dir(name))
    work = Path(work_dir or REPO_ROOT / ".train" / name)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.recipe.seed)
    model = HookedTransformer(HookedTransformerConfig(**spec.transformer_config()))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.recipe.lr, betas=(0.9, 0.99),
                            weight_decay=spec.recipe.weight_decay)
    ckpt_path = work / "checkpoint.pt"
    start = _resume(ckpt_path, model, opt, name)
    batches = Batches(spec, work, out_dir)
    log_file = open(work / "train_log.jsonl", "a")
    t0 = time.time()
    total = spec.recipe.total_steps
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"train {name}")
    ema = None
    bf16 = spec.recipe.precision == "bf16"
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, spec)
        inp, tgt, mask = batches(step)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(inp, return_type="logits")
        loss = masked_ce(logits.float(), tgt, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
        if (step + 1) % 50 == 0:
            log_file.write(json.dumps({"step": step + 1, "loss": loss.item(), "loss_ema": ema,
                                  "lr": lr_at(step, spec),
                                  "elapsed_s": time.time() - t0}) + "\n")
            log_file.flush()
        if (step + 1) % spec.recipe.checkpoint_every == 0 or step + 1 in (spec.recipe.steps, total):
            _save_checkpoint(ckpt_path, model, opt, step + 1)
    log_file.close()
    meta = {"train_steps": total, "train_seconds_this_run": time.time() - t0,
            "recipe": spec.to_dict()}
    if name == "pycode":
        meta["corpus"] = _corpus_meta(batches)
    save_zoo_model(model, spec, out_dir, meta)
    if evaluate:
        from interp.models.evaluate import evaluate_embedded
        evaluate_embedded(name, write=True)
    return out_dir
