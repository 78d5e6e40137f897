"""Token decisions as pure functions (contract section 6): HS256, sub, exp, rooms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import unicodedata
from typing import Any, Final

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat.auth import LEEWAY, Grant, Unauthorized, issue, verify, weak_secret

SECRET: Final = "s" * 64  # long enough for HS256 and HS512 without PyJWT's key warning
OTHER_SECRET: Final = "o" * 64
NOW: Final = 1_700_000_000.0


def sign(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _part(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    """A token with `alg: none` and no signature."""
    header = _part(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_part(json.dumps(claims).encode())}."


def hand_signed(claims: Any, secret: str = SECRET) -> str:
    """An HS256 token built by hand, so that claims of any JSON type get signed."""
    head = _part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{head}.{_part(json.dumps(claims).encode())}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_part(mac)}"


def test_issue_verify_round_trip() -> None:
    """A token issued for a nick verifies for that nick, with its rooms."""
    token = issue("alice", SECRET, NOW, 60, ["a", "b"])
    assert verify(token, "alice", SECRET, NOW) == Grant("alice", frozenset({"a", "b"}))
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["sub"] == "alice"
    assert claims["exp"] == int(NOW + 60)
    assert claims["rooms"] == ["a", "b"]


def test_issue_without_rooms_has_no_rooms_claim() -> None:
    """No rooms given means no `rooms` claim: every room."""
    token = issue("alice", SECRET, NOW, 60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert "rooms" not in claims
    assert verify(token, None, SECRET, NOW).rooms is None


@pytest.mark.parametrize(
    ("sub", "nick"),
    [
        ("alice", "ALICE"),
        ("Alice", "alice"),
        ("\uff41\uff4c\uff49\uff43\uff45", "alice"),  # fullwidth
        ("straße", "STRASSE"),
        ("\u212bngstrom", "\u00c5NGSTROM"),  # Angstrom sign vs A with ring
    ],
)
def test_nick_compared_nfkc_casefold(sub: str, nick: str) -> None:
    """hello.nick must equal sub compared as nicks are: NFKC and casefold."""
    grant = verify(sign({"sub": sub}), nick, SECRET, NOW)
    assert grant.nick == unicodedata.normalize("NFKC", sub)


def test_nick_omitted_takes_sub() -> None:
    """Without hello.nick the grant's nick is the (normalised) sub."""
    assert verify(sign({"sub": "\uff42\uff4f\uff42"}), None, SECRET, NOW).nick == "bob"


def test_missing_token_is_unauthorized() -> None:
    """Token mode without a token refuses."""
    with pytest.raises(Unauthorized):
        verify(None, "alice", SECRET, NOW)


@pytest.mark.parametrize(
    ("token", "nick"),
    [
        pytest.param(sign({"sub": "alice"}), "bob", id="wrong-nick"),
        pytest.param(sign({"sub": "alice"}, OTHER_SECRET), "alice", id="bad-signature"),
        pytest.param(sign({"sub": "alice"}, algorithm="HS512"), "alice", id="hs512"),
        pytest.param(unsigned({"sub": "alice"}), "alice", id="alg-none"),
        pytest.param(unsigned({"sub": "alice"}), None, id="alg-none-no-nick"),
        pytest.param(sign({"name": "alice"}), "alice", id="missing-sub"),
        pytest.param(sign({"name": "alice"}), None, id="missing-sub-no-nick"),
        pytest.param(sign({"sub": "bad nick!"}), None, id="invalid-nick-sub"),
        pytest.param(sign({"sub": ""}), None, id="empty-sub"),
        pytest.param(sign({"sub": "x" * 33}), None, id="long-sub"),
        pytest.param(sign({"sub": 5}), None, id="int-sub"),
        pytest.param(sign({"sub": "alice", "exp": "soon"}), None, id="string-exp"),
        pytest.param("not.a.token", "alice", id="garbage"),
        pytest.param("", "alice", id="empty"),
    ],
)
def test_bad_tokens_are_unauthorized(token: str, nick: str | None) -> None:
    """Wrong nick, bad signature, other algorithms, bad sub or exp: Unauthorized."""
    with pytest.raises(Unauthorized):
        verify(token, nick, SECRET, NOW)


def test_tampered_payload_is_unauthorized() -> None:
    """Swapping in another payload breaks the signature."""
    header, _, signature = sign({"sub": "alice"}).split(".")
    forged = base64.urlsafe_b64encode(b'{"sub":"admin"}').rstrip(b"=").decode()
    with pytest.raises(Unauthorized):
        verify(f"{header}.{forged}.{signature}", None, SECRET, NOW)


@pytest.mark.parametrize("late", [0, 1, LEEWAY - 1, LEEWAY])
def test_expiry_within_leeway_is_accepted(late: int) -> None:
    """Up to 30 s past `exp` is clock skew and still accepted."""
    token = sign({"sub": "alice", "exp": int(NOW) - late})
    assert verify(token, "alice", SECRET, NOW).nick == "alice"


@pytest.mark.parametrize("late", [LEEWAY + 1, 3600])
def test_expiry_beyond_leeway_is_unauthorized(late: int) -> None:
    """More than 30 s past `exp` is expired."""
    token = sign({"sub": "alice", "exp": int(NOW) - late})
    with pytest.raises(Unauthorized):
        verify(token, "alice", SECRET, NOW)


def test_no_exp_never_expires() -> None:
    """`exp` is optional."""
    assert verify(sign({"sub": "alice"}), "alice", SECRET, NOW + 10**9).nick == "alice"


def test_issued_token_expires_after_ttl() -> None:
    """An issued token lasts its ttl plus the leeway."""
    token = issue("alice", SECRET, NOW, 60)
    verify(token, "alice", SECRET, NOW + 60 + LEEWAY)
    with pytest.raises(Unauthorized):
        verify(token, "alice", SECRET, NOW + 60 + LEEWAY + 1)


@pytest.mark.parametrize(
    ("claim", "rooms"),
    [
        (["lobby", "dev-2"], frozenset({"lobby", "dev-2"})),
        (["*"], None),
        ([], frozenset()),
    ],
)
def test_rooms_claim(claim: list[str], rooms: frozenset[str] | None) -> None:
    """`rooms` lists room names; ["*"] (like no claim) means every room."""
    assert verify(sign({"sub": "alice", "rooms": claim}), None, SECRET, NOW).rooms == rooms


def test_absent_rooms_claim_means_all() -> None:
    """No `rooms` claim: every room."""
    assert verify(sign({"sub": "alice"}), None, SECRET, NOW).rooms is None


@pytest.mark.parametrize(
    "claim",
    ["lobby", "*", ["Lobby"], ["no spaces"], [1], ["lobby", 2], ["*", "lobby"], {"a": 1},
     [["lobby"]], 5],
)
def test_invalid_rooms_claim_is_unauthorized(claim: Any) -> None:
    """A rooms claim that is neither a list of room names nor ["*"] makes the token invalid."""
    with pytest.raises(Unauthorized):
        verify(sign({"sub": "alice", "rooms": claim}), None, SECRET, NOW)


def test_weak_secret_counts_bytes() -> None:
    """Secrets under 32 bytes (UTF-8) are weak."""
    assert weak_secret("x" * 31)
    assert not weak_secret("x" * 32)
    assert not weak_secret("é" * 16)
    assert weak_secret("é" * 15)


@pytest.mark.parametrize("exp", [math.nan, math.inf], ids=["nan", "infinity"])
def test_non_numeric_date_exp_is_unauthorized(exp: float) -> None:
    """An `exp` that is no NumericDate (NaN, Infinity) makes the token invalid."""
    with pytest.raises(Unauthorized):
        verify(hand_signed({"sub": "alice", "exp": exp}), None, SECRET, NOW)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)
CLAIMS = st.dictionaries(
    st.sampled_from(["sub", "exp", "rooms", "nbf", "iat", "aud", "iss", "jti"]) | st.text(),
    JSON_VALUES | st.sampled_from(["alice", ["*"], ["a", "b"], int(NOW) + 60]),
    max_size=6,
)


@settings(max_examples=300, deadline=None, database=None)
@given(token=st.text() | CLAIMS.map(hand_signed) | JSON_VALUES.map(hand_signed),
       nick=st.none() | st.text(max_size=40))
def test_verify_only_grants_or_refuses(token: str, nick: str | None) -> None:
    """Whatever the token, verify returns a Grant or raises Unauthorized, nothing else."""
    try:
        grant = verify(token, nick, SECRET, NOW)
    except Unauthorized:
        return
    assert grant.nick and isinstance(grant.nick, str)
    assert grant.rooms is None or all(isinstance(room, str) for room in grant.rooms)
