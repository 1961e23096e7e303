"""Graph documents for the graph view's tests: a random one of the right form at any size
(``interp-graph/1``; for the view and the app at scale, not a real attribution)."""
from __future__ import annotations

import numpy as np


def synthetic_graph(n_nodes: int = 5000, n_edges: int = 20000, n_pos: int = 60,
                    n_layers: int = 6, d_sae: int = 1024, seed: int = 0,
                    replacement: str = "othello/plt") -> dict:
    """Othello tokens, MLP features of ``replacement``'s blocks ``mlp.L`` (latents below
    ``d_sae``, each recording its dictionary's short name as ``interp graph`` does), some
    error nodes, one target; ``n_edges`` edges from lower to higher rows, never backwards in
    position; influences heavy-tailed with their cumulative shares."""
    from interp.data.othello import BOS, token_names
    from interp.graphs.io import FORMAT
    from interp.viz.graphs import node_row

    rng = np.random.default_rng(seed)
    names = token_names()
    squares = [i for i, x in enumerate(names) if not x.startswith("<")]
    tokens = [BOS] + [int(t) for t in rng.choice(squares, n_pos - 1)]
    labels = [names[t] for t in tokens]
    nodes: list[dict] = [{"id": f"tok|{p}", "kind": "token", "layer": -1, "position": p,
                          "token": tokens[p], "label": labels[p]} for p in range(n_pos)]
    nodes.append({"id": "target|0", "kind": "target", "target": "logit", "label": "logit a1",
                  "weight": 1.0, "value": 1.0, "layer": n_layers, "position": n_pos - 1,
                  "info": {"token": 1, "probability": 1.0}})
    short = replacement.replace("/", "--")
    seen: set[str] = set()
    while len(nodes) < n_nodes:
        layer, pos = int(rng.integers(n_layers)), int(rng.integers(1, n_pos))
        if rng.random() < 0.05:
            site = f"blocks.{layer}.hook_mlp_out"
            node = {"id": f"err|{site}|{pos}", "kind": "error", "site": site, "layer": layer,
                    "position": pos, "norm": float(rng.random())}
        else:
            latent = int(rng.integers(d_sae))
            node = {"id": f"mlp.{layer}|{pos}|{latent}", "kind": "feature",
                    "block": f"mlp.{layer}", "layer": layer, "position": pos, "latent": latent,
                    "dictionary": f"{short}--L{layer}", "activation": float(rng.exponential()),
                    "pre_activation": 0.0}
        if node["id"] not in seen:
            seen.add(node["id"])
            nodes.append(node)
    influence = rng.pareto(2.0, len(nodes))
    order = np.argsort(-influence)
    cum = np.empty(len(nodes))
    cum[order] = np.cumsum(influence[order]) / influence.sum()
    for n, inf, c in zip(nodes, influence, cum):
        n["influence"], n["cumulative"] = float(inf), float(c)
    row = np.array([node_row(n, n_layers) for n in nodes])
    pos = np.array([n["position"] for n in nodes])
    edges, pairs = [], set()
    while len(edges) < n_edges:
        a, b = (int(x) for x in rng.integers(len(nodes), size=2))
        if row[a] >= row[b] or pos[a] > pos[b] or (a, b) in pairs:
            continue
        pairs.add((a, b))
        w = float(rng.normal() * influence[a])
        edges.append({"source": nodes[a]["id"], "target": nodes[b]["id"], "weight": w,
                      "influence": abs(w) * float(influence[b])})
    return {"format": FORMAT, "model": "othello", "dictionaries": [replacement],
            "prompt": " ".join(labels[1:]), "tokens": tokens, "token_labels": labels,
            "blocks": [{"name": f"mlp.{i}", "layer": i, "dictionary": f"{short}--L{i}",
                        "d_sae": d_sae} for i in range(n_layers)],
            "targets": [{"kind": "logit", "label": "logit a1", "weight": 1.0, "value": 1.0,
                         "info": {"token": 1, "probability": 1.0}}],
            "settings": {"synthetic": True, "seed": seed}, "scores": {},
            "counts": {"kept_nodes": len(nodes), "kept_edges": len(edges),
                       "kept_features": sum(n["kind"] == "feature" for n in nodes)},
            "nodes": nodes, "edges": edges}
