"""Attribution graphs of one prompt over a replacement model (transcoders or a CLT, and
attention-output SAEs), with attention patterns and normalisation scales frozen: every
edge an exact direct effect (``interp.graphs.build``), pruned by influence
(``interp.graphs.prune``), checked by intervention (``interp.graphs.validate``)."""
from interp.graphs.build import (AttentionPairs, AttributionGraph, Target, attention_pairs,
                                 attention_targets, attribute, feature_target, logit_targets,
                                 logitdiff_target)
from interp.graphs.prune import graph_scores, prune

__all__ = ["AttentionPairs", "AttributionGraph", "Target", "attribute", "attention_pairs",
           "attention_targets", "feature_target",
           "logit_targets", "logitdiff_target", "graph_scores", "prune"]
