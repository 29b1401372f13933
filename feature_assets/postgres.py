"""Opening PostgreSQL from a URL that holds a password: bounded in time, and failing in one line that never quotes
the URL. The warehouse and the model store both connect through here."""

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from feature_assets.errors import FeatureStoreError

__all__ = ["POSTGRES_CONNECT_TIMEOUT_S", "connect_postgres", "first_line", "postgres_location"]

# A server that accepts TCP and never answers must not hang a command: libpq gives up connecting after this.
POSTGRES_CONNECT_TIMEOUT_S = 10


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def postgres_location(url: str) -> str:
    """host:port/dbname of a libpq URL, to name a server in messages without its password."""
    try:
        parts = conninfo_to_dict(url) if url else {}
    except psycopg.ProgrammingError:
        return "an invalid URL"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def connect_postgres(url: str, what: str, error: type[FeatureStoreError], **options: Any) -> psycopg.Connection:
    """A connection to `url`, or `error` naming `what` and its host and port (never the URL, which holds the
    password). The URL's own connect_timeout, if any, is libpq's to read and check."""
    try:
        parts = conninfo_to_dict(url) if url else {}
        if "connect_timeout" not in parts:
            options = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **options}
        return psycopg.connect(url, **options)
    except psycopg.ProgrammingError:
        # libpq's parse errors may quote the URL, password included.
        raise error(f"the {what} URL is not a valid libpq URL") from None
    except psycopg.OperationalError as failure:
        raise error(f"cannot connect to the {what} at {postgres_location(url)}: {first_line(failure)}") from None
