"""A model version's card: everything serving must know about it, bound to the feature schema it was trained on."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from feature_assets.registry import Feature, FeatureSet, FeatureView, ViewRead

__all__ = ["ModelCard", "schema_version"]


def schema_version(features: Sequence[Mapping[str, str]]) -> str:
    """A hash of the ordered feature names, dtypes and definition checksums: equal iff serving may decode alike."""
    payload = json.dumps([[f.get("view"), f["name"], f["dtype"], f["definition_checksum"]] for f in features])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelCard:
    """Everything serving must know about a model version, as stored with it (card.json in a folder store).

    views: per view read, in order: name, entity, entity_key, key_data_type (absent in cards written before it was
    recorded), timestamp, online_ttl_hours, and derived_from ([view, feature] whose online value is the entity key,
    or null when the caller passes it).
    features: ordered, each with its view, name, dtype and definition_checksum.
    trainer: what fitted it: {"function": "builtin", "pkg.mod:fn" (a declared trainer) or "notebook", "estimator":
    module.QualName, "params": its own parameters}; None in cards written before it was recorded.
    training: the summary of the training rows kept with the version (rows, columns, bytes, format, sha256; see
    training_rows.py); None when none were kept.
    request: the fields the caller sends with each entity ({"name", "dtype"}), in order; request_features: the
    features computed from them at request time ({"name", "dtype", "function", "definition_checksum": the sha256 of
    the function's source}), the model's last input columns (see `inputs`). Both empty for a model without any.
    history: the events that promoted this version ({"promoted_at", "version", "note"}), oldest first, as the store
    reads them: a saved card holds none.
    """

    model: str
    version: str
    task: str
    target: str
    labels: str
    views: list[dict[str, Any]]
    features: list[dict[str, str]]
    schema_version: str
    trained_at: str
    training_window: dict[str, str]
    rows: dict[str, int]
    metrics: dict[str, float]
    trainer: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    request: list[dict[str, str]] = field(default_factory=list)
    request_features: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def for_feature_set(cls, feature_set: FeatureSet, **fields: Any) -> "ModelCard":
        """The card of a model the registry declares, bound to the views and features it reads and to its request-time
        features' functions."""
        return cls.for_reads(
            feature_set.model,
            feature_set.task,
            feature_set.target,
            feature_set.labels.name,
            feature_set.reads,
            request=[{"name": f.name, "dtype": f.dtype} for f in feature_set.request],
            request_features=[
                {"name": f.name, "dtype": f.dtype, "function": f.function, "definition_checksum": f.definition_checksum}
                for f in feature_set.request_features
            ],
            **fields,
        )

    @classmethod
    def for_reads(
        cls, model: str, task: str, target: str, labels: str, reads: Sequence[ViewRead], **fields: Any
    ) -> "ModelCard":
        """The card of a model reading `reads` (per view, its features, in order), bound to them as a declared
        model is: a model fitted in a notebook passes labels="" (no label table), and target "" if it has no name."""
        views = [
            {
                "name": read.view.name,
                "entity": read.view.entity,
                "entity_key": read.view.entity_key,
                "key_data_type": read.view.key_data_type,
                "timestamp": read.view.timestamp,
                "online_ttl_hours": read.view.online_ttl / timedelta(hours=1),
                "derived_from": list(read.derived_from) if read.derived_from else None,
            }
            for read in reads
        ]
        features = [
            {"view": read.view.name, "name": f.name, "dtype": f.dtype, "definition_checksum": f.definition_checksum}
            for read in reads
            for f in read.features
        ]
        return cls(
            model=model,
            task=task,
            target=target,
            labels=labels,
            views=views,
            features=features,
            schema_version=schema_version(
                [*features, *({"view": "request", **f} for f in fields.get("request_features", ()))]
            ),
            **fields,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ModelCard":
        """A stored card; cards written before models could read several views name their one view at the top, and
        those written before trainers, kept training rows and promotion history were recorded have none."""
        if "views" not in data:
            data = dict(data)
            view = {k: data.pop(k) for k in ("view", "entity", "entity_key", "timestamp", "online_ttl_hours")}
            data["views"] = [{"name": view.pop("view"), **view, "derived_from": None}]
            data["features"] = [{"view": data["views"][0]["name"], **f} for f in data["features"]]
            data.setdefault("labels", "")
        return cls(**data)

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.features]

    @property
    def inputs(self) -> list[dict[str, str]]:
        """The model's input columns in order ({"name", "dtype"}): the stored features, then the request-time ones."""
        return [{"name": f["name"], "dtype": f["dtype"]} for f in (*self.features, *self.request_features)]

    @property
    def caller_keys(self) -> list[str]:
        """The entity keys a caller passes to predict; the others are derived from online features."""
        return list(dict.fromkeys(v["entity_key"] for v in self.views if not v["derived_from"]))

    def feature_views(self) -> list[FeatureView]:
        """The slice of each view this model reads, rebuilt from the card (no dbt manifest needed)."""
        return [
            FeatureView(
                name=view["name"],
                entity=view["entity"],
                entity_key=view["entity_key"],
                timestamp=view["timestamp"],
                online_ttl=timedelta(hours=view["online_ttl_hours"]),
                features=tuple(
                    Feature(f["name"], f["dtype"], "", "", f["definition_checksum"])
                    for f in self.features
                    if f["view"] == view["name"]
                ),
                definition_checksum="",
            )
            for view in self.views
        ]
