"""Replacement models of othello at several L0: per-layer transcoders (PLTs) against one
cross-layer transcoder (CLT), every MLP replaced, error terms dropped.

    python benchmarks/replacement_sweep.py [--plt-k 8,16,32] [--clt-k 4,8,16] [--games 1000]

For each per-layer k it trains a PLT set (batchtopk, 1024 latents, as the shipped
``othello/plt`` is trained: ``interp.sae.release.TRANSCODER_RUN``) and for each k a CLT
(batchtopk, 512 latents per layer, ``CLT_RUN``) on the release's store of every MLP's input
and output (``runs/release/othello-mlp-io``, harvested by ``make saes`` or here), reusing the
shipped set and CLT where their k matches; then evaluates each as a replacement model
(``interp.sae.replacement.evaluate_replacement``: 256 held-out contexts, legal moves on
``--games`` games) and prints one row each: total L0 (summed over layers), mean per-layer
FVU, CE-loss recovered, KL, top-1 agreement and legal-move accuracy. Trained dictionaries
are kept under ``runs/sweep/`` (a second run only evaluates).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _train(spec, store: Path, out: Path) -> None:
    from interp.sae.trainer import TrainConfig, train_sae

    if (out / "cfg.json").exists():
        return
    train_sae(TrainConfig(store=str(store), out=str(out), hook=None if spec.clt_layers else
                          spec.hook, hook_out=spec.hook_out, clt_layers=spec.clt_layers,
                          arch=spec.arch, d_sae=spec.d_sae, k=spec.k, steps=spec.steps,
                          batch_size=spec.batch_size, lr=spec.lr,
                          sae_options=dict(spec.options), eval_every=10**9,
                          checkpoint_every=10**9), progress=False)


def contenders(plt_ks: list[int], clt_ks: list[int], work: Path) -> list[tuple[str, str]]:
    """(label, what evaluate_replacement takes) for every set and CLT, trained if missing."""
    from interp.sae.release import RELEASE, _release_store

    plts = [s for s in RELEASE if s.model == "othello" and (s.label or "").startswith("plt/")]
    (clt,) = [s for s in RELEASE if s.model == "othello" and s.label == "clt"]
    store = _release_store(plts[0], Path("runs/release"))
    out = []
    for k in plt_ks:
        if k == plts[0].k and all(s.folder.exists() for s in plts):
            out.append((f"PLT k={k}/layer (shipped)", "othello/plt"))
            continue
        folder = work / f"plt-k{k}"
        for s in plts:
            _train(replace(s, k=k), store, folder / s.folder.name)
        out.append((f"PLT k={k}/layer", str(folder)))
    for k in clt_ks:
        if k == clt.k and clt.folder.exists():
            out.append((f"CLT k={k}/layer (shipped)", "othello/clt"))
            continue
        _train(replace(clt, k=k), store, work / f"clt-k{k}")
        out.append((f"CLT k={k}/layer", str(work / f"clt-k{k}")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plt-k", default="8,16,32")
    ap.add_argument("--clt-k", default="4,8,16")
    ap.add_argument("--games", type=int, default=1000)
    ap.add_argument("--work", default="runs/sweep")
    args = ap.parse_args()
    from interp.sae.replacement import evaluate_replacement

    ks = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    rows = []
    for label, spec in contenders(ks(args.plt_k), ks(args.clt_k), Path(args.work)):
        ev = evaluate_replacement([spec], contexts=256, games=args.games)
        per_layer = [x for d in ev["dictionaries"] for x in d.get("layers", [d])]
        rows.append((label, ev["total_l0"], sum(x["fvu"] for x in per_layer) / len(per_layer),
                     max(x["fvu"] for x in per_layer), ev["ce_loss_recovered"], ev["kl"],
                     ev["top1_agreement"], ev["legal_moves"]["replaced"],
                     ev["legal_moves"]["original"]))
        print(f"done: {label}", flush=True)
    print("\n| dictionaries | total L0 | mean FVU | max FVU | CE-loss recovered | KL | "
          "top-1 agreement | legal moves (model) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.0f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | "
              f"{100 * r[6]:.1f}% | {100 * r[7]:.1f}% ({100 * r[8]:.1f}%) |")


if __name__ == "__main__":
    main()
