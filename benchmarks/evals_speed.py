"""`interp evals` speed: the default evaluations (sparse probing, absorption where it
applies, ground-truth match) of one 2,048-latent SAE, end to end as a researcher runs it
(a fresh process: imports, the model, the dictionary, every evaluation, evals.json), against
the target of 2 minutes on this 2-core machine.

    python benchmarks/evals_speed.py [--saes NAME,...] [--repeat 1]

Prints the wall time of each command with its evaluations' own times (from evals.json), and
the ratio to the 120 s budget (below 1.0 meets it). A reference point measured in the same
run: the bare forward pass of the model over the same number of tokens the evaluations
read, and the dictionary's encoder on them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 120.0
DEFAULT = "othello/blocks.3.hook_resid_post/topk,pycode/blocks.2.hook_resid_post/topk"


def timed_command(sae: str, out: Path) -> tuple[float, dict]:
    """Wall seconds of ``interp evals SAE --out OUT`` in a fresh process, and its results."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "interp.cli", "evals", sae, "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"interp evals {sae} failed:\n{proc.stderr}")
    return wall, json.loads((out / "evals.json").read_text())


def forward_reference(sae_name: str, n_contexts: int = 256) -> float:
    """Seconds of the model's forward pass to the SAE's hook and the encoder over
    ``n_contexts`` contexts (what one evaluation's activations cost at least)."""
    import torch

    from interp.features.dashboard import dictionary_acts
    from interp.models import load
    from interp.runs import resolve_sae
    from interp.viz.prompts import corpus_contexts

    sae = resolve_sae(sae_name).sae.eval()
    model_name = sae.cfg.metadata["model_name"]
    model = load(model_name).requires_grad_(False)
    tokens = corpus_contexts(model_name, n_contexts, min(model.cfg.n_ctx, 64))
    dictionary_acts(model, sae, tokens[:8])  # warm: kernels, allocator
    t0 = time.perf_counter()
    with torch.no_grad():
        dictionary_acts(model, sae, tokens)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--saes", default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    import torch

    print(f"threads={torch.get_num_threads()}, budget {BUDGET_S:.0f} s per SAE")
    for sae in args.saes.split(","):
        for r in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                wall, doc = timed_command(sae, Path(tmp))
            parts = ", ".join([f"{k} {v['seconds']:.1f} s" for k, v in doc["evals"].items()]
                              + [f"{k} skipped" for k in doc.get("skipped", {})])
            print(f"{sae}: {wall:.1f} s in all ({parts}); {wall / BUDGET_S:.2f}x the "
                  f"{BUDGET_S:.0f} s budget")
        print(f"  reference: forward + encode of 256 contexts {forward_reference(sae):.2f} s")


if __name__ == "__main__":
    main()
