"""Harvest activations at TransformerLens hook points into an ActivationStore.

The model runs only up to the last block that a requested hook needs
(``stop_at_layer``), under ``torch.inference_mode``, with the hooks attached once for the
whole run; a hook keeps a view of the positions to store and the writer copies it once,
straight into a memory-mapped shard. Token batches are generated one step ahead in a
background thread, so the harvest costs little more than the forward pass itself
(``benchmarks/harvest.py``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.activations.store import ActivationStore, StoreWriter
from interp.errors import DataError, unknown
from interp.version import code_version

STORE_SUBDIR = "activations"
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


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
        if not self.hooks:
            raise DataError("give at least one --hook")
        if self.n_tokens <= 0:
            raise DataError(f"--tokens must be positive, got {self.n_tokens}")
        if self.batch_size <= 0:
            raise DataError(f"--batch-size must be positive, got {self.batch_size}")


def default_source(model_name: str) -> str:
    if model_name in ("othello", "pycode"):
        return model_name
    raise DataError(f"name a token source for {model_name!r} with --source (an HF dataset "
                    f"as hf:NAME, or a local .txt/.jsonl/.parquet file)")


def stop_layer(hooks: list[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still runs every hook (None: the whole model)."""
    last = -1
    for h in hooks:
        m = _BLOCK.match(h)
        if m:
            last = max(last, int(m.group(1)))
        elif h in ("hook_embed", "hook_pos_embed", "hook_tokens"):
            continue
        else:
            return None  # ln_final, unembed: needs the full model
    return last + 1  # n_layers is fine too: every block runs, the unembedding does not


def validate_hooks(model, hooks: list[str]) -> None:
    for h in hooks:
        if h not in model.hook_dict:
            raise unknown("hook", h, list(model.hook_dict))


def probe_hook_widths(model, hooks: list[str], n_ctx: int) -> dict[str, int]:
    """d_in of each hook (trailing dims flattened), from a one-context dry run."""
    widths: dict[str, int] = {}

    def grab(act, hook):
        if act.dim() < 3 or act.shape[1] != n_ctx:
            raise DataError(f"hook {hook.name!r} gives shape {tuple(act.shape)}, which is not "
                            f"(batch, position, ...); harvest position-indexed hooks such as "
                            f"resid_pre/post, mlp_out, attn_out, mlp.hook_post or attn.hook_z")
        widths[hook.name] = int(math.prod(act.shape[2:]))

    tokens = torch.zeros(1, n_ctx, dtype=torch.long, device=model.cfg.device)
    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(h, grab) for h in hooks],
                             stop_at_layer=stop_layer(hooks, model.cfg.n_layers))
    return widths


def store_path(out: str | Path) -> Path:
    """A run folder holds its store in ``activations/``; a store folder is itself."""
    out = Path(out)
    if (out / "manifest.json").exists():
        return out
    return out / STORE_SUBDIR


def open_store(path: str | Path) -> ActivationStore:
    return ActivationStore(store_path(path))


def harvest(cfg: HarvestConfig, model=None, progress: bool = True) -> ActivationStore:
    """Run the harvest described by ``cfg`` (resuming an interrupted one) and open it."""
    from interp.data.sources import make_source
    from interp.models import load

    cfg.validate()
    model = model if model is not None else load(cfg.model, device=cfg.device)
    validate_hooks(model, cfg.hooks)
    n_ctx = cfg.n_ctx or min(model.cfg.n_ctx, 128)
    if n_ctx > model.cfg.n_ctx or n_ctx < 2:
        raise DataError(f"n_ctx {n_ctx} must lie in [2, {model.cfg.n_ctx}] for this model")
    source = make_source(cfg.source or default_source(cfg.model), model=model,
                         **cfg.source_kwargs)
    positions = list(range(1 if cfg.skip_bos else 0, n_ctx))
    widths = probe_hook_widths(model, cfg.hooks, n_ctx)
    n_contexts = math.ceil(cfg.n_tokens / len(positions))
    run_dir = Path(cfg.out)
    path = store_path(run_dir)
    meta = {"model": cfg.model, "model_meta": _model_meta(model), "source": source.describe(),
            "n_contexts_requested": n_contexts, "harvest_config": asdict(cfg)}
    meta["harvest_config"].pop("out")
    writer = StoreWriter(path, widths, n_ctx, positions, cfg.dtype, cfg.shard_rows, meta,
                         expected_contexts=n_contexts)
    done = writer.contexts_done
    if done:
        print(f"resuming the harvest in {path} after {done} contexts")
    stop = stop_layer(cfg.hooks, model.cfg.n_layers)
    captured: dict[str, torch.Tensor] = {}
    # a view, not a copy, when the kept positions are contiguous (the usual all-but-BOS):
    # the writer's copy into the shard is then the only one
    contiguous = positions == list(range(positions[0], positions[-1] + 1))
    pos_index = torch.tensor(positions, device=model.cfg.device)

    def capture(act, hook):
        a = act[:, positions[0]:positions[-1] + 1] if contiguous else act.index_select(1, pos_index)
        captured[hook.name] = a.reshape(a.shape[0], a.shape[1], -1)

    from interp.data.sources import batches as context_batches
    from interp.data.sources import prefetch
    bar = tqdm(total=n_contexts * len(positions), initial=done * len(positions),
               unit="tok", unit_scale=True, desc="harvest", disable=not progress)
    remaining = n_contexts - done
    it = prefetch(context_batches(source, n_ctx, cfg.batch_size, max_contexts=n_contexts))
    skipped = 0
    with torch.inference_mode(), model.hooks(fwd_hooks=[(h, capture) for h in cfg.hooks]):
        for tokens in it:
            if skipped < done:  # resume: the source is deterministic, skip what is stored
                take = min(tokens.shape[0], done - skipped)
                skipped += take
                tokens = tokens[take:]
                if tokens.shape[0] == 0:
                    continue
            if remaining <= 0:
                break
            tokens = tokens[:remaining]
            model(tokens.to(model.cfg.device), stop_at_layer=stop)
            writer.add(tokens, captured)
            remaining -= tokens.shape[0]
            bar.update(tokens.shape[0] * len(positions))
    bar.close()
    if writer.contexts_written < n_contexts:
        print(f"note: the source ran out after {writer.contexts_written} contexts "
              f"({n_contexts} requested)")
    writer.close()
    _update_run_json(run_dir, path, cfg, source.describe())
    return ActivationStore(path)


def _model_meta(model) -> dict:
    meta = dict(getattr(model, "interp_meta", {}) or {})
    keep = {"name", "source", "description", "corpus", "train_steps"}
    out = {k: v for k, v in meta.items() if k in keep}
    out.update(n_layers=model.cfg.n_layers, d_model=model.cfg.d_model,
               d_vocab=model.cfg.d_vocab, n_ctx=model.cfg.n_ctx)
    return out


def _update_run_json(run_dir: Path, path: Path, cfg: HarvestConfig, source: dict) -> None:
    if path.parent != run_dir:
        return  # a bare store, not inside a run folder
    run_json = run_dir / "run.json"
    run = json.loads(run_json.read_text()) if run_json.exists() else {}
    run.update(model=cfg.model, hooks=cfg.hooks, dataset=source, code_version=code_version())
    run.setdefault("artifacts", {})["activations"] = STORE_SUBDIR
    run_json.write_text(json.dumps(run, indent=2) + "\n")
