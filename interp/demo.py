"""``make demo`` / ``interp demo``: the main job on the embedded default.

Harvests residual-stream activations of the embedded othello model into ``runs/demo``,
reads them back the way SAE training does (shuffled batches from disk), fits a linear
board-state probe on them (a check that the store holds the model's picture of the board),
trains a TopK SAE on them from scratch and evaluates it, including with the SAE spliced into
the model, and builds the SAE's feature store for the app (``interp demo`` then starts the app
unless ``--no-app``).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

DEMO_HOOKS = ["blocks.3.hook_resid_post", "blocks.5.hook_resid_post"]
PROBE_ROWS = 30_000


def run_demo(out: str = "runs/demo", n_tokens: int = 200_000, sae_steps: int = 300,
             feature_tokens: int = 30_000) -> dict:
    from interp.activations.harvest import HarvestConfig, harvest
    from interp.data.sources import OthelloSource
    from interp.models.evaluate import fit_linear_probe

    out_path = Path(out)
    if (out_path / "activations" / "manifest.json").exists():
        shutil.rmtree(out_path / "activations")  # the demo always starts fresh
    print(f"[1/6] harvesting {n_tokens:,} tokens of the embedded othello model at "
          f"{', '.join(DEMO_HOOKS)} -> {out_path}")
    t0 = time.time()
    store = harvest(HarvestConfig(model="othello", hooks=DEMO_HOOKS, n_tokens=n_tokens,
                                  out=str(out_path), batch_size=64))
    dt = time.time() - t0
    s = store.summary()
    print(f"      {s['n_rows']:,} rows from {s['n_contexts']:,} games in {dt:.1f}s "
          f"({s['n_rows'] / dt:,.0f} tokens/s), {s['shards']} shard(s), dtype {s['dtype']}")

    print("[2/6] reading shuffled batches back from disk")
    hook = DEMO_HOOKS[0]
    t0 = time.time()
    n_rows, sq_norm = 0, 0.0
    for batch in store.batches(4096, hook, seed=0):
        n_rows += batch.shape[0]
        sq_norm += batch.square().sum().item()
    print(f"      one epoch of {n_rows:,} rows in {time.time() - t0:.2f}s; "
          f"mean squared norm at {hook}: {sq_norm / n_rows:.2f}")

    print(f"[3/6] linear board-state probe (empty/mine/theirs per square) on the first "
          f"{min(store.n_rows, PROBE_ROWS):,} stored rows")
    source = OthelloSource(**{k: v for k, v in store.manifest["source"].items()
                              if k in ("seed",)})
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
    sae_dir = out_path / "saes" / "topk"
    if sae_dir.exists():
        shutil.rmtree(sae_dir)
    print(f"[4/6] training a TopK SAE (2048 latents, k=16, {sae_steps} steps of 2048 tokens) "
          f"on {hook}")
    from interp.sae.evaluate import evaluate_sae
    from interp.sae.trainer import TrainConfig, train_sae

    t0 = time.time()
    train_sae(TrainConfig(store=str(out_path), out=str(sae_dir), hook=hook, arch="topk",
                          d_sae=2048, k=16, batch_size=2048, steps=sae_steps,
                          eval_every=100, checkpoint_every=100))
    print(f"      trained in {time.time() - t0:.0f}s -> {sae_dir} (SAELens format)")
    print("[5/6] evaluating it: held-out reconstruction, and the model with the SAE spliced in")
    ev = evaluate_sae(str(sae_dir), store=str(out_path), tokens=20_000, contexts=64)
    rec = ev["reconstruction"]
    print(f"      FVU {rec['fvu']:.3f}, L0 {rec['l0']:.1f}, dead {100 * rec['dead_fraction']:.1f}%"
          f", dense {100 * rec['dense_fraction']:.1f}%; CE-loss recovered "
          f"{ev['ce_loss_recovered']:.3f} (zero ablation), "
          f"{ev['spliced']['mean']['ce_loss_recovered']:.3f} (mean ablation); "
          f"KL {ev['kl']:.4f} nats/token")
    features = None
    if feature_tokens > 0:
        from interp.features import FeatureConfig, build_for_run

        print(f"[6/6] feature store of the SAE for the app: {feature_tokens:,} tokens through "
              f"the model and the SAE (top contexts, histograms, logit effects)")
        t0 = time.time()
        features = build_for_run(out_path, sae_dir.name, FeatureConfig(n_tokens=feature_tokens))
        print(f"      {features} in {time.time() - t0:.0f}s")
    print(f"done. Browse it with `make app` (or `interp app {out_path}`); figures and "
          f"eval.json are in {sae_dir}.")
    return {"summary": s, "probe_accuracy": result, "sae_eval": ev,
            "feature_store": str(features) if features else None}
