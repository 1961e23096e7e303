"""The feature store: per-latent top examples, interval samples, histograms, densities,
logit effects and token associations of an SAE, built by streaming tokens through the model
(``build``) and queried from one DuckDB file per SAE (``store``)."""
from interp.features.build import (FeatureConfig, build_feature_store, build_for_run,
                                   logit_effects)
from interp.features.store import FeatureStore, find_feature_stores, open_feature_store

__all__ = ["FeatureConfig", "FeatureStore", "build_feature_store", "build_for_run",
           "find_feature_stores", "logit_effects", "open_feature_store"]
