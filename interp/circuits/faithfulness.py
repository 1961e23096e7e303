"""Checking a circuit by ablation: faithfulness and completeness (Marks et al.).

A circuit C is a set of nodes. ``m(C)`` is the task metric (mean over prompts) when every
node outside C is mean-ablated (its value replaced by its mean over the clean prompts, per
position) while the nodes in C are computed as usual from their (possibly ablated)
inputs. Error nodes outside C are ablated too unless ``ablate_errors=False``.

    faithfulness(C) = (m(C) - m(empty)) / (m(M) - m(empty))
    completeness(C) = 1 - faithfulness(M \\ C)      (M: every node)
"""
from __future__ import annotations

import torch

from interp.circuits.attribution import Node, PatchValues, _batches
from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import Task


def _masks(spliced: SplicedModel, nodes, t: int, complement: bool = False
           ) -> dict[str, torch.Tensor]:
    """Per hook, a bool (T, m + 1) mask of the nodes kept (column m: the error node)."""
    masks = {h: torch.zeros(t, spliced.saes[h].cfg.d_sae + 1, dtype=torch.bool)
             for h in spliced.hooks}
    for n in nodes:
        masks[n.hook][n.position, n.latent] = True
    if complement:
        masks = {h: ~m for h, m in masks.items()}
    return masks


@torch.no_grad()
def ablated_metric(spliced: SplicedModel, task: Task, masks: dict[str, torch.Tensor] | None,
                   means: PatchValues, ablate_errors: bool = True,
                   batch_size: int = 64) -> float:
    """The mean metric with every node outside ``masks`` mean-ablated (None: no ablation)."""
    total = 0.0
    for rows in _batches(len(task), batch_size):
        interventions = {}
        if masks is not None:
            for h in spliced.hooks:
                keep = masks[h]
                mean_a, mean_e = means.means[h]

                def ablate(name, a, e, keep=keep, mean_a=mean_a, mean_e=mean_e):
                    a = torch.where(keep[:, :-1], a, mean_a.to(a.dtype))
                    if ablate_errors:
                        e = torch.where(keep[:, -1:], e, mean_e.to(e.dtype))
                    return a, e

                interventions[h] = ablate
        res = spliced.run(task.clean[rows], interventions)
        total += float(task.metric(res.logits, rows).sum())
    return total / len(task)


def faithfulness(spliced: SplicedModel, task: Task, nodes: list[Node],
                 ablate_errors: bool = True, means: PatchValues | None = None,
                 baselines: tuple[float, float] | None = None) -> dict:
    """Faithfulness and completeness of the circuit ``nodes`` (see the module docstring)."""
    means = means or PatchValues(spliced, task, "mean")
    t = task.clean.shape[1]
    if baselines is None:
        baselines = (ablated_metric(spliced, task, None, means),
                     ablated_metric(spliced, task, _masks(spliced, [], t), means, ablate_errors))
    m_full, m_empty = baselines
    m_c = ablated_metric(spliced, task, _masks(spliced, nodes, t), means, ablate_errors)
    m_rest = ablated_metric(spliced, task, _masks(spliced, nodes, t, complement=True), means,
                            ablate_errors)
    gap = m_full - m_empty
    faith = (m_c - m_empty) / gap if gap else float("nan")
    rest = (m_rest - m_empty) / gap if gap else float("nan")
    return {"nodes": len(nodes), "faithfulness": faith, "completeness": 1 - rest,
            "m_circuit": m_c, "m_complement": m_rest, "m_full": m_full, "m_empty": m_empty}


def faithfulness_curve(spliced: SplicedModel, task: Task, ranked: list[Node],
                       sizes: list[int], ablate_errors: bool = True) -> list[dict]:
    """Faithfulness of the top-n nodes of ``ranked`` for each n in ``sizes``."""
    means = PatchValues(spliced, task, "mean")
    t = task.clean.shape[1]
    base = (ablated_metric(spliced, task, None, means),
            ablated_metric(spliced, task, _masks(spliced, [], t), means, ablate_errors))
    return [faithfulness(spliced, task, ranked[:n], ablate_errors, means, base) for n in sizes]
