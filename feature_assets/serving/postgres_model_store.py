"""The model store in PostgreSQL (prod): every server host and every training run sees the same versions and the
same served version, wherever it runs.

Four tables in one schema, created if missing:
    model_versions          model, version, card (the card.json text), artifact (the pickled pipeline), created_at
    model_training_sets     model, version, data: the Parquet training rows kept with a version (if it kept any)
    served_model_versions   per model, the version `predict` serves (a foreign key into model_versions), promoted_at
    model_promotions        one row per promotion: model, version, promoted_at, note, in order (id)
Promoting is one transaction: the upsert of the model's pointer row and the insert of its event. PostgreSQL
serializes concurrent promotions on that row (the last one wins, none is torn, events in the order they took
effect), the foreign key refuses a version never saved, and a reader sees the old or the new version, never none.

A store created before training rows and promotions were kept gains their tables the first time a role that may
create them opens it (a training run); its earlier versions keep no training rows and no history.

Artifacts are unpickled as the folder store unpickles model.pkl: the bytes come from this store, written by our own
training assets, and are trusted like the folder is. Whoever can write these tables can run code in every server.
"""

import json
import pickle
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC
from typing import Any, TypeVar

import psycopg

from feature_assets.errors import ModelStoreError
from feature_assets.postgres import connect_postgres, first_line, postgres_location
from feature_assets.serving.model_card import ModelCard
from feature_assets.serving.model_store import ModelStore
from feature_assets.settings import validate_identifier

__all__ = ["PostgresModelStore"]

# Loading a large artifact over a slow link may take a while; a statement stuck for longer is cancelled by the server.
STATEMENT_TIMEOUT_S = 120

_T = TypeVar("_T")


class PostgresModelStore(ModelStore):
    """One connection per store object, opened at first use and reused (a served model's pointer is read about once
    a second); a lock keeps one statement at a time on it, so one object serves many threads."""

    def __init__(self, url: str, schema: str):
        self._url = url  # a secret: never in a message or a repr
        self.schema = validate_identifier(schema, "model store schema")
        self._connection: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"the PostgreSQL model store at {postgres_location(self._url)} (schema {self.schema})"

    def _save(self, card: ModelCard, pipeline: Any, training: bytes | None) -> str:
        # The card as card.json holds it: JSON text, not jsonb, which cannot hold a NaN metric.
        card_json = asdict(card)
        del card_json["history"]  # kept in model_promotions, as promotions happen
        row = (card.model, card.version, json.dumps(card_json, indent=2), pickle.dumps(pipeline))

        def insert(connection: psycopg.Connection) -> None:
            with connection.transaction():
                connection.execute(
                    f"insert into {self.schema}.model_versions (model, version, card, artifact) "
                    "values (%s, %s, %s, %s)",
                    row,
                )
                if training is not None:
                    connection.execute(
                        f"insert into {self.schema}.model_training_sets (model, version, data) values (%s, %s, %s)",
                        (card.model, card.version, training),
                    )

        try:
            self._run(insert)
        except psycopg.errors.UniqueViolation:
            raise self._version_exists(card.model, card.version) from None
        return f"{self.describe()}: {card.model} {card.version}"

    def versions(self, model: str) -> list[str]:
        # Byte order (collation C), as the folder store sorts its folder names.
        rows = self._run(
            lambda connection: connection.execute(
                f'select version from {self.schema}.model_versions where model = %s order by version collate "C"',
                (model,),
            ).fetchall()
        )
        return [version for (version,) in rows]

    def current(self, model: str) -> str:
        row = self._run(
            lambda connection: connection.execute(
                f"select version from {self.schema}.served_model_versions where model = %s", (model,)
            ).fetchone()
        )
        if row is None:
            raise self._no_served_version(model)
        version: str = row[0]
        return version

    def served_models(self) -> list[str]:
        rows = self._run(
            lambda connection: connection.execute(
                f"select model from {self.schema}.served_model_versions order by model"
            ).fetchall()
        )
        return [str(row[0]) for row in rows]

    def promote(self, model: str, version: str, note: str = "") -> None:
        def upsert(connection: psycopg.Connection) -> None:
            with connection.transaction():
                connection.execute(
                    f"insert into {self.schema}.served_model_versions (model, version) values (%s, %s) "
                    "on conflict (model) do update set version = excluded.version, promoted_at = now()",
                    (model, version),
                )
                connection.execute(
                    # The time it took effect, once the pointer row's lock is held (now() is when the transaction
                    # began, possibly before a concurrent promotion that took effect first).
                    f"insert into {self.schema}.model_promotions (model, version, promoted_at, note) "
                    "values (%s, %s, clock_timestamp(), %s)",
                    (model, version, note),
                )

        try:
            self._run(upsert)
        except psycopg.errors.ForeignKeyViolation:
            raise self._no_version(model, version) from None

    def card(self, model: str, version: str | None = None) -> ModelCard:
        text, times, notes = self._version_row(model, version, "v.card")
        return self._card(text, times, notes)

    def load(self, model: str, version: str | None = None) -> tuple[ModelCard, Any]:
        text, artifact, times, notes = self._version_row(model, version, "v.card, v.artifact")
        return self._card(text, times, notes), pickle.loads(artifact)

    def _training_data(self, model: str, version: str) -> bytes | None:
        row = self._run(
            lambda connection: connection.execute(
                f"select data from {self.schema}.model_training_sets where model = %s and version = %s",
                (model, version),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    @staticmethod
    def _card(text: str, times: list[Any] | None, notes: list[str] | None) -> ModelCard:
        card = ModelCard.from_json(json.loads(text))
        history = [
            {"promoted_at": at.astimezone(UTC).isoformat(), "version": card.version, "note": note}
            for at, note in zip(times or [], notes or [])
        ]
        return replace(card, history=history)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _version_row(self, model: str, version: str | None, columns: str) -> tuple[Any, ...]:
        """The columns of `version`, or of the served version read in the same statement (never a torn pair), then
        the times and notes of the promotions of that version, oldest first (null when none)."""
        parameters: tuple[str, ...]
        if version is None:
            where, parameters = (
                f"(v.model, v.version) = (select model, version from {self.schema}.served_model_versions "
                "where model = %s)",
                (model,),
            )
        else:
            where, parameters = "v.model = %s and v.version = %s", (model, version)
        history = (
            "select array_agg(p.promoted_at order by p.id) as times, array_agg(p.note order by p.id) as notes "
            f"from {self.schema}.model_promotions p where p.model = v.model and p.version = v.version"
        )
        row = self._run(
            lambda connection: connection.execute(
                f"select {columns}, h.times, h.notes from {self.schema}.model_versions v "
                f"cross join lateral ({history}) h where {where}",
                parameters,
            ).fetchone()
        )
        if row is None:
            raise self._no_served_version(model) if version is None else self._no_version(model, version)
        return row

    def _run(self, work: Callable[[psycopg.Connection], _T]) -> _T:
        """`work` on the store's connection, each statement a transaction of its own (autocommit). Any failure is
        one line naming the store, except integrity errors, which the caller names."""
        with self._lock:
            while True:
                connection = self._connection
                fresh = connection is None
                if connection is None:
                    connection = self._connection = self._connect()
                try:
                    return work(connection)
                except psycopg.IntegrityError:
                    raise
                except psycopg.Error as failure:
                    lost = connection.broken or connection.closed
                    if lost:
                        connection.close()
                        self._connection = None
                    if fresh or not lost:
                        raise ModelStoreError(f"{self.describe()} failed: {first_line(failure)}") from None
                    # The connection broke while idle (the server restarted, say): once more, on a new one.

    def _connect(self) -> psycopg.Connection:
        connection = connect_postgres(
            self._url,
            "PostgreSQL model store",
            ModelStoreError,
            autocommit=True,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}",
        )
        try:
            self._create_tables(connection)
        except psycopg.Error as failure:
            connection.close()
            raise ModelStoreError(f"{self.describe()} cannot create its tables: {first_line(failure)}") from None
        return connection

    def _create_tables(self, connection: psycopg.Connection) -> None:
        """Creates the schema and tables if missing (those of a store created by earlier code too). Looked up first,
        so a role that may only read them (a server host) never needs the right to create; a lock keeps two first
        users from creating at once."""
        versions, served = f"{self.schema}.model_versions", f"{self.schema}.served_model_versions"
        training, promotions = f"{self.schema}.model_training_sets", f"{self.schema}.model_promotions"
        tables = (versions, served, training, promotions)
        exists = " and ".join(["to_regclass(%s) is not null"] * len(tables))
        row = connection.execute(f"select {exists}", tables).fetchone()  # a select of one value: always one row
        if row is not None and row[0]:
            return
        with connection.transaction():
            connection.execute(
                "select pg_advisory_xact_lock(hashtext(%s))", (f"featurestore model store {self.schema}",)
            )
            connection.execute(f"create schema if not exists {self.schema}")
            connection.execute(
                f"create table if not exists {versions} (model text not null, version text not null, card text not "
                "null, "
                "artifact bytea not null, created_at timestamptz not null default now(), primary key (model, version))"
            )
            connection.execute(
                f"create table if not exists {served} (model text primary key, version text not null, "
                f"promoted_at timestamptz not null default now(), foreign key (model, version) references {versions})"
            )
            # Kept as long as its version is.
            connection.execute(
                f"create table if not exists {training} (model text not null, version text not null, data bytea not "
                f"null, primary key (model, version), foreign key (model, version) references {versions} "
                "on delete cascade)"
            )
            connection.execute(
                f"create table if not exists {promotions} (id bigint generated always as identity primary key, "
                "model text not null, version text not null, promoted_at timestamptz not null default now(), "
                f"note text not null default '', foreign key (model, version) references {versions} "
                "on delete cascade)"
            )
