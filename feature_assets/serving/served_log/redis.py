"""The served-vector log in Redis: a stream per view, next to the online store."""

import time
from typing import Any, cast

import pandas as pd
import redis

from feature_assets.errors import FeatureStoreError
from feature_assets.serving import redis_io
from feature_assets.serving.redis_io import bulk
from feature_assets.serving.served_log.base import GIL_CHUNK, Record, ServedLog, ServedLogError, records_frame

__all__ = ["RedisServedLog"]

_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # (entry id, fields) per entry, as XRANGE answers


class RedisServedLog(ServedLog):
    """A Redis stream per view (featurestore:served:<view>), trimmed with XADD MAXLEN ~ max_length.

    Its own client from `url` (a single server or a cluster), with short connect and socket timeouts and made on
    first use, so an unreachable log costs the writer thread a fraction of a second per attempt and neither the
    online store nor the caller anything.
    """

    def __init__(self, url: str, *, socket_timeout: float = 0.5, **options: Any):
        redis_io.check_url(url, "the served-log Redis URL")
        self._url = url
        self._timeout = socket_timeout
        self._client: redis_io.RedisClient | None = None
        self._keys: dict[str, bytes] = {}
        super().__init__(**options)

    @property
    def client(self) -> redis_io.RedisClient:
        if self._client is None:
            self._client = redis_io.connect(self._url, timeout=self._timeout, what="the served-log Redis URL")
        return self._client

    @staticmethod
    def key(view: str) -> str:
        return f"featurestore:served:{view}"

    def describe(self) -> str:
        return redis_io.describe_url(self._url) if self._client is None else redis_io.describe(self._client)

    def _write(self, records: list[Record]) -> None:
        # Pre-encoded commands, one pipelined round trip per stream: redis-py's pipeline spends ~20 us of Python
        # (and the GIL the request threads need) per command.
        maxlen = bulk(b"%d" % self.max_length)
        commands: dict[bytes, list[bytes]] = {}
        for record in records:
            if len(commands) % GIL_CHUNK == 0:
                time.sleep(0)
            key = self._keys.get(record.view)
            if key is None:
                key = self._keys[record.view] = bulk(self.key(record.view).encode())
            fields = [record.entity_key.encode(), record.entity_id.encode(), b"features", record.features.encode()]
            if record.model is not None:
                fields += [b"model", record.model.encode(), b"version", (record.version or "").encode()]
            fields += [b"served_at", record.served_at.encode()]
            commands.setdefault(key, []).append(
                b"*%d\r\n$4\r\nXADD\r\n%s$6\r\nMAXLEN\r\n$1\r\n~\r\n%s$1\r\n*\r\n%s"
                % (6 + len(fields), key, maxlen, b"".join(map(bulk, fields)))
            )
        for key, stream in commands.items():
            node = redis_io.node_for(self.client, key.split(b"\r\n")[1])
            refused = redis_io.errors(redis_io.exchange(node, b"".join(stream), len(stream)))
            if refused:
                raise refused[0]

    def read(self, view: str, limit: int | None = None) -> pd.DataFrame:
        try:
            # redis-py types stream entries for any client (str with decode_responses, None after XDEL for XCLAIM);
            # this client decodes nothing and XRANGE lists only entries that exist: ids, names and values are bytes.
            if limit is None:
                entries = cast(_Entries, self.client.xrange(self.key(view)))
            else:
                entries = cast(_Entries, self.client.xrevrange(self.key(view), count=limit))[::-1]
        except redis.RedisError as error:
            raise ServedLogError(f"served log at {self.describe()}: {type(error).__name__}: {error}") from None
        except FeatureStoreError as error:
            raise ServedLogError(f"served log: {error}") from None
        rows: list[tuple[str, str, str, str | None, str | None, str]] = []
        for _, encoded in entries:
            fields = {name.decode(): value.decode() for name, value in encoded.items()}
            features, served_at = fields.pop("features"), fields.pop("served_at")
            model, version = fields.pop("model", None), fields.pop("version", None)
            (key, entity_id), = fields.items()  # fmt: skip
            rows.append((key, entity_id, features, model, (version or None) if model else None, served_at))
        return records_frame(rows)

    def _close_backend(self) -> None:
        if self._client is not None:
            redis_io.close(self._client)
