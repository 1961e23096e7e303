"""Reconstruction quality of the top-k SAE family trained on the same store.

    python benchmarks/sae_quality.py [--store runs/bench-othello] [--latents 2048] [--k 16]
                                     [--steps 600] [--arch topk --arch ...]

Without --store it first harvests 600k tokens of the embedded othello model at
blocks.4.hook_resid_post into runs/bench-othello (reused by later runs). Every architecture
gets the same store, dictionary size, k, batch size, steps, learning rate and seed; FVU,
L0, dead and dense fractions are measured on the store's held-out last 8,192 rows.
HierarchicalTopK is also shown at every k' of a grid: one SAE serving each k' <= K.
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DEFAULT_ARCHS = ["topk", "batchtopk", "matryoshka", "hierarchical_topk"]


def ensure_store(path: str | None) -> str:
    from interp.activations.harvest import HarvestConfig, harvest

    if path:
        return path
    path = "runs/bench-othello"
    if not (Path(path) / "activations" / "manifest.json").exists():
        harvest(HarvestConfig(model="othello", hooks=["blocks.4.hook_resid_post"],
                              n_tokens=600_000, out=path, batch_size=128))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None)
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--arch", action="append", default=None)
    args = ap.parse_args()

    from interp.sae.core import architecture
    from interp.sae.trainer import TrainConfig, train_sae

    store = ensure_store(args.store)
    archs = args.arch or DEFAULT_ARCHS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            opts = {}
            if architecture(arch).nested_prefixes:
                m = args.latents
                opts["prefixes"] = [m // 16, m // 4, m]
            cfg = TrainConfig(store=store, out=f"{tmp}/{arch}", arch=arch, d_sae=args.latents,
                              k=args.k, batch_size=args.batch_size, steps=args.steps,
                              lr=args.lr, sae_options=opts, eval_every=10**9,
                              checkpoint_every=10**9)
            t0 = time.time()
            res = train_sae(cfg)
            rows.append((arch, res, time.time() - t0))
    print(f"\nstore={store} latents={args.latents} k={args.k} steps={args.steps} "
          f"batch={args.batch_size} (held-out: last 8,192 rows)\n")
    print("| architecture | k' | FVU | L0 | dead % | dense % | train s |")
    print("|---|---|---|---|---|---|---|")
    for arch, res, secs in rows:
        ev = res["eval"]
        exact_k = not architecture(arch).threshold_inference  # k holds per token at inference
        print(f"| {arch} | {args.k if exact_k else '-'} | "
              f"{ev['fvu']:.4f} | {ev['l0']:.1f} | {100 * ev['dead_fraction']:.1f} | "
              f"{100 * ev['dense_fraction']:.1f} | {secs:.0f} |")
        for kp, ek in (res.get("eval_by_k") or {}).items():
            if int(kp) != args.k:
                print(f"| {arch} (same SAE) | {kp} | {ek['fvu']:.4f} | {ek['l0']:.1f} | "
                      f"{100 * ek['dead_fraction']:.1f} | {100 * ek['dense_fraction']:.1f} | |")


if __name__ == "__main__":
    main()
