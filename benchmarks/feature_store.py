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
    # your own model: a local Hugging Face folder and a text file (--tiny FAMILY writes a
    # tiny random checkpoint of interp.models.tiny to --model first)
    python benchmarks/feature_store.py --model /tmp/tiny-gpt2 --tiny gpt2 \
        --source /tmp/code.txt --hook blocks.1.hook_resid_post --latents 2048 --tokens 200000
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def synthetic_sae(model, model_name: str, hook: str, d_sae: int, k: int, first_batch,
                  seed: int = 0):
    from interp.hooks import stop_layer
    from interp.sae.core import SAEConfig, SparseAutoencoder

    d_in = model.cfg.d_model
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, d_sae=d_sae, arch="topk", k=k,
                                      b_dec_init="zeros", seed=seed,
                                      metadata={"model_name": model_name, "hook_name": hook}))
    _, cache = model.run_with_cache(first_batch, names_filter=hook,
                                    stop_at_layer=stop_layer([hook], model.cfg.n_layers))
    acts = cache[hook][:, 1:].reshape(-1, d_in)
    with torch.no_grad():
        sae.b_dec.copy_(acts.mean(0))
    return sae.eval()


def source_maker(model_name: str, spec: str | None, model):
    """A function making the same token stream afresh: othello games (seed 2024), or
    ``spec`` (a text file, JSONL, ...) through the model's tokenizer."""
    from interp.data.sources import OthelloSource, make_source

    if spec is None:
        if model_name != "othello":
            raise SystemExit("give --source (a text file, JSONL or Parquet) for this model")
        return lambda: OthelloSource(seed=2024)
    return lambda: make_source(spec, model=model)


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
    ap.add_argument("--model", default="othello", help="an embedded model or a model folder")
    ap.add_argument("--tiny", default=None, help="first write a tiny random checkpoint of "
                    "this family (interp.models.tiny) to --model")
    ap.add_argument("--source", default=None, help="token source (default: othello games)")
    ap.add_argument("--n-ctx", type=int, default=None, help="context length (default: 60 for "
                    "othello, else the model's, at most 128)")
    ap.add_argument("--batch", type=int, default=64, help="contexts per forward pass")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=None, help="keep the store here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                    "torch's, here the number of cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from interp.data.sources import batches
    from interp.features import FeatureConfig, FeatureStore, build_feature_store
    from interp.models import load

    if args.tiny:
        from interp.models.tiny import save_tiny_checkpoint

        save_tiny_checkpoint(args.tiny, args.model)
    model = load(args.model)
    fresh = source_maker(args.model, args.source, model)
    n_ctx = args.n_ctx or min(model.cfg.n_ctx, 60 if args.model == "othello" else 128)
    kept = n_ctx - 1
    sae = synthetic_sae(model, args.model, args.hook, args.latents, args.k,
                        next(batches(fresh(), n_ctx, 256)))
    cfg = FeatureConfig(n_tokens=args.tokens, batch_size=args.batch, n_ctx=n_ctx)
    print(f"model={args.model} hook={args.hook} n_ctx={n_ctx} latents={args.latents:,} "
          f"k={args.k} tokens={args.tokens:,} batch={args.batch} "
          f"threads={torch.get_num_threads()}")
    # warm-up: kernels, allocator
    bare_pass(model, sae, args.hook, fresh(), 4 * args.batch * kept, n_ctx, args.batch)
    half = args.tokens // 2
    t1, c1, n1 = bare_pass(model, sae, args.hook, fresh(), half, n_ctx, args.batch)
    tmp = tempfile.TemporaryDirectory()
    out = Path(args.out) if args.out else Path(tmp.name) / "bench.duckdb"
    t0, c0 = time.perf_counter(), time.process_time()
    build_feature_store(model, sae, args.hook, fresh(), cfg, out,
                        {"model": args.model, "sae": "synthetic"}, progress=False)
    t_build, c_build = time.perf_counter() - t0, time.process_time() - c0
    skip = (half // kept) // args.batch * args.batch
    t2, c2, n2 = bare_pass(model, sae, args.hook, fresh(), args.tokens - half,
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
    token = "d3" if args.model == "othello" else page["top_tokens"][0]["token"]
    for name, fn in ((f"search_by_token({token!r}, 20)", lambda: fs.search_by_token(token, 20)),
                     ("by_density(1e-4, 1e-2, 50)", lambda: fs.by_density(1e-4, 1e-2, 50)),
                     ("summary()", fs.summary)):
        t0 = time.perf_counter()
        fn()
        print(f"{name:28s}: {1000 * (time.perf_counter() - t0):.1f} ms")
    fs.close()


if __name__ == "__main__":
    main()
