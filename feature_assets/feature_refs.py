"""Feature references, as a caller writes them: `"view:feature"`, `"view:*"`, or a model's name (the features its
exposure declares, derived keys included). Resolved against the registry into the reads a join or a lookup makes."""

from collections.abc import Collection, Sequence

from feature_assets.errors import FeatureStoreError, RegistryError, shown
from feature_assets.registry import Feature, Registry, ViewRead

__all__ = [
    "PANDAS_DTYPES",
    "declared_derivations",
    "output_names",
    "resolve_features",
    "snapshot_time_column",
    "with_keys_from",
]

# The registry's dtypes as pandas' nullable dtypes: ints stay ints beside nulls, as online reads return them.
PANDAS_DTYPES = {"int64": "Int64", "float64": "Float64", "bool": "boolean", "string": "string"}


def resolve_features(registry: Registry, features: str | Sequence[str]) -> list[ViewRead]:
    """One read per view, in the order the references first name it, each feature once. A model's reads keep the
    derived keys its exposure declares (`with_keys_from` decides whether they are needed)."""
    references = [features] if isinstance(features, str) else list(features)
    if not references:
        raise FeatureStoreError("no features requested: pass 'view:feature', 'view:*' or a model's name")
    chosen: dict[str, dict[str, Feature]] = {}
    derived: dict[str, tuple[str, str]] = {}
    for reference in references:
        if not isinstance(reference, str):
            raise FeatureStoreError(
                f"a feature reference is a string like 'user_features:events_30d', not {shown(reference)}"
            )
        if ":" in reference:
            view_name, _, name = reference.partition(":")
            view = registry.view(view_name)
            picked = view.features if name == "*" else (view.feature(name),)
            chosen.setdefault(view.name, {}).update((f.name, f) for f in picked)
            continue
        if not any(reference in (model, model.removesuffix("_model")) for model in registry.feature_sets):
            raise RegistryError(
                f"{shown(reference)} is neither 'view:feature', 'view:*' nor a model; models: "
                f"{', '.join(sorted(registry.feature_sets)) or 'none'}"
            )
        for read in registry.feature_set(reference).reads:
            chosen.setdefault(read.view.name, {}).update((f.name, f) for f in read.features)
            if read.derived_from is not None:
                derived[read.view.name] = read.derived_from
    return [
        ViewRead(registry.view(name), tuple(features.values()), derived.get(name)) for name, features in chosen.items()
    ]


def declared_derivations(registry: Registry) -> dict[str, tuple[str, str]]:
    """Each entity key some exposure derives from another view's feature (its derived_keys): key -> (view, feature)."""
    return {
        read.key: read.derived_from
        for feature_set in registry.feature_sets.values()
        for read in feature_set.reads
        if read.derived_from is not None
    }


def with_keys_from(registry: Registry, reads: Sequence[ViewRead], columns: Collection[str]) -> list[ViewRead]:
    """The reads with their keys settled for a caller holding `columns`: a key the caller has is used as given; a
    missing one is derived from another view's feature (as serving derives it), as the model or any exposure of
    the registry declares it, when the caller has that view's key; else the error names the column to add."""
    declared = declared_derivations(registry)
    settled = []
    for read in reads:
        if read.key in columns:
            settled.append(ViewRead(read.view, read.features))
            continue
        source = read.derived_from or declared.get(read.key)
        if source is None or registry.view(source[0]).entity_key not in columns:
            how = f", or {registry.view(source[0]).entity_key} to derive it from {'.'.join(source)}" if source else ""
            raise FeatureStoreError(
                f"the entity rows have no column {read.key}, the key of {read.view.name}: add it{how} "
                f"(columns: {', '.join(map(str, columns)) or 'none'})"
            )
        settled.append(ViewRead(read.view, read.features, source))
    return settled


def output_names(reads: Sequence[ViewRead], full_feature_names: bool) -> list[list[str]]:
    """Per read, the column of each feature: its name, or `view__feature` when asked or when two views share it."""
    counts: dict[str, int] = {}
    for read in reads:
        for feature in read.features:
            counts[feature.name] = counts.get(feature.name, 0) + 1
    return [
        [
            f"{read.view.name}__{feature.name}" if full_feature_names or counts[feature.name] > 1 else feature.name
            for feature in read.features
        ]
        for read in reads
    ]


def snapshot_time_column(read: ViewRead) -> str:
    """The result's column holding the time of the view's snapshot a row was given (null: none)."""
    return f"{read.view.name}__computed_at"
