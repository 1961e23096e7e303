"""One trainer for every SAE architecture and objective.

- Objectives (what the loss is computed on): ``store``, reconstruct harvested activations
  (or, with ``hook_out``, a transcoder: read ``hook`` and reconstruct ``hook_out``, from
  a store holding both aligned row by row);
  ``e2e`` (Braun et al.), KL between the model's output and the output with the SAE
  spliced in, trained from tokens through the model; ``e2e+ds`` adds the downstream
  residual streams' reconstruction. The SAE's architecture (``arch``) is orthogonal to it.
- Adam with linear warmup and a linear decay to zero over the last ``1 - decay_start`` of
  the run; decoder directions kept on the unit sphere (gradient projection + renorm).
- Activations are normalized by one scalar so that E||x||^2 = d_in (a transcoder: one
  for its input, one for its output, E||y||^2 = d_out); the scales are stored in the SAE
  and folded into the weights when it is saved (SAELens format).
- Dead latents: a latent that has not fired for ``dead_window_tokens`` tokens is dead; the
  AuxK loss of the architectures that have one (topk / batchtopk / matryoshka) trains them
  back.
- ``eval_rows`` rows at the end of the store are held out for periodic evaluation.
- Checkpoints hold the SAE, optimizer, scheduler, dead-latent counters, RNG state and the
  data position, so a killed run resumes where it stopped and ends with the same weights
  as an uninterrupted one.
- Data parallel: under ``torchrun`` every process reads its share of each global batch and
  gradients are averaged with one all-reduce, so N processes compute what one process
  computes on the same global batch (batchtopk / matryoshka select the top B*k per process).

``train_sae`` reads top to bottom: ``_setup`` (build, then resume or initialise),
``_train_step``, ``_Log.after_step``, ``_save_checkpoint``, ``_finish``.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from interp.activations.store import open_store
from interp.activations.stream import ActivationStream
from interp.data.sources import batches as token_batches
from interp.data.sources import check_fits, default_source, make_source
from interp.distributed import rank_device, world
from interp.errors import CorruptArtifactError, DataError, Interrupted, MismatchError, unknown
from interp.hooks import (check_io_hooks, default_n_ctx, hook_widths, layer_of, mlp_io_hooks,
                          validate_hooks)
from interp.models import load
from interp.provenance import model_digest
from interp.sae import kernels
from interp.sae.clt import CLTConfig, CrossLayerTranscoder, clt_metrics, save_clt
from interp.sae.core import ARCHS, DEFAULT_ARCH, SAEConfig, SAEOutput, SparseAutoencoder
from interp.sae.evaluate import (kl_per_token, reconstruction_metrics, splice_hook,
                                 spliced_metrics, without_density)
from interp.sae.io import save_sae
from interp.version import code_version

CHECKPOINT = "checkpoint.pt"
E2E_SHUFFLE_TOKENS = 2**20  # token ids are cheap: each e2e batch mixes ~1M tokens' contexts
SETTLE_BATCHES = 16  # training batches the final batch-top-k threshold is measured on
# SAEConfig fields that TrainConfig (and so a flag of `interp train`) sets: not --option keys
FLAG_OF_SAE_FIELD = {"d_in": "the store (the hook's width)",
                     "d_out": "the store (--hook-out's width)", "d_sae": "--latents",
                     "arch": "--arch", "k": "--k", "seed": "--seed",
                     "metadata": "the trainer (provenance)"}
# TrainConfig fields that do not change what is trained: a resume may change them
RUN_CONTROL = ("out", "store", "stop_after", "checkpoint_every", "log_every", "eval_every",
               "wandb_project", "device", "compile")
Objective = Literal["store", "e2e", "e2e+ds"]
OBJECTIVES: tuple[str, ...] = ("store", "e2e", "e2e+ds")
END_TO_END = ("e2e", "e2e+ds")  # the objectives that train from tokens through the model

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout


def objective_and_arch(name: str, e2e_arch: str = DEFAULT_ARCH) -> tuple[str, str]:
    """(objective, arch) of a training named as ``interp train --arch`` (and a release spec
    or registry entry) names it: e2e / e2e+ds name an end-to-end objective, whose SAE is
    ``e2e_arch``; any other name is an architecture trained on a store."""
    return (name, e2e_arch) if name in END_TO_END else ("store", name)


@dataclass
class TrainConfig:
    store: str                       # run folder or store folder (objective "store");
    #                                  "" with ``model``: a stream of its forward passes
    out: str                         # the SAE's folder
    hook: str | None = None          # needed when the store holds several hooks
    hook_out: str | None = None      # a transcoder's output hook; None: an SAE at ``hook``
    # a cross-layer transcoder over the MLPs of these layers (reads each one's input hook,
    # writes every later output: interp.hooks.mlp_io_hooks); hook / hook_out unset
    clt_layers: tuple[int, ...] | None = None
    arch: str = DEFAULT_ARCH         # the SAE's architecture (interp.sae.core.ARCHS)
    objective: Objective = "store"   # what the loss is computed on: stored activations, or
    #                                  the model's output with the SAE spliced in (e2e, e2e+ds)
    d_sae: int = 4096
    k: int = 32
    sae_options: dict = field(default_factory=dict)  # any other SAEConfig field
    batch_size: int = 4096
    steps: int | None = None         # default: one epoch over the training rows
    lr: float | None = None          # default: 2e-4 / sqrt(d_sae / 2^14) (Gao et al.)
    warmup_steps: int = 50
    decay_start: float = 0.8
    betas: tuple[float, float] = (0.9, 0.999)
    encoder_dtype: str = "float32"   # or "bfloat16": the encoder product (top-k family)
    compile: bool = False            # torch.compile the SAE's loss (forward included)
    device: str = "cpu"              # cuda: under torchrun each process takes its GPU
    eval_rows: int = 8192
    eval_every: int = 200
    dead_window_tokens: int = 500_000
    checkpoint_every: int = 200
    log_every: int = 10
    init_sample_rows: int = 16384
    seed: int = 0
    wandb_project: str | None = None
    stop_after: int | None = None    # end this process after that many steps (for tests)
    # end-to-end objectives: trained from tokens through the model (arch topk or relu);
    # objective store without a store: trained from the model's forward passes (a stream)
    model: str | None = None
    source: str | None = None        # token source (default: the model's own corpus)
    n_ctx: int | None = None
    ds_coeff: float = 1.0            # e2e+ds: weight of the downstream reconstruction terms
    eval_contexts: int = 64
    tokens: int | None = None        # a stream's training tokens (its held-out rows extra)

    def __post_init__(self) -> None:
        if self.arch in END_TO_END:  # `arch: e2e`, as configs and release specs name it
            self.objective, self.arch = objective_and_arch(self.arch)
        if self.clt_layers is not None:
            self.clt_layers = tuple(int(L) for L in self.clt_layers)

    @property
    def trained_as(self) -> str:
        """The run's name in release specs, metrics and the registry: the architecture, or
        the end-to-end objective (whose SAE the metadata records)."""
        return self.arch if self.objective == "store" else self.objective

    def sae_config(self, d_in: int, d_out: int | None = None) -> SAEConfig:
        names = {f.name for f in fields(SAEConfig)}
        bad = sorted(set(self.sae_options) - names)
        if bad:
            raise DataError(f"unknown SAE options {bad}; valid: {sorted(names)}")
        if "d_out" in self.sae_options:
            raise DataError("d_out is the width of --hook-out, not an option")
        cfg = SAEConfig(d_in=d_in, d_sae=self.d_sae, arch=self.arch, k=self.k,
                        seed=self.seed, d_out=d_out, **self.sae_options).validate()
        if self.objective in END_TO_END and not cfg.architecture.end_to_end:
            valid = " or ".join(n for n, a in ARCHS.items() if a.end_to_end)
            raise DataError(f"an end-to-end SAE uses a {valid} activation, not {self.arch!r}")
        return cfg

    def validate(self) -> "TrainConfig":
        """The settings that do not depend on the data (its width), checked before the
        store is opened or the model loaded: a placeholder width of 1 stands in for d_in."""
        if self.objective not in OBJECTIVES:
            raise unknown("training objective", self.objective, OBJECTIVES)
        self._check_data_source()
        if self.clt_layers is not None:
            if self.objective != "store":
                raise DataError(f"a cross-layer transcoder trains from a store, not by the "
                                f"{self.objective} objective")
            if self.hook is not None or self.hook_out is not None:
                raise DataError("a cross-layer transcoder reads every layer's MLP input and "
                                "writes every MLP output: give --clt-layers, not --hook / "
                                "--hook-out")
            CLTConfig(self.sae_config(d_in=1), self.clt_layers, 1).validate()
            return self
        if self.hook_out is not None:
            if self.objective != "store":
                raise DataError(f"a transcoder (--hook-out) trains from a store, not by the "
                                f"{self.objective} objective")
            if self.hook is None:
                raise DataError("a transcoder needs its input hook too: give --hook")
            check_io_hooks(self.hook, self.hook_out)
        self.sae_config(d_in=1, d_out=None if self.hook_out is None else 1)
        return self

    def _check_data_source(self) -> None:
        """Where the rows come from: a store, or with objective store and no store, a
        stream of ``model``'s forward passes over ``tokens`` tokens (``stream.py``)."""
        stream = self.objective == "store" and not self.store
        if stream and not self.model:
            raise DataError("--store is required, or --model and --tokens to train from the "
                            "model's forward passes (--arch e2e / e2e+ds train from tokens too)")
        if stream and self.tokens is None:
            raise DataError(f"training from the forward passes of {self.model!r} (no --store) "
                            f"needs a token budget: give --tokens")
        if stream and self.hook is None and self.clt_layers is None:
            raise DataError(f"give --hook: the hook of {self.model!r} to read (no --store)")
        if self.tokens is not None and not stream:
            raise DataError("--tokens is the budget of training from --model's forward passes "
                            "without --store; " + ("a store's rows are its own" if self.store
                            else f"the {self.objective} objective runs for --steps"))
        if stream and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                       or self.tokens <= 0):
            raise DataError(f"--tokens must be a positive integer, got {self.tokens!r}")

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

    def __init__(self, device: str = "cpu") -> None:
        w = world(device)  # gloo for CPU tensors (even where CUDA is), nccl for GPU ones
        self.world, self.rank = w.size, w.rank
        self.device = torch.device(rank_device(device, w))
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


class StoreObjective:
    """Reconstruct stored activations (objective "store"): the SAE's own hook; for a
    transcoder (``hook_out``) the output hook's rows from the input hook's same rows; for a
    cross-layer transcoder (``clt_layers``) every layer's MLP output from every layer's MLP
    input, rows stacked as (B, n_layers, d)."""

    def __init__(self, cfg: TrainConfig, ddp: _Dist):
        self.cfg, self.ddp = cfg, ddp
        # a harvested store, or none: a stream of the model's forward passes, read alike
        self.store = open_store(cfg.store) if cfg.store else open_stream(cfg, ddp.device)
        if cfg.clt_layers is not None:
            self.hooks_in, self.hooks_out = clt_store_hooks(self.store, cfg.clt_layers)
        else:
            self.hooks_in = [self.store.resolve_hook(cfg.hook)]
            self.hooks_out = ([] if cfg.hook_out is None
                              else [self.store.resolve_hook(cfg.hook_out)])
        self.hook = self.hooks_in[0]
        self.hook_out = self.hooks_out[0] if cfg.hook_out is not None else None
        self.d_in = self.store.d_in(self.hook)
        self.d_out = self.store.d_in(self.hooks_out[0]) if self.hooks_out else None
        # the hooks each batch holds: (x,) for an SAE, (x, y) for a transcoder, every
        # input then every output for a CLT
        self.hooks = self.hooks_in + self.hooks_out
        self.n_train = self.store.n_rows - cfg.eval_rows
        if self.n_train < cfg.batch_size:
            raise DataError(f"the store has {self.store.n_rows:,} rows: too few for batches of "
                            f"{cfg.batch_size} after holding out {cfg.eval_rows} for evaluation")
        self.default_steps = self.n_train // cfg.batch_size
        m = self.store.manifest
        self.metadata = {"model_name": m.get("model"),
                         "model_digest": (m.get("model_meta") or {}).get("digest"),
                         "hook_name": self.hook,
                         "context_size": self.store.n_ctx, "prepend_bos": True,
                         "dataset_path": json.dumps(m.get("source")), "store": str(self.store.path)}
        if self.hook_out is not None:
            self.metadata["hook_name_out"] = self.hook_out
        if cfg.clt_layers is not None:
            self.metadata.update(hook_names=self.hooks_in, hook_names_out=self.hooks_out,
                                 layers=list(cfg.clt_layers))

    @property
    def clt(self) -> bool:
        return self.cfg.clt_layers is not None

    def identity(self) -> dict:
        """What the data is (not where it lies): a resumed run must read the same rows."""
        m = self.store.manifest
        keys = ("model", "model_meta", "source", "dtype", "n_ctx", "positions", "shards")
        out = {"store": str(self.store.path), "hook": self.hook, "hook_out": self.hook_out,
               "d_in": self.d_in, "d_out": self.d_out, "n_rows": self.store.n_rows,
               "digest": _digest({k: m.get(k) for k in keys})}
        if self.clt:
            out["hooks"] = self.hooks
        if "stream" in m:  # a stream's layout: its buffers and held-out contexts
            out["stream"] = m["stream"]
        return out

    def init_sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) at the same sampled rows: y is x for an SAE, the output hook's rows for a
        transcoder, (N, n, d) stacks of every layer for a CLT."""
        # a stream computes rows a buffer at a time: sample its first (a store: any row)
        rows = _init_rows(min(self.n_train, getattr(self.store, "buffer_rows", self.n_train)),
                          self.cfg.init_sample_rows, self.cfg.seed)
        return self._pair([self.store.read(rows, h) for h in self.hooks])

    def _pair(self, parts) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch's (x, y) from its hooks' tensors, in the order of ``self.hooks``."""
        if isinstance(parts, torch.Tensor):
            return parts, parts
        if self.clt:
            n = len(self.hooks_in)
            return torch.stack(list(parts[:n]), 1), torch.stack(list(parts[n:]), 1)
        return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])

    def batches(self, start: int):
        hook = self.hook if len(self.hooks) == 1 else self.hooks
        return self.store.batches(self.cfg.batch_size, hook, seed=self.cfg.seed,
                                  epochs=None, start_batch=start, drop_last=True,
                                  row_range=(0, self.n_train),
                                  part=(self.ddp.rank, self.ddp.world))

    def loss(self, sae, batch, step, dead, gen, scale, scale_out=None):
        """(loss, forward, terms, target): the target is the normalized y the SAE fits."""
        device = self.ddp.device
        x, y = self._pair(batch)
        same = y is x  # an SAE: its target is its input
        x = x.to(device, non_blocking=True) * scale
        y = x if same else y.to(device, non_blocking=True) * scale_out
        loss, fwd, terms = sae.loss(x, step=step, dead=dead, generator=gen, y=y)
        return loss, fwd, terms, y

    def evaluate(self, sae, scale, k=None, scale_out=None) -> dict:
        hook = self.hook if len(self.hooks) == 1 else self.hooks
        batches = self.store.batches(4096, hook, shuffle=False,
                                     row_range=(self.n_train, self.store.n_rows))
        if self.clt:
            return clt_metrics(sae, (self._pair(b) for b in batches), scale, scale_out)
        return reconstruction_metrics(sae, batches, scale=scale, k=k, scale_out=scale_out)


def clt_store_hooks(store, layers) -> tuple[list[str], list[str]]:
    """The input and output hooks of a CLT over ``layers`` in ``store``; a missing one is
    refused naming every hook the store lacks."""
    ios = [mlp_io_hooks(L) for L in layers]
    missing = [h for io in ios for h in io if h not in store.hooks]
    if missing:
        raise DataError(f"the store {store.path} lacks {', '.join(missing)}: a cross-layer "
                        f"transcoder over layers {list(layers)} needs each layer's MLP input "
                        f"and output (harvest them with --hook for each)")
    return [i for i, _ in ios], [o for _, o in ios]


class EndToEndObjective:
    """Braun et al. (objectives "e2e", "e2e+ds"): the SAE is spliced into the model, which
    runs on; the loss is KL(clean || spliced) per token plus the SAE's sparsity term (L1
    for relu; topk needs none), and for e2e+ds the downstream residual streams'
    reconstruction errors."""

    def __init__(self, cfg: TrainConfig, ddp: _Dist):
        if not cfg.model or not cfg.hook:
            raise DataError("an end-to-end SAE trains from tokens: give --model and --hook")
        self.cfg, self.ddp = cfg, ddp
        self.model = load(cfg.model, device=ddp.device).requires_grad_(False)
        self.device = ddp.device
        validate_hooks(self.model, [cfg.hook])
        self.hook = cfg.hook
        self.n_ctx = default_n_ctx(self.model, cfg.n_ctx)
        self.spec = cfg.source or default_source(cfg.model)
        self.source = lambda: make_source(self.spec, model=self.model)
        check_fits(self.source(), self.model, self.n_ctx, label=cfg.model)
        # units flattened (attn.hook_z: n_heads * d_head), as splice_hook reads them
        self.d_in = hook_widths(self.model, [self.hook])[self.hook]
        self.d_out = None  # an SAE at the hook
        self.contexts = max(ddp.world, cfg.batch_size // (self.n_ctx - 1))
        if self.contexts % ddp.world:
            raise DataError(f"{self.contexts} contexts per step do not split over "
                            f"{ddp.world} processes")
        layer = layer_of(self.hook)
        layer = -1 if layer is None else layer
        self.downstream = ([f"blocks.{i}.hook_resid_post"
                            for i in range(layer + 1, self.model.cfg.n_layers)]
                           if cfg.objective == "e2e+ds" else [])
        self.default_steps = 1000
        self.metadata = {"model_name": cfg.model, "model_digest": model_digest(self.model),
                         "hook_name": self.hook,
                         "context_size": self.n_ctx, "prepend_bos": True,
                         "dataset_path": self.spec, "training": cfg.objective}

    def identity(self) -> dict:
        return {"model": self.cfg.model, "model_digest": self.metadata["model_digest"],
                "source": self.spec, "hook": self.hook, "n_ctx": self.n_ctx}

    def _token_batches(self, contexts: int, skip_contexts: int = 0):
        """Endless (contexts, n_ctx) batches after the first ``skip_contexts`` contexts
        (the evaluation ones), starting the source over when it runs out."""
        while True:
            it = token_batches(self.source(), self.n_ctx, contexts)
            skipped = 0
            for b in it:
                if skipped < skip_contexts:
                    skipped += b.shape[0]
                    continue
                if b.shape[0] == contexts:
                    yield b.to(self.device)

    def _training_batches(self):
        """Batches of ``self.contexts`` after the evaluation contexts, drawn from windows of
        ``E2E_SHUFFLE_TOKENS`` tokens (or the run's, if fewer), each permuted by (seed, pass,
        window): a source read in file order (pycode's corpus) would otherwise give batches
        of one file each, and training drifts from file to file. A resumed run draws the
        same order."""
        contexts = self.contexts
        run_tokens = (self.cfg.steps or self.default_steps) * contexts * self.n_ctx
        window = max(1, min(E2E_SHUFFLE_TOKENS, run_tokens) // (self.n_ctx * contexts))
        for n_pass in itertools.count():
            it = self._token_batches(contexts, self.cfg.eval_contexts)
            for n_window in itertools.count():
                rows = list(itertools.islice(it, window))
                if not rows:
                    break
                rows = torch.cat(rows)
                perm = np.random.default_rng([self.cfg.seed, n_pass, n_window]).permutation(
                    rows.shape[0])
                yield from rows[torch.from_numpy(perm).to(rows.device)].split(contexts)
                if len(rows) < window * contexts:  # the source ran out: start it over
                    break

    def init_sample(self) -> torch.Tensor:
        per_batch = self.contexts * (self.n_ctx - 1)
        toks = torch.cat(list(itertools.islice(
            self._training_batches(), -(-self.cfg.init_sample_rows // per_batch))))
        with torch.no_grad():
            _, cache = self.model.run_with_cache(toks, names_filter=[self.hook])
        x = cache[self.hook][:, 1:].reshape(-1, self.d_in)
        return x, x

    def batches(self, start: int):
        it = self._training_batches()
        for _ in range(start):
            next(it)
        local = self.contexts // self.ddp.world
        for b in it:
            yield b[self.ddp.rank * local:(self.ddp.rank + 1) * local]

    def loss(self, sae, tokens, step, dead, gen, scale, scale_out=None):
        names = [self.hook] + self.downstream
        with torch.no_grad():
            clean, cache = self.model.run_with_cache(tokens, names_filter=names)
        keep: dict = {}
        fwd_hooks = [(self.hook, splice_hook(sae, scale, keep))]
        spliced_acts: dict = {}
        for name in self.downstream:
            fwd_hooks.append((name, lambda act, hook: spliced_acts.__setitem__(hook.name, act)))
        spliced = self.model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
        kl = kl_per_token(clean, spliced).mean()
        fwd = keep["out"]
        terms = {"kl": kl, **sae.sparsity_terms(fwd)}
        for name in self.downstream:
            ref = cache[name]
            terms[f"ds_{name}"] = self.cfg.ds_coeff * (
                (spliced_acts[name] - ref).square().sum(-1).mean()
                / ref.square().sum(-1).mean().clamp_min(1e-12))
        loss = sum(terms.values())
        x = cache[self.hook].reshape(-1, self.d_in) * scale
        return loss, fwd, {k: float(v.detach()) for k, v in terms.items()}, x

    def evaluate(self, sae, scale, k=None, scale_out=None) -> dict:
        toks = next(self._token_batches(self.cfg.eval_contexts))
        chunks = list(toks.split(16))
        res = spliced_metrics(self.model, sae, self.hook, chunks, scale=scale)
        with torch.no_grad():
            acts = torch.cat([self.model.run_with_cache(c, names_filter=[self.hook])[1][self.hook]
                              [:, 1:].reshape(-1, self.d_in) for c in chunks])
        res.update(reconstruction_metrics(sae, acts.split(4096), scale=scale, k=k))
        return res


def encoder_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "bfloat16"):
        raise unknown("encoder dtype", name, ["float32", "bfloat16"])
    return getattr(torch, name)


class SAEAdam(torch.optim.Adam):
    """torch's Adam (same arithmetic, state and checkpoints) with each parameter's update in
    one fused pass (``kernels.adam``), and the SAE's unit-norm decoder constraint folded
    into that pass: the gradient along each decoder row is projected out before the update
    and the row renormalised after it (what ``remove_parallel_grad`` and
    ``normalize_decoder`` do around a plain optimizer).
    """

    def __init__(self, sae: SparseAutoencoder | CrossLayerTranscoder, lr: float,
                 betas: tuple[float, float], eps: float = 1e-8):
        super().__init__(sae.parameters(), lr=lr, betas=betas, eps=eps)
        self.unit_rows = {id(p) for p in sae.unit_norm_parameters()}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # torch.optim.Adam's state layout, so checkpoints interchange
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                kernels.adam(p, p.grad, state["exp_avg"], state["exp_avg_sq"], lr=group["lr"],
                             betas=group["betas"], eps=group["eps"],
                             step=int(state["step"]), unit_rows=id(p) in self.unit_rows)


def apply_gradients(sae: SparseAutoencoder, opt: torch.optim.Optimizer, loss: torch.Tensor,
                    ddp: "_Dist | None" = None) -> None:
    """One optimizer update: backward, (all-reduce), gradient projection, step, renorm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if ddp is not None:
        ddp.all_reduce_mean_([p.grad for p in sae.parameters() if p.grad is not None])
    if isinstance(opt, SAEAdam):  # projects and renormalises the decoder rows itself
        opt.step()
        return
    sae.remove_parallel_grad()
    opt.step()
    sae.normalize_decoder()


def make_objective(cfg: TrainConfig, ddp: _Dist) -> StoreObjective | EndToEndObjective:
    """The objective ``cfg.objective`` names, with its data opened (or model loaded)."""
    if cfg.objective not in OBJECTIVES:
        raise unknown("training objective", cfg.objective, OBJECTIVES)
    if cfg.objective in END_TO_END:
        return EndToEndObjective(cfg, ddp)
    return StoreObjective(cfg, ddp)


@dataclass
class _Run:
    """A training run between steps: what ``_setup`` built or a checkpoint restored."""

    cfg: TrainConfig
    ddp: _Dist
    objective: StoreObjective | EndToEndObjective
    sae: SparseAutoencoder
    opt: SAEAdam
    sched: torch.optim.lr_scheduler.LambdaLR
    since_fired: torch.Tensor  # (d_sae,) tokens seen since each latent last fired
    settings: dict             # what a checkpoint must match to resume: train_config, data
    steps: int                 # the whole run's length
    start: int = 0             # the first step this process trains
    # the activations' normalisation, E||scale x||^2 = d_in, and the output's (a
    # transcoder's y; an SAE's is ``scale``); a CLT's are (n_layers, 1) tensors
    scale: float | torch.Tensor = 1.0
    scale_out: float | torch.Tensor = 1.0

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


@dataclass
class _StepResult:
    """What one training step computed, for the log."""

    loss: torch.Tensor
    fwd: SAEOutput
    terms: dict                # the loss's terms as floats
    x: torch.Tensor            # (B, d_out) the normalized activations it reconstructed
    #                            (a transcoder's output y; an SAE's input)
    dead: torch.Tensor         # (d_sae,) bool: the latents counted dead at this step


def train_sae(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train (or resume) the SAE described by ``cfg``; returns the final metrics."""
    run = _setup(cfg)
    end = run.steps if cfg.stop_after is None else min(run.steps, run.start + cfg.stop_after)
    # the data from the run's position: a resumed run reads the batches it would have read
    batches = run.objective.batches(run.start)
    log = _Log(run, progress)
    saved = step = run.start
    try:
        for step in range(run.start, end):
            done = _train_step(run, step, next(batches))
            # the log and the periodic held-out evaluation: what the run is doing
            log.after_step(run, step, end, done)
            # a kill loses at most checkpoint_every steps; the last step always saves
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
                if run.ddp.main:
                    _save_checkpoint(run, step + 1)
                    saved = step + 1
                run.ddp.barrier()
    except KeyboardInterrupt:
        log.bar.close()
        raise Interrupted(f"training stopped at step {step} of {run.steps}; the checkpoint in "
                          f"{run.out} is at step {saved}") from None
    log.bar.close()
    if end < run.steps:  # stopped early on request: the checkpoint resumes the run
        log.close()
        return {"stopped_at": end, "steps": run.steps}
    settle_threshold(run, batches)
    return _finish(run, log)


def settle_threshold(run: _Run, batches, n_batches: int = SETTLE_BATCHES) -> None:
    """A batch-top-k inference threshold measured at the final weights: the mean of the
    batch cut-offs over ``n_batches`` more training batches (plain while ``n_batches`` <=
    1/momentum), no update. The running
    average the steps keep spans the last ~1/momentum steps, while the cut-off still drifts
    (it is 3-14% above the final weights' own in 300-600-step runs: an L0 of 12-15 where
    16 was asked)."""
    sae = run.sae
    if not sae.synced_buffers():
        return
    sae.restart_running_statistics_()
    dead = torch.zeros(sae.n_latents, dtype=torch.bool, device=run.ddp.device)
    with torch.no_grad():
        for i in range(n_batches):
            gen = torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + run.steps + i)
            run.objective.loss(sae, next(batches), run.steps, dead, gen, run.scale,
                               run.scale_out)
    run.ddp.all_reduce_mean_(sae.synced_buffers())


def _setup(cfg: TrainConfig) -> _Run:
    """The objective (its data), the SAE, optimizer and schedule; then the state of a
    checkpoint in ``cfg.out``, or a fresh start initialised from a sample of the data."""
    ddp = _Dist(cfg.device)
    out = Path(cfg.out)
    # a finished SAE is never overwritten; one beside a checkpoint is a run to resume
    if (out / "sae_weights.safetensors").exists() and not (out / CHECKPOINT).exists():
        raise DataError(f"{out} already holds a trained SAE; choose another --out or delete it")
    if cfg.batch_size % ddp.world:
        raise DataError(f"batch size {cfg.batch_size} is not divisible by the {ddp.world} "
                        f"processes")
    objective = make_objective(cfg, ddp)
    steps = cfg.steps or objective.default_steps
    # the global RNG is seeded here and restored from a checkpoint: a resumed run draws
    # what an uninterrupted one draws
    torch.manual_seed(cfg.seed)
    sae = make_dictionary(cfg, objective).to(ddp.device)
    sae.encoder_dtype = encoder_dtype(cfg.encoder_dtype)
    if cfg.compile:  # on CPU the sparse kernels leave little to fuse; on a GPU the fallbacks
        sae.loss = torch.compile(sae.loss)
    opt = SAEAdam(sae, lr=cfg.learning_rate(), betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, cfg.warmup_steps, cfg.decay_start))
    run = _Run(cfg, ddp, objective, sae, opt, sched,
               since_fired=torch.zeros(sae.n_latents, dtype=torch.long, device=ddp.device),
               settings={"train_config": resume_settings(cfg, steps),
                         "data": objective.identity()},
               steps=steps)
    if (out / CHECKPOINT).exists():
        _load_checkpoint(run)
    else:
        _initialise(run)
    # the resolved config beside the SAE: what made it
    if ddp.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(
            {**asdict(cfg), "steps": steps, "code_version": code_version(),
             "world_size": ddp.world}, indent=2) + "\n")
    ddp.barrier()
    return run


def make_dictionary(cfg: TrainConfig, objective) -> SparseAutoencoder | CrossLayerTranscoder:
    """The dictionary ``cfg`` trains, at the widths of ``objective``'s data: an SAE or a
    transcoder (one core), or a cross-layer transcoder built of one per layer."""
    if cfg.clt_layers is not None:
        return CrossLayerTranscoder(CLTConfig(cfg.sae_config(objective.d_in), cfg.clt_layers,
                                              objective.d_out, objective.metadata))
    sae_cfg = cfg.sae_config(objective.d_in, objective.d_out)
    sae_cfg.metadata = objective.metadata
    return SparseAutoencoder(sae_cfg)


def _initialise(run: _Run) -> None:
    """A fresh start: the activation scales and b_dec from a sample of the data (b_dec from
    the output's: a transcoder's lives in its output space)."""
    x, y = (t.to(run.ddp.device) for t in run.objective.init_sample())
    run.scale, run.scale_out = run.sae.init_from_sample(x, y)
    run.ddp.all_reduce_mean_([p.data for p in run.sae.parameters()])  # identical on every rank


def _train_step(run: _Run, step: int, batch) -> _StepResult:
    """One optimizer update on this process's share of the global batch."""
    cfg, ddp, sae = run.cfg, run.ddp, run.sae
    # latents silent for a window are dead: AuxK trains them back
    dead = run.since_fired >= cfg.dead_window_tokens
    # a generator per step (matryoshka's sampled prefixes): a resumed run draws the same
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    loss, fwd, terms, x = run.objective.loss(sae, batch, step, dead, gen, run.scale,
                                             run.scale_out)
    apply_gradients(sae, run.opt, loss, ddp)
    run.sched.step()
    if sae.synced_buffers():  # every process keeps the same inference threshold
        ddp.all_reduce_mean_(sae.synced_buffers())
    # a latent fired on any process fired on the global batch
    with torch.no_grad():
        fired = ddp.any_(fwd.fired_counts() > 0)
        run.since_fired += x.shape[0] * ddp.world
        run.since_fired[fired] = 0
    return _StepResult(loss, fwd, terms, x, dead)


class _Log:
    """Where a run reports: ``train_log.jsonl`` (one JSON record a line: train records,
    ``{"step", "eval"}`` records), W&B when asked, and the progress bar. Only the main
    process writes."""

    def __init__(self, run: _Run, progress: bool):
        main = run.ddp.main
        self.file = open(run.out / "train_log.jsonl", "a") if main else None
        self.wandb = _wandb(run.cfg, run.ddp) if run.cfg.wandb_project else None
        self.bar = tqdm(total=run.steps, initial=run.start, desc=f"train {run.cfg.trained_as}",
                        disable=not (progress and main), unit="step")
        self.t0 = time.time()
        self.last: dict = {}  # the latest train record

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()

    def after_step(self, run: _Run, step: int, end: int, done: _StepResult) -> None:
        """A train record every ``log_every`` steps and at ``end``; an evaluation on the
        held-out data every ``eval_every`` steps (the last step's is ``_finish``'s)."""
        cfg = run.cfg
        if run.ddp.main and ((step + 1) % cfg.log_every == 0 or step + 1 == end):
            self._train_record(run, step, done)
        self.bar.update(1)
        if run.ddp.main and (step + 1) % cfg.eval_every == 0 and step + 1 < run.steps:
            ev = run.objective.evaluate(run.sae, run.scale, scale_out=run.scale_out)
            self.write({"step": step + 1, "eval": without_density(ev)})

    def _train_record(self, run: _Run, step: int, done: _StepResult) -> None:
        x, fwd = done.x, done.fwd
        with torch.no_grad():
            err = (fwd.x_hat - x).square().sum()
            var = (x - x.mean(0)).square().sum()
        self.last = {"step": step + 1, "tokens": (step + 1) * x.shape[0] * run.ddp.world,
                     "loss": float(done.loss.detach()), **done.terms,
                     "fvu": float(err / var.clamp_min(1e-12)),
                     "l0": float(fwd.l0().float().mean()),
                     "dead_fraction": float(done.dead.float().mean()),
                     "lr": run.sched.get_last_lr()[0], "elapsed_s": time.time() - self.t0}
        self.write(self.last)
        if self.wandb:
            self.wandb.log(self.last, step=step + 1)
        self.bar.set_postfix(loss=f"{self.last['loss']:.4f}", L0=f"{self.last['l0']:.1f}",
                             FVU=f"{self.last['fvu']:.3f}",
                             dead=f"{100 * self.last['dead_fraction']:.1f}%")


def _finish(run: _Run, log: _Log) -> dict:
    """The whole run is trained: evaluate it, save the SAE (scale folded in) and
    ``metrics.json``, and drop the checkpoint (a finished run does not resume)."""
    result = {}
    if run.ddp.main:
        sae, last = run.sae, log.last
        ev = run.objective.evaluate(sae, run.scale, scale_out=run.scale_out)
        result = {**_dictionary_summary(run), "k": run.cfg.k, "steps": run.steps,
                  "tokens": int(last.get("tokens", 0)) if last else None,
                  "train_seconds": time.time() - log.t0,
                  "activation_scale": _plain(run.scale),
                  "activation_scale_out": _plain(run.scale_out),
                  "eval": ev, "final_train": last}
        if sae.eval_k_grid():  # an any-k SAE: its figures at every k' of the grid
            result["eval_by_k"] = {
                str(kp): without_density(run.objective.evaluate(sae, run.scale, kp,
                                                                 run.scale_out))
                for kp in sae.eval_k_grid()}
        if isinstance(sae, CrossLayerTranscoder):
            save_clt(sae.cpu(), run.out)
        else:
            save_sae(sae.cpu(), run.out)
        (run.out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        log.write({"step": run.steps, "eval": without_density(ev)})
        log.close()
        (run.out / CHECKPOINT).unlink(missing_ok=True)
        if log.wandb:
            log.wandb.finish()
    run.ddp.barrier()
    return result


def _dictionary_summary(run: _Run) -> dict:
    """What was trained, for metrics.json: architecture, widths, hooks."""
    sae = run.sae
    if isinstance(sae, CrossLayerTranscoder):
        md = sae.cfg.metadata
        return {"arch": run.cfg.trained_as, "sae_arch": sae.cfg.layer.arch, "kind": "clt",
                "layers": list(sae.cfg.layers), "d_in": sae.cfg.layer.d_in,
                "d_out": sae.cfg.d_out, "hooks": md.get("hook_names"),
                "hooks_out": md.get("hook_names_out"), "d_sae": sae.cfg.layer.d_sae}
    md = sae.cfg.metadata
    return {"arch": run.cfg.trained_as, "sae_arch": sae.cfg.arch, "d_in": sae.cfg.d_in,
            "d_out": sae.cfg.out_dim, "hook": md.get("hook_name"),
            "hook_out": md.get("hook_name_out"), "d_sae": sae.cfg.d_sae}


def _plain(scale: float | torch.Tensor) -> float | list[float]:
    """A scale as JSON: a float, or a CLT's list of per-layer floats."""
    return scale.flatten().tolist() if isinstance(scale, torch.Tensor) else scale


def _init_rows(n_train: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=g)[: min(n, n_train)].sort().values.numpy()


def open_stream(cfg: TrainConfig, device) -> ActivationStream:
    """The rows of a run without a store: ``cfg.model``'s activations at the dictionary's
    hooks over ``cfg.tokens`` training tokens, plus ``cfg.eval_rows`` held-out rows."""
    hooks = ([h for layer in cfg.clt_layers for h in mlp_io_hooks(layer)]
             if cfg.clt_layers is not None else
             [h for h in (cfg.hook, cfg.hook_out) if h is not None])
    return ActivationStream(cfg.model, hooks, cfg.tokens, source=cfg.source, n_ctx=cfg.n_ctx,
                            eval_rows=cfg.eval_rows, device=str(device))


def resume_settings(cfg: TrainConfig, steps: int) -> dict:
    """Every setting that changes what is trained (``steps`` resolved): a checkpoint
    resumes only under the same ones."""
    out = {k: v for k, v in asdict(cfg).items() if k not in RUN_CONTROL}
    out["steps"] = steps
    return json.loads(json.dumps(out))  # tuples as lists, as they come back from disk


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def truncate_log(path: Path, step: int) -> None:
    """Drop the log records after ``step`` (written after the checkpoint a run resumes
    from), so that no step appears twice."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "sae_options":
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key} {a!r} -> {b!r}")
    return diffs


def _save_checkpoint(run: _Run, step: int) -> None:
    path = run.out / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "arch": run.settings["train_config"]["arch"], **run.settings,
                "sae_config": run.sae.cfg.to_dict(),
                "sae": run.sae.state_dict(), "optimizer": run.opt.state_dict(),
                "scheduler": run.sched.state_dict(), "since_fired": run.since_fired,
                "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(run: _Run) -> None:
    """Resume ``run`` from its checkpoint, after checking that the checkpoint was made
    with the same settings, data and SAE config."""
    path = run.out / CHECKPOINT
    state = _read_checkpoint(path, run.ddp.device)
    _check_checkpoint(path, state, run)
    run.sae.load_state_dict(state["sae"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.since_fired.copy_(state["since_fired"])
    torch.set_rng_state(state["torch_rng"])
    run.start = int(state["step"])
    run.scale = run.sae.input_scale
    run.scale_out = run.sae.output_scale
    if run.ddp.main:
        truncate_log(run.out / "train_log.jsonl", run.start)


def _read_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # pickle and zip errors of a truncated file
        raise CorruptArtifactError(f"checkpoint {path} is corrupt or truncated ({e}); delete "
                                   f"it to start over") from e
    if not isinstance(state, dict) or "sae" not in state:
        raise CorruptArtifactError(f"{path} is not an interp training checkpoint; delete it "
                                   f"or use another --out")
    return _with_objective(state)


def _with_objective(state: dict) -> dict:
    """A checkpoint from before training objectives (end-to-end runs named by ``arch``
    "e2e" / "e2e+ds" with an ``e2e_act``; no ``objective``) in today's form."""
    tc = state.get("train_config")
    if tc is None or "objective" in tc:
        return state
    tc = dict(tc)
    tc["objective"], tc["arch"] = objective_and_arch(tc["arch"], tc.pop("e2e_act", DEFAULT_ARCH))
    return {**state, "train_config": tc, "arch": tc["arch"]}


def _check_checkpoint(path: Path, state: dict, run: _Run) -> None:
    """Refuse a checkpoint of another architecture, settings, data or SAE config."""
    if state.get("arch") != run.cfg.arch:
        raise DataError(f"checkpoint {path} is from a {state.get('arch')!r} SAE, not "
                        f"{run.cfg.arch!r}; use another --out or the same --arch")
    if "train_config" in state:  # checkpoints before this check lack it
        diffs = _differences({k: state[k] for k in run.settings}, run.settings)
        data = [d for d in diffs if d.startswith("data.")]
        if data and not [d for d in data if not d.startswith("data.store ")]:
            diffs = [d for d in diffs if not d.startswith("data.store ")]  # moved, same data
        if diffs:
            raise MismatchError(f"checkpoint {path} was made with other settings "
                                f"({'; '.join(diffs)}); rerun with the checkpoint's settings, "
                                f"or use another --out to start a new run")
    theirs = {k: v for k, v in state["sae_config"].items() if k != "metadata"}
    ours = {k: v for k, v in run.sae.cfg.to_dict().items() if k != "metadata"}
    if theirs != ours:
        diff = sorted(k for k in ours if theirs.get(k) != ours[k])
        raise DataError(f"checkpoint {path} was made with different SAE settings ({diff}); "
                        f"use the same settings or another --out")


def _wandb(cfg: TrainConfig, ddp: _Dist):
    if not ddp.main:
        return None
    try:
        import wandb
    except ImportError:
        log.warning("note: --wandb-project given but wandb is not installed; logging to JSONL only")
        return None
    wandb.init(project=cfg.wandb_project, config=asdict(cfg), name=Path(cfg.out).name)
    return wandb
