"""The online store's contract: each entity's latest snapshot, replaced atomically and expiring after the view's TTL.

Two implementations honour it (feature_assets_tests/test_online_store.py runs against each): Redis in production
(redis.py: a single server, a cluster, TLS), and SQLite, the embedded default that needs no server (sqlite.py).
Values are stored in the text form of `codec`; stores hand raw values back and `reads.FeatureReader` decodes them.

Writes are conditional: an entity's snapshot is replaced only by one computed at the same time or later, so a
late push or a sync of an older snapshot never replaces a newer pushed value (push.py).

An entity's snapshot lives until its computed_at + the view's TTL (the staleness rule training applies), not for
a TTL from the write: a resync never revives an old snapshot, and one already past its TTL is not written.
"""

import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from feature_assets.errors import DataError
from feature_assets.registry import FeatureView
from feature_assets.serving.codec import EncodedBatch

__all__ = ["OnlineStore", "OnlineWriter", "SyncRecord"]


@dataclass(frozen=True)
class SyncRecord:
    """What the last completed sync of a view wrote: its schema (dtype and definition checksum per feature),
    the newest snapshot time it covered, and the newest dbt build of the view it saw (a later build of an
    as-of time it covered makes the next sync a full one)."""

    version: str
    schema: tuple[tuple[str, str], ...]
    definitions: tuple[tuple[str, str], ...]
    watermark: datetime | None
    completed_at: datetime
    rows_written: int
    full: bool
    built_through: datetime | None = None
    full_sync_due: str = ""  # why the next sync must be a full one (set by a failed parity check)

    def to_json(self) -> dict[str, str]:
        return {
            "version": self.version,
            "schema": json.dumps(dict(self.schema)),
            "definitions": json.dumps(dict(self.definitions)),
            "last_sync_watermark": self.watermark.isoformat() if self.watermark else "",
            "last_sync_completed_at": self.completed_at.isoformat(),
            "last_sync_rows_written": str(self.rows_written),
            "last_sync_mode": "full" if self.full else "incremental",
            "built_through": self.built_through.isoformat() if self.built_through else "",
        }

    @classmethod
    def from_json(cls, fields: dict[str, str]) -> "SyncRecord":
        try:
            watermark = fields["last_sync_watermark"]
            return cls(
                version=fields["version"],
                schema=tuple(json.loads(fields["schema"]).items()),
                definitions=tuple(json.loads(fields["definitions"]).items()),
                watermark=datetime.fromisoformat(watermark) if watermark else None,
                completed_at=datetime.fromisoformat(fields["last_sync_completed_at"]),
                rows_written=int(fields["last_sync_rows_written"]),
                full=fields["last_sync_mode"] == "full",
                built_through=datetime.fromisoformat(built) if (built := fields.get("built_through")) else None,
                full_sync_due=fields.get("full_sync_due", ""),
            )
        except (KeyError, ValueError) as error:
            raise DataError(f"the online store's sync record is unreadable ({error!r}); run a full resync") from None


class OnlineWriter(ABC):
    """Writes batches of one sync or push. Each entity is replaced whole and atomically, and only when the store holds
    no newer snapshot of it (a sync also rewrites one of the same computed_at, a push does not); a failure leaves
    earlier values readable. rows_written counts the rows stored so far (the others found a newer snapshot)."""

    rows_written: int = 0

    @abstractmethod
    def write(self, batch: EncodedBatch) -> None:
        """Queues or writes one batch; raises OnlineStoreError if an earlier batch failed."""

    @abstractmethod
    def finish(self) -> None:
        """Returns once every batch is stored; raises OnlineStoreError if any failed."""

    @abstractmethod
    def abort(self) -> None:
        """Stops writing; batches already stored stay."""

    def __enter__(self) -> "OnlineWriter":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None:
            self.finish()
        else:
            self.abort()


class OnlineStore(ABC):
    """Latest snapshot per entity of each feature view, as raw stored values (see codec for the form)."""

    kind: str

    @abstractmethod
    def writer(self, view: FeatureView, *, replace: bool = False, push: bool = False) -> OnlineWriter:
        """A writer for one sync (replace=True: after a schema change, every entity is replaced whatever the store
        holds), or for one push (push=True: within a request's timeout)."""

    @abstractmethod
    def read_row(
        self, view: FeatureView, entity_id: Any, fields: Sequence[str], *, timeout: float | None = None
    ) -> Sequence[Any] | None:
        """Stored values of `fields` (bytes or str; None for null), or None if the entity is missing or expired.
        timeout (seconds) bounds the wait for the answer, where the store can wait (default: the store's own)."""

    @abstractmethod
    def read_rows(
        self, requests: Sequence[tuple[FeatureView, Any, Sequence[str]]], *, timeout: float | None = None
    ) -> list[Sequence[Any] | None]:
        """Several entities, possibly of several views, in one exchange: per (view, entity id, fields) request what
        read_row returns for it."""

    @abstractmethod
    def read_columns(self, view: FeatureView, entity_ids: Sequence[Any], fields: Sequence[str]) -> list[Sequence[Any]]:
        """Many entities in few round trips, column by column: one sequence per field, entities in the order
        given, None for null. An entity is missing or expired exactly where the first field (the timestamp) is None."""

    @abstractmethod
    def last_sync(self, view: FeatureView) -> SyncRecord | None:
        """The record of the last completed sync, or None if there was none (or it expired)."""

    @abstractmethod
    def record_sync(self, view: FeatureView, record: SyncRecord) -> None:
        """Marks a sync complete; called only after its last batch is stored."""

    @abstractmethod
    def request_full_sync(self, view: FeatureView, reason: str) -> None:
        """Marks the sync record so the next sync rewrites every entity (the repair after a failed parity check);
        serving goes on reading meanwhile."""

    @abstractmethod
    def count_entities(self, view: FeatureView) -> int:
        """Entities of the view currently readable (not expired)."""

    @abstractmethod
    def entity_ids(self, view: FeatureView) -> set[bytes]:
        """The encoded ids of every entity of the view in the store."""

    @abstractmethod
    def delete(self, view: FeatureView, entity_ids: Collection[bytes]) -> None:
        """Removes entities (encoded ids) of the view."""

    @abstractmethod
    def key_of(self, view: FeatureView, entity_id: Any) -> str:
        """Where an entity lives, for error messages and for people with a store client."""

    @abstractmethod
    def describe(self) -> str:
        """The store's location without secrets."""

    @abstractmethod
    def close(self) -> None:
        """Releases connections; the store is unusable afterwards."""

    def __enter__(self) -> "OnlineStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
