"""One error hierarchy, so callers can catch everything the feature store refuses with one class."""

__all__ = ["FeatureStoreError", "ConfigError", "RegistryError", "DataError", "OnlineStoreError"]


class FeatureStoreError(Exception):
    """Root of every error the feature store raises on purpose."""


class ConfigError(FeatureStoreError):
    """A setting or run config is missing or malformed."""


class RegistryError(FeatureStoreError):
    """The feature registry (the dbt YAML) declares something invalid."""


class DataError(FeatureStoreError):
    """Stored data contradicts what the registry or the run expects."""


class OnlineStoreError(FeatureStoreError):
    """The online store failed or is unreachable; what it held before stays readable."""
