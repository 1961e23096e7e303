"""Ablation faithfulness of pruned attribution graphs on othello-legal (issue 16's target:
a pruned graph of <= 200 feature nodes reaches faithfulness >= 0.8).

    .venv/bin/python benchmarks/graph_faithfulness.py [--prompts 32] [--max-features 200]

For each prompt its own graph (traced from the logit of a legal square minus an illegal
empty one), pruned at node threshold 0.8 with at most --max-features features; the kept
feature and error nodes are the circuit, checked in the real model (attention free) with
``interp.circuits.faithfulness`` under three ablations (see ``interp.graphs.faithful``).
"""
import argparse
import time

import torch

from interp.circuits.tasks import make_task
from interp.graphs.faithful import graph_faithfulness
from interp.models import load
from interp.sae.replacement import open_replacement


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-features", type=int, default=200)
    p.add_argument("--transcoders", nargs="+", default=["othello/plt", "othello/skip_plt"])
    a = p.parse_args()
    torch.set_num_threads(2)
    model = load("othello").requires_grad_(False)
    task = make_task("othello-legal", model, n=a.prompts)
    print(f"othello-legal, {a.prompts} prompts, <= {a.max_features} features per graph "
          f"(node threshold 0.8, edge threshold 0.98)")
    print(f"{'transcoders':<18} {'ablation':<15} {'features':>9} {'faith. pooled':>14} "
          f"{'faith. mean':>12} {'seconds':>8}")
    for name in a.transcoders:
        rep = open_replacement([name])
        for ablation in ("zero", "mean", "counterfactual"):
            t0 = time.perf_counter()
            r = graph_faithfulness(model, rep, task, n_prompts=a.prompts,
                                   max_features=a.max_features, ablation=ablation)
            print(f"{name:<18} {ablation:<15} {r['mean_features']:>9.1f} "
                  f"{r['faithfulness_pooled']:>14.3f} {r['faithfulness_mean']:>12.3f} "
                  f"{time.perf_counter() - t0:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
