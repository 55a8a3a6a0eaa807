"""Broker addresses as URLs: ``mqtt://host:port`` or ``mqtts://host:port`` (TLS), optionally
with credentials: ``mqtt://user:password@host:port`` (percent-encode ``/ : @`` in them)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL. Raises ``ValueError`` naming the accepted forms."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
        raise ValueError(f"broker URL {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls,
                         username=unquote(parts.username) if parts.username else None,
                         password=unquote(parts.password) if parts.password is not None else None)
