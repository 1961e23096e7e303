"""Ablation faithfulness of pruned attribution graphs, with the Marks-style circuit code.

For each prompt of a circuit task (``interp.circuits.tasks``: clean prompt, counterfactual
prompt, answer and wrong token), the graph traced from the task's metric (the logit of the
answer minus the wrong one) is pruned to at most ``max_features`` feature nodes; its kept
feature and error nodes become the circuit, and ``interp.circuits.faithfulness`` measures in
the real model (transcoders spliced with their errors, attention free) what the metric keeps
when every other node is ablated to its counterfactual value:

    faithfulness = (m(C) - m(empty)) / (m(full) - m(empty))

per prompt (its own graph), reported as the mean over prompts and pooled (the sums of the
numerators over the sums of the denominators).

Ablation (what a node outside the circuit is set to):
- ``"zero"`` (the graph's own claim: the pruned graph without the other nodes; position 0,
  BOS, which has no nodes in a graph, keeps its values);
- ``"mean"``: its mean at that position over the task's prompts;
- ``"counterfactual"``: its value on the task's counterfactual prompt. On othello-legal the
  two prompts differ in the last move only, so only last-position nodes are tested, while a
  graph's nodes are ranked by their influence on the metric at every position.
"""
from __future__ import annotations

import torch

from interp.circuits.attribution import Node
from interp.circuits.faithfulness import faithfulness
from interp.circuits.splice import SplicedModel
from interp.errors import DataError
from interp.graphs.build import attribute, logitdiff_target
from interp.graphs.prune import prune


def circuit_nodes(graph, pruned) -> list[Node]:
    """The kept feature and error nodes of a pruned graph as circuit nodes (hook,
    position, latent) at the hooks the dictionaries write."""
    out = []
    for i in pruned.node_mask.nonzero()[:, 0].tolist():
        kind = graph.node_kind(i)
        if kind == "feature":
            b, p, f = graph.feature_of(i)
            out.append(Node(graph.nodes.blocks[b].writes[0], p, f))
        elif kind == "error":
            site, p = graph.error_of(i)
            out.append(Node.error_term(site, p))
    return out


def graph_faithfulness(model, replacement, task, n_prompts: int = 16,
                       node_threshold: float = 0.8, edge_threshold: float = 0.98,
                       max_features: int | None = 200, max_feature_nodes: int | None = None,
                       ablation: str = "mean") -> dict:
    """See the module docstring. ``replacement``: per-layer transcoders (and attention
    SAEs), which ``SplicedModel`` splices one hook each."""
    saes = {}
    for d, name in zip(replacement.dictionaries, replacement.names):
        if not hasattr(d, "W_enc"):
            raise DataError(f"{name} is a cross-layer transcoder; ablation faithfulness "
                            f"splices one dictionary per hook: use per-layer transcoders")
        from interp.sae.evaluate import written_hook

        saes[written_hook(d)] = d
    spliced = SplicedModel(model, saes)
    from interp.circuits.attribution import PatchValues

    # mean values over every prompt of the task (per position), shared by the one-prompt
    # tasks; counterfactual values are each prompt's own
    values = PatchValues(spliced, task.subset(n_prompts), "mean") if ablation == "mean" \
        else None
    rows = []
    for i in range(min(n_prompts, len(task))):
        one = task.subset(i + 1)
        one = type(task)(task.name, one.clean[i:], None if one.patch is None else
                         one.patch[i:], one.answer[i:], one.wrong[i:], task.metric_kind,
                         task.description)
        with torch.no_grad():
            graph = attribute(model, replacement, one.clean[0], targets=lambda n: [
                logitdiff_target(n, model, int(one.answer[0]), int(one.wrong[0]))],
                max_feature_nodes=max_feature_nodes)
        pruned = prune(graph, node_threshold, edge_threshold, max_features)
        nodes = circuit_nodes(graph, pruned)
        if ablation == "zero":  # BOS has no nodes in a graph: a constant, never ablated
            nodes += [Node(h, 0, j) for h, sae in saes.items() for j in range(sae.cfg.d_sae)]
            nodes += [Node.error_term(h, 0) for h in saes]
        with torch.enable_grad():
            f = faithfulness(spliced, one, nodes, ablation=ablation, values=values)
        graph_nodes = [n for n in nodes if n.position > 0]
        rows.append({"prompt": i, "features": sum(not n.is_error for n in graph_nodes),
                     "errors": sum(n.is_error for n in graph_nodes), **{
                         k: f[k] for k in ("faithfulness", "m_circuit", "m_full", "m_empty")}})
    defined = [r for r in rows if r["faithfulness"] is not None]
    if not defined:
        raise DataError("faithfulness is undefined on every prompt (the counterfactuals do "
                        "not move the metric)")
    num = sum(r["m_circuit"] - r["m_empty"] for r in defined)
    den = sum(r["m_full"] - r["m_empty"] for r in defined)
    return {"task": task.name, "ablation": ablation, "n_prompts": len(rows),
            "max_features": max_features,
            "node_threshold": node_threshold,
            "mean_features": sum(r["features"] for r in rows) / len(rows),
            "faithfulness_mean": sum(r["faithfulness"] for r in defined) / len(defined),
            "faithfulness_pooled": num / den, "prompts": rows}
