import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from clipfed.checks import load_node_run_config, load_run_config
from clipfed.config import ConfigError, RunConfig, parse_config_text
from clipfed.data.partition import client_class_counts, split_train

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
CIFAR10_LABELS = np.repeat(np.arange(10), 5000)  # the CIFAR-10 train label histogram


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
        ({"attack": "trojan"}, ["attack", "allowed: none, ", "badnets, blended, ", "dba, "]),
        ({"model": "vgg"}, ["model", "allowed: cnn, resnet18, resnet20"]),
        ({"lr": -0.1}, ["lr", "greater than 0"]),
        ({"fraction-train": 1.5}, ["fraction-train", "less than or equal to 1"]),
        ({"num-malicious": 21}, ["num-malicious=21 exceeds num-clients=20", "allowed: 0..20"]),
        ({"target-label": 10}, ["target-label=10", "allowed: 0..9"]),
        ({"flip-source": 10}, ["flip-source=10", "0..9 except 0"]),
        ({"attack": "labelflip", "flip-source": 2, "target-label": 2}, ["flip-source=2", "0..9 except 2"]),
        ({"no-such-key": 1}, ["no-such-key", "unknown key", "known keys:", "dirichlet-alpha"]),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(override: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(override)
    for fragment in expected:
        assert fragment in str(info.value)


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config({"partition": "x", "seed": -1})
    assert "partition" in str(info.value) and "seed" in str(info.value)


def test_a_bad_name_and_a_bad_value_are_reported_together() -> None:
    """Names are checked from the raw values, so pydantic failing on lr does not hide them."""
    with pytest.raises(ConfigError) as info:
        load_run_config({"model": "vgg", "lr": -1, "defense": "krumm", "attack-update": "boost"})
    for key in ("model: unknown value 'vgg'", "lr:", "defense: unknown value 'krumm'",
                "attack-update: unknown value 'boost'; allowed: '' (the attack's own part), "):
        assert key in str(info.value)


def test_the_defaults_are_declared_names() -> None:
    assert load_run_config({}) == RunConfig()


def test_a_clientapp_checks_its_config_without_loading_the_defenses() -> None:
    """The ServerApp checks the defense key; the ClientApp's check skips it and so never imports
    clipfed.defense (the one import the client-side contract in pyproject.toml ignores)."""
    code = ("import sys\nfrom clipfed.checks import load_node_run_config\nfrom clipfed.config import RunConfig\n"
            "load_node_run_config(RunConfig().to_flower(), {'partition-id': 0, 'attack': 'blended'})\n"
            "print(sorted(m for m in sys.modules if m.startswith('clipfed.defense')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_node_config_is_refused_with_every_reason() -> None:
    with pytest.raises(ConfigError) as info:
        load_node_run_config({}, {"partition-id": 0, "posion-rate": 0.9, "attack": "nosuch"})
    assert "posion-rate: unknown node-config key" in str(info.value)
    assert "attack: unknown value 'nosuch'" in str(info.value)


@pytest.mark.parametrize(("override", "expected"), [
    ({"attack": "none", "attack-update": "scaling"}, "attack-update='scaling' has no effect with attack='none'"),
    ({"attack-data": "blend"}, "attack-data: unknown value 'blend'"),
    ({"attack-training": "nosuch"}, "attack-training: unknown value 'nosuch'"),
    # the data part decides: labelflip or DBA picked by attack-data gets their rules too
    ({"attack": "scaling", "attack-data": "labelflip", "flip-source": 0}, "flip-source=0"),
    ({"attack-data": "dba", "patch-size": 2, "dba-parts": 5}, "dba-parts=5 exceeds the 4 pixels"),
])
def test_attack_parts_are_checked_as_they_resolve(override: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_run_config(override)


def test_a_part_key_replaces_the_shorthands_part() -> None:
    cfg = load_run_config({"attack": "blended", "attack-update": "scaling", "flip-source": 0})
    assert (cfg.attack, cfg.attack_update) == ("blended", "scaling")


def test_round_trip_through_flower_keys() -> None:
    cfg = RunConfig.from_flower({"num-clients": 5, "num-malicious": 1, "blend-alpha": 0.3})
    assert cfg.num_clients == 5 and cfg.blend_alpha == 0.3
    assert RunConfig.from_flower(cfg.to_flower()) == cfg


def test_config_hash_ignores_where_results_go() -> None:
    a = RunConfig.from_flower({"out-dir": "a", "run-name": "x"})
    b = RunConfig.from_flower({"out-dir": "b", "run-name": "y"})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != RunConfig.from_flower({"seed": 1}).config_hash()


# -- Config text: every token is a key=value pair or refused (Flower's parser drops the rest) ---
@pytest.mark.parametrize(("texts", "expected"), [
    (["num-server-rounds = 5"], {"num-server-rounds": 5}),
    (["seed=3 num-server-rounds= 5", "seed=4"], {"seed": 4, "num-server-rounds": 5}),
    (["clipfed-pre=false lr=1e-3 run-name='a b' out-dir=\"x\\\"y\""],
     {"clipfed-pre": False, "lr": 0.001, "run-name": "a b", "out-dir": 'x"y'}),
    ([" ", ""], {}),
])
def test_config_text_is_parsed_as_toml_values(texts: list[str], expected: dict) -> None:
    assert parse_config_text(texts) == expected


@pytest.mark.parametrize(("text", "fragment"), [
    ("num-clients 20", "'num-clients 20' is not key=value; did you mean num-clients=20?"),
    ("defense:'clipfed'", "did you mean defense='clipfed'?"),
    ("model=resnet20", "did you mean model='resnet20'?"),
    ("run-name=it's", "did you mean run-name=\"it's\"?"),
    ("=5", "'=5' is not key=value"),
    ("seed=", "seed=: no value"),
    ("run-name='open", "the quote is never closed"),
    ("seed=[1]", "seed=[1]: allowed: a bool, int, float or quoted string, not list"),
])
def test_config_text_that_is_not_key_value_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text([text])
    assert fragment in str(info.value)


def test_config_text_may_be_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("seed = 2\ndefense = 'krum'\n")
    assert parse_config_text([str(path), "seed=5"]) == {"seed": 5, "defense": "krum"}
    path.write_text("[table]\nseed = 2\n")
    with pytest.raises(ConfigError, match="table .in .*not dict"):
        parse_config_text([str(path)])
    with pytest.raises(ConfigError, match="cannot read"):
        parse_config_text([str(tmp_path / "missing.toml")])


# -- Combinations that can never work --------------------------------------------------------
def test_an_empty_frequency_band_is_refused() -> None:
    for low, high in ((0.8, 0.4), (0.5, 0.5)):
        with pytest.raises(ConfigError, match=f"freq-band-low={low} is not below freq-band-high={high}"):
            load_run_config({"freq-band-low": low, "freq-band-high": high})


def test_an_attack_window_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ConfigError, match="attack-end-round=2 is before attack-start-round=3; allowed: 0 "
                                          "\\(attack until the end\\) or >= 3"):
        load_run_config({"attack-start-round": 3, "attack-end-round": 2})
    window = load_run_config({"attack-start-round": 3, "attack-end-round": 3})
    assert [window.attacks_in(r) for r in (2, 3, 4)] == [False, True, False]
    to_the_end = load_run_config({"attack-start-round": 3})
    assert [to_the_end.attacks_in(r) for r in (2, 3, 400)] == [False, True, True]


def test_min_partition_size_is_bounded_by_the_images_left_to_clients() -> None:
    load_run_config({"num-clients": 20, "min-partition-size": 2250})  # 45,000 / 20
    with pytest.raises(ConfigError) as info:
        load_run_config({"num-clients": 20, "min-partition-size": 2251})
    assert "min-partition-size=2251 x num-clients=20" in str(info.value)
    assert "allowed: min-partition-size <= 2250" in str(info.value)
    load_run_config({"num-clients": 20, "min-partition-size": 2251, "partition": "iid"})  # unused there
    with pytest.raises(ConfigError, match="num-clients=50000 exceeds the 45000"):
        load_run_config({"num-clients": 50000, "partition": "iid"})


@pytest.mark.parametrize("overrides", [
    {"dataset": "cifar10", "public-pool-fraction": 0.1},
    {"dataset": "cifar10-lt", "public-pool-fraction": 0.1, "imbalance-factor": 0.01},
    {"dataset": "cifar10-lt", "public-pool-fraction": 0.33, "imbalance-factor": 0.1},
])
def test_client_class_counts_are_what_split_train_hands_out(overrides: dict) -> None:
    cfg = RunConfig.from_flower({**overrides, "partition": "iid"})
    split = split_train(CIFAR10_LABELS, cfg)
    given = np.bincount(CIFAR10_LABELS[np.concatenate(split.clients)], minlength=10)
    assert given.tolist() == client_class_counts([5000] * 10, cfg).tolist()


def test_an_unlucky_dirichlet_split_names_min_partition_size_not_only_alpha() -> None:
    cfg = RunConfig.from_flower({"num-clients": 20, "min-partition-size": 2000})  # under the bound
    with pytest.raises(ConfigError) as info:
        split_train(CIFAR10_LABELS, cfg)
    assert "min-partition-size=2000" in str(info.value) and "dirichlet-alpha=0.5" in str(info.value)


def test_low_signals_are_known_signals_or_off() -> None:
    assert RunConfig.from_flower({"clipfed-low-signals": "proto, kl"}).clipfed_low_signals == "proto,kl"
    assert RunConfig.from_flower({}).clipfed_low_signals == ""
    with pytest.raises(ConfigError, match="clipfed-low-signals"):
        RunConfig.from_flower({"clipfed-low-signals": "proto,nope"})
