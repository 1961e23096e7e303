"""One call from a property and a set of sources to a comparison table, a figure and JSON
(``interp probe``): k-sparse probes per source on the same examples and split."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from interp.probes.datasets import make_dataset, probe_features
from interp.probes.sparse import (K_DEFAULT, macro_average, one_vs_rest, sparse_probe,
                                  train_test_split)


def compare_sources(model, dataset: str, sources: list[str], saes: dict | None = None,
                    ks=K_DEFAULT, method: str = "f_stat", n_contexts: int = 256,
                    max_examples: int = 10_000, seed: int = 0, top_units: int = 10) -> dict:
    """Probes for each source (``hook:NAME`` or ``sae:NAME``) on the same labelled tokens."""
    ds = make_dataset(dataset, n_contexts, model)
    out = {"dataset": dataset, "description": ds.description, "method": method,
           "ks": list(ks), "sources": {}}
    split = None
    for source in sources:
        t0 = time.time()
        x, y, info = probe_features(model, ds, source, saes, max_examples=max_examples,
                                    seed=seed)
        entry: dict = {"info": info}
        if int(y.max()) > 1:  # several classes: one against the rest, macro-averaged
            per_class = one_vs_rest(x, y, ks=ks, method=method, seed=seed)
            results = macro_average(per_class)
            entry["per_class"] = {str(c): [asdict(r) for r in rs] for c, rs in per_class.items()}
            largest = None
        else:
            split = split or train_test_split(y, 0.25, seed)
            results = sparse_probe(x, y, ks=ks, method=method, split=split)
            largest = [r for r in results if r.k is not None][-1]  # the largest sparse probe
        info["seconds"] = time.time() - t0
        entry["results"] = [asdict(r) for r in results]
        if largest is not None:
            ranked = sorted(zip(largest.units, largest.weights), key=lambda p: -abs(p[1]))
            entry["top_units"] = [{"unit": int(u), "weight": float(w)}
                                  for u, w in ranked[:top_units]]
        out["sources"][source] = entry
    return out


def equal_l0_saes(prefix: str, l0: float | None = None, tolerance: float = 0.25
                  ) -> tuple[dict, float, list[tuple[str, float]]]:
    """The shipped SAEs under ``prefix`` (``MODEL/HOOK``) whose L0 is within ``tolerance``
    (relative) of ``l0`` (default: the median L0 there), for an architecture comparison at
    equal sparsity as SAEBench's sparse probing does. A HierarchicalTopK SAE trained with a
    larger k joins at k' = round(l0): its top-k' prefix is a code it was trained to give.

    Returns ({name: SAE}, the target L0, [(skipped name, its L0)]).
    """
    import copy
    import statistics

    from interp.errors import DataError
    from interp.sae.release import entry_architecture, load_pretrained, registry

    prefix = prefix.rstrip("/")
    entries = {n: e for n, e in registry().items() if n.startswith(prefix + "/")}
    if not entries:
        hooks = sorted({n.rsplit("/", 1)[0] for n in registry()})
        raise DataError(f"no shipped SAEs under {prefix!r}; there are SAEs under {hooks}")
    target = float(l0) if l0 else statistics.median(e["l0"] for e in entries.values())
    saes, skipped = {}, []
    for name, e in sorted(entries.items()):
        if abs(e["l0"] - target) <= tolerance * target:
            saes[name] = load_pretrained(name)
        elif entry_architecture(e).any_k and e["l0"] > target:  # one SAE serves any k' <= K
            sae = copy.deepcopy(load_pretrained(name))
            sae.cfg.k = max(1, round(target))
            saes[f"{name}@k{sae.cfg.k}"] = sae
        else:
            skipped.append((name, float(e["l0"])))
    return saes, target, skipped


def table(res: dict) -> str:
    lines = [f"{res['dataset']} ({res['description']}), selector {res['method']}; "
             f"held-out F1 / AUROC"]
    for source, r in res["sources"].items():
        info = r["info"]
        classes = (f"{len(r['per_class'])} classes, one vs rest, macro-averaged"
                   if "per_class" in r else f"{info['positives']} positive")
        lines.append(f"  {source}  ({info['units']} units, {info['examples']} examples, "
                     f"{classes})")
        for p in r["results"]:
            k = "dense" if p["k"] is None else f"k={p['k']}"
            unit = f"  unit {p['units'][0]}" if p["k"] == 1 and p["units"] else ""
            lines.append(f"    {k:>7s}  F1 {p['test']['f1']:.3f}  acc "
                         f"{p['test']['accuracy']:.3f}  AUROC {p['test']['auroc']:.3f}{unit}")
    return "\n".join(lines)


def f1_figure(res: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for source, r in res["sources"].items():
        sparse = [p for p in r["results"] if p["k"] is not None]
        fig.add_trace(go.Scatter(x=[p["k"] for p in sparse], y=[p["test"]["f1"] for p in sparse],
                                 mode="lines+markers", name=source))
        dense = [p for p in r["results"] if p["k"] is None]
        if dense:
            fig.add_hline(y=dense[0]["test"]["f1"], line_dash="dot",
                          annotation_text=f"{source} dense", opacity=0.5)
    fig.update_layout(title=f"{res['dataset']}: F1 vs k ({res['method']})", xaxis_type="log",
                      xaxis_title="k (units in the probe)", yaxis_title="held-out F1")
    return fig


def save(res: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    f1_figure(res).write_html(out.with_suffix(".html"))
    return out
