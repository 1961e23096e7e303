"""Sparse-probe speed: every k in {1, 2, 4, 8, 16, 32, 64} plus the dense probe, over 16,384
units and 10,000 examples (target: <= 30 s on this CPU), per selector.

    python benchmarks/probe_speed.py [--units 16384] [--examples 10000] [--selectors f_stat,...]

Data: sparse non-negative "latents" (about 2% active, like SAE codes) with a label planted
in a few of them. Prints the seconds per selector (selection + fits + held-out metrics) and
the F1 at k = 1 and k = 64, so speed is not bought with quality. Also times sklearn's
LogisticRegression on the same dense problem as a reference point.
"""
from __future__ import annotations

import argparse
import time

import torch


def data(units: int, examples: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(examples, generator=g) < 0.3).long()
    active = torch.rand(examples, units, generator=g) < 0.02
    x = torch.rand(examples, units, generator=g) * active
    planted = torch.randperm(units, generator=g)[:8]
    for i, j in enumerate(planted):
        x[:, j] += y * torch.rand(examples, generator=g) * (1.0 / (i + 1))
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=16384)
    ap.add_argument("--examples", type=int, default=10000)
    ap.add_argument("--selectors", default="f_stat,mean_diff,greedy,l1,exact")
    args = ap.parse_args()
    from interp.probes.sparse import sparse_probe

    x, y = data(args.units, args.examples)
    print(f"{args.units:,} units x {args.examples:,} examples, threads={torch.get_num_threads()}")
    for sel in args.selectors.split(","):
        t0 = time.perf_counter()
        res = sparse_probe(x, y, method=sel, dense=sel == "f_stat")
        s = time.perf_counter() - t0
        f1 = {r.k: r.test["f1"] for r in res}
        ks = ", ".join(f"k={k}: {v:.3f}" for k, v in f1.items() if k in (1, 64, None))
        print(f"  {sel:10s} {s:6.1f} s  ({len(res)} probes{'' if sel != 'f_stat' else ' incl. dense'}"
              f"; F1 {ks})  target <= 30 s")
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    LogisticRegression(max_iter=100, class_weight="balanced").fit(x.numpy(), y.numpy())
    print(f"  reference: one sklearn dense LogisticRegression fit, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
