"""One call from names to a saved graph: what ``interp graph`` runs, and the same in Python.

    doc, graph = trace("othello", ["othello/plt"], "f5 d6 c3 d3 c4",
                       targets=["logits"], out="graph.json")

Target specs (``parse_targets``): ``logits`` (the top logits, as circuit-tracer picks
them), ``logit:TOKEN``, ``logitdiff:A,B``, ``feature:L:POS:ID`` (the MLP dictionary of
layer L; ``feature:attn.L:POS:ID`` an attention SAE's), ``attn:L.H:Q:K`` (the
pre-softmax score of head H of layer L from query position Q to key position K, as a
query-side and a key-side target). Tokens are names (``c4`` for othello, a piece of text
for other models) or ids.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from interp.errors import DataError, UsageError
from interp.graphs.build import (attention_targets, attribute, feature_target, logit_targets,
                                 logitdiff_target)
from interp.graphs.prune import graph_scores, prune

TARGET_FORMS = "logits, logit:TOKEN, logitdiff:A,B, feature:L:POS:ID, attn:L.H:Q:K"


def token_id(model_name: str, model, text: str) -> int:
    """A token id from its name (``c4``; a piece of text) or its number."""
    if re.fullmatch(r"\d+", text):
        tok = int(text)
    elif model_name == "othello":
        from interp.data.othello import token_names

        names = token_names()
        if text.lower() not in names:
            raise DataError(f"{text!r} is not an Othello square (a1 .. h8)")
        tok = names.index(text.lower())
    else:
        try:
            tok = int(model.to_single_token(text))
        except (AssertionError, AttributeError, ValueError):
            raise DataError(f"{text!r} is not a single token of {model_name}") from None
    if not 0 <= tok < model.cfg.d_vocab:
        raise DataError(f"token {tok} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
    return tok


def parse_targets(specs: list[str], model_name: str, model, labels):
    """A callable ``nodes -> list[Target]`` for ``attribute`` from target specs."""
    def build(nodes):
        out = []
        for spec in specs:
            kind, _, rest = spec.partition(":")
            parts = rest.split(":") if rest else []
            try:
                if kind == "logits" and not rest:
                    out += logit_targets(nodes, model, labels=labels)
                elif kind == "logit" and len(parts) == 1:
                    out += logit_targets(nodes, model, [token_id(model_name, model, rest)],
                                         labels=labels)
                elif kind == "logitdiff" and len(rest.split(",")) == 2:
                    a, b = (token_id(model_name, model, x.strip()) for x in rest.split(","))
                    out.append(logitdiff_target(nodes, model, a, b, labels=labels))
                elif kind == "feature" and len(parts) == 3:
                    block = parts[0] if "." in parts[0] else f"mlp.{int(parts[0])}"
                    out.append(feature_target(nodes, block, int(parts[1]), int(parts[2])))
                elif kind == "attn" and len(parts) == 3 and "." in parts[0]:
                    layer, head = (int(x) for x in parts[0].split("."))
                    out += attention_targets(nodes, model, layer, head, int(parts[1]),
                                             int(parts[2]))
                else:
                    raise ValueError
            except ValueError as e:
                if isinstance(e, DataError):
                    raise
                raise UsageError(f"target {spec!r} is not one of: {TARGET_FORMS}") from None
        return out
    return build


def trace(model_name: str | None, dictionaries: list[str], prompt: str,
          targets: list[str] | None = None, *, max_feature_nodes: int | None = 8192,
          batch_size: int = 256, node_threshold: float = 0.8, edge_threshold: float = 0.98,
          max_features: int | None = None, validate_top: int = 0, out: str | Path | None = None,
          tracer_out: str | Path | None = None, progress=None):
    """Attribute ``prompt`` over the replacement ``dictionaries`` (shipped names, folders
    or set folders), prune, score, optionally validate the ``validate_top`` most influential
    features by intervention, and save. Returns (document, graph)."""
    from interp.graphs.io import figure, graph_document, save_graph, tracer_document
    from interp.models import load, token_strings
    from interp.provenance import check_dictionary
    from interp.sae.replacement import open_replacement
    from interp.viz.prompts import prompt_tokens

    rep = open_replacement(dictionaries)
    model_name = model_name or rep.model_name
    if not model_name:
        raise UsageError("the dictionaries do not record their model: give --model")
    model = load(model_name).requires_grad_(False)
    for d, name in zip(rep.dictionaries, rep.names):
        check_dictionary(d, name=name, model=model, model_name=model_name)
    tokens = prompt_tokens(model_name, model, prompt)[0]
    if tokens.shape[0] > model.cfg.n_ctx:
        raise DataError(f"the prompt has {tokens.shape[0]} tokens with BOS; {model_name} "
                        f"takes at most {model.cfg.n_ctx}")
    labels = token_strings(model_name, tokens.tolist())
    label_of = lambda t: token_strings(model_name, [t])[0]  # noqa: E731
    with torch.no_grad():
        graph = attribute(model, rep, tokens, parse_targets(targets or ["logits"], model_name,
                                                            model, label_of),
                          max_feature_nodes=max_feature_nodes, batch_size=batch_size,
                          token_labels=labels, progress=progress)
    t0 = time.perf_counter()
    pruned = prune(graph, node_threshold, edge_threshold, max_features)
    scores = {**graph_scores(graph), "seconds_prune": time.perf_counter() - t0}
    checks = validation(model, graph, pruned, validate_top) if validate_top else []
    settings = {"max_feature_nodes": max_feature_nodes, "batch_size": batch_size,
                "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                "max_features": max_features, "targets": targets or ["logits"]}
    doc = graph_document(graph, pruned, model=model_name, dictionaries=list(dictionaries),
                         prompt=prompt, settings=settings, scores=scores, validation=checks)
    if out is not None:
        path = save_graph(doc, out)
        figure(doc).write_html(path.with_suffix(".html"))
    if tracer_out is not None:
        import json

        dest = Path(tracer_out)
        slug = Path(out).stem if out else "graph"
        tdoc = tracer_document(graph, pruned, slug=slug, scan=",".join(dictionaries),
                               node_threshold=node_threshold)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(tdoc) + "\n")
    return doc, graph


def validation(model, graph, pruned, top: int) -> list[dict]:
    """The ``top`` most influential kept features, each ablated (factor 0) in turn, in every
    setting of ``interp.graphs.validate``: Pearson of predicted and measured changes."""
    from interp.graphs.validate import validate

    n_f = graph.n_selected
    inf = pruned.node_influence[:n_f].clone()
    inf[~pruned.node_mask[:n_f]] = -1
    feats = inf.topk(min(top, n_f)).indices.tolist()
    out = []
    for mode, freeze in (("direct", True), ("replacement", True), ("model", True),
                         ("model", False)):
        r = validate(model, graph, feats, 0.0, mode, freeze)
        out.append({k: r[k] for k in ("mode", "attention", "factor", "n_features", "n_values",
                                      "pearson")})
    return out
