"""Unicode's Default_Ignorable_Code_Point property, which `unicodedata` does not offer.

These are the characters a renderer shows as nothing at all (fillers, joiners,
direction marks, variation selectors, tags): a nick holding one would look like another
nick, or like none.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Final

# From the Unicode Character Database 14.0.0 (the version of Python 3.11's unicodedata),
# DerivedCoreProperties.txt, property Default_Ignorable_Code_Point:
# https://www.unicode.org/Public/14.0.0/ucd/DerivedCoreProperties.txt
# It is derived as Other_Default_Ignorable_Code_Point + Cf + Variation_Selector, minus
# White_Space, FFF9..FFFB (interlinear annotation), 13430..13438 (Egyptian hieroglyph
# format controls) and the Prepended_Concatenation_Marks. Inclusive ranges, sorted.
DEFAULT_IGNORABLE: Final[tuple[tuple[int, int], ...]] = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER, HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ, AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE .. RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # LEFT-TO-RIGHT EMBEDDING .. RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x206F),  # WORD JOINER .. NOMINAL DIGIT SHAPES (2065 reserved)
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1 .. 16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP .. UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM .. END PHRASE
    (0xE0000, 0xE0FFF),  # LANGUAGE TAG, TAG characters, VARIATION SELECTOR-17 .. 256, reserved
)
_STARTS: Final = tuple(start for start, _ in DEFAULT_IGNORABLE)


def default_ignorable(ch: str) -> bool:
    """Whether the character `ch` is a Unicode Default_Ignorable_Code_Point."""
    code = ord(ch)
    index = bisect_right(_STARTS, code) - 1
    return index >= 0 and code <= DEFAULT_IGNORABLE[index][1]
