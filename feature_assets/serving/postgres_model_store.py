"""The model store in PostgreSQL (prod): every server host and every training run sees the same versions and the
same served version, wherever it runs.

Two tables in one schema, created if missing:
    model_versions          model, version, card (the card.json text), artifact (the pickled pipeline), created_at
    served_model_versions   per model, the version `predict` serves (a foreign key into model_versions), promoted_at
Promoting is one upsert of the model's pointer row, a transaction of its own: PostgreSQL serializes concurrent
promotions on that row (the last one wins, none is torn), the foreign key refuses a version never saved, and a
reader sees the old or the new version, never none.

Artifacts are unpickled as the folder store unpickles model.pkl: the bytes come from this store, written by our own
training assets, and are trusted like the folder is. Whoever can write these tables can run code in every server.
"""

import json
import pickle
import threading
from collections.abc import Callable
from dataclasses import asdict
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

    def save(self, card: ModelCard, pipeline: Any) -> str:
        # The card as card.json holds it: JSON text, not jsonb, which cannot hold a NaN metric.
        row = (card.model, card.version, json.dumps(asdict(card), indent=2), pickle.dumps(pipeline))

        def insert(connection: psycopg.Connection) -> None:
            connection.execute(
                f"insert into {self.schema}.model_versions (model, version, card, artifact) values (%s, %s, %s, %s)",
                row,
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

    def promote(self, model: str, version: str) -> None:
        def upsert(connection: psycopg.Connection) -> None:
            connection.execute(
                f"insert into {self.schema}.served_model_versions (model, version) values (%s, %s) "
                "on conflict (model) do update set version = excluded.version, promoted_at = now()",
                (model, version),
            )

        try:
            self._run(upsert)
        except psycopg.errors.ForeignKeyViolation:
            raise self._no_version(model, version) from None

    def card(self, model: str, version: str | None = None) -> ModelCard:
        (text,) = self._version_row(model, version, "card")
        return ModelCard.from_json(json.loads(text))

    def load(self, model: str, version: str | None = None) -> tuple[ModelCard, Any]:
        text, artifact = self._version_row(model, version, "card, artifact")
        return ModelCard.from_json(json.loads(text)), pickle.loads(artifact)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _version_row(self, model: str, version: str | None, columns: str) -> tuple[Any, ...]:
        """The columns of `version`, or of the served version read in the same statement (never a torn pair)."""
        parameters: tuple[str, ...]
        if version is None:
            where, parameters = (
                f"(model, version) = (select model, version from {self.schema}.served_model_versions where model = %s)",
                (model,),
            )
        else:
            where, parameters = "model = %s and version = %s", (model, version)
        row = self._run(
            lambda connection: connection.execute(
                f"select {columns} from {self.schema}.model_versions where {where}", parameters
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
        """Creates the schema and tables if missing. Looked up first, so a role that may only read them (a server
        host) never needs the right to create; a lock keeps two first users from creating at once."""
        versions, served = f"{self.schema}.model_versions", f"{self.schema}.served_model_versions"
        exists = "select to_regclass(%s) is not null and to_regclass(%s) is not null"
        row = connection.execute(exists, (versions, served)).fetchone()  # a select of one value: always one row
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
