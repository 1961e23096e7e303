"""Transcoder training speed: ours against sparsify's transcoders and the bare encoder matmuls.

    make bench-transcoders                       # builds .venv-bench with the peers, runs this
    python benchmarks/transcoder_speed.py [--shapes 128:1024:32,128:2048:32,512:8192:32]
                                          [--clt 6:128:1024:16] [--no-clt] [--batch 4096]
                                          [--repeats 5] [--steps 4] [--only ours-plt,...]
                                          [--threads N] [--profile] [--profile-steps 5]

Installs nothing; a peer that does not import is listed as missing (``make bench`` and this
target's venv install it). fp32, random data, one batch (x, y) per step; every contender runs
``--steps`` training steps per round, rounds interleaved ``--repeats`` times after two warm-up
steps each, and the median ms/step is reported (the machinery of ``sae_speed.py``).

Per-layer transcoders (PLT), per shape d:m:k (an MLP's input and output, both of width d):
  ours-plt                  our trainer's step (``sae_speed.our_step``: ``SparseAutoencoder``
                            with d_out = d, ``loss(x, y=y)`` with AuxK on dead latents,
                            ``SAEAdam`` via ``apply_gradients``, dead-latent bookkeeping)
  ours-skip-plt             the same with ``skip=True`` (plus ``x @ W_skip``)
  sparsify-transcoder       sparsify's ``--transcode`` step (``peers.make_transcoder_step``:
                            its SparseCoder, FVU loss, signum optimizer; no decoder norm)
  sparsify-skip-transcoder  the same with ``skip_connection``
and a bare ``x @ W_enc``, (B, d) @ (d, m), timed in the same rounds: the one dense product a
TopK step cannot avoid.

Cross-layer transcoder (``--clt n:d:m:k``, default the othello MLPs: 6 layers, d=128,
m=1024 and k=16 per layer): our trainer's step on a ``CrossLayerTranscoder`` with x, y of
shape (B, n, d), against the sum of the n bare encoder matmuls (B, d) @ (d, m), timed in
the same rounds (one call does all n).

The table gives ms/step, tokens/s (rows of the batch per second), the step over its bare
matmul(s) and, for ours, tokens/s over sparsify's of the same kind (plain / skip); then one
line per target of issue 15: a PLT step <= 1.3x its bare matmul, a CLT step <= 1.3x the sum
of its encoder matmuls, tokens/s >= 1.5x sparsify's transcoder on the same shape.

``--profile``: then ``torch.profiler`` over ``--profile-steps`` steps of ours-plt (each
shape) and the CLT, alone: the ops with the largest self time per step (each op's median
over the steps), our compiled kernels (``interp.sae.kernels``) labelled by name (their time
is otherwise folded into the autograd node or the Python that calls them). On a busy
machine every parallel op waits for its preempted threads (a scheduler slice, several ms,
whatever its size): ``--threads 1`` then shows where the work is.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import peers  # noqa: E402
from sae_speed import make_ours, our_step, parse_shapes, time_steps  # noqa: E402

TARGET_MATMUL = 1.3   # a step over its bare encoder matmul(s), at most
TARGET_PEER = 1.5     # ours' tokens/s over sparsify's transcoder's, at least
KERNELS = ("topk_rows", "decode", "gather_dot", "scatter_rows", "hierarchical", "adam")


# ------------------------------------------------------------------ contenders
def plt_names() -> list[str]:
    """Ours, plain and skip, then each importable transcoder peer's, plain and skip."""
    found = peers.available()
    names = ["ours-plt", "ours-skip-plt"]
    for p in peers.TRANSCODER_PEERS:
        if p in found:
            names += [f"{p}-transcoder", f"{p}-skip-transcoder"]
    return names


def make_plt(name: str, d: int, m: int, k: int, batch: int):
    """``step(x, y) -> loss`` of one PLT contender (see the module doc)."""
    skip = "-skip-" in name
    if name.startswith("ours"):
        step, _ = make_ours(d, m, k, batch, d_out=d, skip=skip)
        return step
    peer = name.split("-")[0]
    step, _ = peers.make_transcoder_step(peer, d, m, k, batch, skip=skip)
    return step


def make_clt(n: int, d: int, m: int, k: int, batch: int):
    """``step(x, y) -> loss``: our trainer's step on a CLT over n layers (x, y (B, n, d))."""
    from interp.sae.clt import CLTConfig, CrossLayerTranscoder
    from interp.sae.core import SAEConfig

    clt = CrossLayerTranscoder(CLTConfig(SAEConfig(d_in=d, d_sae=m, arch="topk", k=k),
                                         layers=tuple(range(n)), d_out=d))
    return our_step(clt, batch)


# ------------------------------------------------------------------ timing
def interleaved(steps: dict, batches: list[tuple], repeats: int) -> dict[str, float]:
    """Median seconds per call of each ``steps[name](*batch)`` over ``repeats`` rounds, each
    round running every contender over all ``batches`` in turn, after two warm-up calls."""
    runs = {name: (lambda b, f=f: f(*b)) for name, f in steps.items()}
    for run in runs.values():
        for b in batches[:2]:  # first-step inits, kernel loading, allocator
            run(b)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(time_steps(run, batches))
    return {name: statistics.median(t) for name, t in times.items()}


def plt_speed(shape: tuple[int, int, int], batch: int, repeats: int, n_steps: int,
              names: list[str]) -> dict[str, float]:
    """Seconds per step of each PLT contender and of the bare matmul ("matmul")."""
    d, m, k = shape
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, d, generator=g), torch.randn(batch, d, generator=g))
               for _ in range(n_steps)]
    w = torch.randn(d, m, generator=g) / math.sqrt(d)
    steps = {"matmul": lambda x, y: x @ w}
    steps.update({name: make_plt(name, d, m, k, batch) for name in names})
    return interleaved(steps, batches, repeats)


def clt_batches(n: int, d: int, batch: int, n_steps: int) -> list[tuple]:
    """(x, y, xs): x, y (B, n, d) and the n layers' inputs (B, d), each contiguous."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n_steps):
        x, y = torch.randn(batch, n, d, generator=g), torch.randn(batch, n, d, generator=g)
        out.append((x, y, [x[:, i].contiguous() for i in range(n)]))
    return out


def clt_speed(clt_shape: tuple[int, int, int, int], batch: int, repeats: int,
              n_steps: int) -> dict[str, float]:
    """Seconds per step of our CLT ("ours-clt") and of its n bare matmuls ("matmuls")."""
    n, d, m, k = clt_shape
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(d, m, generator=g) / math.sqrt(d) for _ in range(n)]
    clt_step = make_clt(n, d, m, k, batch)
    steps = {"matmuls": lambda x, y, xs: [xi @ w for xi, w in zip(xs, ws)],
             "ours-clt": lambda x, y, xs: clt_step(x, y)}
    return interleaved(steps, clt_batches(n, d, batch, n_steps), repeats)


# ------------------------------------------------------------------ report
def plt_table(shape, batch: int, t: dict[str, float], names: list[str]) -> list[str]:
    """Print one shape's table; return its target lines."""
    d, m, k = shape
    print(f"\nPLT d={d} m={m} k={k}: bare x @ W_enc {1000 * t['matmul']:.1f} ms")
    print(f"  {'contender':26s} {'ms/step':>9s} {'tokens/s':>11s} {'x matmul':>9s} "
          f"{'vs sparsify':>11s}")
    for name in names:
        s = t[name]
        peer = _peer_of(name, names)
        vs = f"{t[peer] / s:10.2f}x" if peer else f"{'':11s}"
        print(f"  {name:26s} {1000 * s:9.1f} {batch / s:11,.0f} {s / t['matmul']:8.2f}x {vs}")
    lines = []
    for name in ("ours-plt", "ours-skip-plt"):
        if name not in t:
            continue
        kind = "skip PLT" if "skip" in name else "PLT"
        r = t[name] / t["matmul"]
        lines.append(_target(f"{kind} step <= {TARGET_MATMUL}x bare matmul, d={d} m={m} "
                             f"k={k}", f"{r:.2f}x", r <= TARGET_MATMUL))
        peer = _peer_of(name, names)
        if peer:
            r = t[peer] / t[name]
            lines.append(_target(f"{kind} tokens/s >= {TARGET_PEER}x {peer}, d={d} m={m} "
                                 f"k={k}", f"{r:.2f}x", r >= TARGET_PEER))
    return lines


def _peer_of(name: str, names: list[str]) -> str | None:
    """The sparsify contender of the same kind as our ``name`` (None: not ours / absent)."""
    if not name.startswith("ours"):
        return None
    peer = "sparsify-skip-transcoder" if "skip" in name else "sparsify-transcoder"
    return peer if peer in names else None


def clt_table(clt_shape, batch: int, t: dict[str, float]) -> list[str]:
    n, d, m, k = clt_shape
    r = t["ours-clt"] / t["matmuls"]
    print(f"\nCLT n={n} layers, d={d} m={m} k={k} per layer: sum of {n} bare x_L @ W_enc_L "
          f"{1000 * t['matmuls']:.1f} ms")
    print(f"  {'contender':26s} {'ms/step':>9s} {'tokens/s':>11s} {'x matmuls':>9s}")
    print(f"  {'ours-clt':26s} {1000 * t['ours-clt']:9.1f} {batch / t['ours-clt']:11,.0f} "
          f"{r:8.2f}x")
    return [_target(f"CLT step <= {TARGET_MATMUL}x sum of encoder matmuls, n={n} d={d} m={m} "
                    f"k={k}", f"{r:.2f}x", r <= TARGET_MATMUL)]


def _target(what: str, value: str, met: bool) -> str:
    return f"  {what}: {value}  {'met' if met else 'NOT MET'}"


# ------------------------------------------------------------------ profile
@contextlib.contextmanager
def labelled_kernels():
    """Wrap each op of ``interp.sae.kernels`` in a profiler range of its name, so that the
    profile shows it (the core and the optimizer call them through the module)."""
    from torch.profiler import record_function

    from interp.sae import kernels

    saved = {name: getattr(kernels, name) for name in KERNELS}

    def wrap(name, fn):
        def labelled(*args, **kwargs):
            with record_function(f"kernels.{name}"):
                return fn(*args, **kwargs)
        return labelled

    try:
        for name, fn in saved.items():
            setattr(kernels, name, wrap(name, fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)


def profile(label: str, step, batches: list[tuple], bare_ms: float, top: int = 14) -> None:
    """Print the ops with the largest self CPU time per step of ``step``: each step is
    profiled on its own and every op's figure is its median over the steps, so that a
    step the scheduler preempted (a busy machine) does not set it."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for b in batches[:2]:
        step(*b)
    per_step: list[dict[str, tuple[int, float]]] = []
    for b in batches[2:]:
        with labelled_kernels(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step(*b)
        per_step.append({e.key: (e.count, e.self_cpu_time_total / 1000)
                         for e in prof.key_averages()})
    keys = {key for ops in per_step for key in ops}
    ms = {key: statistics.median(ops.get(key, (0, 0.0))[1] for ops in per_step) for key in keys}
    calls = {key: max(ops.get(key, (0, 0.0))[0] for ops in per_step) for key in keys}
    total = statistics.median(sum(t for _, t in ops.values()) for ops in per_step)
    print(f"\nprofile {label}, {torch.get_num_threads()} threads: {total:.1f} ms/step of self "
          f"time under the profiler, median of {len(per_step)} steps (bare matmul(s) in the "
          f"timed rounds: {bare_ms:.1f} ms)")
    print(f"  {'op':58s} {'calls':>6s} {'ms/step':>8s} {'share':>6s}")
    for key in sorted(ms, key=ms.get, reverse=True)[:top]:
        print(f"  {key[:58]:58s} {calls[key]:6d} {ms[key]:8.2f} {100 * ms[key] / total:5.1f}%")


def run_profiles(shapes, clt_shape, batch: int, n_steps: int, bare: dict) -> None:
    """Profile ours-plt on each shape and the CLT (each alone, fresh)."""
    for d, m, k in shapes:
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(batch, d, generator=g), torch.randn(batch, d, generator=g))
                   for _ in range(n_steps + 2)]
        profile(f"ours-plt d={d} m={m} k={k}", make_plt("ours-plt", d, m, k, batch),
                batches, bare.get((d, m, k), float("nan")))
    if clt_shape is not None:
        n, d, m, k = clt_shape
        batches = [(x, y) for x, y, _ in clt_batches(n, d, batch, n_steps + 2)]
        profile(f"ours-clt n={n} d={d} m={m} k={k}", make_clt(n, d, m, k, batch), batches,
                bare.get(clt_shape, float("nan")))


# ------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="128:1024:32,128:2048:32,512:8192:32",
                    help="PLT shapes d:m:k,... (d = the MLP's input and output width)")
    ap.add_argument("--clt", default="6:128:1024:16", help="CLT n_layers:d:m:k (per layer)")
    ap.add_argument("--no-clt", action="store_true")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="steps per contender per round")
    ap.add_argument("--only", default=None,
                    help="comma-separated PLT contenders instead of all (ours-plt, "
                    "ours-skip-plt, sparsify-transcoder, sparsify-skip-transcoder)")
    ap.add_argument("--profile", action="store_true",
                    help="then profile ours-plt on each shape and the CLT")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps profiled (medians)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 gives steadier figures on a "
                    "busy machine, where a parallel op waits for a preempted thread")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    from interp.sae import kernels

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = parse_shapes(args.shapes) if args.shapes else []
    clt_shape = None if args.no_clt else tuple(int(v) for v in args.clt.split(":"))
    names = args.only.split(",") if args.only else plt_names()
    found = peers.available()
    missing = [p for p in peers.TRANSCODER_PEERS if p not in found]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch "
          f"{args.batch}; compiled kernels: {'yes' if kernels.extension() else 'no'}")
    print("transcoder peers: " + (", ".join(f"{p} {found[p]}" for p in peers.TRANSCODER_PEERS
                                            if p in found) or "none") +
          (f"  (missing: {', '.join(missing)}; `make bench-transcoders` installs them)"
           if missing else ""))
    targets, bare = [], {}
    for shape in shapes:
        t = plt_speed(shape, args.batch, args.repeats, args.steps, names)
        bare[shape] = 1000 * t["matmul"]
        targets += plt_table(shape, args.batch, t, names)
    if clt_shape is not None:
        t = clt_speed(clt_shape, args.batch, args.repeats, args.steps)
        bare[clt_shape] = 1000 * t["matmuls"]
        targets += clt_table(clt_shape, args.batch, t)
    print("\ntargets (issue 15), this run:")
    print("\n".join(targets))
    if args.profile:
        run_profiles(shapes, clt_shape, args.batch, args.profile_steps, bare)


if __name__ == "__main__":
    main()
