"""Upgrade policy, decided before a WebSocket is accepted: origins and client addresses.

Pure functions: the handler passes in what it read from the request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

Origin = tuple[str, str, int]  # scheme, host (lower case), port

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_origin(text: str) -> Origin | None:
    """scheme://host[:port] as a comparable triple; None for `null` and anything malformed."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def own_origin(scheme: str, host_header: str) -> Origin | None:
    """The origin a page served by this request's server has."""
    # A browser's page origin uses http/https even though the socket is ws/wss.
    page_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return parse_origin(f"{page_scheme}://{host_header}")


def origin_allowed(origin: str | None, own: Origin | None, allowed: Iterable[str]) -> bool:
    """May a request with this Origin header upgrade? No header means a non-browser client."""
    if origin is None:
        return True
    parsed = parse_origin(origin)
    if parsed is None:  # includes the opaque origin `null`
        return False
    if parsed == own:
        return True
    return any(parsed == parse_origin(item) for item in allowed)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def trusted_peer(address: str, trusted: tuple[Network, ...]) -> bool:
    """Is this TCP peer one of the configured reverse proxies?"""
    return _in(address, trusted)


def _in(address: str, trusted: tuple[Network, ...]) -> bool:
    if not trusted:
        return False  # the common case, decided without parsing the address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: the TCP peer, unless that peer is a trusted proxy.

    Behind trusted proxies, X-Forwarded-For is read from the right (the hop nearest to
    us) and the first address that is not itself a trusted proxy is the client; anything
    left of it could have been written by the client and is ignored.
    """
    if not trusted or not forwarded_for or not _in(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            break
    else:
        hop = hops[0] if hops else peer  # every hop is a proxy: the farthest one
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return peer
