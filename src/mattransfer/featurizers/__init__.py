"""Hand-made features of structures or compositions (matminer composition and density features,
nearest-neighbour distance statistics) for the feature-based baselines, cached on disk by content."""

from mattransfer.featurizers.features import COMPOSITION_SETS, FEATURE_SETS, cached_features, featurize, table_features

__all__ = ["COMPOSITION_SETS", "FEATURE_SETS", "cached_features", "featurize", "table_features"]
