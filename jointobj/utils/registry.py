"""A name -> object registry, so every choice made by name fails the same clear way."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from jointobj.utils.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or factories. `kind` names what is registered, for error messages.

    >>> LOSSES = Registry("objective")
    >>> @LOSSES.register("token_ce")
    ... class TokenCELoss: ...
    >>> LOSSES.get("token_ce")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=3, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}{hint}")
        return self._entries[name]

    def build(self, name: str, kwargs: Mapping[str, Any] | None = None, **defaults: Any) -> Any:
        """`get(name)(**defaults, **kwargs)`: the registered class or factory called with its keyword
        arguments (torchtune's `_component_` plus kwargs). `defaults` fill only names the callable
        takes and `kwargs` does not set; a name it does not take fails here, listing those it does.
        Values are checked by the callable itself."""
        factory = self.get(name)
        kwargs = dict(kwargs or {})
        if any(not isinstance(key, str) for key in kwargs):
            raise ValueError(f"the keyword arguments of {self.kind} {name!r} must be named by strings, got {kwargs!r}")
        accepted = keyword_names(factory)
        unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
        if unknown:
            raise ValueError(f"{self.kind} {name!r} takes no argument {', '.join(map(repr, unknown))}; "
                             f"it takes: {', '.join(sorted(accepted))}")
        taken = {key: value for key, value in defaults.items() if accepted is None or key in accepted}
        return factory(**{**taken, **kwargs})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def keyword_names(factory: Callable[..., Any]) -> set[str] | None:
    """The argument names `factory` can take by keyword (None: any, it has **kwargs)."""
    parameters = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def split_names(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: comma-separated names (of toy sets, decoders, ...) as a list, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]
