"""Checking a circuit by ablation: faithfulness and completeness (Marks et al.).

A circuit C is a set of nodes. ``m(C)`` is the task metric (mean over prompts) when every
node outside C is ablated while the nodes in C are computed as usual from their (possibly
ablated) inputs. Ablation (``ablation``) replaces a node's value by its value on the
counterfactual prompt (the default when the task has counterfactuals: then ``m(empty)`` is
the metric of the counterfactual prompts) or by its mean over the clean prompts, per
position (``"mean"``; a poor baseline when every prompt shares the property under study).
Error nodes outside C are ablated too unless ``ablate_errors=False``.

    faithfulness(C) = (m(C) - m(empty)) / (m(M) - m(empty))
    completeness(C) = 1 - faithfulness(M \\ C)      (M: every node)

When the metric does not move between the full model and the empty circuit (m(M) = m(empty),
up to float noise) both ratios are undefined: ``faithfulness`` and ``completeness`` are then
None and ``faithfulness_note`` says why (the m values are still reported; the circuit's node
scores are still valid, only this check of them is void).
"""
from __future__ import annotations

import math

import torch

from interp.circuits.attribution import Node, PatchValues, row_batches
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import Task

# |m(full) - m(empty)| at most this fraction of the metric's scale (at least 1) is no gap
GAP_TOLERANCE = 1e-5


def node_masks(spliced: SplicedModel, nodes, t: int, complement: bool = False
           ) -> dict[str, torch.Tensor]:
    """Per hook, a bool (T, m + 1) mask of the nodes kept (column m: the error node)."""
    masks = {h: torch.zeros(t, spliced.saes[h].cfg.d_sae + 1, dtype=torch.bool)
             for h in spliced.hooks}
    for n in nodes:
        masks[n.hook][n.pos, n.column(spliced.saes[n.hook].cfg.d_sae)] = True
    if complement:
        masks = {h: ~m for h, m in masks.items()}
    return masks


@torch.no_grad()
def ablated_metric(spliced: SplicedModel, task: Task, masks: dict[str, torch.Tensor] | None,
                   values: PatchValues, ablate_errors: bool = True,
                   batch_size: int = 64) -> float:
    """The mean metric with every node outside ``masks`` ablated to ``values`` (None: none)."""
    total = 0.0
    for rows in row_batches(len(task), batch_size):
        interventions = {}
        if masks is not None:
            patch = values.values(rows)
            for h in spliced.hooks:
                keep = masks[h]
                pa, pe = patch[h]

                def ablate(name, a, e, keep=keep, pa=pa, pe=pe):
                    a = torch.where(keep[:, :-1], a, pa.to(a.dtype))
                    if ablate_errors:
                        e = torch.where(keep[:, -1:], e, pe.to(e.dtype))
                    return a, e

                interventions[h] = ablate
        res = spliced.run(task.clean[rows], interventions, capture=task.reads)
        total += float(task.metric(res, rows).sum())
    return total / len(task)


def default_ablation(task: Task) -> str:
    return "counterfactual" if task.patch is not None else "mean"


def faithfulness(spliced: SplicedModel, task: Task, nodes: list[Node],
                 ablate_errors: bool = True, ablation: str | None = None,
                 values: PatchValues | None = None,
                 baselines: tuple[float, float] | None = None) -> dict:
    """Faithfulness and completeness of the circuit ``nodes`` (see the module docstring)."""
    ablation = ablation or default_ablation(task)
    values = values or PatchValues(spliced, task, ablation)
    t = task.clean.shape[1]
    if baselines is None:
        baselines = (ablated_metric(spliced, task, None, values),
                     ablated_metric(spliced, task, node_masks(spliced, [], t), values,
                                    ablate_errors))
    m_full, m_empty = baselines
    m_c = ablated_metric(spliced, task, node_masks(spliced, nodes, t), values, ablate_errors)
    m_rest = ablated_metric(spliced, task, node_masks(spliced, nodes, t, complement=True), values,
                            ablate_errors)
    note = no_gap_note(m_full, m_empty, ablation)
    if note is None:
        gap = m_full - m_empty
        faith, complete = (m_c - m_empty) / gap, 1 - (m_rest - m_empty) / gap
    else:
        faith = complete = None
    out = {"nodes": len(nodes), "faithfulness": faith, "completeness": complete,
           "m_circuit": m_c, "m_complement": m_rest, "m_full": m_full, "m_empty": m_empty,
           "ablation": ablation}
    if note is not None:
        out["faithfulness_note"] = note
    return out


def no_gap_note(m_full: float, m_empty: float, ablation: str) -> str | None:
    """Why faithfulness is undefined (None when it is defined): the ratio's denominator
    m(full) - m(empty) is zero, or within float noise of it (1e-5 of the metric's scale)."""
    if not (math.isfinite(m_full) and math.isfinite(m_empty)):
        return (f"faithfulness is undefined: the metric is not finite (m full {m_full}, "
                f"m empty {m_empty})")
    if abs(m_full - m_empty) > GAP_TOLERANCE * max(1.0, abs(m_full), abs(m_empty)):
        return None
    hint = ("the counterfactual prompts score like the clean ones: choose counterfactuals "
            "that change the answer" if ablation == "counterfactual" else
            "mean ablation does not change the metric: every prompt may share the property "
            "(use counterfactual prompts)")
    return (f"faithfulness and completeness are undefined: the metric does not move between "
            f"the full model and the empty circuit (m = {m_full:.4g} both, {ablation} "
            f"ablation); {hint}")


def faithfulness_curve(spliced: SplicedModel, task: Task, ranked: list[Node],
                       sizes: list[int], ablate_errors: bool = True,
                       ablation: str | None = None) -> list[dict]:
    """Faithfulness of the top-n nodes of ``ranked`` for each n in ``sizes``."""
    ablation = ablation or default_ablation(task)
    values = PatchValues(spliced, task, ablation)
    t = task.clean.shape[1]
    base = (ablated_metric(spliced, task, None, values),
            ablated_metric(spliced, task, node_masks(spliced, [], t), values, ablate_errors))
    return [faithfulness(spliced, task, ranked[:n], ablate_errors, ablation, values, base)
            for n in sizes]
