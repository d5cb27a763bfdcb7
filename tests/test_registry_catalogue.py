"""Each registry's catalogue (name -> module, description) is the one place a component is declared:
importing the declared modules registers exactly the declared names, and `clipfed --help` /
`clipfed list` read the catalogues without loading torch, scikit-learn or open_clip."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from clipfed.registry import Registry

# (module, attribute) of every registry.
REGISTRIES = [
    ("clipfed.models.registry", "MODELS"),
    ("clipfed.attacks.registry", "DATA_PARTS"),
    ("clipfed.attacks.registry", "TRAINING_PARTS"),
    ("clipfed.attacks.registry", "UPDATE_PARTS"),
    ("clipfed.defense.registry", "DEFENSES"),
    ("clipfed.teacher.registry", "TEACHERS"),
    ("clipfed.guard.oracle", "ORACLES"),
    ("clipfed.data_synth.captions", "CAPTIONS"),
    ("clipfed.data_synth.images", "IMAGES"),
]
HEAVY = ("torch", "sklearn", "open_clip", "torchvision")


@pytest.mark.parametrize(("module", "attribute"), REGISTRIES)
def test_declared_modules_register_exactly_the_declared_names(module: str, attribute: str) -> None:
    registry: Registry[object] = getattr(importlib.import_module(module), attribute)
    for declared in registry.modules():
        importlib.import_module(declared)
    assert sorted(registry._factories) == registry.names()
    for name in registry.names():
        assert registry.get(name) is registry._factories[name]


def test_an_undeclared_or_misplaced_registration_is_refused() -> None:
    registry: Registry[object] = Registry("widget", {"a": (__name__, "the a widget"),
                                                     "ghost": (__name__, "never registered")})
    registry.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="'b' .* is not declared"):
        registry.register("b")(lambda: 2)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(lambda: 3)
    with pytest.raises(RuntimeError, match="'ghost' is declared in .* registered no 'ghost'"):
        registry.get("ghost")
    with pytest.raises(KeyError, match="allowed: a, ghost"):
        registry.get("nope")
    elsewhere: Registry[object] = Registry("widget", {"c": ("clipfed.models.cnn", "declared elsewhere")})
    with pytest.raises(ValueError, match="registered in .* but declared in clipfed.models.cnn"):
        elsewhere.register("c")(lambda: 4)


def _heavy_modules_after(code: str) -> str:
    script = (f"import sys\n{code}\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_building_the_parser_imports_nothing_heavy() -> None:
    assert _heavy_modules_after("import clipfed.cli; clipfed.cli.build_parser()") == "[]"


def test_clipfed_list_imports_nothing_heavy() -> None:
    assert _heavy_modules_after("import clipfed.cli; assert clipfed.cli.main(['list']) == 0") == "[]"
