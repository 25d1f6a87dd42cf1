"""Hand-made structure features (matminer composition and density features, nearest-neighbour
distance statistics) for the feature-based baselines, cached on disk by content."""

from mattransfer.featurizers.features import FEATURE_SETS, cached_features, features_path, featurize

__all__ = ["FEATURE_SETS", "cached_features", "features_path", "featurize"]
