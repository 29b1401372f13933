"""Who may call `featurestore serve`: API keys, each with the scopes of the routes it may call.

FEATURE_STORE_API_KEYS_FILE holds one key per line, `<name> <sha256 hex of the key> <scopes>`; `#` starts a comment.
The file holds digests, never keys, so reading it (or a backup of it) gives no one a key. Scopes, comma-separated:

    read          POST /v1/features/{view}
    predict       POST /v1/predict/{model}
    push          every view's push route; push:<view> one view's
    metrics       GET /metrics

A caller sends `Authorization: Bearer <key>`. The server hashes the presented key once and looks the digest up, then
compares it with the stored one in constant time; it keeps no raw key, and logs and counts keys by name only.
"""

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from feature_assets.errors import ConfigError
from feature_assets.serving.http_requests import Refused

__all__ = ["ApiKey", "ApiKeys", "guarded", "new_key_line", "parse_scopes"]

SCOPES = ("read", "predict", "push", "push:<view>", "metrics")
_SCOPE = re.compile(r"read|predict|metrics|push(?::[a-z_][a-z0-9_]*)?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
# Query parameters a client might put a key in: a URL ends up in proxies' and browsers' logs, so such a request is
# refused even when its header holds a valid key.
_URL_KEY_PARAMETERS = ("api_key", "key")

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # SHA-256 of the key
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """Whether this key may call a route of `scope` (read, predict, metrics or push:<view>)."""
        return scope in self.scopes or (scope.startswith("push:") and "push" in self.scopes)


def parse_scopes(text: str, views: Collection[str] | None = None) -> frozenset[str]:
    """The scopes of a comma-separated list; `views`, when given, are the views a push:<view> may name.

    A scope that is not one is refused by its position, not quoted: a key pasted into the wrong column stays
    unprinted."""
    parts = text.split(",")
    for index, scope in enumerate(parts, 1):
        if not _SCOPE.fullmatch(scope):
            where = f"scope {index} of {len(parts)}" if len(parts) > 1 else "the scope"
            raise ValueError(f"{where} is not one of {', '.join(SCOPES)} (comma-separated, no spaces)")
        if views is not None and scope.startswith("push:") and scope[5:] not in views:
            raise ValueError(f"{scope} names no feature view; the views: {', '.join(sorted(views))}")
    return frozenset(parts)


def _key_of(fields: list[str], views: Collection[str] | None) -> ApiKey:
    if len(fields) != 3:
        raise ValueError(f"takes `<name> <sha256 hex of the key> <scopes>`, found {len(fields)} fields")
    name, digest, scopes = fields
    if not _NAME.fullmatch(name):
        raise ValueError("the name takes 1 to 64 letters, digits and . _ @ -, starting with a letter or digit")
    if not _DIGEST.fullmatch(digest):
        raise ValueError(
            "the second field is not 64 hex digits: the file holds each key's SHA-256, never the key itself "
            "(`featurestore api-key` makes a line)"
        )
    return ApiKey(name, bytes.fromhex(digest), parse_scopes(scopes, views))


class ApiKeys:
    """The keys a server takes, by the SHA-256 of each."""

    def __init__(self, keys: Iterable[ApiKey]):
        self._by_digest = {key.digest: key for key in keys}

    @property
    def names(self) -> list[str]:
        return [key.name for key in self._by_digest.values()]

    @classmethod
    def from_file(cls, path: Path, views: Collection[str] | None = None) -> "ApiKeys":
        """The keys of a keys file, or a ConfigError naming the file and the line at fault (never its content)."""
        where = f"FEATURE_STORE_API_KEYS_FILE {str(path)[:200]}"
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"{where} cannot be read: {error.strerror or error}") from None
        keys: list[ApiKey] = []
        name_lines: dict[str, int] = {}
        digest_lines: dict[bytes, int] = {}
        for number, raw in enumerate(data.split(b"\n"), 1):
            try:
                line = raw.decode("utf-8").split("#", 1)[0]
                if not line.strip():
                    continue
                key = _key_of(line.split(), views)
            except (UnicodeDecodeError, ValueError) as error:
                problem = "is not UTF-8" if isinstance(error, UnicodeDecodeError) else str(error)
                raise ConfigError(f"{where} line {number}: {problem}") from None
            if key.name in name_lines:
                raise ConfigError(
                    f"{where} line {number}: the name {key.name} is already on line {name_lines[key.name]}"
                )
            if key.digest in digest_lines:
                raise ConfigError(f"{where} line {number}: the same key as line {digest_lines[key.digest]}")
            name_lines[key.name], digest_lines[key.digest] = number, number
            keys.append(key)
        if not keys:
            raise ConfigError(f"{where} holds no key: one a line, `<name> <sha256 hex of the key> <scopes>`")
        return cls(keys)

    def check(self, request: Request, scope: str) -> ApiKey:
        """The key of a request allowed `scope`; else 401 (no key, an unknown one, or one in the URL) or 403."""
        if request.scope["query_string"] and any(name in request.query_params for name in _URL_KEY_PARAMETERS):
            raise Refused(
                401, "key_in_url", "a key is taken from the Authorization header only (Bearer), never from the URL"
            )
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise Refused(401, "no_key", "this route needs an API key: send the header `Authorization: Bearer <key>`")
        # Header values arrive as Latin-1 text: encoding them back gives the bytes the client sent.
        digest = hashlib.sha256(presented.encode("latin-1")).digest()
        key = self._by_digest.get(digest)
        if key is None or not hmac.compare_digest(key.digest, digest):
            raise Refused(401, "unknown_key", "the API key is not one of this server's keys")
        if not key.allows(scope):
            raise Refused(
                403,
                "forbidden",
                f"the key {key.name} has no scope {scope}; its scopes: {', '.join(sorted(key.scopes))}",
            )
        return key


def guarded(keys: ApiKeys | None, scope: str, handler: Handler) -> Handler:
    """`handler` answering only the keys with `scope`, a template of the route's path parameters: "push:{view}" on
    /v1/push/{view} needs push:user_features for /v1/push/user_features. Without keys, `handler` itself."""
    if keys is None:
        return handler

    async def endpoint(request: Request) -> Response:
        keys.check(request, scope.format_map(request.path_params))
        return await handler(request)

    return endpoint


def new_key_line(name: str, scopes: str, views: Collection[str] | None = None) -> tuple[str, str]:
    """A new random key and the keys file's line for it (its name, SHA-256 and scopes)."""
    if not _NAME.fullmatch(name):
        raise ConfigError("a key's name takes 1 to 64 letters, digits and . _ @ -, starting with a letter or digit")
    try:
        parse_scopes(scopes, views)
    except ValueError as error:
        raise ConfigError(f"scopes: {error}") from None
    key = "fs_" + secrets.token_urlsafe(32)
    return key, f"{name} {hashlib.sha256(key.encode()).hexdigest()} {scopes}"
