"""Keys that no chosen attack part or defense reads are named, not refused (``checks.unused_keys``)."""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

import pytest

from clipfed.attacks.registry import PARTS
from clipfed.checks import READERS, SERVER_DATA_KEYS, load_run_config, unused_keys
from clipfed.config import RunConfig
from clipfed.defense.registry import DEFENSES

ALIAS = {name: field.alias or name for name, field in RunConfig.model_fields.items()}
REGISTRIES = {**PARTS, "defense": DEFENSES}
COMPONENT_MODULES = {f"{key}:{name}": registry.get(name).__module__
                     for key, registry in REGISTRIES.items() for name in registry.names()}


def _tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return ast.parse(Path(spec.origin).read_text())


def _own_reads(tree: ast.Module) -> set[str]:
    """Run-config keys read as ``cfg.X`` or ``self.cfg.X``."""
    def is_cfg(node: ast.expr) -> bool:
        return (isinstance(node, ast.Name) and node.id == "cfg") or (isinstance(node, ast.Attribute)
                                                                      and node.attr == "cfg")
    return {ALIAS[n.attr] for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and is_cfg(n.value) and n.attr in ALIAS}


@cache
def reads(module: str) -> frozenset[str]:
    """The keys ``module`` reads, with those of the attack and defense modules it builds on: a
    helper that registers nothing (``learned_patch``), and a component module whose class it
    subclasses (DBA's ``BadNets``), but not one whose functions it only calls."""
    tree = _tree(module)
    keys = _own_reads(tree)
    bases = {b.id for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for b in c.bases if isinstance(b, ast.Name)}
    components = set(COMPONENT_MODULES.values())
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module != module
                and node.module.startswith(("clipfed.attacks.", "clipfed.defense."))):
            continue
        if node.module not in components or bases & {a.asname or a.name for a in node.names}:
            keys |= reads(node.module)
    return frozenset(keys)


def test_the_table_is_what_the_modules_read() -> None:
    derived: dict[str, set[str]] = {}
    for component, module in COMPONENT_MODULES.items():
        for key in reads(module):
            derived.setdefault(key, set()).add(component)
    for key, readers in READERS.items():
        assert set(readers) == derived.get(key, set()), key
    # every key that only some components of a kind read is in the table; a key that every
    # component of its kind reads (attack-lr: every training part) or that modules outside the
    # attacks and defenses read too (the run's own keys) is not
    elsewhere = set()
    root = Path(__file__).resolve().parents[1]
    for path in (root / "clipfed").rglob("*.py"):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        if not module.startswith(("clipfed.attacks.", "clipfed.defense.")):
            elsewhere |= _own_reads(ast.parse(path.read_text()))
    kinds = {kind: {c for c in COMPONENT_MODULES if c.startswith(f"{kind}:")} for kind in REGISTRIES}
    partial = {key for key, readers in derived.items() if key not in elsewhere
               and not any(kind_components <= readers for kind_components in kinds.values())}
    assert partial <= set(READERS), sorted(partial - set(READERS))


@pytest.mark.parametrize(("keys", "note"), [
    ({"attack": "badnets", "pgd-eps": 0.3},
     "pgd-eps=0.3: read by attack-training:pgd; this run has attack='badnets' (parts badnets+sgd+none)"),
    ({"attack": "none", "patch-size": 5}, "patch-size=5: read by attack-data:badnets, attack-data:dba, "
                                          "attack-data:f3ba; this run has attack='none'"),
    ({"attack": "blended", "boost-factor": 10.0}, "boost-factor=10.0: read by attack-update:scaling; this run "
                                                  "has attack='blended' (parts blended+sgd+none)"),
    ({"defense": "fedavg", "multikrum-m": 3}, "multikrum-m=3: read by defense:krum, defense:multikrum; this run "
                                              "has defense='fedavg'"),
    ({"defense": "flame", "clipfed-z-threshold": 2.5}, "clipfed-z-threshold=2.5: read by defense:clipfed, "
                                                       "defense:teacher-only; this run has defense='flame'"),
    ({"clipfed-probe-size": 100}, "clipfed-probe-size=100: read by attack-training:clipfed-aware, defense:clipfed, "
                                  "defense:teacher-only; this run has attack='badnets' (parts badnets+sgd+none), "
                                  "defense='fedavg'"),
])
def test_a_key_nothing_chosen_reads_is_named_and_still_accepted(keys: dict, note: str) -> None:
    """Reported, not refused: one config file holds the settings of several attacks and defenses."""
    assert unused_keys(load_run_config(keys)) == [note]


@pytest.mark.parametrize(("keys", "note"), [
    ({"attack": "none", "attack-lr": 0.05}, "attack-lr=0.05: read by malicious clients; this run has none "
                                            "training (attack='none', num-malicious=4, defense='fedavg')"),
    ({"num-malicious": 0, "poison-rate": 0.2}, "poison-rate=0.2: read by malicious clients; this run has none "
                                               "training (attack='badnets', num-malicious=0, defense='fedavg')"),
    ({"defense": "teacher-only", "attack": "pgd", "pgd-eps": 0.3},
     "pgd-eps=0.3: read by malicious clients; this run has none training (attack='pgd', num-malicious=4, "
     "defense='teacher-only')"),
    ({"attack": "none", "target-label": 3}, "target-label=3: read only under an attack; this run has "
                                            "attack='none'"),
    ({"defense": "krum", "teacher-pool": "train-split"},
     "teacher-pool='train-split': read by the server dataset, which only clipfed, fltrust, teacher-only build; "
     "this run has defense='krum'"),
])
def test_a_key_every_attack_or_the_server_dataset_reads_is_named_where_nothing_reads_it(keys: dict,
                                                                                      note: str) -> None:
    assert unused_keys(load_run_config(keys)) == [note]


def test_the_server_dataset_keys_are_read_only_where_a_defense_builds_one() -> None:
    """What the server-data note claims: outside the config's own checks, every teacher-* and
    synth-* key is read only by the modules that build or audit the server dataset, which the
    ServerApp and the benchmark call only for a defense with ``needs_server_data``."""
    root = Path(__file__).resolve().parents[1]
    builders = ("clipfed/data_synth/", "clipfed/guard/", "clipfed/teacher/")
    checkers = {"clipfed/config.py", "clipfed/checks.py", "clipfed/engines/preflight.py", "clipfed/cli.py"}
    readers = {str(path.relative_to(root)) for path in (root / "clipfed").rglob("*.py")
               if _own_reads(ast.parse(path.read_text())) & set(SERVER_DATA_KEYS)}
    assert {r for r in readers if not r.startswith(builders)} - checkers == {"clipfed/app/server_app.py",
                                                                             "clipfed/bench/runner.py"}


@pytest.mark.parametrize("defense", ["fedavg", "teacher-only"])  # teacher-only: the branch is reached
def test_the_server_dataset_is_built_only_for_a_defense_that_needs_one(
        defense: str, fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two callers above, by behaviour: the ServerApp and the bench's server-data phase build
    nothing for FedAvg (so a teacher-* key there changes nothing, as its note says) and build one
    for teacher-only."""
    from clipfed.bench.runner import _server_data_cells, plan
    from clipfed.bench.suites import Suite
    from clipfed.data_synth import provider
    from clipfed.engines.inprocess import run_inprocess

    class Built(Exception):
        pass

    def build(*args: object, **kwargs: object) -> None:
        raise Built

    monkeypatch.setattr(provider, "synth_config_for", build)
    monkeypatch.setattr(provider, "obtain_server_dataset", build)
    keys = load_run_config({"defense": defense, "teacher-pool": "train-split", "num-clients": 2,
                            "num-malicious": 0, "num-server-rounds": 1, "local-steps": 1, "eval-samples": 20,
                            "partition": "iid", "data-dir": str(fake_data_dir), "out-dir": str(tmp_path),
                            "run-name": defense})
    suite = Suite(name="s", description="", seeds=(0,), pretrain_rounds=1, defenses=(), attacks=("badnets",),
                  settings={"iid": {}}, base={})
    cells = [c for c in plan(suite, variants=[]) if c.row in ("pretrain", f"{defense}-no-attack", defense)]
    if defense == "fedavg":
        assert run_inprocess(keys).name == defense
        assert _server_data_cells(suite, tmp_path, cells) == []
    else:
        with pytest.raises(Built):
            run_inprocess(keys)
        with pytest.raises(Built):
            _server_data_cells(suite, tmp_path, cells)


@pytest.mark.parametrize("keys", [
    {"attack": "badnets", "attack-lr": 0.05},
    {"attack": "none", "attack-end-round": 5},  # the window bounds every run's detection counts
    {"attack": "badnets", "num-malicious": 0, "patch-size": 5},  # the trigger still measures ASR
    {"defense": "fltrust", "teacher-pool": "train-split"},
    {"defense": "teacher-only", "teacher-pool": "train-split"},
    {"attack": "pgd", "pgd-eps": 0.3},
    {"attack": "badnets", "attack-training": "pgd", "pgd-eps": 0.3},
    {"attack": "badnets", "attack-update": "scaling", "boost-factor": 10.0},
    {"attack": "clipfed-aware", "clipfed-probe-size": 100},
    {"attack": "dba", "patch-size": 6},
    {"defense": "multikrum", "multikrum-m": 3},
    {"defense": "teacher-only", "clipfed-post-steps": 10},
    {"attack": "badnets", "pgd-eps": RunConfig.model_fields["pgd_eps"].default},  # given, at its default
])
def test_a_key_a_chosen_component_reads_is_not_named(keys: dict) -> None:
    assert unused_keys(load_run_config(keys)) == []


def test_clipfed_run_names_them_before_the_run(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import clipfed.cli

    started: list[RunConfig] = []
    monkeypatch.setattr(clipfed.cli, "run_experiment", lambda cfg, args: started.append(cfg))
    monkeypatch.setattr(clipfed.cli, "check_gpus_per_client", lambda args, cfg: None)
    monkeypatch.setattr(clipfed.cli, "resolved_config", lambda overrides, base, n: load_run_config(overrides))
    assert clipfed.cli.main(["run", "-c", "attack='blended' pgd-eps=0.3"]) == 0
    assert started and ("[clipfed] note: pgd-eps=0.3: read by attack-training:pgd; this run has attack='blended' "
                        "(parts blended+sgd+none): it changes nothing in this run") in capsys.readouterr().err
