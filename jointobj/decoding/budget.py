"""A decoder's budget: tokens per step (K), as given on a command line, in a YAML or a list."""

from __future__ import annotations

from jointobj.utils.checks import ALL

__all__ = ["ALL", "parse_tokens_per_step"]


def parse_tokens_per_step(value: int | str | None) -> int | None:
    """K as given on a command line or in a list: a whole number >= 1, or 'all' / None (one step)."""
    if value is None or value == ALL:
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = None
    if k is None or k != float(value) or k < 1:
        raise ValueError(f"tokens per step must be a whole number >= 1 or {ALL!r}, got {value!r}")
    return k
