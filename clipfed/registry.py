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
    implementations load lazily, on the first ``get`` of one of their names.

    ``T`` is what a name resolves to: a factory function (models, attack parts, teachers, oracles)
    or a class (defenses). The registry never calls it; the module-level helpers around each
    registry (``create_model``, ``create_defense``, ``create_teacher``, ...) do.

    Attributes:
        kind: What the registry holds (``"model"``, ``"defense"``, ...), used in error messages.
    """

    def __init__(self, kind: str, catalogue: Mapping[str, tuple[str, str]]) -> None:
        """Declare every component, importing nothing.

        Args:
            kind: What the registry holds, singular (``"teacher"``), for error messages.
            catalogue: ``name -> (module, description)``: the dotted module whose import registers
                ``name`` with ``@register(name)``, and the one-line description ``clipfed list``
                prints.
        """
        self.kind = kind
        self._catalogue = {name: Declared(*entry) for name, entry in catalogue.items()}
        self._factories: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers the decorated factory under ``name``; once per name.

        The catalogue must declare ``name`` for the factory's own module (its ``__module__``), so
        the catalogue can never be out of date.

        Args:
            name: The catalogue name, as config and ``clipfed list`` spell it.

        Returns:
            A decorator that records the factory and returns it unchanged.

        Raises:
            ValueError: When the decorator is applied and ``name`` is not in the catalogue, the
                catalogue declares it for another module, or ``name`` is already registered.
        """

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
        """Declared names matching a glob; imports nothing.

        Args:
            pattern: An ``fnmatch`` glob (``"*krum"``); ``"*"`` matches every name.

        Returns:
            The matching catalogue names, sorted (declared, whether or not imported yet).
        """
        return sorted(n for n in self._catalogue if fnmatch(n, pattern))

    def describe(self) -> dict[str, str]:
        """Every declared component's one-line description; imports nothing.

        Returns:
            ``name -> description``, in name order.
        """
        return {n: self._catalogue[n].description for n in self.names()}

    def modules(self) -> list[str]:
        """The implementing modules the catalogue declares; imports nothing.

        Returns:
            Dotted module names, sorted and without duplicates (one module may register several
            names); ``get`` imports each when one of its names is first asked for.
        """
        return sorted({d.module for d in self._catalogue.values()})

    def get(self, name: str) -> T:
        """The factory registered as ``name``, importing its declared module on first use.

        Args:
            name: A declared name (see ``names``).

        Returns:
            The registered factory or class, as the ``@register`` decorator received it.

        Raises:
            KeyError: ``name`` is not declared; the message lists the allowed names.
            RuntimeError: Importing the declared module registered no factory under ``name``.
            ImportError: The declared module (or what it imports) cannot be imported.
        """
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
