"""The feature store: per-latent top examples, interval samples, histograms, densities,
logit effects and token associations of an SAE, built by streaming tokens through the model
and queried from one DuckDB file per SAE.

Modules: ``config`` (what a build records), ``codes`` (an SAE's codes of a batch),
``accumulate`` (streaming per-latent statistics), ``logits`` (logit effects of decoder rows),
``arrow`` and ``write`` (the DuckDB file, written atomically), ``build`` (the entry points:
stream, then write; runs and SAEs by name), ``store`` (queries). Computed live for a feature
page, beside the store: ``dashboard`` (similar decoder directions, correlated neurons,
activations on a prompt, the loss change on ablation, the store's whole contexts) and
``othello`` (board profiles of any dictionary's latents and of MLP neurons)."""
from interp.features.build import build_feature_store, build_for_run
from interp.features.config import FeatureConfig
from interp.features.logits import logit_effects
from interp.features.store import FeatureStore, find_feature_stores, open_feature_store

__all__ = ["FeatureConfig", "FeatureStore", "build_feature_store", "build_for_run",
           "find_feature_stores", "logit_effects", "open_feature_store"]
