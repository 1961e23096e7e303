"""A small run folder for the app's tests: an othello activation store, a run SAE folder
(the shipped TopK SAE's files under RUN/saes/), and a feature store of the shipped SAE built
on a few thousand tokens."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

SHIPPED = "othello/blocks.3.hook_resid_post/topk"
HOOK = "blocks.3.hook_resid_post"


def write_store_run(path: Path) -> Path:
    """A run folder with an othello-token store: unit 1 peaks on context 3, position 5."""
    from interp.activations.store import StoreWriter

    store = path / "activations"
    w = StoreWriter(store, {"blocks.0.hook_resid_post": 4}, 8, list(range(1, 8)),
                    shard_rows=21, meta={"model": "othello"})
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        acts = torch.randn(1, 7, 4, generator=g)
        if c == 3:
            acts[0, 4, 1] = 50.0  # position 5
        w.add(np.arange(8)[None] + c, {"blocks.0.hook_resid_post": acts})
    w.close()
    (path / "run.json").write_text(json.dumps({
        "model": "othello", "hooks": ["blocks.0.hook_resid_post"],
        "dataset": {"kind": "othello", "seed": 1000000, "n_games": None},
        "artifacts": {"activations": "activations"}}))
    return path


def make_app_run(path: Path, tokens: int = 2000) -> Path:
    """The store run, plus RUN/saes/topk (a copy of the shipped SAE with its training log)
    and RUN/features/topk.duckdb built with ``interp.features`` on ``tokens`` tokens."""
    from interp.features import FeatureConfig, build_for_run
    from interp.models.zoo import REPO_ROOT
    from interp.sae.release import registry

    write_store_run(path)
    src = REPO_ROOT / registry()[SHIPPED]["folder"]
    dst = path / "saes" / "topk"
    dst.mkdir(parents=True)
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json", "eval.json",
                 "train_log.jsonl"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    build_for_run(path, "topk", FeatureConfig(n_tokens=tokens, top_n=5, window=(4, 2),
                                              batch_size=16), progress=False)
    return path
