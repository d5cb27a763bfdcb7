"""A tiny name -> factory registry (timm style) shared by models, attacks, defenses and teachers.

Each registry starts from a catalogue, ``name -> (module, description)``, so that names and
descriptions (``clipfed list``, ``--help``, config validation) are known without importing any
implementation (and with it torch, scikit-learn or open_clip). ``get(name)`` imports the declared
module on first use; its ``@REGISTRY.register(name)`` decorator supplies the factory. A component
is declared once, in the catalogue; the decorator only names it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from fnmatch import fnmatch
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class Declared(NamedTuple):
    """A catalogue entry: the module whose import registers the component, and its one-line
    description (what ``clipfed list`` shows)."""

    module: str
    description: str


class Registry(Generic[T]):
    """Components selectable by name from config, listable with an optional glob filter; the
    implementations load lazily, on the first ``get`` of one of their names."""

    def __init__(self, kind: str, catalogue: Mapping[str, tuple[str, str]]) -> None:
        self.kind = kind
        self._catalogue = {name: Declared(*entry) for name, entry in catalogue.items()}
        self._factories: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``factory`` under ``name``, which the catalogue must declare for
        the factory's own module (so the catalogue can never be out of date); once per name."""

        def decorator(factory: T) -> T:
            module = getattr(factory, "__module__", None)
            declared = self._catalogue.get(name)
            if declared is None:
                raise ValueError(f"{self.kind} {name!r} (registered in {module}) is not declared; "
                                 f"add it to the {self.kind} catalogue with its module and description")
            if module != declared.module:
                raise ValueError(f"{self.kind} {name!r} is registered in {module} but declared in "
                                 f"{declared.module}; fix the catalogue or move the registration")
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self, pattern: str = "*") -> list[str]:
        """Declared names matching ``pattern``, sorted; imports nothing."""
        return sorted(n for n in self._catalogue if fnmatch(n, pattern))

    def describe(self) -> dict[str, str]:
        """Name -> description, sorted by name; imports nothing."""
        return {n: self._catalogue[n].description for n in self.names()}

    def modules(self) -> list[str]:
        """The modules the catalogue declares, sorted (each imported by ``get`` when needed)."""
        return sorted({d.module for d in self._catalogue.values()})

    def get(self, name: str) -> T:
        """The factory registered as ``name``, importing its module on first use."""
        declared = self._catalogue.get(name)
        if declared is None:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        if name not in self._factories:
            importlib.import_module(declared.module)  # runs its @register decorators
            if name not in self._factories:
                raise RuntimeError(f"{self.kind} {name!r} is declared in {declared.module}, but importing "
                                  f"it registered no {name!r}; add @register({name!r}) there or fix the "
                                  "catalogue")
        return self._factories[name]
