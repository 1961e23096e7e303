"""One trainer for every SAE architecture, on an activation store.

- Adam with linear warmup and a linear decay to zero over the last ``1 - decay_start`` of
  the run; decoder directions kept on the unit sphere (gradient projection + renorm).
- Activations are normalized by one scalar so that E||x||^2 = d_in; the scale is stored in
  the SAE and folded into the weights when it is saved (SAELens format).
- Dead latents: a latent that has not fired for ``dead_window_tokens`` tokens is dead; the
  AuxK loss of topk / batchtopk / matryoshka trains them back.
- ``eval_rows`` rows at the end of the store are held out for periodic evaluation.
- Checkpoints hold the SAE, optimizer, scheduler, dead-latent counters, RNG state and the
  data position, so a killed run resumes where it stopped and ends with the same weights
  as an uninterrupted one.
- Data parallel: under ``torchrun`` every process reads its share of each global batch and
  gradients are averaged with one all-reduce, so N processes compute what one process
  computes on the same global batch (batchtopk / matryoshka select the top B*k per process).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from interp.activations.harvest import open_store
from interp.errors import CorruptArtifactError, DataError
from interp.sae.core import TOPK_FAMILY, SAEConfig, SparseAutoencoder
from interp.sae.evaluate import reconstruction_metrics
from interp.sae.io import save_sae
from interp.version import code_version

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    store: str                       # run folder or store folder
    out: str                         # the SAE's folder
    hook: str | None = None          # needed when the store holds several hooks
    arch: str = "topk"
    d_sae: int = 4096
    k: int = 32
    sae_options: dict = field(default_factory=dict)  # any other SAEConfig field
    batch_size: int = 4096
    steps: int | None = None         # default: one epoch over the training rows
    lr: float | None = None          # default: 2e-4 / sqrt(d_sae / 2^14) (Gao et al.)
    warmup_steps: int = 50
    decay_start: float = 0.8
    betas: tuple[float, float] = (0.9, 0.999)
    eval_rows: int = 8192
    eval_every: int = 200
    dead_window_tokens: int = 500_000
    checkpoint_every: int = 200
    log_every: int = 10
    init_sample_rows: int = 16384
    seed: int = 0
    wandb_project: str | None = None
    stop_after: int | None = None    # end this process after that many steps (for tests)

    def sae_config(self, d_in: int) -> SAEConfig:
        names = {f.name for f in fields(SAEConfig)}
        bad = sorted(set(self.sae_options) - names)
        if bad:
            raise DataError(f"unknown SAE options {bad}; valid: {sorted(names)}")
        return SAEConfig(d_in=d_in, d_sae=self.d_sae, arch=self.arch, k=self.k,
                         seed=self.seed, **self.sae_options).validate()

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 2**14)


def lr_factor(step: int, total: int, warmup: int, decay_start: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    start = int(decay_start * total)
    if step < start:
        return 1.0
    return max(0.0, (total - step) / max(1, total - start))


class _Dist:
    """The process group when run under torchrun, else a single process."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.main = self.rank == 0

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def any_(self, mask: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return mask
        m = mask.to(torch.int32)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        return m.bool()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def activation_scale(sample: torch.Tensor) -> float:
    """s such that E||s x||^2 = d_in over the sample."""
    ms = float(sample.double().square().sum(1).mean())
    if ms <= 0:
        raise DataError("the activation sample is all zeros; cannot normalize it")
    return math.sqrt(sample.shape[1] / ms)


def train_sae(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) the SAE described by ``cfg``; returns the final metrics."""
    ddp = _Dist()
    store = open_store(cfg.store)
    hook = store._hook(cfg.hook)
    d_in = store.d_in(hook)
    out = Path(cfg.out)
    if (out / "sae_weights.safetensors").exists() and not (out / CHECKPOINT).exists():
        raise DataError(f"{out} already holds a trained SAE; choose another --out or delete it")
    if cfg.batch_size % ddp.world:
        raise DataError(f"batch size {cfg.batch_size} is not divisible by the {ddp.world} "
                        f"processes")
    n_train = store.n_rows - cfg.eval_rows
    if n_train < cfg.batch_size:
        raise DataError(f"the store has {store.n_rows:,} rows: too few for batches of "
                        f"{cfg.batch_size} after holding out {cfg.eval_rows} for evaluation")
    steps = cfg.steps or n_train // cfg.batch_size
    sae_cfg = cfg.sae_config(d_in)
    sae_cfg.metadata = {"model_name": store.manifest.get("model"), "hook_name": hook,
                        "context_size": store.n_ctx, "prepend_bos": True,
                        "dataset_path": json.dumps(store.manifest.get("source")),
                        "store": str(store.path)}
    torch.manual_seed(cfg.seed)
    sae = SparseAutoencoder(sae_cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.learning_rate(), betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, cfg.warmup_steps, cfg.decay_start))
    since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long)
    ckpt_path = out / CHECKPOINT
    start = 0
    if ckpt_path.exists():
        start = _load_checkpoint(ckpt_path, cfg, sae, opt, sched, since_fired)
        scale = float(sae.activation_scale)
    else:
        sample = store.read(_init_rows(n_train, cfg.init_sample_rows, cfg.seed), hook)
        scale = activation_scale(sample)
        sae.activation_scale.fill_(scale)
        sae.init_b_dec(sample * scale)
        ddp.all_reduce_mean_([p.data for p in sae.parameters()])  # identical on every rank
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(
            {**asdict(cfg), "steps": steps, "code_version": code_version(),
             "world_size": ddp.world}, indent=2) + "\n")
    ddp.barrier()

    batches = store.batches(cfg.batch_size, hook, seed=cfg.seed, epochs=None,
                            start_batch=start, drop_last=True, row_range=(0, n_train),
                            part=(ddp.rank, ddp.world))
    eval_range = (n_train, store.n_rows)
    log = open(out / "train_log.jsonl", "a") if ddp.main else None
    wandb = _wandb(cfg, ddp) if cfg.wandb_project else None
    bar = tqdm(total=steps, initial=start, desc=f"train {cfg.arch}", disable=not (
        progress and ddp.main), unit="step")
    t0, last = time.time(), {}
    end = steps if cfg.stop_after is None else min(steps, start + cfg.stop_after)
    for step in range(start, end):
        x = next(batches) * scale
        dead = since_fired >= cfg.dead_window_tokens
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss, fwd, terms = sae.loss(x, step=step, dead=dead, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ddp.all_reduce_mean_([p.grad for p in sae.parameters() if p.grad is not None])
        sae.remove_parallel_grad()
        opt.step()
        sched.step()
        sae.normalize_decoder()
        if hasattr(sae, "threshold"):
            ddp.all_reduce_mean_([sae.threshold])
        with torch.no_grad():
            fired = torch.zeros(sae_cfg.d_sae, dtype=torch.bool)
            if fwd.acts is not None:
                fired = (fwd.acts != 0).any(0)
            else:
                fired[fwd.indices[fwd.values != 0]] = True
            fired = ddp.any_(fired)
            since_fired += cfg.batch_size
            since_fired[fired] = 0
        if ddp.main and ((step + 1) % cfg.log_every == 0 or step + 1 == end):
            with torch.no_grad():
                err = (fwd.x_hat - x).square().sum()
                var = (x - x.mean(0)).square().sum()
            last = {"step": step + 1, "tokens": (step + 1) * cfg.batch_size,
                    "loss": float(loss.detach()), **terms,
                    "fvu": float(err / var.clamp_min(1e-12)),
                    "l0": float(fwd.l0().float().mean()),
                    "dead_fraction": float(dead.float().mean()),
                    "lr": sched.get_last_lr()[0], "elapsed_s": time.time() - t0}
            log.write(json.dumps(last) + "\n")
            log.flush()
            if wandb:
                wandb.log(last, step=step + 1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", L0=f"{last['l0']:.1f}",
                            FVU=f"{last['fvu']:.3f}", dead=f"{100 * last['dead_fraction']:.1f}%")
        bar.update(1)
        if ddp.main and (step + 1) % cfg.eval_every == 0 and step + 1 < steps:
            ev = _evaluate(sae, store, hook, eval_range, scale)
            ev = {"step": step + 1, "eval": {k: v for k, v in ev.items() if k != "density"}}
            log.write(json.dumps(ev) + "\n")
            log.flush()
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            if ddp.main:
                _save_checkpoint(ckpt_path, cfg, sae, opt, sched, since_fired, step + 1)
            ddp.barrier()
    bar.close()
    if end < steps:  # stopped early on request: the checkpoint resumes the run
        if log:
            log.close()
        return {"stopped_at": end, "steps": steps}
    result = {}
    if ddp.main:
        ev = _evaluate(sae, store, hook, eval_range, scale)
        result = {"arch": cfg.arch, "d_in": d_in, "d_sae": sae_cfg.d_sae, "k": cfg.k,
                  "steps": steps, "tokens": steps * cfg.batch_size,
                  "train_seconds": time.time() - t0, "activation_scale": scale,
                  "eval": ev, "final_train": last}
        if sae_cfg.arch == "hierarchical_topk":
            result["eval_by_k"] = {
                str(kp): {k: v for k, v in _evaluate(sae, store, hook, eval_range, scale, kp)
                          .items() if k != "density"}
                for kp in k_grid(sae_cfg.k)}
        save_sae(sae, out)
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        log.write(json.dumps({"step": steps, "eval": {k: v for k, v in ev.items()
                                                      if k != "density"}}) + "\n")
        log.close()
        ckpt_path.unlink(missing_ok=True)
        if wandb:
            wandb.finish()
    ddp.barrier()
    return result


def k_grid(k: int) -> list[int]:
    """k' values to evaluate a HierarchicalTopK SAE at: powers of two up to K, and K."""
    grid = [2**i for i in range(int(math.log2(k)) + 1)]
    return sorted(set(grid + [k]))


def _evaluate(sae, store, hook, row_range, scale, k=None) -> dict:
    batches = store.batches(4096, hook, shuffle=False, row_range=row_range)
    return reconstruction_metrics(sae, batches, scale=scale, k=k)


def _init_rows(n_train: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=g)[: min(n, n_train)].sort().values.numpy()


def _save_checkpoint(path: Path, cfg, sae, opt, sched, since_fired, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "arch": cfg.arch, "sae_config": sae.cfg.to_dict(),
                "sae": sae.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "since_fired": since_fired,
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg, sae, opt, sched, since_fired) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle and zip errors of a truncated file
        raise CorruptArtifactError(f"checkpoint {path} is corrupt or truncated ({e}); delete "
                                   f"it to start over") from e
    if state.get("arch") != cfg.arch:
        raise DataError(f"checkpoint {path} is from a {state.get('arch')!r} SAE, not "
                        f"{cfg.arch!r}; use another --out or the same --arch")
    theirs = {k: v for k, v in state["sae_config"].items() if k != "metadata"}
    ours = {k: v for k, v in sae.cfg.to_dict().items() if k != "metadata"}
    if theirs != ours:
        diff = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise DataError(f"checkpoint {path} was made with different SAE settings ({diff}); "
                        f"use the same settings or another --out")
    sae.load_state_dict(state["sae"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    since_fired.copy_(state["since_fired"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _wandb(cfg: TrainConfig, ddp: _Dist):
    if not ddp.main:
        return None
    try:
        import wandb
    except ImportError:
        print("note: --wandb-project given but wandb is not installed; logging to JSONL only")
        return None
    wandb.init(project=cfg.wandb_project, config=asdict(cfg), name=Path(cfg.out).name)
    return wandb
