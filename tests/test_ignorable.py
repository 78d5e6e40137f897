"""The Default_Ignorable_Code_Point table against known members, non-members and its derivation."""

from __future__ import annotations

import sys
import unicodedata
from itertools import pairwise

import pytest

from chat.ignorable import DEFAULT_IGNORABLE, default_ignorable
from chat.protocol import normalize_nick

MEMBERS = [0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x180B, 0x180E, 0x180F, 0x200B,
           0x200D, 0x200F, 0x202E, 0x2060, 0x2065, 0x206F, 0x3164, 0xFE00, 0xFE0F, 0xFEFF,
           0xFFA0, 0xFFF0, 0xFFF8, 0x1BCA0, 0x1D173, 0xE0000, 0xE0001, 0xE007F, 0xE0100,
           0xE01EF, 0xE0FFF]
NON_MEMBERS = [0x0000, 0x0020, 0x0041, 0x00A0, 0x00AC, 0x00AE, 0x0600, 0x06DD, 0x1100,
               0x1161, 0x180A, 0x1810, 0x200A, 0x2010, 0x2029, 0x202F, 0x205F, 0x2070,
               0x3000, 0x3163, 0x3165, 0xAC00, 0xFEFE, 0xFF9F, 0xFFA1, 0xFFF9, 0xFFFB,
               0x110BD, 0x13430, 0x1D172, 0x1D17B, 0xE1000, 0x10FFFF]


def test_table_is_sorted_and_disjoint() -> None:
    """The ranges are sorted, non-empty and do not touch (bisect relies on it)."""
    for (start, end), (next_start, _) in pairwise(DEFAULT_IGNORABLE):
        assert start <= end < next_start - 1
    assert DEFAULT_IGNORABLE[-1][0] <= DEFAULT_IGNORABLE[-1][1]


@pytest.mark.parametrize("code", MEMBERS, ids=hex)
def test_known_members(code: int) -> None:
    """Fillers, joiners, direction marks, variation selectors and tags are ignorable."""
    assert default_ignorable(chr(code))


@pytest.mark.parametrize("code", NON_MEMBERS, ids=hex)
def test_known_non_members(code: int) -> None:
    """Letters, spaces, neighbours of the ranges and the excluded format characters are not."""
    assert not default_ignorable(chr(code))


# The derivation's inputs that unicodedata cannot give (PropList.txt 14.0.0).
OTHER_DEFAULT_IGNORABLE = [(0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5),
                           (0x2065, 0x2065), (0x3164, 0x3164), (0xFFA0, 0xFFA0),
                           (0xFFF0, 0xFFF8), (0xE0000, 0xE0000), (0xE0002, 0xE001F),
                           (0xE0080, 0xE00FF), (0xE01F0, 0xE0FFF)]
VARIATION_SELECTOR = [(0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF)]
EXCLUDED = [(0xFFF9, 0xFFFB), (0x13430, 0x13438)]
PREPENDED_CONCATENATION_MARK = [(0x0600, 0x0605), (0x06DD, 0x06DD), (0x070F, 0x070F),
                                (0x0890, 0x0891), (0x08E2, 0x08E2), (0x110BD, 0x110BD),
                                (0x110CD, 0x110CD)]


def codes(ranges: list[tuple[int, int]]) -> set[int]:
    return {code for start, end in ranges for code in range(start, end + 1)}


@pytest.mark.skipif(unicodedata.unidata_version != "14.0.0",
                    reason="the table cites Unicode 14.0.0; this Python has another version")
def test_table_matches_its_derivation() -> None:
    """Other_Default_Ignorable + Cf + Variation_Selector minus the exclusions is the table."""
    cf = {code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) == "Cf"}
    # No White_Space character is Cf, Other_Default_Ignorable or a variation selector.
    derived = (cf | codes(OTHER_DEFAULT_IGNORABLE) | codes(VARIATION_SELECTOR)) - codes(
        EXCLUDED + PREPENDED_CONCATENATION_MARK
    )
    assert derived == codes(list(DEFAULT_IGNORABLE))


@pytest.mark.parametrize(
    "nick",
    ["\u3164", "a\u3164b", "\u115fbob", "bob\u1160", "\uffa0", "ali\ufe0fce", "x\u200by",
     "so\u00adft", "tag\U000e0041", "vs\U000e0100"],
)
def test_nicks_with_ignorables_are_invalid(nick: str) -> None:
    """A nick holding an invisible character (after NFKC) breaks the nick rules."""
    assert normalize_nick(nick) is None


@pytest.mark.parametrize(
    "nick", ["\ud55c\uad6d\uc5b4", "\u1112\u1161\u11ab", "Zo\u00eb", "\u30c6\u30b9\u30c8"]
)
def test_visible_letters_still_valid(nick: str) -> None:
    """Hangul syllables and jamo, accented and CJK letters stay valid nicks."""
    assert normalize_nick(nick) == unicodedata.normalize("NFKC", nick)
