"""Section ``e2e`` of ``benchmarks/science.py``: end-to-end SAEs against local ones (Braun et
al. 2024, "Identifying Functionally Important Features with End-to-End Sparse Dictionary
Learning").

    python benchmarks/science.py --only e2e [--quick] [--work DIR]

Three training objectives of one SAE (``interp.sae.trainer``): ``store`` (local: reconstruct
the harvested activations), ``e2e`` (KL between the model's output and its output with the
SAE spliced in) and ``e2e+ds`` (that KL plus the downstream residual streams'
reconstruction). Every SAE is TopK (so L0 = k) with 2,048 latents, k = 4, 8, 16, 32, seed 0,
the same learning rate, warmup and decay, and AuxK off (``aux_alpha = 0``: the end-to-end
loss has no AuxK term, so the local SAEs get no dead-latent revival either and only the
objective differs). On othello ``blocks.3.hook_resid_post`` and pycode
``blocks.2.hook_resid_post`` (the middle residual streams of the 6- and 4-layer models).

Budget: 400 steps of 2,048 tokens (0.82M tokens) for every SAE. A local step reads 2,048
harvested rows (of a 1M-token harvest, under one epoch); an end-to-end step runs
``2048 // (n_ctx - 1)`` contexts through the model (othello 34 x 59 = 2,006 predicted
tokens, pycode 16 x 127 = 2,032). Measured on one contended core, an end-to-end step takes
0.24 s (othello) and 0.42 s (pycode), a local step a few ms: the 16 end-to-end SAEs at 400
steps and the budget check take ~45 minutes, the most the section may spend. The check: at
k = 8 every objective is trained again at half the steps (200), and the claims say whether
the ranking of the objectives changes between the two budgets. The learning rate is 2e-3
(the trainer's default for 2,048 latents, 5.7e-4, is set for runs of thousands of steps; a
150-step othello e2e run at k = 16 recovered 0.954 of the CE loss at 5.7e-4, 0.960 at
2e-3).

Evaluation, on the same held-out contexts for every SAE of a model (256 othello games of a
seed no training uses, 128 pycode contexts of its test split: ``evaluate_sae``'s source):
CE-loss recovered (zero ablation, every position spliced) from ``evaluate_sae``; on the
same tokens, positions 1.. (the BOS row is the same in every context and no harvest holds
it): L0, FVU at the hook, alive latents (latents that fire at least once on those tokens),
and the downstream error: for every ``blocks.L.hook_resid_post`` after the SAE's layer,
sum ||spliced - clean||^2 / sum ||clean||^2 (the ``ds`` terms of ``EndToEndObjective.loss``),
averaged over those layers. "At equal CE-loss recovered": at each local SAE's CE-loss
recovered, the L0 an end-to-end objective needs, interpolating log L0 linearly in CE-loss
recovered between its sweep points (a bound when the level is outside its sweep), and its
alive latents interpolated alike. Trained SAEs and their evaluations are kept under
``--work``: a second run only prints.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from science import HTKSettings, htk_store, table  # noqa: E402

OBJECTIVES = ("store", "e2e", "e2e+ds")
LABEL = {"store": "local", "e2e": "e2e", "e2e+ds": "e2e+ds"}
PAPER_L0 = ("Braun et al. 2024: at equal CE-loss increase, e2e SAEs need fewer features "
            "per datapoint (lower L0) than local SAEs")
PAPER_ALIVE = ("Braun et al. 2024: e2e SAEs need fewer total (alive) features than local "
               "SAEs at equal CE-loss increase")
PAPER_DS = ("Braun et al. 2024: e2e+ds keeps the downstream activations close to the "
            "original (e2e alone lets them go off-distribution) at a similar CE loss / L0")
DS_FACTOR = 2.0      # "much better": at least this factor lower downstream error
SIMILAR_CE = 0.02    # "similar": CE-loss recovered within this at equal k


@dataclass(frozen=True)
class E2ESettings:
    """The budgets every SAE of the section shares (module docstring: how they were set)."""

    models: tuple[tuple[str, str], ...] = (("othello", "blocks.3.hook_resid_post"),
                                           ("pycode", "blocks.2.hook_resid_post"))
    ks: tuple[int, ...] = (4, 8, 16, 32)
    latents: int = 2048
    batch_size: int = 2048       # tokens per step (end-to-end: contexts of n_ctx - 1)
    steps: int = 400
    check_steps: int | None = 200  # the second budget, at check_k (None: no check)
    check_k: int = 8
    lr: float = 2e-3
    harvest_tokens: int = 1_000_000
    eval_contexts: tuple[tuple[str, int], ...] = (("othello", 256), ("pycode", 128))
    seed: int = 0


def e2e_settings(quick: bool) -> E2ESettings:
    """The full budgets, or a smoke run's (a few minutes; the figures mean nothing)."""
    if not quick:
        return E2ESettings()
    return E2ESettings(ks=(4, 16), latents=256, batch_size=1024, steps=20, check_steps=None,
                       harvest_tokens=40_000, eval_contexts=(("othello", 16), ("pycode", 8)))


# ------------------------------------------------------------------ training
def sae_folder(work: Path, model: str, objective: str, k: int, steps: int) -> Path:
    """Where one SAE lives under ``--work`` (its name says everything that varies)."""
    return work / "e2e" / model / f"s{steps}" / f"{objective.replace('+', '_')}_k{k}"


def train_config(st: E2ESettings, model: str, hook: str, store: str, objective: str,
                 k: int, steps: int, out: Path):
    """The TrainConfig of one SAE: everything but the objective (and its data) shared."""
    from interp.sae.trainer import TrainConfig

    common = dict(out=str(out), hook=hook, arch="topk", d_sae=st.latents, k=k,
                  batch_size=st.batch_size, steps=steps, lr=st.lr, seed=st.seed,
                  sae_options={"aux_alpha": 0.0}, eval_every=10**9, log_every=50,
                  checkpoint_every=100)
    if objective == "store":
        return TrainConfig(store=store, **common)
    return TrainConfig(store="", model=model, objective=objective, eval_contexts=32,
                       **common)


def planned_runs(st: E2ESettings) -> list[tuple[str, int, int]]:
    """(objective, k, steps) of every SAE of one model: the sweep, then the budget check."""
    runs = [(o, k, st.steps) for k in st.ks for o in OBJECTIVES]
    if st.check_steps:
        runs += [(o, st.check_k, st.check_steps) for o in OBJECTIVES]
    return runs


# ------------------------------------------------------------------ evaluation
def eval_tokens(model_name: str, model, n_ctx: int, contexts: int) -> list[torch.Tensor]:
    """The held-out contexts ``evaluate_sae`` splices into (same source, same order)."""
    from interp.data.sources import batches
    from interp.sae.evaluate import eval_token_source

    src = eval_token_source(model_name, None, model)
    return list(batches(src, n_ctx, 16, max_contexts=contexts))


def downstream_hooks(model, hook: str) -> list[str]:
    """The residual streams after the SAE's layer (the e2e+ds objective's targets)."""
    from interp.hooks import layer_of

    return [f"blocks.{i}.hook_resid_post" for i in range(layer_of(hook) + 1,
                                                          model.cfg.n_layers)]


@torch.no_grad()
def local_and_downstream(model, sae, hook: str, toks: list[torch.Tensor]) -> dict:
    """On positions 1.. of ``toks``: L0, FVU at the hook, alive latents (fire at least once)
    and, per downstream residual stream, sum ||spliced - clean||^2 / sum ||clean||^2."""
    from interp.sae.evaluate import reconstruction_metrics, splice_hooks

    later = downstream_hooks(model, hook)
    err = {h: 0.0 for h in later}
    ref = {h: 0.0 for h in later}
    acts = []
    for t in toks:
        _, clean = model.run_with_cache(t, names_filter=[hook] + later)
        got: dict = {}
        keep = [(h, lambda a, hook: got.__setitem__(hook.name, a)) for h in later]
        model.run_with_hooks(t, fwd_hooks=splice_hooks(sae) + keep)
        acts.append(clean[hook][:, 1:].reshape(-1, sae.cfg.d_in))
        for h in later:
            err[h] += float((got[h][:, 1:] - clean[h][:, 1:]).double().square().sum())
            ref[h] += float(clean[h][:, 1:].double().square().sum())
    rec = reconstruction_metrics(sae, [torch.cat(acts)])
    ds = {h: err[h] / ref[h] for h in later}
    return {"l0": rec["l0"], "fvu": rec["fvu"], "n_tokens": rec["n_tokens"],
            "alive": int(sum(d > 0 for d in rec["density"])), "ds_by_layer": ds,
            "ds_nmse": float(np.mean(list(ds.values())))}


def evaluate_one(folder: Path, model_name: str, model, hook: str, toks, contexts: int) -> dict:
    """Every figure of one SAE, cached in ``science_e2e_eval.json`` beside it (same
    contexts: a changed count re-evaluates)."""
    from interp.sae.evaluate import evaluate_sae
    from interp.sae.io import load_sae

    cache = folder / "science_e2e_eval.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("contexts") == contexts:
            return saved
    ev = evaluate_sae(str(folder), contexts=contexts, write=False)
    res = {"contexts": contexts, "ce_loss_recovered": ev["ce_loss_recovered"], "kl": ev["kl"],
           "ce_loss_recovered_mean_ablation": ev["spliced"]["mean"]["ce_loss_recovered"],
           **local_and_downstream(model, load_sae(str(folder)).eval(), hook, toks)}
    cache.write_text(json.dumps(res, indent=1) + "\n")
    return res


def e2e_model(work: Path, model_name: str, hook: str, st: E2ESettings) -> dict:
    """Train (or read back) and evaluate every SAE of one model, one at a time."""
    from interp.hooks import default_n_ctx, validate_hooks
    from interp.models import load
    from trained import trained_metrics

    t0 = time.time()
    model = load(model_name)
    validate_hooks(model, [hook])
    store = htk_store(work, model_name, hook, HTKSettings(tokens=st.harvest_tokens))
    contexts = dict(st.eval_contexts)[model_name]
    toks = eval_tokens(model_name, model, default_n_ctx(model), contexts)
    runs = []
    for objective, k, steps in planned_runs(st):
        folder = sae_folder(work, model_name, objective, k, steps)
        m = trained_metrics(train_config(st, model_name, hook, store, objective, k, steps, folder))
        ev = evaluate_one(folder, model_name, model, hook, toks, contexts)
        runs.append({"objective": objective, "k": k, "steps": steps, "folder": str(folder),
                     "train_seconds": m["train_seconds"], "tokens": m.get("tokens"), **ev})
        print(f"  e2e {model_name} {objective} k={k} steps={steps}: CE rec "
              f"{ev['ce_loss_recovered']:.4f}, alive {ev['alive']}, ds {ev['ds_nmse']:.4f} "
              f"({m['train_seconds']:.0f} s)", flush=True)
    return {"model": model_name, "hook": hook, "store": store, "eval_contexts": contexts,
            "downstream": downstream_hooks(model, hook), "runs": runs,
            "seconds": time.time() - t0}


# ------------------------------------------------------------------ comparison
def sweep(res: dict, objective: str, steps: int) -> list[dict]:
    """One objective's runs at one budget, by k."""
    return sorted((r for r in res["runs"] if r["objective"] == objective
                   and r["steps"] == steps), key=lambda r: r["k"])


def at_ce(points: list[dict], level: float) -> dict:
    """The L0 and alive latents a sweep needs to reach CE-loss recovered ``level``: log L0
    and alive linear in CE-loss recovered between neighbouring sweep points (sorted by L0;
    the first crossing). Outside the sweep: a bound on L0 ('<' / '>'), alive unknown."""
    ce = [p["ce_loss_recovered"] for p in points]
    if level <= ce[0]:
        return {"l0": points[0]["l0"], "bound": "<=", "alive": None}
    for a, b in zip(points, points[1:]):
        lo, hi = a["ce_loss_recovered"], b["ce_loss_recovered"]
        if lo < level <= hi:
            w = (level - lo) / (hi - lo)
            l0 = math.exp((1 - w) * math.log(a["l0"]) + w * math.log(b["l0"]))
            return {"l0": l0, "bound": "", "alive": (1 - w) * a["alive"] + w * b["alive"]}
    return {"l0": points[-1]["l0"], "bound": ">", "alive": None}


def equal_ce(res: dict, steps: int) -> list[dict]:
    """At each local SAE's CE-loss recovered: what each end-to-end objective needs."""
    rows = []
    for p in sweep(res, "store", steps):
        row = {"k": p["k"], "ce": p["ce_loss_recovered"], "local_l0": p["l0"],
               "local_alive": p["alive"]}
        for o in OBJECTIVES[1:]:
            row[o] = at_ce(sweep(res, o, steps), p["ce_loss_recovered"])
        rows.append(row)
    return rows


def fmt_need(need: dict) -> tuple[str, str]:
    """(L0, alive) of ``at_ce`` as table cells."""
    alive = "n/a (outside sweep)" if need["alive"] is None else f"{need['alive']:.0f}"
    return f"{need['bound']}{need['l0']:.2f}", alive


def run_rows(res: dict) -> list[list]:
    """One table row per SAE of one model."""
    return [[res["model"], LABEL[r["objective"]], r["k"], r["steps"], f"{r['l0']:.2f}",
             f"{r['ce_loss_recovered']:.4f}", r["alive"], f"{r['ds_nmse']:.4f}",
             f"{r['fvu']:.4f}"] for r in sorted(res["runs"], key=lambda r: (
                 -r["steps"], OBJECTIVES.index(r["objective"]), r["k"]))]


def equal_ce_rows(res: dict, steps: int) -> list[list]:
    """The interpolated comparison of one model: one row per local SAE."""
    rows = []
    for r in equal_ce(res, steps):
        cells = [c for o in OBJECTIVES[1:] for c in fmt_need(r[o])]
        rows.append([res["model"], f"{r['ce']:.4f} (local k={r['k']})",
                     f"{r['local_l0']:.2f}", r["local_alive"], *cells])
    return rows


def budget_note(res: dict, st: E2ESettings) -> str:
    """Whether the order of the objectives by CE-loss recovered and by downstream error at
    k = check_k is the same at the check budget as at the main one."""
    if not st.check_steps:
        return "no budget check"

    def order(steps: int, key: str) -> list[str]:
        runs = [r for r in res["runs"] if r["steps"] == steps and r["k"] == st.check_k]
        return [r["objective"] for r in sorted(runs, key=lambda r: r[key])]

    same = all(order(st.check_steps, key) == order(st.steps, key)
               for key in ("ce_loss_recovered", "ds_nmse"))
    return (f"ranking at k={st.check_k} {'unchanged' if same else 'changed'} from "
            f"{st.check_steps} to {st.steps} steps")


def l0_claim(res: dict, st: E2ESettings) -> dict:
    """Claim 1, L0: at each local SAE's CE-loss recovered, the L0 e2e needs. yes: lower at
    every level; partly: at some; no: at none (a bound '<=' below the sweep counts lower)."""
    rows = equal_ce(res, st.steps)
    lower = [r["e2e"]["l0"] < r["local_l0"] or (r["e2e"]["bound"] == "<="
                                                  and r["e2e"]["l0"] <= r["local_l0"])
             for r in rows]
    figs = "; ".join(f"CE {r['ce']:.3f}: e2e L0 {fmt_need(r['e2e'])[0]} vs local "
                     f"{r['local_l0']:.1f}" for r in rows)
    return {"claim": f"{res['model']}: e2e needs a lower L0 than local at equal CE-loss "
                     f"recovered",
            "ours": f"{figs} ({budget_note(res, st)})", "paper": PAPER_L0,
            "holds": "yes" if all(lower) else "partly" if any(lower) else "no"}


def alive_claim(res: dict, st: E2ESettings) -> dict:
    """Claim 1, alive latents: interpolated where the level is inside e2e's sweep; where it
    is below it, e2e's smallest-k SAE (which already recovers more) stands in, an upper
    bound on what e2e needs only if alive latents grow with k (shown as '<=')."""
    rows, e2e = equal_ce(res, st.steps), sweep(res, "e2e", st.steps)
    cells, fewer = [], []
    for r in rows:
        need = r["e2e"]
        if need["alive"] is not None:
            alive, mark = need["alive"], ""
        elif need["bound"] == "<=":
            alive, mark = e2e[0]["alive"], "<="
        else:
            continue  # above e2e's sweep: no figure
        fewer.append(alive < r["local_alive"])
        cells.append(f"CE {r['ce']:.3f}: e2e {mark}{alive:.0f} vs local {r['local_alive']}")
    return {"claim": f"{res['model']}: e2e has fewer alive latents than local at equal "
                     f"CE-loss recovered (of {st.latents:,})",
            "ours": "; ".join(cells) or "no comparable level", "paper": PAPER_ALIVE,
            "holds": "yes" if fewer and all(fewer) else "partly" if any(fewer) else "no"}


def ds_claim(res: dict, st: E2ESettings) -> dict:
    """Claim 2: e2e+ds against e2e at each k. yes: downstream error at least DS_FACTOR
    lower at every k and CE-loss recovered within SIMILAR_CE; partly: one of the two."""
    e2e, ds = sweep(res, "e2e", st.steps), sweep(res, "e2e+ds", st.steps)
    ratio = [a["ds_nmse"] / max(b["ds_nmse"], 1e-12) for a, b in zip(e2e, ds)]
    dce = [b["ce_loss_recovered"] - a["ce_loss_recovered"] for a, b in zip(e2e, ds)]
    much, similar = min(ratio) >= DS_FACTOR, max(abs(d) for d in dce) <= SIMILAR_CE
    figs = "; ".join(f"k={a['k']}: ds error {a['ds_nmse']:.3f} -> {b['ds_nmse']:.3f} "
                     f"({r:.1f}x), CE rec {d:+.3f}" for a, b, r, d in zip(e2e, ds, ratio, dce))
    return {"claim": f"{res['model']}: e2e+ds reconstructs the downstream residual streams "
                     f"much better (>= {DS_FACTOR:.0f}x) than e2e at similar CE-loss "
                     f"recovered (within {SIMILAR_CE}) and equal L0",
            "ours": f"{figs} (mean over {', '.join(res['downstream'])})", "paper": PAPER_DS,
            "holds": "yes" if much and similar else "partly" if much or similar else "no"}


def e2e_claims(results: dict, st: E2ESettings) -> list[dict]:
    """Every claim row, per model."""
    return [c for res in results.values()
            for c in (l0_claim(res, st), alive_claim(res, st), ds_claim(res, st))]


# ------------------------------------------------------------------ output
def write_figure(results: dict, st: E2ESettings, path: Path) -> None:
    """CE-loss recovered against L0 (log axis), one trace per objective, a subplot per
    model; the check budget's SAEs as open markers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(results), subplot_titles=[
        f"{m} {r['hook']}" for m, r in results.items()])
    colors = {"store": "#1f77b4", "e2e": "#d62728", "e2e+ds": "#2ca02c"}
    for col, res in enumerate(results.values(), start=1):
        for o in OBJECTIVES:
            pts = sweep(res, o, st.steps)
            fig.add_trace(go.Scatter(
                x=[p["l0"] for p in pts], y=[p["ce_loss_recovered"] for p in pts],
                mode="lines+markers", name=LABEL[o], legendgroup=o, showlegend=col == 1,
                line={"color": colors[o]}, text=[f"k={p['k']}, alive {p['alive']}, ds "
                                                 f"{p['ds_nmse']:.3f}" for p in pts]),
                row=1, col=col)
            chk = sweep(res, o, st.check_steps) if st.check_steps else []
            if chk:
                fig.add_trace(go.Scatter(
                    x=[p["l0"] for p in chk], y=[p["ce_loss_recovered"] for p in chk],
                    mode="markers", name=f"{LABEL[o]} ({st.check_steps} steps)",
                    legendgroup=o, showlegend=col == 1,
                    marker={"color": colors[o], "symbol": "circle-open", "size": 10}),
                    row=1, col=col)
        fig.update_xaxes(type="log", title_text="L0", row=1, col=col)
        fig.update_yaxes(title_text="CE-loss recovered", row=1, col=col)
    fig.update_layout(title=f"Local vs end-to-end TopK SAEs ({st.latents:,} latents, "
                            f"{st.steps} steps x {st.batch_size:,} tokens)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True)  # opens offline


RUN_HEADER = ["model", "objective", "k", "steps", "L0", "CE-loss recovered", "alive latents",
              "downstream NMSE (mean)", "FVU at hook"]
EQUAL_HEADER = ["model", "CE-loss recovered level", "local L0", "local alive", "e2e L0",
                "e2e alive", "e2e+ds L0", "e2e+ds alive"]


def section_e2e(args: argparse.Namespace) -> dict:
    """Local, e2e and e2e+ds TopK SAEs on both embedded models (module docstring)."""
    quick = bool(getattr(args, "quick", False))
    st = e2e_settings(quick)
    torch.set_num_threads(1)  # one core, one SAE at a time (the machine is shared)
    work = Path(getattr(args, "work", None) or "/tmp/interp-science")
    work.mkdir(parents=True, exist_ok=True)
    results = {m: e2e_model(work, m, h, st) for m, h in st.models}
    html = HERE / "results" / f"science_e2e{'_quick' if quick else ''}.html"
    write_figure(results, st, html)
    text = table(RUN_HEADER, [r for res in results.values() for r in run_rows(res)])
    text += ("\n\nAt equal CE-loss recovered (each local SAE's): the L0 and alive latents "
             "each end-to-end objective needs, log L0 and alive interpolated linearly in "
             "CE-loss recovered between its sweep points ('<=': the level is below its "
             "sweep, '>': above)\n\n")
    text += table(EQUAL_HEADER, [r for res in results.values()
                                 for r in equal_ce_rows(res, st.steps)])
    text += f"\n\nfigure: {html}"
    return {"table": text, "claims": e2e_claims(results, st),
            "results": {"settings": asdict(st), **results}}


SECTIONS = {"e2e": section_e2e}
