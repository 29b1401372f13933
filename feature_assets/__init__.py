"""featurestore: one definition of each feature (dbt), an offline history and an online snapshot."""

from feature_assets.store import FeatureStore

__all__ = ["FeatureStore"]
