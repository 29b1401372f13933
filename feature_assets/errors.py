"""One error hierarchy, so callers can catch everything the feature store refuses with one class."""

__all__ = [
    "AlertDeliveryError",
    "ConfigError",
    "DataError",
    "DbtBuildError",
    "FeatureStoreError",
    "InvalidEntity",
    "MissingFeatures",
    "ModelError",
    "ModelStoreError",
    "OnlineStoreError",
    "RegistryError",
    "WarehouseError",
    "shown",
]


class FeatureStoreError(Exception):
    """Root of every error the feature store raises on purpose."""


class ConfigError(FeatureStoreError):
    """A setting or run config is missing or malformed."""


class RegistryError(FeatureStoreError):
    """The feature registry (the dbt YAML) declares something invalid."""


class DataError(FeatureStoreError):
    """Stored data contradicts what the registry or the run expects."""


class InvalidEntity(DataError):
    """An entity a caller passed is malformed: an id not of its key's type, or keys the model or view does not take."""


class InvalidRow(DataError):
    """A pushed row that does not fit its view's contract (an unknown or missing feature, a wrong type, a non-finite
    number, no computed_at or one in the future)."""


class MissingFeatures(DataError):
    """An entity has no features to serve: never synced, expired after its TTL, or its derived key is null."""


class OnlineStoreError(FeatureStoreError):
    """The online store failed or is unreachable; what it held before stays readable."""


class WarehouseError(FeatureStoreError):
    """The warehouse could not be opened: PostgreSQL unreachable, or the DuckDB file held by another process."""


class ModelStoreError(FeatureStoreError):
    """A model or version the model store does not hold, a version saved twice, or its PostgreSQL unreachable."""


class ModelError(FeatureStoreError):
    """An estimator that cannot be served (no predict, not fitted, other input columns), or a declared trainer that
    cannot be imported or fails."""


class DbtBuildError(FeatureStoreError):
    """A dbt build failed; the message carries dbt's errors and where its log is."""


class AlertDeliveryError(FeatureStoreError):
    """An alert channel (webhook or Slack) refused or did not answer; the alert is sent again on the next tick."""


def shown(value: object) -> str:
    """A value as an error message quotes what a user typed: its repr (escapes included), cut to 40 characters."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"  # repr() refuses ints of more than 4,300 digits
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
