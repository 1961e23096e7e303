"""``make demo`` / ``interp demo``: the main job on the embedded default.

Harvests residual-stream activations of the embedded othello model into ``runs/demo``,
reads them back the way SAE training does (shuffled batches from disk), fits a linear
board-state probe on them (a check that the store holds the model's picture of the board),
trains a TopK and a HierarchicalTopK SAE on them from scratch and evaluates them, including
with each SAE spliced into the model, builds their feature stores, discovers a circuit for
"is this square a legal move" over the TopK SAE and checks its faithfulness by ablation,
compares k-sparse probes on neurons and on both SAEs' latents, and (``interp demo``) starts
the app unless ``--no-app``.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from interp.activations.harvest import HarvestConfig, harvest
from interp.circuits.discover import CircuitConfig, discover
from interp.circuits.graph import save_graph
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import make_task
from interp.data.sources import from_description
from interp.features import FeatureConfig, build_for_run
from interp.hooks import layer_of
from interp.models import load
from interp.models.evaluate import fit_linear_probe
from interp.probes.experiment import compare_sources, save
from interp.sae.evaluate import evaluate_sae
from interp.sae.io import load_sae
from interp.sae.trainer import TrainConfig, train_sae

DEMO_HOOKS = ["blocks.3.hook_resid_post", "blocks.5.hook_resid_post"]
DEMO_SAES = {"topk": 16, "hierarchical_topk": 16}  # the SAEs trained: architecture -> k
CIRCUIT_SAE = "topk"                                # the one the circuit is found over
PROBE_ROWS = 30_000


def run_demo(out: str = "runs/demo", n_tokens: int = 200_000, sae_steps: int = 300,
             feature_tokens: int = 30_000) -> dict:
    """Every step of the demo in order, each printing what it did (see the module doc)."""
    out_path = Path(out)
    start = time.time()
    hook = DEMO_HOOKS[0]
    store, summary = demo_harvest(out_path, n_tokens, hook)
    probe_accuracy = demo_board_probe(store)
    sae_dirs, evals = {}, {}
    for arch, k in DEMO_SAES.items():
        sae_dirs[arch] = out_path / "saes" / arch
        evals[arch] = demo_sae(out_path, sae_dirs[arch], hook, arch, k, sae_steps)
    features = []
    if feature_tokens > 0:
        print(f"[6/9] feature stores of both SAEs for the app: {feature_tokens:,} tokens "
              f"through the model and each SAE (top contexts, histograms, logit effects)")
        for arch in sae_dirs:
            t0 = time.time()
            features.append(build_for_run(out_path, arch, FeatureConfig(n_tokens=feature_tokens)))
            print(f"      {features[-1]} in {time.time() - t0:.0f}s")
    circuit = demo_circuit(out_path, sae_dirs[CIRCUIT_SAE], hook)
    probes = demo_probes(out_path, sae_dirs, hook)
    print(f"done in {(time.time() - start) / 60:.1f} min. Browse it with `make app` (or "
          f"`interp app {out_path}`); figures and eval.json are in {out_path / 'saes'}.")
    return {"summary": summary, "probe_accuracy": probe_accuracy, "sae_eval": evals,
            "feature_stores": [str(f) for f in features], "circuit": circuit,
            "probes": probes}


def demo_harvest(out_path: Path, n_tokens: int, hook: str):
    """Steps 1-2: harvest the demo's hooks afresh, then read one epoch back from disk.
    Returns (the store, its summary)."""
    if (out_path / "activations" / "manifest.json").exists():
        shutil.rmtree(out_path / "activations")  # the demo always starts fresh
    print(f"[1/9] harvesting {n_tokens:,} tokens of the embedded othello model at "
          f"{', '.join(DEMO_HOOKS)} -> {out_path}")
    t0 = time.time()
    store = harvest(HarvestConfig(model="othello", hooks=DEMO_HOOKS, n_tokens=n_tokens,
                                  out=str(out_path), batch_size=64))
    dt = time.time() - t0
    s = store.summary()
    print(f"      {s['n_rows']:,} rows from {s['n_contexts']:,} games in {dt:.1f}s "
          f"({s['n_rows'] / dt:,.0f} tokens/s), {s['shards']} shard(s), dtype {s['dtype']}")

    print("[2/9] reading shuffled batches back from disk")
    t0 = time.time()
    n_rows, sq_norm = 0, 0.0
    for batch in store.batches(4096, hook, seed=0):
        n_rows += batch.shape[0]
        sq_norm += batch.square().sum().item()
    print(f"      one epoch of {n_rows:,} rows in {time.time() - t0:.2f}s; "
          f"mean squared norm at {hook}: {sq_norm / n_rows:.2f}")
    return store, s


def demo_board_probe(store) -> dict:
    """Step 3: a linear board-state probe at each demo hook; {hook: mean test accuracy}."""
    print(f"[3/9] linear board-state probe (empty/mine/theirs per square) on the first "
          f"{min(store.n_rows, PROBE_ROWS):,} stored rows")
    source = from_description(store.manifest["source"])
    games = source.games(0, store.n_contexts)
    rows = np.arange(min(store.n_rows, PROBE_ROWS))  # whole games: 80% fit, 20% test
    ctx, pos = store.locate(rows)
    move = pos - 1  # position p has just read move p-1
    valid = games.moves[ctx, move] >= 0
    labels = torch.from_numpy(games.board_state()[ctx, move].astype(np.int64))
    result = {}
    for h in DEMO_HOOKS:
        x = store.read(rows, h)
        n_tr = int(0.8 * len(rows))
        v = torch.from_numpy(valid)
        tr, te = slice(0, n_tr), slice(n_tr, None)
        acc = fit_linear_probe(x[tr][v[tr]], labels[tr][v[tr]], x[te][v[te]],
                               labels[te][v[te]], n_classes=3)
        result[h] = float(acc.mean())
        print(f"      {h}: mean test accuracy over 64 squares {acc.mean():.3f}")
    return result


def demo_sae(out_path: Path, sae_dir: Path, hook: str, arch: str, k: int,
             sae_steps: int) -> dict:
    """Steps 4-5: train one SAE from scratch and evaluate it (also spliced into the model)."""
    if sae_dir.exists():
        shutil.rmtree(sae_dir)
    print(f"[4/9] training a {arch} SAE (2048 latents, k={k}, {sae_steps} steps of 2048 "
          f"tokens) on {hook}")
    t0 = time.time()
    train_sae(TrainConfig(store=str(out_path), out=str(sae_dir), hook=hook, arch=arch,
                          d_sae=2048, k=k, batch_size=2048, steps=sae_steps,
                          eval_every=100, checkpoint_every=100))
    print(f"      trained in {time.time() - t0:.0f}s -> {sae_dir} (SAELens format)")
    print("[5/9] evaluating it: held-out reconstruction, and the model with it spliced in")
    ev = evaluate_sae(str(sae_dir), store=str(out_path), tokens=20_000, contexts=64)
    rec = ev["reconstruction"]
    print(f"      FVU {rec['fvu']:.3f}, L0 {rec['l0']:.1f}, dead "
          f"{100 * rec['dead_fraction']:.1f}%, dense {100 * rec['dense_fraction']:.1f}%; "
          f"CE-loss recovered {ev['ce_loss_recovered']:.3f} (zero ablation), "
          f"{ev['spliced']['mean']['ce_loss_recovered']:.3f} (mean ablation); "
          f"KL {ev['kl']:.4f} nats/token")
    return ev


def demo_circuit(out_path: Path, sae_dir: Path, hook: str, prompts: int = 32) -> dict:
    """A circuit for othello-legal over the demo's TopK SAE, checked by ablation."""
    print(f"[7/9] circuit for othello-legal ({prompts} prompts): attribution patching over "
          f"every latent and error node at {hook}, edges, faithfulness by ablation")
    t0 = time.time()
    model = load("othello").requires_grad_(False)
    spliced = SplicedModel(model, {hook: load_sae(sae_dir)})
    task = make_task("othello-legal", model, n=prompts)
    res = discover(spliced, task, CircuitConfig(method="atp", max_nodes=50))
    path = save_graph(res["graph"], out_path / "circuits" / "othello-legal.json")
    f = res["faithfulness"]
    print(f"      {len(res['nodes'])} nodes, {res['graph'].number_of_edges()} edges; "
          f"faithfulness {f['faithfulness']:.3f}, completeness {f['completeness']:.3f} "
          f"({f['ablation']} ablation) in {time.time() - t0:.0f}s -> {path}")
    return {"nodes": len(res["nodes"]), "faithfulness": f["faithfulness"],
            "completeness": f["completeness"], "path": str(path)}


def demo_probes(out_path: Path, sae_dirs: dict, hook: str,
                task: str = "othello-empty-c4") -> dict:
    """k-sparse probes for one board square: MLP neurons against both SAEs' latents."""
    layer = layer_of(hook)
    sources = [f"hook:blocks.{layer}.mlp.hook_post"] + [f"sae:{a}" for a in sae_dirs]
    print(f"[8/9] sparse probing {task}: {', '.join(sources)} (F statistic, k = 1, 4, 16)")
    t0 = time.time()
    saes = {a: load_sae(d) for a, d in sae_dirs.items()}
    res = compare_sources(load("othello").eval(), task, sources, saes, ks=[1, 4, 16],
                          n_contexts=128, max_examples=5000)
    path = save(res, out_path / "probes" / f"{task}.json")
    f1 = {}
    for source, r in res["sources"].items():
        f1[source] = {("dense" if p["k"] is None else p["k"]): p["test"]["f1"]
                      for p in r["results"]}
        print(f"      {source}: F1 " + ", ".join(
            f"{k if k == 'dense' else f'k={k}'} {v:.3f}" for k, v in f1[source].items()))
    print(f"      in {time.time() - t0:.0f}s -> {path}")
    return f1
