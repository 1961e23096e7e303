"""Harvest throughput as a ratio to a bare forward pass truncated at the same layer.

    python benchmarks/harvest.py [--model othello] [--hook blocks.3.hook_resid_post]
                                 [--tokens 200000] [--repeats 3]

Both sides run on the same contexts with the same batch size, interleaved, in one process:
- bare: ``model(tokens, stop_at_layer=L)`` over pre-built token batches, nothing kept;
- harvest: ``interp.activations.harvest.harvest`` end to end (token source, hooks, copies,
  shard writes, manifest) into a fresh temporary folder.
Prints the median time of each, tokens/s, and the overhead of harvesting over the bare pass
(target: <= 10%).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="othello")
    ap.add_argument("--hook", action="append", default=None)
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    hooks = args.hook or ["blocks.3.hook_resid_post"]

    from interp.activations.harvest import HarvestConfig, default_source, harvest, stop_layer
    from interp.data.sources import batches, make_source
    from interp.models import load

    model = load(args.model)
    n_ctx = min(model.cfg.n_ctx, 128)
    n_contexts = -(-args.tokens // (n_ctx - 1))
    source = make_source(default_source(args.model), model=model)
    token_batches = list(batches(source, n_ctx, args.batch_size, max_contexts=n_contexts))
    stop = stop_layer(hooks, model.cfg.n_layers)
    n_tok = n_contexts * (n_ctx - 1)

    def bare() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            for toks in token_batches:
                model(toks, stop_at_layer=stop)
        return time.perf_counter() - t0

    def harvested() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            harvest(HarvestConfig(model=args.model, hooks=hooks, n_tokens=n_tok, out=tmp,
                                  batch_size=args.batch_size), model=model, progress=False)
            return time.perf_counter() - t0

    bare(), harvested()  # warm-up
    tb, th = [], []
    for _ in range(args.repeats):
        tb.append(bare())
        th.append(harvested())
    b, h = statistics.median(tb), statistics.median(th)
    print(f"model={args.model} hooks={hooks} stop_at_layer={stop} tokens={n_tok:,} "
          f"batch={args.batch_size} threads={torch.get_num_threads()}")
    print(f"bare forward : {b:7.3f} s  {n_tok / b:12,.0f} tok/s")
    print(f"harvest      : {h:7.3f} s  {n_tok / h:12,.0f} tok/s")
    print(f"harvest / bare forward = {h / b:.3f}  (overhead {100 * (h / b - 1):+.1f}%, "
          f"target <= +10%)")


if __name__ == "__main__":
    main()
