"""GBNF for the integers of a range, written in JSON's decimal form (no leading zeros, no "-0").

llama-cpp-python's JSON-schema converter writes every integer as any integer: it reads neither
`minimum` nor `maximum` (its own TODO). llama.cpp's C++ converter bounds them digit by digit
(common/json-schema-to-grammar.cpp, build_min_max_int); this is the same idea, written as a
split of the range into spans of equal digit count, each a sequence of digit classes.
"""

from __future__ import annotations

# The converter bounds an integer's digits to 16 (its integral-part rule): a half-open range
# ends where those integers end.
MAX_DIGITS = 16
LARGEST = 10**MAX_DIGITS - 1


def integer_range(low: int | None, high: int | None) -> str:
    """A GBNF expression matching exactly the integers in [low, high] (None: unbounded on that
    side, up to MAX_DIGITS digits). The range must not be empty."""
    low = -LARGEST if low is None else max(low, -LARGEST)
    high = LARGEST if high is None else min(high, LARGEST)
    if low > high:
        raise ValueError(f"empty integer range [{low}, {high}]")
    parts = []
    if high >= 0:
        parts.append(_non_negative(max(low, 0), high))
    if low < 0:
        parts.append(f'"-" ({_non_negative(max(1, -high), -low)})')
    return " | ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]


def _non_negative(low: int, high: int) -> str:
    """0 <= low <= high: one alternative per digit count."""
    spans = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = 0 if digits == 1 else 10 ** (digits - 1)
        last = 10**digits - 1
        spans.append(_same_length(str(max(low, first)), str(min(high, last))))
    return " | ".join(f"({s})" for s in spans) if len(spans) > 1 else spans[0]


def _same_length(low: str, high: str) -> str:
    """The digit strings of one length from `low` to `high` (low <= high)."""
    if low == high:
        return f'"{low}"'
    rest = len(low) - 1
    if rest == 0:
        return _digit_class(int(low), int(high))
    if low[0] == high[0]:
        return f'"{low[0]}" ({_same_length(low[1:], high[1:])})'
    # The first digits strictly between (and the ends' own, where their tails span all of
    # [0...0, 9...9]) take any tail; the ends' partial tails go on their own.
    alternatives = []
    first, last = int(low[0]), int(high[0])
    if low[1:] != "0" * rest:
        alternatives.append(f'"{low[0]}" ({_same_length(low[1:], "9" * rest)})')
        first += 1
    partial_high = high[1:] != "9" * rest
    if partial_high:
        last -= 1
    if first <= last:
        alternatives.append(f"{_digit_class(first, last)} [0-9]{{{rest}}}")
    if partial_high:
        alternatives.append(f'"{high[0]}" ({_same_length("0" * rest, high[1:])})')
    return " | ".join(alternatives)


def _digit_class(first: int, last: int) -> str:
    return f'"{first}"' if first == last else f"[{first}-{last}]"
