"""Attribution-graph speed and memory: ours (``interp.graphs.attribute``) against
circuit-tracer 0.5.0's ``attribute`` on the same model, transcoders and prompt.

    make bench-graphs                   # both parts below (about 4-7 minutes on 2 cores)
    .venv/bin/python benchmarks/graph_speed.py [--seed 123] [--threads 2] [--repeats 3]
                                               [--batch-size 256] [--tracer-batch-size 512]
    .venv/bin/python benchmarks/graph_speed.py --long | --only-long
                                               [--lengths 128,256,512,1024,2048] [--cap 4096]
                                               [--sides ours,tracer] [--limit-gb 12]
                                               [--limit-s 600] [--keep DIR]

Each side runs in a subprocess of its own venv (ours: this interpreter, ``.venv``;
circuit-tracer: ``.venv-tracer/bin/python``, ``make tracer-venv``), with ``--threads`` torch
threads: a warm-up ``attribute`` call, then timed calls (model and transcoder loading
excluded; the wall time, median of ``--repeats``, and the process's CPU time). Peak RSS is
the subprocess's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just
before the timed calls, so it is their peak over everything the process holds: model,
libraries, graph); the parent also samples ``VmRSS`` every 50 ms, to stop a subprocess
above ``--limit-gb`` or ``--limit-s``. On a busy machine a 2-thread process waits for its
preempted thread at every parallel op: the CPU-time ratio is then the steadier figure.

Default (speed): the othello model, the shipped ``othello/plt`` transcoders (batchtopk,
exported with ``interp.sae.tracer_export`` as circuit-tracer's JumpReLU: the same inference
rule) and one game of 60 tokens (BOS + 59 moves, ``generate_games(5, seed)``), every active
feature (``max_feature_nodes=None``) and the default logit targets (top logits until p >=
0.95, at most 10). Prints both times, the speed ratio (target: ours >= 3x faster), both
peak RSS figures (target: ours no more), the number of active features; checks ours by
intervention (``interp.graphs.validate``, "direct"), and that the two adjacency matrices
agree: the same node layout (active features (layer, position, latent) and their
activations, error nodes (layer, position), token nodes, logit targets, in the same order)
and a max abs difference <= 1e-4 of the largest |entry|. Exits 1 if they disagree.

``--long`` (memory on long prompts): a model of pycode's shape (4 layers, d_model 128, 4
heads, d_mlp 512, vocab 4096) but n_ctx 2048, with RANDOM weights (TransformerLens init,
seed 0), and random per-layer JumpReLU transcoders (d_sae 1024, thresholds set for about 32
active latents per position), on random token prompts of each length: time and peak RSS of
both sides with ``max_feature_nodes = --cap`` (one timed call after a 32-token warm-up: a
full warm-up would double the long runs). Memory and time depend on the shapes and on the
number of active features, not on the weights' values. A side that passes ``--limit-gb``
or ``--limit-s`` at one length is stopped and not run at longer ones. circuit-tracer runs
its forward pass on ``batch_size`` copies of the prompt, holding (batch, heads, T, T)
patterns per layer: its memory grows with the square of the prompt.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRACER_PY = REPO / ".venv-tracer" / "bin" / "python"
TARGET_SPEEDUP = 3.0        # ours at least this many times faster
TARGET_LONG_GB = 4.0        # our peak RSS on a 1,024-token prompt, at most
AGREE = 1e-4                # max |A_ours - A_tracer| over max |A|, at most
OTHELLO_SET = "othello/plt"
# --long: pycode's shape with a longer context, random weights
LONG_SHAPE = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=4096,
                  n_ctx=2048, act_fn="gelu", normalization_type="LN",
                  positional_embedding_type="standard", model_name="random-pycode-shape",
                  seed=0, default_prepend_bos=True)
LONG_D_SAE, LONG_L0 = 1024, 32
WARMUP_TOKENS = 32


# ------------------------------------------------------------------ memory figures
def _status(field: str, pid: int | str = "self") -> int | None:
    """A ``/proc/<pid>/status`` field in bytes (VmRSS, VmHWM), None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """This process's peak RSS in bytes since the last ``reset_peak`` (else since start)."""
    hwm = _status("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------ workers (subprocesses)
def _tokenizer_stub(bos: int, vocab: int):
    sys.path.insert(0, str(REPO / "tests"))
    from tracer_probe import TokenizerStub  # what circuit-tracer asks of a tokenizer

    return TokenizerStub(bos, vocab)


def _timed(job: dict, run, warm_tokens, tokens) -> tuple:
    """Warm up, then time ``run(tokens)`` ``job["repeats"]`` times (the median) with the
    peak RSS over those calls; returns (the last result, figures)."""
    out = run(warm_tokens)
    del out
    gc.collect()
    base = _status("VmRSS") or 0
    resettable = reset_peak()
    walls, cpus, result = [], [], None
    for _ in range(job.get("repeats", 1)):
        result = None   # the previous graph is freed before the next call
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        result = run(tokens)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    figures = {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
               "all_seconds": walls, "peak_rss": peak_rss(), "base_rss": base,
               "peak_is_timed_call": resettable, "threads": torch.get_num_threads()}
    return result, figures


def worker_ours(job: dict) -> dict:
    from safetensors.torch import save_file

    from interp.graphs import attribute
    from interp.models import load
    from interp.sae.io import load_sae
    from interp.sae.replacement import Replacement, open_replacement

    torch.set_grad_enabled(False)
    model = load(job["model"])
    if job.get("set"):
        rep = open_replacement([job["set"]])
    else:
        rep = Replacement([load_sae(f).eval() for f in job["folders"]], job["folders"])
    tokens = torch.load(job["tokens"])
    warm = tokens[:job["warmup"]] if job.get("warmup") else tokens

    def run(toks):
        return attribute(model, rep, toks, max_feature_nodes=job["cap"],
                         batch_size=job["batch_size"])

    graph, figures = _timed(job, run, warm, tokens)
    nodes = graph.nodes
    layer_of_block = torch.tensor([b.layer for b in nodes.blocks])
    active = torch.stack([layer_of_block[nodes.features[:, 0]], nodes.features[:, 1],
                          nodes.features[:, 2]], 1)
    figures.update(n_active=nodes.n_features, n_selected=graph.n_selected,
                   n_nodes=graph.n_nodes, error_sites=nodes.error_sites,
                   n_pos=nodes.n_pos, meta={k: v for k, v in graph.meta.items()
                                            if isinstance(v, (int, float, type(None)))})
    if job.get("validate"):   # exactness: edges against interventions in the model
        from interp.graphs.validate import validate

        n_sel = graph.n_selected
        top = graph.adjacency[graph.target_start:, :n_sel].abs().sum(0).topk(
            min(job["validate"], n_sel)).indices.tolist()
        res = validate(model, graph, top, 0.5, "direct")
        figures["validate"] = {"features": len(top), "pearson": float(res["pearson"]),
                               "max_abs": float((res["predicted"] - res["measured"]).abs().max()),
                               "scale": float(res["measured"].abs().max())}
    if job.get("save"):
        save_file({"adjacency": graph.adjacency.contiguous(), "active": active.contiguous(),
                   "selected": graph.selected.contiguous(),
                   "activations": nodes.activations.contiguous(),
                   "logit_tokens": torch.tensor([t.info["token"] for t in graph.targets]),
                   "logit_probs": torch.tensor([t.weight for t in graph.targets])},
                  job["save"])
    return figures


def worker_tracer(job: dict) -> dict:
    from safetensors.torch import save_file

    from circuit_tracer import attribute
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.utils.caching import load_transcoders_from_cache
    from interp.models import load
    from interp.sae.tracer_export import load_replacement_weights

    folder = Path(job["export"]).resolve()
    transcoders, _ = load_transcoders_from_cache(folder.name, cache_dir=folder.parent,
                                                 device=torch.device("cpu"),
                                                 dtype=torch.float32, lazy_decoder=False)
    base = load(job["model"])
    model = TransformerLensReplacementModel.from_config(base.cfg, transcoders)
    load_replacement_weights(model, base.state_dict())
    del base
    tokens = torch.load(job["tokens"])
    model.tokenizer = _tokenizer_stub(int(tokens[0]), model.cfg.d_vocab)
    warm = tokens[:job["warmup"]] if job.get("warmup") else tokens

    def run(toks):
        return attribute(toks, model, max_feature_nodes=job["cap"],
                         batch_size=job["batch_size"])

    graph, figures = _timed(job, run, warm, tokens)
    figures.update(n_active=int(graph.active_features.shape[0]),
                   n_selected=int(graph.selected_features.shape[0]),
                   n_nodes=int(graph.adjacency_matrix.shape[0]),
                   n_pos=int(tokens.shape[0]))
    if job.get("save"):
        save_file({"adjacency": graph.adjacency_matrix.float().contiguous(),
                   "active": graph.active_features.long().contiguous(),
                   "selected": graph.selected_features.long().contiguous(),
                   "activations": graph.activation_values.float().contiguous(),
                   "logit_tokens": torch.tensor([t.vocab_idx for t in graph.logit_targets]),
                   "logit_probs": graph.logit_probabilities.float().contiguous()},
                  job["save"])
    return figures


def worker_main(side: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    figures = (worker_ours if side == "ours" else worker_tracer)(job)
    Path(job["result"]).write_text(json.dumps(figures))


# ------------------------------------------------------------------ the parent
class Run:
    """One subprocess's outcome: its figures, or why it stopped, and the sampled peak."""

    def __init__(self, figures: dict | None, sampled_peak: int, seconds: float,
                 stopped: str | None):
        self.figures, self.sampled_peak, self.seconds, self.stopped = (figures, sampled_peak,
                                                                      seconds, stopped)

    @property
    def ok(self) -> bool:
        return self.figures is not None


def run_worker(side: str, job: dict, tmp: Path, limit_gb: float, limit_s: float) -> Run:
    """Run one side in its venv; stop it above ``limit_gb`` of RSS or after ``limit_s``."""
    python = sys.executable if side == "ours" else str(TRACER_PY)
    tag = f"{side}-{job.get('label', 'run')}"
    job = {**job, "result": str(tmp / f"{tag}.json")}
    job_path = tmp / f"{tag}.job.json"
    job_path.write_text(json.dumps(job))
    err = open(tmp / f"{tag}.stderr", "w+")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(job["threads"])}
    started = time.perf_counter()
    proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", side,
                             str(job_path)], stdout=subprocess.DEVNULL, stderr=err, env=env)
    peak, stopped = 0, None
    while proc.poll() is None:
        rss = _status("VmRSS", proc.pid) or 0
        peak = max(peak, rss)
        elapsed = time.perf_counter() - started
        if rss > limit_gb * 2 ** 30 or elapsed > limit_s:
            stopped = (f"stopped above {limit_gb:g} GB RSS" if rss > limit_gb * 2 ** 30
                       else f"stopped after {elapsed:.0f} s")
            proc.kill()
            proc.wait()
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    if stopped is None and proc.returncode != 0:
        err.seek(0)
        tail = err.read()[-3000:]
        stopped = f"exit {proc.returncode}" + (" (killed: out of memory?)"
                                               if proc.returncode in (-9, 137) else "")
        print(f"\n{side} failed ({stopped}):\n{tail}", file=sys.stderr)
    err.close()
    figures = json.loads(Path(job["result"]).read_text()) if stopped is None else None
    return Run(figures, peak, seconds, stopped)


def gb(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GB"


def tracer_available() -> bool:
    return (REPO / ".venv-tracer" / ".installed").exists() and TRACER_PY.exists()


# ------------------------------------------------------------------ speed (othello)
def othello_tokens(seed: int) -> torch.Tensor:
    from interp.data.othello import generate_games

    return torch.as_tensor(generate_games(5, seed=seed).tokens()[0][:60]).long()


def compare(ours: dict, theirs: dict) -> list[str]:
    """Problems with the two graphs' node layouts (empty: the same); see the module doc."""
    problems = []
    for key, what in (("active", "active features (layer, position, latent)"),
                      ("selected", "selected features"), ("logit_tokens", "logit targets")):
        a, b = ours[key], theirs[key]
        if a.shape != b.shape or not torch.equal(a, b):
            problems.append(f"{what} differ: ours {tuple(a.shape)}, circuit-tracer "
                            f"{tuple(b.shape)}" + (f", first at {_first_diff(a, b)}"
                                                   if a.shape == b.shape else ""))
    if not problems:
        d = (ours["activations"] - theirs["activations"]).abs().max()
        if d > 1e-4 * ours["activations"].abs().max():
            problems.append(f"activation values differ by up to {float(d):.3g}")
    if ours["adjacency"].shape != theirs["adjacency"].shape:
        problems.append(f"adjacency shapes differ: ours {tuple(ours['adjacency'].shape)}, "
                        f"circuit-tracer {tuple(theirs['adjacency'].shape)}")
    return problems


def _first_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    i = int(torch.nonzero((a != b).reshape(len(a), -1).any(1))[0])
    return f"row {i}: {a[i].tolist()} vs {b[i].tolist()}"


def adjacency_report(a: torch.Tensor, b: torch.Tensor, n_f: int, n_pos: int,
                     n_layers: int) -> tuple[float, float, str]:
    """(max abs difference, over max |entry|, where it is largest by node kind)."""
    diff = (a - b).abs()
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    worst = float(diff.max())
    err0, tok0 = n_f, n_f + n_layers * n_pos
    tgt0 = tok0 + n_pos
    spans = {"feature": (0, err0), "error": (err0, tok0), "token": (tok0, tgt0),
             "logit": (tgt0, a.shape[0])}
    parts = []
    for rname, (r0, r1) in spans.items():
        for cname, (c0, c1) in spans.items():
            if r1 > r0 and c1 > c0:
                d = float(diff[r0:r1, c0:c1].max())
                if d > AGREE * scale:
                    parts.append(f"{rname}<-{cname} {d:.3g}")
    return worst, worst / scale, ", ".join(parts)


def speed(args, tmp: Path) -> bool:
    """The othello comparison; True if the adjacency matrices agree (or no peer)."""
    from safetensors.torch import load_file

    from interp.models import load
    from interp.sae.replacement import expand
    from interp.sae.tracer_export import export_circuit_tracer

    tokens = othello_tokens(args.seed)
    torch.save(tokens, tmp / "othello_tokens.pt")
    n_layers = load("othello").cfg.n_layers
    common = {"model": "othello", "tokens": str(tmp / "othello_tokens.pt"), "cap": None,
              "threads": args.threads, "warmup": None, "label": "othello",
              "repeats": args.repeats}
    print(f"othello, {OTHELLO_SET} ({n_layers} batchtopk transcoders, exported as "
          f"JumpReLU for circuit-tracer), one game of {len(tokens)} tokens (BOS + "
          f"{len(tokens) - 1} moves, seed {args.seed}); every active feature, default logit "
          f"targets; {args.threads} torch threads, warm, model load excluded; median of "
          f"{args.repeats} timed calls after a warm-up call")
    ours = run_worker("ours", {**common, "set": OTHELLO_SET, "batch_size": args.batch_size,
                               "save": str(tmp / "ours.safetensors"), "validate": 4}, tmp,
                      args.limit_gb, args.limit_s)
    if not ours.ok:
        print(f"ours did not finish: {ours.stopped}")
        return False
    fo = ours.figures
    rows = [("ours (interp.graphs)", args.batch_size, fo)]
    theirs = None
    if tracer_available():
        export = tmp / "tracer_othello_plt"
        export_circuit_tracer(expand(OTHELLO_SET), export)
        theirs = run_worker("tracer", {**common, "export": str(export),
                                       "batch_size": args.tracer_batch_size,
                                       "save": str(tmp / "tracer.safetensors")}, tmp,
                            args.limit_gb, args.limit_s)
        if theirs.ok:
            rows.append(("circuit-tracer 0.5.0", args.tracer_batch_size, theirs.figures))
        else:
            print(f"circuit-tracer did not finish: {theirs.stopped}")
    else:
        print("no .venv-tracer (make tracer-venv): circuit-tracer not run")
    print(f"\n  {'contender':24s} {'batch':>6s} {'seconds':>8s} {'(min-max)':>13s} "
          f"{'CPU s':>7s} {'peak RSS':>10s} {'(before)':>10s} {'active':>7s} {'nodes':>7s}")
    for name, batch, f in rows:
        spread = f"{min(f['all_seconds']):.2f}-{max(f['all_seconds']):.2f}"
        print(f"  {name:24s} {batch:6d} {f['seconds']:8.2f} {spread:>13s} "
              f"{f['cpu_seconds']:7.2f} {gb(f['peak_rss']):>10s} {gb(f['base_rss']):>10s} "
              f"{f['n_active']:7d} {f['n_nodes']:7d}")
    print("  (seconds: wall time of an attribute call, the median; CPU s: its process CPU "
          "time, all threads; peak RSS: the process's during the timed calls; before: its "
          "RSS before them)")
    v = fo.get("validate")
    if v:
        print(f"ours checked by intervention (interp.graphs.validate, 'direct', the {v['features']}"
              f" features with the largest edges to the logits scaled by 0.5): Pearson "
              f"{v['pearson']:.6f}, max |predicted - measured| {v['max_abs']:.2g} (largest "
              f"change {v['scale']:.3g})")
    if theirs is None or not theirs.ok:
        return True
    ft = theirs.figures
    a, b = load_file(str(tmp / "ours.safetensors")), load_file(str(tmp / "tracer.safetensors"))
    problems = compare(a, b)
    want_sites = [f"blocks.{L}.hook_mlp_out" for L in range(n_layers)]
    if fo["error_sites"] != want_sites:
        problems.append(f"our error nodes are at {fo['error_sites']}, not {want_sites}")
    agree = not problems
    print("\nnode layout: " + ("the same (features (layer, position, latent), errors "
                               "layer-major, tokens, logits " +
                               f"{b['logit_tokens'].tolist()})" if agree else
                               "DIFFERENT: " + "; ".join(problems)))
    if a["adjacency"].shape == b["adjacency"].shape:
        worst, rel, where = adjacency_report(a["adjacency"], b["adjacency"], fo["n_active"],
                                             fo["n_pos"], n_layers)
        ok = rel <= AGREE
        agree = agree and ok
        print(f"adjacency {tuple(a['adjacency'].shape)}: max |ours - circuit-tracer| = "
              f"{worst:.3g}, {rel:.2e} of the largest |entry| (at most {AGREE:g}): "
              f"{'agree' if ok else 'DISAGREE (' + where + ')'}")
    ratio = ft["seconds"] / fo["seconds"]
    cpu_ratio = ft["cpu_seconds"] / fo["cpu_seconds"]
    mem = fo["peak_rss"] / ft["peak_rss"]
    print("\ntargets, this run:")
    print(f"  ours >= {TARGET_SPEEDUP:g}x faster than circuit-tracer: {ratio:.2f}x (CPU time "
          f"{cpu_ratio:.2f}x)  {'met' if ratio >= TARGET_SPEEDUP else 'NOT MET'}")
    print(f"  ours' peak RSS no more than circuit-tracer's: {gb(fo['peak_rss'])} vs "
          f"{gb(ft['peak_rss'])} ({mem:.2f}x)  {'met' if mem <= 1 else 'NOT MET'}")
    print(f"  adjacency matrices agree: {'yes' if agree else 'NO'}")
    return agree


# ------------------------------------------------------------------ memory (--long)
def make_long_model(out: Path) -> Path:
    """pycode's shape with n_ctx 2048, random weights, as one of our model folders."""
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = out / "random_model"
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**LONG_SHAPE))
    save_file({k: v.detach().contiguous() for k, v in model.named_parameters()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "name": LONG_SHAPE["model_name"], "description": "random weights (benchmark)",
        "transformer_config": LONG_SHAPE}))
    return folder


def make_long_transcoders(model_folder: Path, out: Path) -> list[str]:
    """Random JumpReLU transcoders of every MLP of the model, saved as our folders: their
    threshold is the quantile of the pre-activations (on a random prompt of n_ctx tokens)
    that leaves about ``LONG_L0`` latents active per position."""
    from interp.models import load
    from interp.sae.core import SAEConfig, SparseAutoencoder
    from interp.sae.io import save_sae

    model = load(str(model_folder))
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(1, cfg.d_vocab, (1, cfg.n_ctx), generator=g)
    toks[0, 0] = 0
    names = [f"blocks.{L}.ln2.hook_normalized" for L in range(cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda h: h in names)
    folders = []
    for layer in range(cfg.n_layers):
        sae = SparseAutoencoder(SAEConfig(
            d_in=cfg.d_model, d_sae=LONG_D_SAE, d_out=cfg.d_model, arch="jumprelu",
            seed=10 + layer, metadata={"model_name": cfg.model_name,
                                       "hook_name": names[layer],
                                       "hook_name_out": f"blocks.{layer}.hook_mlp_out"}))
        with torch.no_grad():
            sae.b_dec.copy_(0.1 * torch.randn(cfg.d_model, generator=g))
            z = sae.encode_pre(cache[names[layer]][0, 1:])
            theta = torch.quantile(z.flatten()[::7], 1 - LONG_L0 / LONG_D_SAE)
            sae.load_inference_threshold_(torch.full((LONG_D_SAE,), float(theta)))
        folders.append(str(save_sae(sae.eval(), out / f"plt{layer}")))
    return folders


def export_long(folders: list[str], out: Path) -> Path:
    """The transcoders in circuit-tracer's format, written by our exporter's own per-layer
    writer: ``export_circuit_tracer`` checks a set against its model, which it loads by name,
    and this model has none (random weights in a temp folder)."""
    from interp.sae.io import load_sae
    from interp.sae.tracer_export import TRANSCODER_SET, _plt_tensors, _save, _write_config

    out.mkdir(parents=True, exist_ok=True)
    for layer, folder in enumerate(folders):
        _save(_plt_tensors(load_sae(folder)), out / f"layer_{layer}.safetensors")
    _write_config(out, TRANSCODER_SET, LONG_SHAPE["model_name"], "ln2.hook_normalized",
                  {"sources": folders, "activations": ["jumprelu"] * len(folders)})
    return out


def long_prompts(args, tmp: Path) -> bool:
    """The scaling table; True if our peak RSS at 1,024 tokens is within the target."""
    lengths = [int(n) for n in args.lengths.split(",")]
    print(f"\nlong prompts: a model of pycode's shape (4 layers, d_model 128, 4 heads, d_mlp "
          f"512, vocab 4096) with n_ctx {LONG_SHAPE['n_ctx']} and RANDOM weights, random "
          f"JumpReLU transcoders (d_sae {LONG_D_SAE}, about {LONG_L0} active per position and "
          f"layer), random tokens; max_feature_nodes = {args.cap}; {args.threads} torch "
          f"threads; warm-up on {WARMUP_TOKENS} tokens. The weights are random: memory and "
          f"time depend on the shapes and the number of active features, not on the values.")
    model_folder = make_long_model(tmp)
    folders = make_long_transcoders(model_folder, tmp / "long_saes")
    export = export_long(folders, tmp / "tracer_long") if tracer_available() else None
    if export is None:
        print("no .venv-tracer (make tracer-venv): circuit-tracer not run")
    sides = {"ours": args.batch_size} | ({"tracer": args.tracer_batch_size} if export else {})
    sides = {k: v for k, v in sides.items() if k in args.sides.split(",")}
    stopped: dict[str, str] = {}
    results: dict[tuple[str, int], Run] = {}
    print(f"\n  {'tokens':>6s} {'contender':16s} {'batch':>6s} {'active':>7s} {'seconds':>8s} "
          f"{'CPU s':>7s} {'peak RSS':>10s} {'(before)':>10s}")
    for n in lengths:
        toks = torch.randint(1, LONG_SHAPE["d_vocab"], (n,),
                             generator=torch.Generator().manual_seed(args.seed + n))
        toks[0] = 0
        torch.save(toks, tmp / f"long_{n}.pt")
        for side, batch in sides.items():
            name = "ours" if side == "ours" else "circuit-tracer"
            if side in stopped:
                print(f"  {n:6d} {name:16s} {batch:6d}  not run ({stopped[side]})")
                continue
            job = {"model": str(model_folder), "tokens": str(tmp / f"long_{n}.pt"),
                   "cap": args.cap, "threads": args.threads, "warmup": WARMUP_TOKENS,
                   "batch_size": batch, "label": f"long{n}"}
            if side == "ours":
                job["folders"] = folders
            else:
                job["export"] = str(export)
            run = run_worker(side, job, tmp, args.limit_gb, args.limit_s)
            results[side, n] = run
            if run.ok:
                f = run.figures
                print(f"  {n:6d} {name:16s} {batch:6d} {f['n_active']:7d} {f['seconds']:8.2f} "
                      f"{f['cpu_seconds']:7.2f} {gb(f['peak_rss']):>10s} "
                      f"{gb(f['base_rss']):>10s}")
            else:
                stopped[side] = f"{n} tokens: {run.stopped}"
                print(f"  {n:6d} {name:16s} {batch:6d} {'':7s} {'-':>8s} {'-':>7s} "
                      f"{'>' + gb(run.sampled_peak):>10s}  {run.stopped}")
            sys.stdout.flush()
    print("\ntargets, this run:")
    ours_1k = results.get(("ours", 1024))
    met = bool(ours_1k and ours_1k.ok and
               ours_1k.figures["peak_rss"] <= TARGET_LONG_GB * 2 ** 30)
    fig = gb(ours_1k.figures["peak_rss"]) if ours_1k and ours_1k.ok else "not measured"
    print(f"  a 1,024-token prompt attributes with peak RSS <= {TARGET_LONG_GB:g} GB: {fig}  "
          f"{'met' if met else 'NOT MET'}")
    return met


# ------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=123, help="the othello game's (and --long "
                    "prompts') seed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each side")
    ap.add_argument("--batch-size", type=int, default=256, help="ours (its default)")
    ap.add_argument("--tracer-batch-size", type=int, default=512,
                    help="circuit-tracer's (its default)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed calls of each side on the othello game (the median)")
    ap.add_argument("--long", action="store_true", help="also the long-prompt memory table")
    ap.add_argument("--only-long", action="store_true", help="only the long-prompt table")
    ap.add_argument("--lengths", default="128,256,512,1024,2048")
    ap.add_argument("--cap", type=int, default=4096, help="max_feature_nodes with --long")
    ap.add_argument("--limit-gb", type=float, default=12.0,
                    help="stop a side above this RSS (and skip longer prompts)")
    ap.add_argument("--limit-s", type=float, default=600.0,
                    help="stop a side after this many seconds (and skip longer prompts)")
    ap.add_argument("--sides", default="ours,tracer", help="with --long: which to run")
    ap.add_argument("--keep", default=None, help="write the temp files here and keep them")
    ap.add_argument("--worker", nargs=2, metavar=("SIDE", "JOB"), help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    if args.worker:
        worker_main(*args.worker)
        return 0
    sys.path.insert(0, str(REPO))
    print(f"torch {torch.__version__}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="graph_speed_") as t:
        tmp = Path(args.keep) if args.keep else Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        agree = True if args.only_long else speed(args, tmp)
        if args.long or args.only_long:
            long_prompts(args, tmp)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
