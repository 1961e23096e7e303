"""Feature-store figures: build throughput against the bare model forward + SAE encode, and
the latency of a feature-page query.

What it does (one process, fp32, CPU threads as torch sets them):
1. a synthetic TopK SAE on the embedded othello model at ``--hook``: ``--latents`` random
   unit decoder rows, the encoder tied to them (W_enc = W_dec^T, as SAEs are initialised),
   ``b_dec`` the hook's mean activation, k = ``--k``; its latents fire at realistic SAE
   densities (about k / latents on average, spread over orders of magnitude);
2. the bare pass: the same token stream (othello games, same seed, generated one batch
   ahead in a background thread) through the model up to the hook and the SAE's encoder,
   nothing recorded; timed on half the tokens before the build and half after it, so drift
   of a shared CPU hits both sides;
3. the build: ``build_feature_store`` on ``--tokens`` tokens, timed end to end (streaming,
   finalising, logit effects, DuckDB write) and streaming alone;
4. queries on the store just built: ``FeatureStore.feature(latent)`` for ``--queries``
   random latents (the first call, which also reads the vocabulary, timed apart), and
   ``search_by_token`` / ``by_density`` / ``summary`` once each.

    python benchmarks/feature_store.py                 # 16,384 latents, 1,000,000 tokens
    python benchmarks/feature_store.py --tokens 100000 --latents 2048   # a quick look
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_sae(model, hook: str, d_sae: int, k: int, seed: int = 0):
    from interp.data.sources import OthelloSource, batches
    from interp.hooks import stop_layer
    from interp.sae.core import SAEConfig, SparseAutoencoder

    d_in = model.cfg.d_model
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, arch="topk", k=k,
                                      b_dec_init="zeros", seed=seed,
                                      metadata={"model_name": "othello", "hook_name": hook}))
    acts = []
    toks = next(batches(OthelloSource(seed=12345), 60, 256))
    _, cache = model.run_with_cache(toks, names_filter=hook,
                                    stop_at_layer=stop_layer([hook], model.cfg.n_layers))
    acts = cache[hook][:, 1:].reshape(-1, d_in)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    return sae.eval()


def bare_pass(model, sae, hook: str, source, n_tokens: int, n_ctx: int, batch: int,
              skip_contexts: int = 0) -> tuple[float, float, int]:
    """Wall seconds, process CPU seconds and tokens of the model forward + SAE encode alone
    over the same stream."""
    import itertools
    import math

    from interp.data.sources import batches, prefetch
    from interp.features.codes import encode
    from interp.hooks import stop_layer

    kept = n_ctx - 1
    n_contexts = math.ceil(n_tokens / kept)
    stop = stop_layer([hook], model.cfg.n_layers)
    captured = {}

    def capture(act, hook):
        captured["x"] = act[:, 1:]

    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook, capture)]):
        it = batches(source, n_ctx, batch, max_contexts=skip_contexts + n_contexts)
        it = itertools.islice(it, skip_contexts // batch, None)
        for tokens in prefetch(it):
            model(tokens, stop_at_layer=stop)
            encode(sae, captured.pop("x").reshape(-1, sae.cfg.d_in))
            done += tokens.shape[0] * kept
    return time.perf_counter() - t0, time.process_time() - c0, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--latents", type=int, default=16_384)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--hook", default="blocks.3.hook_resid_post")
    ap.add_argument("--batch", type=int, default=64, help="contexts per forward pass")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                    "torch's, here the number of cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from interp.data.sources import OthelloSource
    from interp.features import FeatureConfig, FeatureStore, build_feature_store
    from interp.models import load

    model = load("othello")
    sae = synthetic_sae(model, args.hook, args.latents, args.k)
    n_ctx = 60
    seed = 2024
    cfg = FeatureConfig(n_tokens=args.tokens, batch_size=args.batch, n_ctx=n_ctx)
    print(f"model=othello hook={args.hook} latents={args.latents:,} k={args.k} "
          f"tokens={args.tokens:,} batch={args.batch} threads={torch.get_num_threads()}")
    # warm-up: kernels, allocator
    bare_pass(model, sae, args.hook, OthelloSource(seed=seed), 4 * args.batch * 59, n_ctx,
              args.batch)
    half = args.tokens // 2
    t1, c1, n1 = bare_pass(model, sae, args.hook, OthelloSource(seed=seed), half, n_ctx, args.batch)
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out) if args.out else Path(tmp.name) / "bench.duckdb"
    t0, c0 = time.perf_counter(), time.process_time()
    build_feature_store(model, sae, args.hook, OthelloSource(seed=seed), cfg, out,
                        {"model": "othello", "sae": "synthetic"}, progress=False)
    t_build, c_build = time.perf_counter() - t0, time.process_time() - c0
    skip = (half // 59) // args.batch * args.batch
    t2, c2, n2 = bare_pass(model, sae, args.hook, OthelloSource(seed=seed), args.tokens - half,
                       n_ctx, args.batch, skip_contexts=skip)
    fs = FeatureStore(out)
    n_tok = int(fs.meta["n_tokens"])
    t_stream = float(fs.meta["stream_seconds"])
    bare = (n1 + n2) / (t1 + t2)
    print(f"bare forward + SAE encode : {(t1 + t2):8.2f} s  {bare:10,.0f} tok/s")
    print(f"build, streaming only     : {t_stream:8.2f} s  {n_tok / t_stream:10,.0f} tok/s  "
          f"ratio {n_tok / t_stream / bare:.3f}")
    print(f"build, end to end         : {t_build:8.2f} s  {n_tok / t_build:10,.0f} tok/s  "
          f"ratio {n_tok / t_build / bare:.3f}  (target >= 0.8)")
    t_model = float(fs.meta["model_seconds"])
    print(f"inside the build, same batches: forward + encode {t_model:.2f} s, recording "
          f"{t_stream - t_model:.2f} s, finalising + writing {t_build - t_stream:.2f} s; "
          f"ratio {t_model / t_build:.3f}")
    bare_cpu = (n1 + n2) / (c1 + c2)
    print(f"the same in process CPU time (immune to other processes' time slices): bare "
          f"{c1 + c2:.2f} s, build {c_build:.2f} s, ratio {n_tok / c_build / bare_cpu:.3f}")
    size = out.stat().st_size / 2**20
    print(f"store: {out.name} {size:.1f} MiB, {fs.d_sae:,} latents over {n_tok:,} tokens "
          f"({fs.summary()['dead']:,} never fired)")
    fs.close()

    t0 = time.perf_counter()
    fs = FeatureStore(out)
    fs.feature(0)
    cold = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    times = []
    for lat in rng.integers(0, fs.d_sae, args.queries):
        t0 = time.perf_counter()
        page = fs.feature(int(lat))
        times.append(time.perf_counter() - t0)
    ms = sorted(1000 * t for t in times)
    print(f"feature page, {args.queries} random latents: median {statistics.median(ms):.1f} ms, "
          f"p95 {ms[int(0.95 * len(ms)) - 1]:.1f} ms, max {ms[-1]:.1f} ms (target <= 100 ms); "
          f"open + first page {1000 * cold:.1f} ms")
    print(f"  (a page: {len(page['top_examples'])} top examples, "
          f"{sum(len(q['examples']) for q in page['quantiles'])} interval samples, "
          f"{len(page['histogram']['counts'])} histogram bins, {len(page['top_tokens'])} top "
          f"tokens, logit effects)")
    for name, fn in (("search_by_token('d3', 20)", lambda: fs.search_by_token("d3", 20)),
                     ("by_density(1e-4, 1e-2, 50)", lambda: fs.by_density(1e-4, 1e-2, 50)),
                     ("summary()", fs.summary)):
        t0 = time.perf_counter()
        fn()
        print(f"{name:28s}: {1000 * (time.perf_counter() - t0):.1f} ms")
    fs.close()


if __name__ == "__main__":
    main()
