import tomllib
from pathlib import Path

import pytest

from clipfed.config import ConfigError, RunConfig

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_declares_exactly_the_config_keys_with_the_same_defaults() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert declared == RunConfig().to_flower()


def test_pyproject_has_no_legacy_federations_section() -> None:
    flwr = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]
    assert "federations" not in flwr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"partition": "pathological"}, ["partition", "'iid' or 'dirichlet'", "pathological"]),
        ({"dataset": "mnist"}, ["dataset", "'cifar10' or 'cifar10-lt'"]),
        ({"defense": "krumm"}, ["defense", "unknown value 'krumm'", "allowed: bulyan, clipfed, crfl, fedavg, flame"]),
        ({"attack": "trojan"}, ["attack", "allowed: none, badnets, blended, dba, frequency"]),
        ({"model": "vgg"}, ["model", "allowed: cnn, resnet18, resnet20"]),
        ({"lr": -0.1}, ["lr", "greater than 0"]),
        ({"fraction-train": 1.5}, ["fraction-train", "less than or equal to 1"]),
        ({"num-malicious": 21}, ["num-malicious=21 exceeds num-clients=20", "allowed: 0..20"]),
        ({"target-label": 10}, ["target-label=10", "allowed: 0..9"]),
        ({"no-such-key": 1}, ["no-such-key", "unknown key", "known keys:", "dirichlet-alpha"]),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(override: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flower(override)
    for fragment in expected:
        assert fragment in str(info.value)


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_flower({"partition": "x", "seed": -1})
    assert "partition" in str(info.value) and "seed" in str(info.value)


def test_round_trip_through_flower_keys() -> None:
    cfg = RunConfig.from_flower({"num-clients": 5, "num-malicious": 1, "blend-alpha": 0.3})
    assert cfg.num_clients == 5 and cfg.blend_alpha == 0.3
    assert RunConfig.from_flower(cfg.to_flower()) == cfg


def test_config_hash_ignores_where_results_go() -> None:
    a = RunConfig.from_flower({"out-dir": "a", "run-name": "x"})
    b = RunConfig.from_flower({"out-dir": "b", "run-name": "y"})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != RunConfig.from_flower({"seed": 1}).config_hash()
