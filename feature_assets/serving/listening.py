"""Where `featurestore serve` listens, and over what: its socket, and the TLS certificate when it has one.

Both are opened in the command's own process before any worker starts, so a port in use, an unknown host, an address
open to the network without keys, or a certificate that cannot be loaded ends the command in one line.
"""

import ipaddress
import socket
import ssl

from feature_assets.errors import ConfigError

__all__ = ["check_tls", "listen"]


def listen(host: str, port: int, *, loopback_only: bool) -> socket.socket:
    """The listening socket. With `loopback_only` (a server without API keys), an address other callers could reach
    is refused: whoever reached it would read every feature and prediction."""
    where = f"{host}:{port}"
    if not 0 <= port <= 65535:  # getaddrinfo would take 70000 as 4464
        raise ConfigError(f"cannot listen on {where}: a port is a number from 0 to 65535")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, OverflowError) as error:
        raise ConfigError(f"cannot listen on {where}: {getattr(error, 'strerror', None) or error}") from None
    if loopback_only and not ipaddress.ip_address(address[0]).is_loopback:
        raise ConfigError(
            f"refusing to listen on {host} without API keys: whoever reaches it would read every feature; set "
            "FEATURE_STORE_API_KEYS_FILE (README: Serving over HTTP), listen on 127.0.0.1, or pass --insecure"
        )
    try:
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ConfigError(f"cannot listen on {where}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Loads the certificate and its key once, as each worker will: a missing, malformed or mismatched file is refused
    here in one line, not by every worker in a traceback."""
    if keyfile and not certfile:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile, the certificate it goes with")
    if not certfile:
        return
    files = f"--ssl-certfile {certfile[:200]}" + (f" and --ssl-keyfile {keyfile[:200]}" if keyfile else "")
    try:
        # A password callback, so that an encrypted key is refused instead of prompting for its password.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile, keyfile, password=lambda: b"")
    except ssl.SSLError as error:
        raise ConfigError(
            f"cannot serve TLS with {files}: {error.reason or error} (a PEM certificate and its unencrypted key)"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot serve TLS with {files}: {error.strerror or error}") from None
