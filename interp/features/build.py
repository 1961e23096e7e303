"""Build a feature store: stream tokens through a model and an SAE and record every latent.

Entry points: :func:`build_for_run` (``interp features``: a run's model, token source and
context length, an SAE by name or folder; ``RUN/features/<sae>.duckdb`` by default) and
:func:`build_feature_store` (a model, an SAE, its hook and a token source). A build:

1. checks the SAE against the model and hook (``interp.provenance.check_dictionary``);
2. streams ``cfg.n_tokens`` tokens (:func:`stream_features`): batches of ``batch_size``
   contexts (B, n_ctx) through the model, stopped after the hook's block; the hook's
   activations at the recorded positions (B * kept, d_in) encoded by the SAE
   (``interp.features.codes``: sparse (B * kept, K) or dense (B * kept, d_sae)) and recorded
   by the accumulator (``interp.features.accumulate``: top-n examples, interval samples,
   histograms, token counts, in memory independent of the number of tokens);
3. computes the logit effects of the decoder rows (``interp.features.logits``: (d_sae, m)
   top and bottom tokens each; a transcoder's from the hook it writes);
4. writes the DuckDB file atomically (``interp.features.write``).

Also here: the rule that names a build's output (:func:`default_out`), which the CLI's
output planning shares; runs and SAE names resolve in ``interp.runs``.
``FORMAT``, ``FeatureConfig``, ``parse_window``, ``temp_path`` and ``remove_stale_temps``
are importable from here too (their homes: ``write`` and ``config``).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.errors import DataError
from interp.features.accumulate import FeatureAccumulator
from interp.features.codes import Codes, encode
from interp.features.config import FeatureConfig, parse_window
from interp.features.logits import logit_effects
from interp.features.write import (FORMAT, FORMAT_VERSION, remove_stale_temps, temp_path,
                                   write_store)
from interp.hooks import default_n_ctx, flat_units, sae_hook, stop_layer
from interp.runs import open_run, resolve_sae
from interp.version import code_version

__all__ = ["FEATURES_SUBDIR", "FORMAT", "FORMAT_VERSION", "FeatureConfig", "build_feature_store",
           "build_for_run", "default_out", "parse_window", "remove_stale_temps",
           "stream_features", "temp_path"]

log = logging.getLogger(__name__)  # notes; the CLI shows them on stdout

FEATURES_SUBDIR = "features"
# sparse codes are recorded in chunks of at least this many token rows
RECORD_ROWS = 2**14


# ------------------------------------------------------------------ streaming
class _Recorder:
    """Hands codes to the accumulator on the CPU: dense codes batch by batch, sparse codes of
    several forward batches together (at least ``RECORD_ROWS`` rows: fewer, larger ops)."""

    def __init__(self, acc: FeatureAccumulator):
        self.acc = acc
        self.pending: list[tuple[torch.Tensor, Codes]] = []
        self.pending_rows = 0

    def add(self, tokens: torch.Tensor, codes: Codes) -> None:
        if codes.acts is not None:
            self.flush()
            codes.acts = codes.acts.cpu()
            self.acc.add(tokens, codes)
            return
        codes.values, codes.indices = codes.values.cpu(), codes.indices.cpu()
        self.pending.append((tokens, codes))
        self.pending_rows += codes.n_rows
        if self.pending_rows >= RECORD_ROWS:
            self.flush()

    def flush(self) -> None:
        if len(self.pending) == 1:
            self.acc.add(*self.pending[0])
        elif self.pending:
            self.acc.add(torch.cat([t for t, _ in self.pending]),
                         Codes(values=torch.cat([c.values for _, c in self.pending]),
                               indices=torch.cat([c.indices for _, c in self.pending])))
        self.pending.clear()
        self.pending_rows = 0


def stream_features(model, sae, hook: str, source, cfg: FeatureConfig,
                    progress: bool = True) -> tuple[FeatureAccumulator, dict]:
    """Run ``cfg.n_tokens`` tokens of ``source`` through ``model`` up to ``hook`` and the SAE;
    returns the accumulator and timing information."""
    from interp.data.sources import batches, prefetch

    n_ctx = default_n_ctx(model, cfg.n_ctx)
    acc = FeatureAccumulator(sae.cfg.d_sae, model.cfg.d_vocab, n_ctx, cfg)
    n_contexts = math.ceil(cfg.n_tokens / acc.kept)
    stop = stop_layer([hook], model.cfg.n_layers)
    captured: dict[str, torch.Tensor] = {}
    first = acc.first_pos

    def capture(act, hook):
        captured["x"] = act[:, first:]

    bar = tqdm(total=n_contexts * acc.kept, unit="tok", unit_scale=True, desc="features",
               disable=not progress)
    recorder = _Recorder(acc)
    t0 = time.perf_counter()
    model_seconds = 0.0  # the forward + encode share of the stream (the rest: recording)
    with torch.inference_mode(), model.hooks(fwd_hooks=[(hook, capture)]):
        for tokens in prefetch(batches(source, n_ctx, cfg.batch_size, max_contexts=n_contexts)):
            tm = time.perf_counter()
            model(tokens.to(model.cfg.device), stop_at_layer=stop)
            x = flat_units(captured.pop("x"), sae.cfg.d_in).reshape(-1, sae.cfg.d_in)
            x = x.to(sae.W_dec.device)
            codes = encode(sae, x)
            if x.is_cuda:
                torch.cuda.synchronize()
            model_seconds += time.perf_counter() - tm
            recorder.add(tokens, codes)
            bar.update(tokens.shape[0] * acc.kept)
        recorder.flush()
    bar.close()
    if acc.n_contexts < n_contexts:
        log.warning(f"note: the token source ran out after {acc.n_contexts} contexts "
                    f"({n_contexts} requested)")
    return acc, {"stream_seconds": time.perf_counter() - t0, "model_seconds": model_seconds,
                 "n_ctx": n_ctx}


# ------------------------------------------------------------------ build
def build_feature_store(model, sae, hook: str, source, cfg: FeatureConfig, out: str | Path,
                        meta: dict | None = None, progress: bool = True) -> Path:
    """Check the SAE against the model and ``hook``, stream, then write the store to ``out``
    (a .duckdb file, replaced atomically). ``meta`` is added to the store's metadata."""
    from interp.models import token_strings
    from interp.provenance import check_dictionary, model_name_of
    from interp.sae.evaluate import written_hook

    cfg.validate()
    model_name = str((meta or {}).get("model") or model_name_of(model))
    check_dictionary(sae, name=(meta or {}).get("sae"), model=model, model_name=model_name,
                     hook=hook)
    t0 = time.perf_counter()
    acc, info = stream_features(model, sae, hook, source, cfg, progress)
    with torch.inference_mode():
        tables = acc.tables()
        logits = logit_effects(sae, model, hook, cfg.top_tokens)
    vocab = token_strings(model_name, range(model.cfg.d_vocab))
    metadata = {
        "format": FORMAT, "version": FORMAT_VERSION, "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model_name,
        "hook": hook, **({"hook_out": written_hook(sae)} if sae.cfg.transcoder else {}),
        "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "arch": sae.cfg.arch,
        "d_vocab": model.cfg.d_vocab, "n_tokens": acc.n_tokens, "n_contexts": acc.n_contexts,
        "n_ctx": info["n_ctx"], "first_pos": acc.first_pos,
        "source": getattr(source, "describe", lambda: str(source))(),
        "config": {k: v for k, v in asdict(cfg).items() if k != "device"},
        "hist_edges": cfg.hist_edges().tolist(), "logit_effects": logits is not None,
        "stream_seconds": info["stream_seconds"], "model_seconds": info["model_seconds"],
        **(meta or {}),
    }
    metadata["build_seconds"] = time.perf_counter() - t0  # written last, see write_store
    return write_store(out, metadata, tables, logits, vocab, t0)


# ------------------------------------------------------------------ runs
def default_out(run_dir: Path, sae_name: str) -> Path:
    return run_dir / FEATURES_SUBDIR / f"{sae_name}.duckdb"


def _context_length(run_dir: Path | None, sae_metadata: dict, model) -> int:
    """The run's harvest context length, else the SAE's training one, else the default; at
    most the model's."""
    recorded = None
    manifest = run_dir / "activations" / "manifest.json" if run_dir else None
    if manifest is not None and manifest.exists():
        recorded = json.loads(manifest.read_text()).get("n_ctx")
    recorded = recorded or sae_metadata.get("context_size")
    return int(min(default_n_ctx(model, recorded), model.cfg.n_ctx))


def _token_source(source: str | None, run_meta: dict, model, model_name: str):
    """``source`` when given, else the run's dataset, else the model's default source."""
    from interp.data.sources import default_source, from_description, make_source

    if source:
        return make_source(source, model=model)
    if run_meta.get("dataset"):
        return from_description(run_meta["dataset"], model)
    return make_source(default_source(model_name), model=model)


def build_for_run(run: str | Path | None, sae: str, cfg: FeatureConfig,
                  out: str | Path | None = None, source: str | None = None,
                  progress: bool = True) -> Path:
    """``interp features``: the run's model and token source (or ``source``), the SAE's hook;
    writes ``RUN/features/<sae>.duckdb`` unless ``out`` is given. The SAE is checked against
    the model before the token source is made."""
    from interp.data.sources import check_fits
    from interp.models import load
    from interp.provenance import check_dictionary

    cfg.validate()
    run_dir, run_meta = open_run(run) if run is not None else (None, {})
    named = resolve_sae(sae, run_dir)
    sae_model, sae_name = named.sae, named.short_name
    hook = sae_hook(sae_model, sae)
    md = sae_model.cfg.metadata or {}
    model_name = run_meta.get("model") or md.get("model_name")
    if not model_name:
        raise DataError(f"the SAE {sae} does not record its model: give --run")
    if out is None:
        if run_dir is None:
            raise DataError("give --out (or --run, whose features/ folder is the default)")
        out = default_out(run_dir, sae_name)
    if run_meta.get("hooks") and hook not in run_meta["hooks"]:
        log.warning(f"note: the run harvested {run_meta['hooks']}; the SAE reads {hook} (the "
                    f"model computes it)")
    model = load(model_name, device=cfg.device)
    check_dictionary(sae_model, name=sae, model=model, model_name=model_name, hook=hook)
    if cfg.n_ctx is None:
        cfg.n_ctx = _context_length(run_dir, md, model)
    src = _token_source(source, run_meta, model, model_name)
    check_fits(src, model, cfg.n_ctx, label=model_name)
    sae_model = sae_model.to(cfg.device)
    meta = {"run": str(run_dir) if run_dir else None, "sae": str(sae), "sae_name": sae_name,
            "model": str(model_name)}
    return build_feature_store(model, sae_model, hook, src, cfg, out, meta, progress)
