"""A tiny name -> factory registry (timm style) shared by models, attacks and defenses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its factory and the one-line description `clipfed list` shows."""

    name: str
    factory: T
    description: str


class Registry(Generic[T]):
    """Components selectable by name from config, listable with an optional glob filter."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator that registers ``factory`` under ``name``; a name may be taken only once."""

        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, factory, description)
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch(n, pattern))

    def get(self, name: str) -> T:
        try:
            return self._entries[name].factory
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
            ) from None

    def describe(self) -> dict[str, str]:
        return {n: self._entries[n].description for n in self.names()}
