"""One rule for the science benchmarks: an SAE is trained unless its folder already holds
a finished one (``metrics.json`` is written last), so a rerun reuses what is there."""
from __future__ import annotations

import json
from pathlib import Path


def trained_metrics(cfg) -> dict:
    """Train ``cfg`` (a ``TrainConfig``) unless ``cfg.out`` holds a finished SAE; its
    ``metrics.json``."""
    from interp.sae.trainer import train_sae

    out = Path(cfg.out)
    if not (out / "metrics.json").exists():
        train_sae(cfg, progress=False)
    return json.loads((out / "metrics.json").read_text())
