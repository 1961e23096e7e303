"""Node attribution over spliced SAEs: attribution patching, integrated gradients, and exact
activation patching (the slow reference).

A node is (hook, position, latent) or (hook, position, error). Its effect on a task's metric
``m`` (the mean over prompts) is what replacing its clean value by a patch value does to
``m``. The patch is the counterfactual prompts' value (``patch="counterfactual"``), zero, or
the mean over the clean prompts (per position).

- AtP: ``grad m . (a_patch - a_clean)`` from one forward and backward pass (Syed et al.,
  Marks et al.); every latent of every spliced hook at once.
- IG: the gradient averaged along ``a_clean + alpha (a_patch - a_clean)`` for ``steps``
  midpoints, one hook at a time with the others clean (as Marks et al. do per layer).
- exact: the metric with one node patched, one forward pass per node.

Scores are tensors of shape (T, m + 1) per hook (positions kept separate; column m is the
error node), or (m + 1,) with ``sum_positions=True``, whose nodes sit at ``ALL_POSITIONS``
(a latent or error at every position at once: patched, ablated and connected together).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from interp.circuits.splice import SplicedModel
from interp.circuits.tasks import Task
from interp.errors import DataError, unknown

PATCHES = ("counterfactual", "zero", "mean")
METHODS = ("atp", "ig")


ALL_POSITIONS = -1  # a node summed over positions


@dataclass(frozen=True)
class Node:
    hook: str
    position: int        # ALL_POSITIONS: the latent (or error) at every position together
    latent: int | None   # None: the SAE's error term at this hook (``Node.error_term``)

    @classmethod
    def error_term(cls, hook: str, position: int) -> "Node":
        return cls(hook, position, None)

    @classmethod
    def from_column(cls, hook: str, position: int, column: int, d_sae: int) -> "Node":
        """The node of column ``column`` of a (..., d_sae + 1) score table, whose last
        column is the error term."""
        return cls(hook, position, None if column == d_sae else column)

    @property
    def is_error(self) -> bool:
        return self.latent is None

    def column(self, d_sae: int) -> int:
        """This node's column in a (..., d_sae + 1) score table or mask."""
        return d_sae if self.latent is None else self.latent

    @property
    def pos(self) -> int | slice:
        """An index into the position axis."""
        return slice(None) if self.position == ALL_POSITIONS else self.position


def row_batches(n: int, batch_size: int) -> Iterable[slice]:
    for i in range(0, n, batch_size):
        yield slice(i, min(n, i + batch_size))


class PatchValues:
    """Per hook, the patch values of the latents and the errors for a slice of prompts."""

    def __init__(self, spliced: SplicedModel, task: Task, patch: str):
        if patch not in PATCHES:
            raise unknown("patch", patch, PATCHES)
        if patch == "counterfactual" and task.patch is None:
            raise DataError(f"task {task.name!r} has no counterfactual prompts; use "
                            f"patch='zero' or 'mean'")
        self.spliced, self.task, self.kind = spliced, task, patch
        self.means = None
        if patch == "mean":
            sums: dict[str, list[torch.Tensor]] = {}
            with torch.no_grad():
                for rows in row_batches(len(task), 64):
                    res = spliced.run(task.clean[rows])
                    for h, st in res.hooks.items():
                        s = [st.acts.sum(0), st.err.sum(0)]
                        sums[h] = s if h not in sums else [a + b for a, b in zip(sums[h], s)]
            self.means = {h: (a / len(task), e / len(task)) for h, (a, e) in sums.items()}

    @torch.no_grad()
    def values(self, rows: slice) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{hook: (acts (n, T, m), err (n, T, d))} for the prompts ``rows`` (zero and mean
        values are broadcast views, not copies)."""
        if self.kind == "counterfactual":
            res = self.spliced.run(self.task.patch[rows])
            return {h: (st.acts, st.err) for h, st in res.hooks.items()}
        n = len(range(len(self.task))[rows])
        t = self.task.clean.shape[1]
        out = {}
        for h, sae in self.spliced.saes.items():
            if self.kind == "zero":
                zero = torch.zeros(())
                out[h] = (zero.expand(n, t, sae.cfg.d_sae), zero.expand(n, t, sae.cfg.out_dim))
            else:
                a, e = self.means[h]
                out[h] = (a.expand(n, *a.shape), e.expand(n, *e.shape))
        return out


def _empty_scores(spliced: SplicedModel, t: int) -> dict[str, torch.Tensor]:
    return {h: torch.zeros(t, spliced.saes[h].cfg.d_sae + 1, dtype=torch.float64)
            for h in spliced.hooks}


def node_attribution(spliced: SplicedModel, task: Task, method: str = "atp",
                     patch: str = "counterfactual", steps: int = 10, batch_size: int = 32,
                     sum_positions: bool = False) -> dict[str, torch.Tensor]:
    """Estimated effect of every node on the task's mean metric (see the module docstring)."""
    if method not in METHODS:
        raise unknown("attribution method", method, METHODS)
    n, t = task.clean.shape
    patches = PatchValues(spliced, task, patch)
    scores = _empty_scores(spliced, t)
    for rows in row_batches(n, batch_size):
        patch_vals = patches.values(rows)
        if method == "atp":
            res = spliced.run(task.clean[rows], track_grads=True, capture=task.reads)
            (task.metric(res, rows).sum() / n).backward()
            for h, st in res.hooks.items():
                pa, pe = patch_vals[h]
                _add_scores(scores[h], st.acts.grad, pa - st.acts.detach(), st.err.grad,
                            pe - st.err.detach())
        else:
            clean = spliced.run(task.clean[rows])
            for h in spliced.hooks:
                ca, ce = clean.hooks[h].acts, clean.hooks[h].err
                pa, pe = patch_vals[h]
                ga, ge = torch.zeros_like(ca), torch.zeros_like(ce)
                for i in range(steps):
                    alpha = (i + 0.5) / steps

                    def interpolate(name, a, e, alpha=alpha, ca=ca, ce=ce, pa=pa, pe=pe):
                        return ca + alpha * (pa - ca), ce + alpha * (pe - ce)

                    res = spliced.run(task.clean[rows], {h: interpolate}, track_grads=True,
                                      capture=task.reads)
                    (task.metric(res, rows).sum() / n).backward()
                    ga += res.hooks[h].acts.grad
                    ge += res.hooks[h].err.grad
                _add_scores(scores[h], ga / steps, pa - ca, ge / steps, pe - ce)
    if sum_positions:
        return {h: s.sum(0) for h, s in scores.items()}
    return scores


def _add_scores(out: torch.Tensor, grad_a, delta_a, grad_e, delta_e) -> None:
    out[:, :-1] += (grad_a * delta_a).sum(0).double()
    out[:, -1] += (grad_e * delta_e).sum((0, 2)).double()


@torch.no_grad()
def exact_node_effects(spliced: SplicedModel, task: Task, nodes: list[Node],
                       patch: str = "counterfactual", batch_size: int = 64) -> torch.Tensor:
    """(len(nodes),) the change of the mean metric when each node alone is patched."""
    n = len(task)
    patches = PatchValues(spliced, task, patch)
    effects = torch.zeros(len(nodes), dtype=torch.float64)
    for rows in row_batches(n, batch_size):
        base = task.metric(spliced.run(task.clean[rows], capture=task.reads), rows).sum()
        patch_vals = patches.values(rows)
        for i, node in enumerate(nodes):
            pa, pe = patch_vals[node.hook]
            d_sae = spliced.saes[node.hook].cfg.d_sae

            def swap(name, a, e, node=node, pa=pa, pe=pe, d_sae=d_sae):
                if node.is_error:
                    e = e.clone()
                    e[:, node.pos] = pe[:, node.pos]
                else:
                    a = a.clone()
                    a[:, node.pos, node.latent] = pa[:, node.pos, node.latent]
                return a, e

            res = spliced.run(task.clean[rows], {node.hook: swap}, capture=task.reads)
            effects[i] += float(task.metric(res, rows).sum() - base)
    return effects / n


def top_nodes(scores: dict[str, torch.Tensor], n: int) -> list[tuple[Node, float]]:
    """The n nodes with the largest |score|; scores summed over positions give nodes at
    ``ALL_POSITIONS``."""
    flat = []
    for h, s in scores.items():
        s2 = s if s.ndim == 2 else s[None]
        vals, idx = s2.abs().flatten().topk(min(n, s2.numel()))
        d1 = s2.shape[1]
        flat += [(Node.from_column(h, int(i) // d1 if s.ndim == 2 else ALL_POSITIONS,
                                   int(i) % d1, d1 - 1),
                  float(s2.flatten()[i])) for i in idx]
    flat.sort(key=lambda p: -abs(p[1]))
    return flat[:n]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


OUTPUT = "output"  # the metric, as the graph's sink node


@dataclass(frozen=True)
class Edge:
    upstream: Node
    downstream: Node | str   # a Node, or OUTPUT
    weight: float


def _check_nodes(spliced: SplicedModel, nodes: list[Node]) -> None:
    if not nodes:
        raise DataError("no nodes to connect: give the retained nodes (e.g. from top_nodes)")
    unknown_hooks = sorted({n.hook for n in nodes} - set(spliced.hooks))
    if unknown_hooks:
        raise DataError(f"nodes at {unknown_hooks}, where no SAE is spliced; spliced: "
                        f"{spliced.hooks}")


def edge_attribution(spliced: SplicedModel, task: Task, nodes: list[Node],
                     patch: str = "counterfactual", linear: bool = False,
                     batch_size: int = 32) -> tuple[list[Edge], dict[Node, float]]:
    """Effects along edges between the given nodes of adjacent spliced hooks, and from the
    last hook's nodes to the metric (Marks et al.'s AtP edges):

        e(u -> d) = mean over prompts of  grad_d m * (d d / d u) * (u_patch - u_clean)
        e(u -> output) = grad_u m * (u_patch - u_clean)     (u at the last spliced hook)

    One vector-Jacobian product per retained downstream node and batch, so the cost grows
    with the number of nodes, not the dictionary size. Every path from a hook to the output
    runs through the next hook's latents and error, so for each upstream node the edges out
    of it add up to its AtP node score (returned too, per node). ``linear`` freezes
    attention patterns and LayerNorm scales in the Jacobians.
    """
    _check_nodes(spliced, nodes)
    by_hook: dict[str, list[Node]] = {h: [n for n in nodes if n.hook == h] for h in spliced.hooks}
    n_prompts = len(task)
    patches = PatchValues(spliced, task, patch)
    weights: dict[tuple[Node, Node | str], float] = {}
    node_scores: dict[Node, float] = {n: 0.0 for n in nodes}
    hooks = spliced.hooks
    for rows in row_batches(n_prompts, batch_size):
        res = spliced.run(task.clean[rows], graph=True, linear=linear, capture=task.reads)
        metric = task.metric(res, rows).sum() / n_prompts
        states = res.hooks
        deltas = {h: (pa - states[h].acts.detach(), pe - states[h].err.detach())
                  for h, (pa, pe) in patches.values(rows).items()}
        leaves = [t for h in hooks for t in (states[h].acts, states[h].err)]
        grads = torch.autograd.grad(metric, leaves, retain_graph=True, allow_unused=True)
        node_grad = {h: (grads[2 * i], grads[2 * i + 1]) for i, h in enumerate(hooks)}
        for node in nodes:
            node_scores[node] += _node_value(spliced, node, node_grad[node.hook],
                                             deltas[node.hook])
        last = hooks[-1]
        for u in by_hook[last]:
            key = (u, OUTPUT)
            weights[key] = weights.get(key, 0.0) + _node_value(
                spliced, u, node_grad[last], deltas[last])
        for up, down in zip(hooks[:-1], hooks[1:]):
            if not by_hook[up] or not by_hook[down]:
                continue
            for d in by_hook[down]:
                ga, ge = node_grad[down]
                sd = states[down]
                if d.is_error:
                    target = (ge[:, d.pos] * sd.err[:, d.pos]).sum()
                else:
                    target = (ga[:, d.pos, d.latent] * sd.acts[:, d.pos, d.latent]).sum()
                if not target.requires_grad:
                    continue  # an inactive latent: no path back
                ja, je = torch.autograd.grad(target, [states[up].acts, states[up].err],
                                             retain_graph=True, allow_unused=True)
                for u in by_hook[up]:
                    key = (u, d)
                    weights[key] = weights.get(key, 0.0) + _node_value(
                        spliced, u, (ja, je), deltas[up])
        del res, states, leaves
    edges = [Edge(u, d, w) for (u, d), w in weights.items()]
    return edges, node_scores


def _node_value(spliced: SplicedModel, node: Node, grads, deltas) -> float:
    """sum over prompts of grad . delta at one node (zero where there is no gradient)."""
    ga, ge = grads
    da, de = deltas
    if node.is_error:
        if ge is None:
            return 0.0
        return float((ge[:, node.pos] * de[:, node.pos]).sum())
    if ga is None:
        return 0.0
    return float((ga[:, node.pos, node.latent] * da[:, node.pos, node.latent]).sum())
