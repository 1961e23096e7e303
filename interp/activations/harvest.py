"""Harvest activations at TransformerLens hook points into an ActivationStore.

The model runs only up to the last block that a requested hook needs
(``stop_at_layer``), under ``torch.inference_mode``, with the hooks attached once for the
whole run; a hook keeps a view of the positions to store and the writer copies it once,
straight into a memory-mapped shard. Token batches are generated one step ahead in a
background thread, so the harvest costs little more than the forward pass itself
(``benchmarks/harvest.py``).

Before the store is created (nothing is written when a check refuses): the config's numbers
(``HarvestConfig.validate``), the device (``distributed.check_device``), then, with the
model loaded, the hooks, the context length and the token source against the model
(``sources.check_fits``: the source's own model, the first context's ids in the vocabulary).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

# open_store: the harvest's reader, importable beside it
from interp.activations.store import open_store  # noqa: F401
from interp.activations.store import DTYPES, STORE_SUBDIR, ActivationStore, StoreWriter, store_path
from interp.data.sources import default_source  # noqa: F401  (re-exported: its old home)
from interp.errors import DataError, Interrupted, unknown
from interp.hooks import default_n_ctx, flat_units, hook_widths, stop_layer, validate_hooks
from interp.version import code_version

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout


@dataclass
class HarvestConfig:
    model: str
    hooks: list[str]
    n_tokens: int
    out: str
    source: str | None = None      # None: the model's own corpus (othello / pycode)
    n_ctx: int | None = None       # None: the model's n_ctx, at most 128
    batch_size: int = 32           # contexts per forward pass
    dtype: str = "float32"
    skip_bos: bool = True          # drop position 0 (the BOS / attention-sink position)
    shard_rows: int = 2**18
    device: str = "cpu"
    source_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        """The settings that need no model: counts, sizes, dtype, hooks named once."""
        if not self.hooks:
            raise DataError("give at least one --hook")
        twice = sorted({h for h in self.hooks if self.hooks.count(h) > 1})
        if twice:
            raise DataError(f"--hook {twice[0]} is given more than once; name each hook once")
        for flag, value in (("--tokens", self.n_tokens), ("--batch-size", self.batch_size),
                            ("--shard-rows", self.shard_rows)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise DataError(f"{flag} must be a positive integer, got {value!r}")
        if self.n_ctx is not None and (not isinstance(self.n_ctx, int) or self.n_ctx < 2):
            raise DataError(f"--n-ctx must be at least 2 (BOS and one token), got {self.n_ctx!r}")
        if self.dtype not in DTYPES:
            raise unknown("--dtype", str(self.dtype), DTYPES)


def harvest(cfg: HarvestConfig, model=None, progress: bool = True) -> ActivationStore:
    """Run the harvest described by ``cfg`` (resuming an interrupted one) and open it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process harvests a contiguous share of
    the contexts into its own part of the same store and rank 0 merges the parts
    (``_harvest_parallel``); the finished store is the one a single process would write.
    """
    from interp.distributed import check_device, rank_device, world

    cfg.validate()
    check_device(cfg.device)
    w = world(cfg.device)
    device = rank_device(cfg.device, w)
    plan = _Plan.make(cfg, model, device)
    if w.main:
        log.info(plan.size_note(store_path(cfg.out)))
    if w.distributed:
        return _harvest_parallel(cfg, plan, w, progress)
    path = store_path(cfg.out)
    writer = StoreWriter(path, plan.widths, plan.n_ctx, plan.positions, cfg.dtype,
                         cfg.shard_rows, plan.meta, expected_contexts=plan.n_contexts)
    if writer.contexts_done:
        log.info(f"resuming the harvest in {path} after {writer.contexts_done} contexts")
    _harvest_range(plan, writer, 0, plan.n_contexts, progress, desc="harvest")
    if writer.contexts_written == 0:
        raise DataError(f"empty dataset: the token source {plan.source.describe()} gave no "
                        f"context of {plan.n_ctx} tokens")
    if writer.contexts_written < plan.n_contexts:
        log.warning(f"note: the source ran out after {writer.contexts_written} contexts "
              f"({plan.n_contexts} requested)")
    writer.close()
    _update_run_json(Path(cfg.out), path, cfg, plan.source.describe())
    return ActivationStore(path)


def harvest_plan(cfg: HarvestConfig, model=None, device: str = "cpu") -> "_Plan":
    """The harvest's checks and shapes without writing anything: the model loaded and
    checked against the hooks, context length and source; the kept positions, the hooks'
    widths, the context count. An activation stream (``stream.py``) reads by this plan, so
    it yields the rows a harvest of the same settings would store."""
    cfg.validate()
    return _Plan.make(cfg, model, device)


@dataclass
class _Plan:
    """What a harvest needs once the model is loaded: source, shapes, context count."""
    cfg: HarvestConfig
    model: object
    source: object
    n_ctx: int
    positions: list[int]
    widths: dict[str, int]
    n_contexts: int
    meta: dict

    def size_note(self, path: Path) -> str:
        """What the finished store will hold, said before the harvest starts."""
        rows = self.n_contexts * len(self.positions)
        itemsize = np.dtype(DTYPES[self.cfg.dtype][0]).itemsize
        nbytes = rows * sum(self.widths.values()) * itemsize + self.n_contexts * self.n_ctx * 4
        widths = ", ".join(f"{h} ({d})" for h, d in self.widths.items())
        size = f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
        return f"store {path}: {rows:,} rows x {widths}, {self.cfg.dtype}: {size} when complete"

    @classmethod
    def make(cls, cfg: HarvestConfig, model, device: str) -> "_Plan":
        from interp.data.sources import check_fits, make_source, model_name
        from interp.models import load

        model = model if model is not None else load(cfg.model, device=device)
        validate_hooks(model, cfg.hooks)
        n_ctx = default_n_ctx(model, cfg.n_ctx)
        if not 2 <= n_ctx <= model.cfg.n_ctx:
            raise DataError(f"--n-ctx {n_ctx} does not fit the model {cfg.model!r}: valid "
                            f"2..{model.cfg.n_ctx} (its context length)")
        # by the model's own name: a folder holding an embedded model finds its corpus too
        spec = cfg.source or default_source(model_name(model))
        source = make_source(spec, model=model, **cfg.source_kwargs)
        check_fits(source, model, n_ctx, label=cfg.model)  # before the store exists
        positions = list(range(1 if cfg.skip_bos else 0, n_ctx))
        widths = hook_widths(model, cfg.hooks, n_ctx)
        n_contexts = math.ceil(cfg.n_tokens / len(positions))
        meta = {"model": cfg.model, "model_meta": model_meta(model),
                "source": source.describe(), "n_contexts_requested": n_contexts,
                "harvest_config": asdict(cfg)}
        meta["harvest_config"].pop("out")
        return cls(cfg, model, source, n_ctx, positions, widths, n_contexts, meta)


def _harvest_range(plan: _Plan, writer: StoreWriter, start: int, stop: int,
                   progress: bool, desc: str) -> None:
    """Contexts ``start`` .. ``stop - 1`` of the source through the model into ``writer``,
    skipping those the writer already holds (a resumed harvest)."""
    from interp.data.sources import check_token_ids, contexts_range, prefetch

    cfg, model, positions = plan.cfg, plan.model, plan.positions
    done = writer.contexts_done
    first = start + done
    stop_at = stop_layer(cfg.hooks, model.cfg.n_layers)
    captured: dict[str, torch.Tensor] = {}
    # a view, not a copy, when the kept positions are contiguous (the usual all-but-BOS):
    # the writer's copy into the shard is then the only one
    contiguous = positions == list(range(positions[0], positions[-1] + 1))
    pos_index = torch.tensor(positions, device=model.cfg.device)

    def capture(act, hook):
        a = act[:, positions[0]:positions[-1] + 1] if contiguous else act.index_select(1, pos_index)
        captured[hook.name] = flat_units(a)  # the store's layout: units flattened

    def token_batches():
        it = contexts_range(plan.source, plan.n_ctx, first, stop)
        while chunk := list(itertools.islice(it, cfg.batch_size)):
            batch = np.stack(chunk)
            check_token_ids(batch, model, plan.source, cfg.model)  # not only the first's
            yield torch.from_numpy(batch)

    bar = tqdm(total=(stop - start) * len(positions), initial=done * len(positions),
               unit="tok", unit_scale=True, desc=desc, disable=not progress)
    try:
        with torch.inference_mode(), model.hooks(fwd_hooks=[(h, capture) for h in cfg.hooks]):
            for tokens in prefetch(token_batches()) if first < stop else ():
                model(tokens.to(model.cfg.device), stop_at_layer=stop_at)
                writer.add(tokens, captured)
                bar.update(tokens.shape[0] * len(positions))
    except KeyboardInterrupt:
        raise Interrupted(f"the harvest in {writer.path} stopped with {writer.contexts_done} "
                          f"contexts saved") from None
    finally:
        bar.close()


def _fingerprint(plan: _Plan) -> dict:
    """The settings every rank of a parallel harvest must share (not the output path:
    nodes may mount the shared folder at different paths; nor the device)."""
    hc = {k: v for k, v in plan.meta["harvest_config"].items() if k != "device"}
    return {**hc, "source": plan.source.describe(),
            "n_contexts": plan.n_contexts, "hook_widths": plan.widths,
            "model_meta": plan.meta["model_meta"]}


def _check_same_settings(prints: list[dict]) -> None:
    diffs = []
    for key in prints[0]:
        values = [p.get(key) for p in prints]
        if any(v != values[0] for v in values[1:]):
            diffs.append(f"{key}: " + ", ".join(f"rank {r} has {v!r}"
                                                for r, v in enumerate(values)))
    if diffs:
        raise DataError("the processes of this parallel harvest were given different "
                        "settings; every rank must run the same command:\n  "
                        + "\n  ".join(diffs))


def _prepare_parallel(path: Path, plan: _Plan, world_size: int, nonce: str) -> None:
    """Rank 0: start (or take up again) a parallel harvest in ``path``; its manifest says
    so (readers refuse the store until the merge) and records the settings to resume."""
    from interp.activations.store import (MANIFEST, atomic_write_json, parallel_world,
                                          read_manifest)

    mpath = path / MANIFEST
    cfg_now = {k: v for k, v in plan.meta["harvest_config"].items() if k != "device"}
    if mpath.exists():
        old = read_manifest(mpath)
        if old.get("complete"):
            raise DataError(f"{path} already holds a complete store; choose another --out or "
                            f"delete it")
        n = parallel_world(old, mpath)
        if n is None:
            raise DataError(f"{path} holds an unfinished single-process harvest; resume it with "
                            f"the same command without torchrun, or delete it")
        if n != world_size:
            raise DataError(f"{path} holds an unfinished harvest over {n} "
                            f"processes; resume it with {n} processes (this "
                            f"run has {world_size}), or delete it")
        old_cfg = {k: v for k, v in old.get("harvest_config", {}).items() if k != "device"}
        diff = sorted(k for k in set(old_cfg) | set(cfg_now) if old_cfg.get(k) != cfg_now.get(k))
        if old.get("n_contexts_requested") != plan.n_contexts:
            diff.append("n_contexts_requested")
        if diff:
            raise DataError(f"cannot resume the unfinished parallel harvest at {path}: its "
                            f"{', '.join(diff)} differ from this run's; use the same settings "
                            f"or delete it")
        log.info(f"resuming the parallel harvest in {path}")
    path.mkdir(parents=True, exist_ok=True)
    stub = {"format_version": 1, "complete": False, "shards": [],
            "parallel": {"world_size": world_size, "nonce": nonce}, **plan.meta}
    atomic_write_json(mpath, stub)


def _check_shared(path: Path, nonce: str, rank: int) -> None:
    from interp.activations.store import MANIFEST
    from interp.distributed import host

    try:
        seen = json.loads((path / MANIFEST).read_text())["parallel"]["nonce"]
    except (OSError, ValueError, KeyError, TypeError):
        seen = None
    if seen != nonce:
        raise DataError(f"rank {rank} (host {host()}) does not see the store rank 0 just "
                        f"started at {path}: --out must be a folder on a file system that "
                        f"every node shares")


def _harvest_parallel(cfg: HarvestConfig, plan: _Plan, w, progress: bool) -> ActivationStore:
    """One contiguous share of the contexts per rank, each into its own part of the store;
    rank 0 merges the parts after every rank has finished (see ``store.merge_parts``)."""
    import uuid

    from interp.activations.store import merge_parts

    _check_same_settings(w.gather(_fingerprint(plan)))  # the same list on every rank
    path = store_path(cfg.out)
    nonce = w.gather(uuid.uuid4().hex)[0]
    w.collective(lambda: _prepare_parallel(path, plan, w.size, nonce), ranks="main")
    w.collective(lambda: _check_shared(path, nonce, w.rank))
    n = plan.n_contexts
    start, stop = n * w.rank // w.size, n * (w.rank + 1) // w.size

    def work() -> int:
        part = {"rank": w.rank, "world_size": w.size, "context_start": start,
                "context_stop": stop}
        writer = StoreWriter(path, plan.widths, plan.n_ctx, plan.positions, cfg.dtype,
                             cfg.shard_rows, plan.meta, expected_contexts=max(1, stop - start),
                             part=part)
        if writer.contexts_done:
            log.info(f"rank {w.rank}: resuming after {writer.contexts_done} contexts")
        _harvest_range(plan, writer, start, stop, progress and w.main,
                       desc=f"harvest (rank 0 of {w.size}, its share)")
        writer.close()
        return writer.contexts_done

    written = w.gather(w.collective(work))
    total = sum(written)
    if w.main and total < n:
        log.warning(f"note: the source ran out after {total} contexts ({n} requested)")
    w.collective(lambda: merge_parts(path, w.size), ranks="main")
    if w.main:
        _update_run_json(Path(cfg.out), path, cfg, plan.source.describe())
    w.barrier()
    return ActivationStore(path)


def model_meta(model) -> dict:
    meta = dict(getattr(model, "interp_meta", {}) or {})
    keep = {"name", "source", "description", "corpus", "train_steps"}
    out = {k: v for k, v in meta.items() if k in keep}
    out.update(n_layers=model.cfg.n_layers, d_model=model.cfg.d_model,
               d_vocab=model.cfg.d_vocab, n_ctx=model.cfg.n_ctx)
    from interp.provenance import model_digest

    out["digest"] = model_digest(model)  # SAEs trained on the store record it
    return out


def _update_run_json(run_dir: Path, path: Path, cfg: HarvestConfig, source: dict) -> None:
    if path.parent != run_dir:
        return  # a bare store, not inside a run folder
    run_json = run_dir / "run.json"
    run = json.loads(run_json.read_text()) if run_json.exists() else {}
    run.update(model=cfg.model, hooks=cfg.hooks, dataset=source, code_version=code_version())
    run.setdefault("artifacts", {})["activations"] = STORE_SUBDIR
    run_json.write_text(json.dumps(run, indent=2) + "\n")
