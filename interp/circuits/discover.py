"""One call from a task to a checked circuit: node attribution, edges between the retained
nodes, a pruned graph, and its faithfulness (``interp circuit``)."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from interp.circuits.attribution import edge_attribution, node_attribution, top_nodes
from interp.circuits.faithfulness import faithfulness
from interp.circuits.graph import OUTPUT, build_graph, node_key, prune
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import Task
from interp.errors import DataError
from interp.provenance import model_name_of


@dataclass
class CircuitConfig:
    method: str = "ig"              # atp or ig
    patch: str = "counterfactual"   # counterfactual, zero or mean
    steps: int = 10                 # IG steps
    node_threshold: float = 0.0     # keep nodes with |effect| >= this ...
    max_nodes: int = 100            # ... at most this many (largest |effect| first)
    edge_threshold: float = 0.0
    linear: bool = False            # edges with attention patterns and LN scales frozen
    sum_positions: bool = False     # nodes are latents over all positions together
    ablate_errors: bool = True      # faithfulness: ablate error nodes outside the circuit
    ablation: str | None = None     # faithfulness: counterfactual (default if any) or mean


def saes_for(names: list[str]) -> dict:
    """{hook: SAE} from registry names or SAE folders (the hook from each SAE's metadata; a
    transcoder's is the hook it writes, where ``SplicedModel`` splices it)."""
    from interp.hooks import sae_hook
    from interp.runs import resolve_sae
    from interp.sae.evaluate import written_hook

    out, named = {}, {}
    for name in names:
        found = resolve_sae(name)
        hook = written_hook(found.sae) or sae_hook(found.sae, name)
        if hook in out:
            if found.folder.resolve() == named[hook][1]:
                continue  # one SAE named twice (a run's, and by its folder or name)
            raise DataError(f"two SAEs for {hook} ({named[hook][0]} and {name}): splice one "
                            f"SAE per hook")
        out[hook], named[hook] = found.sae, (name, found.folder.resolve())
    return out


def discover(spliced: SplicedModel, task: Task, cfg: CircuitConfig | None = None) -> dict:
    """Returns {"graph": networkx DiGraph, "faithfulness": {...}, "seconds": ...}."""
    cfg = cfg or CircuitConfig()
    t0 = time.time()
    scores = node_attribution(spliced, task, method=cfg.method, patch=cfg.patch,
                              steps=cfg.steps, sum_positions=cfg.sum_positions)
    ranked = [(n, s) for n, s in top_nodes(scores, cfg.max_nodes)
              if abs(s) >= cfg.node_threshold]
    if not ranked:
        raise DataError(f"no node reaches |effect| >= {cfg.node_threshold}; the largest is "
                        f"{max(float(s.abs().max()) for s in scores.values()):.4g}")
    nodes = [n for n, _ in ranked]
    edges, _ = edge_attribution(spliced, task, nodes, patch=cfg.patch, linear=cfg.linear)
    activations = _mean_activations(spliced, task, nodes)
    meta = {"task": task.name, "task_description": task.description, "prompts": len(task),
            "metric": task.metric_kind, "hooks": spliced.hooks,
            "model": model_name_of(spliced.model), **asdict(cfg)}
    graph = prune(build_graph(dict(ranked), edges, activations, meta),
                  edge_threshold=cfg.edge_threshold)
    kept = [n for n in nodes if node_key(n) in graph]
    faith = faithfulness(spliced, task, kept, ablate_errors=cfg.ablate_errors,
                         ablation=cfg.ablation)
    graph.graph["faithfulness"] = faith["faithfulness"]
    graph.graph["completeness"] = faith["completeness"]
    if faith.get("faithfulness_note"):
        graph.graph["faithfulness_note"] = faith["faithfulness_note"]
    return {"graph": graph, "faithfulness": faith, "nodes": kept,
            "seconds": time.time() - t0}


@torch.no_grad()
def _mean_activations(spliced: SplicedModel, task: Task, nodes) -> dict:
    res = spliced.run(task.clean)
    out = {}
    for n in nodes:
        st = res.hooks[n.hook]
        if n.is_error:
            out[n] = float(st.err[:, n.pos].norm(dim=-1).mean())
        else:
            out[n] = float(st.acts[:, n.pos, n.latent].mean())
    return out


__all__ = ["CircuitConfig", "discover", "saes_for", "OUTPUT"]
