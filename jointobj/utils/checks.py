"""Checks of option values shared by objectives, decoders and helpers, so each kind of bad value fails
one way, naming the option and what it accepts."""

from __future__ import annotations

from typing import Any

# "all", for a count of positions per step or per block: K blocks of one position each (the exact any-order
# autoregressive likelihood), or every answer token in one step (tokens per step)
ALL = "all"


def check_whole_number(name: str, value: Any, none_means: str | None = None, minimum: int = 1) -> int | None:
    """A count option: a whole number >= `minimum` (a bool is not one; 4.0 is 4), or None where
    `none_means` says what None does. Returns it as an int (or None)."""
    if value is None and none_means is not None:
        return None
    try:
        whole = not isinstance(value, (bool, str)) and int(value) == value and value >= minimum
    except (TypeError, ValueError):
        whole = False
    if not whole:
        alternative = f" (or None for {none_means})" if none_means else ""
        raise ValueError(f"{name} must be a whole number >= {minimum}{alternative}, got {value!r}")
    return int(value)


def check_blocks(blocks: Any) -> int | str:
    """K blocks per order: a whole number >= 1, or 'all' (one position per block). Returns it as given
    ('all') or as an int."""
    if blocks == ALL:
        return ALL
    try:
        return check_whole_number("blocks", blocks)
    except ValueError:
        raise ValueError(f"blocks must be a whole number K >= 1 or {ALL!r} (K = the scorable length), "
                         f"got {blocks!r}") from None


def check_fraction(name: str, value: Any, meaning: str = "") -> float:
    """A number in [0, 1] (a bool is not one). Returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        hint = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be a number in [0, 1]{hint}, got {value!r}")
    return float(value)
