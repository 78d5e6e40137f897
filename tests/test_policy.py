"""The upgrade policy as pure decisions (contract section 2): origins and client addresses."""

from __future__ import annotations

import pytest

from chat.policy import (
    client_address,
    networks,
    origin_allowed,
    own_origin,
    parse_origin,
    trusted_peer,
)

# ---------------------------------------------------------------------- origins


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("http://Example.com", "http://example.com:80"),
        ("HTTPS://EXAMPLE.COM", "https://example.com:443"),
        ("http://example.com:8080", "http://EXAMPLE.com:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("http://[2001:DB8::1]", "http://[2001:db8::1]:80"),
    ],
)
def test_origins_compare_scheme_host_and_default_port(left: str, right: str) -> None:
    """Host case and an explicit default port do not change an origin."""
    assert parse_origin(left) is not None
    assert parse_origin(left) == parse_origin(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("http://example.com", "https://example.com"),
        ("http://example.com", "http://example.com:8080"),
        ("https://example.com", "https://example.com:80"),
        ("http://example.com", "http://example.org"),
        ("http://example.com", "http://www.example.com"),
    ],
)
def test_different_origins_differ(left: str, right: str) -> None:
    """Another scheme, port or host is another origin."""
    assert parse_origin(left) != parse_origin(right)


@pytest.mark.parametrize(
    "text",
    ["null", "", "example.com", "//example.com", "http://", "http://:80", "ftp://example.com",
     "http://example.com:99999", "http://example.com:port", "javascript:alert(1)",
     "file:///etc/passwd", "data:text/html,x"],
)
def test_malformed_origins_parse_to_none(text: str) -> None:
    """`null` and anything that is not scheme://host[:port] is no origin at all."""
    assert parse_origin(text) is None


def test_own_origin_maps_websocket_schemes_to_page_schemes() -> None:
    """The page that opens ws:// is http://, and wss:// is https://."""
    assert own_origin("ws", "Chat.Example:80") == ("http", "chat.example", 80)
    assert own_origin("wss", "chat.example") == ("https", "chat.example", 443)
    assert own_origin("http", "127.0.0.1:8080") == ("http", "127.0.0.1", 8080)
    assert own_origin("https", "[::1]:8443") == ("https", "::1", 8443)


def test_own_origin_without_host_is_none() -> None:
    """A request without a usable Host header has no own origin."""
    assert own_origin("http", "") is None


def test_no_origin_header_is_allowed() -> None:
    """A request without Origin comes from a non-browser client and is not refused for it."""
    assert origin_allowed(None, own_origin("http", "chat.example"), [])
    assert origin_allowed(None, None, [])


def test_own_origin_is_allowed_in_any_spelling() -> None:
    """The server's own origin passes with other host case or an explicit default port."""
    own = own_origin("http", "chat.example")
    assert origin_allowed("http://chat.example", own, [])
    assert origin_allowed("http://CHAT.example:80", own, [])


@pytest.mark.parametrize(
    "origin",
    ["https://chat.example", "http://chat.example:8080", "http://evil.example",
     "http://chat.example.evil.example", "null", "garbage", ""],
)
def test_other_or_malformed_origins_are_refused(origin: str) -> None:
    """Another site's origin, `null` and malformed values are refused."""
    assert not origin_allowed(origin, own_origin("http", "chat.example"), [])


def test_listed_origins_are_allowed() -> None:
    """Origins in security.allowed_origins pass, compared like the own origin."""
    own = own_origin("http", "chat.example")
    allowed = ["https://app.example", "http://localhost:3000"]
    assert origin_allowed("https://APP.example:443", own, allowed)
    assert origin_allowed("http://localhost:3000", own, allowed)
    assert not origin_allowed("http://app.example", own, allowed)
    assert not origin_allowed("http://localhost:3001", own, allowed)
    assert not origin_allowed("null", own, ["null"])


def test_listed_origin_passes_without_own_origin() -> None:
    """A listed origin is allowed even when the Host header gives no own origin."""
    assert origin_allowed("https://app.example", None, ["https://app.example"])
    assert not origin_allowed("https://other.example", None, ["https://app.example"])


# ---------------------------------------------------------------------- client addresses

PROXY = networks(["10.0.0.0/8", "127.0.0.1"])


def test_untrusted_peer_ignores_forwarded_for() -> None:
    """Without trusted proxies, or from an untrusted peer, X-Forwarded-For is ignored."""
    assert client_address("198.51.100.7", "203.0.113.9", ()) == "198.51.100.7"
    assert client_address("198.51.100.7", "203.0.113.9", PROXY) == "198.51.100.7"


def test_trusted_proxy_gives_forwarded_client() -> None:
    """Behind a trusted proxy the client is the address it forwarded."""
    assert client_address("10.1.2.3", "203.0.113.9", PROXY) == "203.0.113.9"
    assert client_address("127.0.0.1", " 203.0.113.9 ", PROXY) == "203.0.113.9"


def test_rightmost_untrusted_hop_wins() -> None:
    """Hops left of the rightmost untrusted one may be forged by the client and are ignored."""
    assert client_address("10.0.0.1", "1.1.1.1, 203.0.113.9", PROXY) == "203.0.113.9"
    assert client_address("10.0.0.1", "1.1.1.1, 203.0.113.9, 10.0.0.2", PROXY) == "203.0.113.9"
    assert client_address("10.0.0.1", "127.0.0.1, 203.0.113.9, 10.9.9.9", PROXY) == "203.0.113.9"


def test_every_hop_trusted_gives_farthest() -> None:
    """When every hop is a proxy, the farthest one is the best guess."""
    assert client_address("10.0.0.1", "10.0.0.3, 10.0.0.2", PROXY) == "10.0.0.3"


@pytest.mark.parametrize("forwarded", ["", " , ", "not-an-ip", "1.1.1.1, garbage",
                                       "203.0.113.9:4711", "unknown"])
def test_garbage_forwarded_for_gives_peer(forwarded: str) -> None:
    """An empty list or an unparsable nearest untrusted hop falls back to the TCP peer."""
    assert client_address("10.0.0.1", forwarded, PROXY) == "10.0.0.1"
    assert client_address("10.0.0.1", None, PROXY) == "10.0.0.1"


def test_ipv6_addresses() -> None:
    """IPv6 proxies and clients work, and the client address comes out in canonical form."""
    trusted = networks(["::1/128", "fd00::/8"])
    assert client_address("::1", "2001:DB8:0:0::1", trusted) == "2001:db8::1"
    assert client_address("fd00::5", "2001:db8::2, fd00::9", trusted) == "2001:db8::2"
    assert client_address("2001:db8::3", "2001:db8::4", trusted) == "2001:db8::3"


def test_networks_accept_addresses_and_cidrs() -> None:
    """Trusted proxies may be single addresses or networks with host bits set."""
    parsed = networks(["127.0.0.1", "10.1.2.3/8", "::1"])
    assert [str(net) for net in parsed] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]


def test_trusted_peer() -> None:
    """Only TCP peers inside security.trusted_proxies are proxies; garbage never is."""
    assert trusted_peer("10.9.8.7", PROXY)
    assert trusted_peer("127.0.0.1", PROXY)
    assert not trusted_peer("127.0.0.2", PROXY)
    assert not trusted_peer("203.0.113.9", PROXY)
    assert not trusted_peer("?", PROXY)
    assert not trusted_peer("10.0.0.1", ())
