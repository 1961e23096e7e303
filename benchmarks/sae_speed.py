"""TopK SAE training speed: ours against the peers, and against a bare encoder matmul.

    make bench                                    # builds .venv-bench with the peers, runs this
    python benchmarks/sae_speed.py [--shapes 128:2048:16,512:8192:32] [--batch 4096]
                                   [--repeats 5] [--steps 4] [--quality-steps 250]
                                   [--no-quality] [--no-memory] [--no-dense] [--big]
                                   [--only ours,ours-torch-adam,...]

Installs nothing: the peers that import (``benchmarks/peers.py``: SAELens, dictionary_learning,
EleutherAI sparsify) are timed beside ours; the others are listed as missing.

Speed, per shape (fp32, random data, one batch per step): every contender runs ``--steps``
training steps per round, rounds interleaved ``--repeats`` times, after a warm-up; the median
ms/step is reported with tokens/s and two ratios: ours' tokens/s over each peer's, and each
step's time over a bare ``x @ W_enc`` of the same shape (the one dense product a TopK step
cannot avoid), timed in the same rounds. "ours" is our trainer's own step (``SAE.loss``,
``apply_gradients``, dead-latent bookkeeping); "ours-dense" is the same step on the dense
autograd reference path.

Peak memory: each contender runs again in a fresh subprocess: after one warm-up step its peak
RSS is reset (Linux ``/proc/self/clear_refs``); the figure is the peak over three more steps
minus the RSS at that point, i.e. what a step allocates beyond weights, optimizer and data.

Quality (``--quality-steps``): each contender trains that many steps on the same batches of a
real store (the embedded othello model's blocks.3.hook_resid_post, d=128; harvested into
runs/bench/ if missing), each with its own default learning rate (and its warm-up, capped at
a tenth of the run), and reports FVU on held-out rows. Inputs are scaled so that E||x||^2 = d_in, as our trainer does.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import peers  # noqa: E402

QUALITY_HOOK = "blocks.3.hook_resid_post"


# ------------------------------------------------------------------ contenders
def make_ours(d: int, m: int, k: int, batch: int, sparse: bool = True, lr: float | None = None,
              torch_adam: bool = False, d_out: int | None = None, skip: bool = False):
    """Our trainer's step on a TopK SAE, or with ``d_out`` a transcoder (``skip``: a skip
    transcoder), whose ``step(x, y)`` fits the target y; returns (step, dictionary)."""
    from interp.sae.core import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=d, d_sae=m, arch="topk", k=k, d_out=d_out,
                                      skip=skip), sparse_kernels=sparse)
    return our_step(sae, batch, lr=lr, torch_adam=torch_adam), sae


def our_step(sae, batch: int, lr: float | None = None, torch_adam: bool = False):
    """``step(x, y=None) -> loss``: what our trainer's ``_train_step`` does to ``sae`` (an SAE,
    a transcoder or a cross-layer transcoder) on one batch of normalised rows: b_dec from
    the first batch's targets, the loss with AuxK on the dead latents, ``apply_gradients``,
    and the dead-latent bookkeeping."""
    from interp.sae.core import SparseAutoencoder
    from interp.sae.trainer import SAEAdam, TrainConfig, apply_gradients

    layer = getattr(sae.cfg, "layer", sae.cfg)  # a CLT's per-layer config, as it trains
    cfg = TrainConfig(store="-", out="-", d_sae=layer.d_sae, k=layer.k, batch_size=batch)
    m = sae.n_latents
    sae.train()
    opt = (torch.optim.Adam(sae.parameters(), lr=lr or cfg.learning_rate(), betas=cfg.betas)
           if torch_adam else SAEAdam(sae, lr=lr or cfg.learning_rate(), betas=cfg.betas))
    since_fired = torch.zeros(m, dtype=torch.long)
    state = {"step": 0}

    def step(x: torch.Tensor, y: torch.Tensor | None = None) -> float:
        if state["step"] == 0:
            if isinstance(sae, SparseAutoencoder):
                sae.init_b_dec(x if y is None else y)
            else:  # a CLT: each target's b_dec (its scales are unused by the loss)
                sae.init_from_sample(x, y)
        dead = since_fired >= cfg.dead_window_tokens
        loss, out, _ = sae.loss(x, step=state["step"], dead=dead, y=y)
        apply_gradients(sae, opt, loss)
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[out.fired_counts() > 0] = 0
        state["step"] += 1
        return float(loss.detach())

    return step


def make(name: str, d: int, m: int, k: int, batch: int, total_steps: int = 10_000):
    if name == "ours":
        return make_ours(d, m, k, batch)
    if name == "ours-dense":
        return make_ours(d, m, k, batch, sparse=False)
    if name == "ours-torch-adam":  # torch's Adam + separate projection / renormalisation
        return make_ours(d, m, k, batch, torch_adam=True)
    # a short run: each peer's warm-up capped at a tenth of it (dictionary_learning's
    # default of 1,000 steps must be shorter than the run)
    return peers.make_step(name, d, m, k, batch, total_steps=total_steps,
                           warmup_steps=min(1000, total_steps // 10))


def contenders(include_dense: bool = True) -> list[str]:
    names = ["ours"] + (["ours-dense"] if include_dense else [])
    return names + list(peers.available())


def our_fvu(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        sae.eval()
        err = sum(float((c - sae(c).x_hat).square().sum()) for c in x.split(8192))
        sae.train()
    return err / float((x - x.mean(0)).square().sum())


# ------------------------------------------------------------------ speed
def time_steps(step, batches: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    for x in batches:
        step(x)
    return (time.perf_counter() - t0) / len(batches)


def speed(shape: tuple[int, int, int], batch: int, repeats: int, steps: int,
          names: list[str]) -> dict:
    d, m, k = shape
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(batch, d, generator=g) for _ in range(steps)]
    w = torch.randn(d, m, generator=g) / math.sqrt(d)
    runs = {}
    for name in names:
        step, _ = make(name, d, m, k, batch)
        for x in batches[:2]:  # warm-up (first-step inits, kernel loading, allocator)
            step(x)
        runs[name] = step
    matmul = lambda x: x @ w  # noqa: E731
    time_steps(matmul, batches)
    times: dict[str, list[float]] = {n: [] for n in ["matmul", *names]}
    for _ in range(repeats):
        times["matmul"].append(time_steps(matmul, batches))
        for name in names:
            times[name].append(time_steps(runs[name], batches))
    return {n: statistics.median(t) for n, t in times.items()}


# ------------------------------------------------------------------ memory
def memory_child(name: str, d: int, m: int, k: int, batch: int, steps: int) -> None:
    """Peak RSS over ``steps`` steps, above the RSS once the contender is built and warm."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(batch, d, generator=g) for _ in range(steps + 1)]
    step, _ = make(name, d, m, k, batch)
    step(batches[0])  # warm: first-step inits, kernel loading
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM, the peak RSS, to now
        f.write("5")
    for x in batches[1:]:
        step(x)
    print(json.dumps({"peak_step_mib": max(0, _status_kib("VmHWM") - base) / 1024}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory(shape, batch: int, steps: int, names: list[str]) -> dict:
    out = {}
    for name in names:
        cmd = [sys.executable, __file__, "--memory-child", name,
               "--shapes", ":".join(map(str, shape)), "--batch", str(batch),
               "--steps", str(steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        out[name] = json.loads(lines[-1])["peak_step_mib"] if lines else float("nan")
    return out


# ------------------------------------------------------------------ quality
def quality_store(path: Path):
    from interp.activations.harvest import HarvestConfig, harvest, open_store

    if not (path / "activations" / "manifest.json").exists():
        print(f"harvesting the quality store into {path} ...", flush=True)
        harvest(HarvestConfig(model="othello", hooks=[QUALITY_HOOK], n_tokens=1_400_000,
                              out=str(path)))
    return open_store(path)


def quality(store, names: list[str], shape, batch: int, n_steps: int) -> dict:
    from interp.sae.core import activation_scale

    d, m, k = shape
    n_eval = 16384
    rows = store.n_rows
    need = n_steps * batch + n_eval
    if rows < need:
        raise SystemExit(f"the quality store has {rows:,} rows; {need:,} are needed "
                         f"(lower --quality-steps)")
    x_all = store.read_range(0, need, QUALITY_HOOK).float()
    perm = torch.randperm(need, generator=torch.Generator().manual_seed(0))
    x_all = x_all[perm]
    x_all *= activation_scale(x_all[:16384])
    train, held = x_all[:n_steps * batch], x_all[n_steps * batch:]
    out = {}
    for name in names:
        step, module = make(name, d, m, k, batch, total_steps=n_steps)
        t0 = time.perf_counter()
        for i in range(n_steps):
            step(train[i * batch:(i + 1) * batch])
        secs = time.perf_counter() - t0
        f = our_fvu(module, held) if name.startswith("ours") else peers.fvu(name, module, held)
        out[name] = {"fvu": f, "seconds": secs}
        print(f"  {name:20s} FVU {f:.4f}  ({secs:.1f} s)", flush=True)
    return out


# ------------------------------------------------------------------ main
def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in s.split(":")) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="128:2048:16,512:8192:32", help="d:m:k,...")
    ap.add_argument("--big", action="store_true", help="also d=768 m=24576 k=32")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="steps per contender per round")
    ap.add_argument("--quality-steps", type=int, default=250)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference path")
    ap.add_argument("--only", default=None,
                    help="comma-separated contenders instead of all (ours, ours-dense, "
                    "ours-torch-adam, saelens, dictionary_learning, sparsify)")
    ap.add_argument("--store", default="runs/bench/othello-l3", help="quality store run folder")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes) + ([(768, 24576, 32)] if args.big else [])
    if args.memory_child:
        memory_child(args.memory_child, *shapes[0], args.batch, args.steps)
        return

    from interp.sae import kernels

    names = contenders(include_dense=not args.no_dense)
    if args.only:
        names = args.only.split(",")
    found = peers.available()
    missing = [p for p in peers.PEERS if p not in found]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch "
          f"{args.batch}; compiled kernels: {'yes' if kernels.extension() else 'no'}")
    print("peers: " + (", ".join(f"{p} {v}" for p, v in found.items()) or "none") +
          (f"  (missing: {', '.join(missing)}; `make bench` installs them)" if missing else ""))
    for shape in shapes:
        d, m, k = shape
        t = speed(shape, args.batch, args.repeats, args.steps, names)
        mem = {} if args.no_memory else memory(shape, args.batch, 3, names)
        print(f"\nd={d} m={m} k={k}: bare x @ W_enc {1000 * t['matmul']:.1f} ms")
        print(f"  {'contender':20s} {'ms/step':>9s} {'tokens/s':>11s} {'x matmul':>9s} "
              f"{'ours faster':>11s} {'peak MiB':>9s}")
        for name in names:
            s = t[name]
            print(f"  {name:20s} {1000 * s:9.1f} {args.batch / s:11,.0f} {s / t['matmul']:8.2f}x "
                  f"{t[name] / t['ours']:10.2f}x {mem.get(name, float('nan')):9.0f}")
    if not args.no_quality:
        shape = shapes[0]
        print(f"\nquality: FVU on 16,384 held-out rows after {args.quality_steps} steps x "
              f"{args.batch} tokens, d={shape[0]} m={shape[1]} k={shape[2]}, "
              f"othello {QUALITY_HOOK}")
        store = quality_store(Path(args.store))
        if store.d_in(QUALITY_HOOK) != shape[0]:
            raise SystemExit(f"the quality store has d={store.d_in(QUALITY_HOOK)}; the first "
                             f"shape must have d={store.d_in(QUALITY_HOOK)}")
        q = quality(store, names, shape, args.batch, args.quality_steps)
        if "ours-dense" in q:
            rel = q["ours"]["fvu"] / q["ours-dense"]["fvu"] - 1
            print(f"  ours vs its dense reference path: {100 * rel:+.2f}% FVU (target within 2%)")


if __name__ == "__main__":
    main()
