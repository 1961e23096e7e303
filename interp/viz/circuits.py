"""Circuits for the app and notebooks: discovery on a built-in task with its faithfulness
curve in one call (JSON-ready, so it can be cached), the nodes of a graph as choices, a
node's (hook, latent), and the circuit drawn on the graph view's grid."""
from __future__ import annotations

import networkx as nx

from interp.circuits.attribution import OUTPUT
from interp.errors import DataError


def tasks_for(model_name: str) -> list[str]:
    """The built-in circuit tasks of a model."""
    from interp.circuits.tasks import BUILTIN

    return [name for name, (model, _) in BUILTIN.items() if model == model_name]


def prompt_task(model_name: str, model, clean: str, answer: str, wrong: str,
                patch: str | None = None):
    """A circuit task of one prompt the user typed (or clicked on a board): the metric is
    the logit of ``answer`` minus that of ``wrong`` at the last position; ``patch``, a
    counterfactual prompt of the same number of tokens, or None (zero ablation)."""
    import torch

    from interp.circuits.tasks import Task
    from interp.viz.prompts import prompt_tokens, single_token

    tokens = prompt_tokens(model_name, model, clean)
    counter = None
    if patch:
        counter = prompt_tokens(model_name, model, patch)
        if counter.shape != tokens.shape:
            raise DataError(f"the counterfactual prompt is {counter.shape[1]} tokens, the "
                            f"prompt {tokens.shape[1]}: positions are kept apart, so give "
                            f"both the same number of tokens")
    if not answer or not wrong:
        raise DataError("give an answer token and a wrong token: the metric is their logit "
                        "difference at the last position")
    ids = [single_token(model_name, model, t.strip()) for t in (answer, wrong)]
    if ids[0] == ids[1]:
        raise DataError(f"the answer and the wrong token are both {answer!r}: the metric "
                        f"would be 0")
    return Task("your prompt", tokens, counter, torch.tensor(ids[:1]), torch.tensor(ids[1:]),
                description=f"logit({answer}) - logit({wrong}) after {clean[-60:]!r}")


def discover_circuit(model, saes: dict, task_name, n_prompts: int = 16,
                     method: str = "atp", max_nodes: int = 50,
                     curve: tuple[int, ...] = (5, 10, 20, 50)) -> dict:
    """Find a circuit for ``task_name`` (a built-in task's name, or a ``Task``, e.g.
    :func:`prompt_task`) over ``saes`` ({hook: SAE}) spliced into ``model``;
    returns {"graph": graph JSON, "faithfulness": {...}, "curve": [{nodes, faithfulness,
    completeness}], "seconds"}. The curve takes the discovered nodes in order of |effect|.
    Inference and gradients only: nothing is trained."""
    from interp.circuits.discover import CircuitConfig, discover
    from interp.circuits.faithfulness import faithfulness_curve
    from interp.circuits.graph import to_json
    from interp.circuits.splice import SplicedModel
    from interp.circuits.tasks import Task, make_task

    if not saes:
        raise DataError("choose at least one SAE to splice")
    spliced = SplicedModel(model, saes)
    task = task_name if isinstance(task_name, Task) else make_task(task_name, model,
                                                                      n=n_prompts)
    # nodes are patched (and the rest ablated) to the counterfactual prompts; without them,
    # to the mean over the prompts, or to zero for one prompt (its mean is itself)
    ablation = ("counterfactual" if task.patch is not None else
                "zero" if len(task) == 1 else "mean")
    res = discover(spliced, task, CircuitConfig(method=method, max_nodes=max_nodes,
                                                patch=ablation, ablation=ablation))
    sizes = sorted({n for n in curve if n <= len(res["nodes"])} | {len(res["nodes"])})
    points = (faithfulness_curve(spliced, task, res["nodes"], sizes, ablation=ablation)
              if res["nodes"] else [])
    keep = ("nodes", "faithfulness", "completeness")
    return {"graph": to_json(res["graph"]),
            "faithfulness": {k: v for k, v in res["faithfulness"].items()
                             if isinstance(v, (int, float, str))},
            "curve": [{k: c[k] for k in keep} for c in points],
            "seconds": res["seconds"]}


def node_choices(g: nx.DiGraph) -> list[str]:
    """The graph's latent nodes, largest |effect| first."""
    nodes = [n for n, d in g.nodes(data=True) if n != OUTPUT and d.get("kind") == "latent"]
    return sorted(nodes, key=lambda n: -abs(g.nodes[n]["effect"]))


def node_label(g: nx.DiGraph, key: str) -> str:
    d = g.nodes[key]
    if key == OUTPUT:
        return "metric"
    pos = "all positions" if d["position"] == -1 else f"pos {d['position']}"
    what = "error" if d["kind"] == "error" else f"latent {d['latent']}"
    return f"{d['hook']} {pos} {what} (effect {d['effect']:+.4f})"


def node_latent(g: nx.DiGraph, key: str) -> tuple[str, int] | None:
    """(hook, latent) of a latent node, None for error and output nodes."""
    if key not in g or key == OUTPUT:
        return None
    d = g.nodes[key]
    if d.get("kind") != "latent" or d.get("latent") is None:
        return None
    return d["hook"], int(d["latent"])


def circuit_figure(g: nx.DiGraph, title: str | None = None, selected: str | None = None):
    """The circuit on the graph view's grid (``interp.viz.graphs``: one layout rule for
    circuits and attribution graphs): x = position, y = hook (the metric on top), the
    latents of one position spread within their cell; size by |effect|, edges blue / red by
    sign, width by |effect|. Node keys are the node trace's ``customdata`` (the last trace),
    so a click names its node; edges take no hover (a click goes to the closest hovered
    point, and an edge ends on its node). SVG markers: a circuit has at most a few hundred
    nodes."""
    from interp.viz.graphs import circuit_view, graph_figure

    return graph_figure(circuit_view(g, title), selected=selected)
