"""Node attribution cost as a ratio to one forward and backward pass of the spliced model.

    python benchmarks/circuit_speed.py [--sae othello/blocks.3.hook_resid_post/topk]
                                       [--task othello-legal] [--prompts 64] [--repeats 5]

Both sides run on the same batch, interleaved, in one process:
- bare: a forward pass of the spliced model with node gradients tracked, and the backward
  pass of the task metric (what any gradient-based attribution must at least do);
- AtP: ``node_attribution(method="atp", patch="counterfactual")`` end to end: the clean run,
  the counterfactual run, the forward and backward pass, and the scores of every latent and
  error node at every spliced hook and position.
Prints the medians and the ratio (target: <= 3x). IG with N steps costs about N times AtP per
hook; its time is printed too.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sae", action="append", default=None)
    ap.add_argument("--task", default="othello-legal")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from interp.circuits.attribution import node_attribution
    from interp.circuits.discover import saes_for
    from interp.circuits.splice import SplicedModel
    from interp.circuits.tasks import make_task
    from interp.models import load

    saes = saes_for(args.sae or ["othello/blocks.3.hook_resid_post/topk"])
    model = load(next(iter(saes.values())).cfg.metadata["model_name"]).requires_grad_(False)
    spliced = SplicedModel(model, saes)
    task = make_task(args.task, model, n=args.prompts)

    def bare() -> float:
        t0 = time.perf_counter()
        res = spliced.run(task.clean, track_grads=True)
        task.metric(res.logits).mean().backward()
        return time.perf_counter() - t0

    def atp() -> float:
        t0 = time.perf_counter()
        node_attribution(spliced, task, method="atp", batch_size=len(task))
        return time.perf_counter() - t0

    def ig() -> float:
        t0 = time.perf_counter()
        node_attribution(spliced, task, method="ig", steps=10, batch_size=len(task))
        return time.perf_counter() - t0

    bare(), atp(), ig()  # warm-up
    tb, ta, ti = [], [], []
    for _ in range(args.repeats):
        tb.append(bare())
        ta.append(atp())
        ti.append(ig())
    b, a, i = (statistics.median(t) for t in (tb, ta, ti))
    n_nodes = sum((s.cfg.d_sae + 1) * task.clean.shape[1] for s in saes.values())
    print(f"task={task.name} prompts={len(task)} hooks={spliced.hooks} nodes={n_nodes:,} "
          f"threads={torch.get_num_threads()}")
    print(f"forward+backward (spliced): {1000 * b:8.1f} ms")
    print(f"AtP, every node           : {1000 * a:8.1f} ms   AtP / forward+backward = "
          f"{a / b:.2f}  (target <= 3)")
    print(f"IG, 10 steps, every node  : {1000 * i:8.1f} ms   IG / forward+backward = {i / b:.2f}")


if __name__ == "__main__":
    main()
