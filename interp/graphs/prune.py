"""Influence, pruning and the scores of an attribution graph (the rules of Ameisen et al.
2025, as circuit-tracer computes them).

- ``normalize_rows``: |A| with each row scaled to sum 1 (a node's inputs as shares).
- influence of every node on the targets through all paths: ``w (N + N^2 + ...)`` with N
  the normalised matrix and w the targets' weights (a logit's probability). The graph is
  acyclic (sources are earlier in the model or at earlier positions), so the series ends.
- ``prune``: keep the nodes holding ``node_threshold`` of the cumulative influence (tokens
  and targets always), at most ``max_features`` feature nodes; then the edges holding
  ``edge_threshold`` of the edge influence; then drop, until nothing changes, feature and
  error nodes left without an outgoing edge and feature nodes without an incoming one.
- ``graph_scores``: the replacement score (the share of the tokens' influence on the
  targets, against the error nodes', that goes through features: 1 when no path needs an
  error node) and the completeness score (the share of every node's inputs that do not come
  from error nodes, weighted by the node's influence).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.errors import DataError


def normalize_rows(matrix: torch.Tensor) -> torch.Tensor:
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(normalized: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000
              ) -> torch.Tensor:
    """``weights (N + N^2 + ...)``: each node's influence on the weighted targets."""
    step = weights @ normalized
    total = step.clone()
    for _ in range(max_iter):
        step = step @ normalized
        if not step.any():
            return total
        total += step
    raise DataError("influence did not converge: the graph has a cycle")


def cumulative_threshold(scores: torch.Tensor, share: float) -> torch.Tensor:
    """The smallest score among the top scores that together hold ``share`` of the sum."""
    ordered = scores.sort(descending=True).values
    cum = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    i = min(int(torch.searchsorted(cum, torch.tensor(share))), len(ordered) - 1)
    return ordered[i]


@dataclass
class Pruned:
    node_mask: torch.Tensor      # (n_nodes,) bool
    edge_mask: torch.Tensor      # (n_nodes, n_nodes) bool
    node_influence: torch.Tensor  # (n_nodes,) influence on the targets
    cumulative: torch.Tensor     # (n_nodes,) cumulative influence share of each node's rank
    edge_influence: torch.Tensor  # (n_nodes, n_nodes) each edge's influence (pruned graph)

    @property
    def n_nodes(self) -> int:
        return int(self.node_mask.sum())

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())


def prune(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          max_features: int | None = None) -> Pruned:
    """See the module docstring. ``graph`` is an ``AttributionGraph``."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise DataError(f"{name} must be in [0, 1], not {v}")
    a = graph.adjacency
    weights = graph.target_weights()
    n_f, keep_from = graph.n_selected, graph.token_start
    node_inf = influence(normalize_rows(a), weights)
    node_mask = node_inf >= cumulative_threshold(node_inf, node_threshold)
    if max_features is not None and int(node_mask[:n_f].sum()) > max_features:
        top = node_inf[:n_f].topk(max_features).indices
        node_mask[:n_f] = False
        node_mask[top] = True
    node_mask[keep_from:] = True
    pruned = a.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    norm = normalize_rows(pruned)
    edge_scores = norm * (influence(norm, weights) + weights)[:, None]
    edge_mask = edge_scores >= cumulative_threshold(edge_scores.flatten(), edge_threshold)
    edge_mask &= pruned != 0
    while True:
        before = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:keep_from] &= edge_mask[:, :keep_from].any(0)   # something to feed
        node_mask[:n_f] &= edge_mask[:n_f].any(1)                  # a feature is fed
        if torch.equal(before, node_mask):
            break
    ordered, order = node_inf.sort(descending=True)
    cumulative = torch.empty_like(node_inf)
    cumulative[order] = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    return Pruned(node_mask, edge_mask, node_inf, cumulative, edge_scores)


def graph_scores(graph) -> dict[str, float]:
    """{"replacement": ..., "completeness": ...} of the unpruned graph (module docstring)."""
    weights = graph.target_weights()
    norm = normalize_rows(graph.adjacency)
    inf = influence(norm, weights)
    errors = slice(graph.error_start, graph.token_start)
    tokens = slice(graph.token_start, graph.target_start)
    token_inf, error_inf = float(inf[tokens].sum()), float(inf[errors].sum())
    replacement = token_inf / max(token_inf + error_inf, 1e-30)
    non_error = 1 - norm[:, errors].sum(1)
    out_inf = inf + weights
    completeness = float((non_error * out_inf).sum() / out_inf.sum().clamp(min=1e-30))
    return {"replacement": replacement, "completeness": completeness}
