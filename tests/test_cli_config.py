"""`clipfed run`/`demo`/`bench`/`deploy supernode` refuse bad config text and infeasible or
missing settings before any Flower process starts: exit 2, every bad key named at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import clipfed.bench.runner
import clipfed.engines.inprocess
import clipfed.engines.launch
from clipfed.cli import build_parser, main, parse_overrides
from clipfed.deploy import cli as deploy_cli
from clipfed.deploy.cluster import DeployError
from clipfed.models import create_model
from clipfed.runs.checkpoint import Checkpoint


class Launched(Exception):
    """Raised by the patched launchers: the config got past every check."""


@pytest.fixture(autouse=True)
def no_launch(monkeypatch: pytest.MonkeyPatch, fake_data_dir: Path) -> None:
    """Starting a SuperLink (or the in-process engine) fails the test; data is the tiny fake set."""
    def launch(*args: Any, **kwargs: Any) -> None:
        raise Launched

    monkeypatch.setattr(clipfed.engines.launch, "flwr_run", launch)
    monkeypatch.setattr(clipfed.engines.inprocess, "run_inprocess", launch)
    monkeypatch.setattr(clipfed.bench.runner, "run_inprocess", launch)
    monkeypatch.setenv("CLIPFED_DATA_DIR", str(fake_data_dir))


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, assert it exits 2 without launching, and return what it printed."""
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    return captured.err + captured.out


def test_a_valid_config_reaches_the_launcher() -> None:
    """The checks below stop bad configs, not every config: a good one gets to flwr_run."""
    with pytest.raises(Launched):
        main(["run", "-c", "num-clients=4 num-malicious=1 seed=3"])


@pytest.mark.parametrize(("text", "expected"), [
    ("num-server-rounds = 5", {"num-server-rounds": 5}),
    ("seed=3 num-server-rounds= 5", {"seed": 3, "num-server-rounds": 5}),
    ("defense='clipfed' run-name=\"a b\"", {"defense": "clipfed", "run-name": "a b"}),
])
def test_spaces_around_equals_are_parsed_not_dropped(text: str, expected: dict[str, Any]) -> None:
    assert parse_overrides([text]) == expected


@pytest.mark.parametrize(("text", "fragments"), [
    ("num-clients 20", ["'num-clients 20' is not key=value", "did you mean num-clients=20?"]),
    ("defense:'clipfed'", ["defense:'clipfed'", "did you mean defense='clipfed'?"]),
    ("model=resnet20", ["model=resnet20", "did you mean model='resnet20'?", "\"model='resnet20'\""]),
    ("seed=3 lr=[1]", ["lr=[1]", "not list"]),
    ("a='x'b=1", ["put a space between key=value pairs"]),
])
def test_text_that_is_not_key_value_is_refused(capsys: pytest.CaptureFixture[str], text: str,
                                               fragments: list[str]) -> None:
    out = refused(capsys, "run", "-c", text)
    for fragment in fragments:
        assert fragment in out


def test_every_bad_token_is_named_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "run", "-c", "num-clients 20", "-c", "seed=1 model=cnn defense:'x'")
    assert "'num-clients 20'" in out and "model='cnn'" in out and "defense='x'" in out


def test_an_infeasible_split_names_min_partition_size(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "run", "-c", "num-clients=20 min-partition-size=2300")
    assert "min-partition-size=2300 x num-clients=20 = 46000 exceeds the 45000" in out
    assert "allowed: min-partition-size <= 2250" in out


@pytest.mark.parametrize("key", ["resume-from", "init-model", "teacher-checkpoint", "teacher-guard-probe",
                                 "synth-config", "data-dir"])
def test_a_missing_path_is_refused_naming_its_key(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 key: str) -> None:
    out = refused(capsys, "run", "-c", f"{key}='{tmp_path / 'nope'}'")
    assert f"{key}='{tmp_path / 'nope'}'" in out


def test_no_data_dir_at_all_is_refused(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPFED_DATA_DIR")
    assert "data-dir: no data directory configured" in refused(capsys, "run")


def test_a_run_folder_without_a_result_or_checkpoint_is_refused(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    out = refused(capsys, "run", "-c", f"resume-from='{tmp_path}'", "-c", f"init-model='{tmp_path}'")
    assert f"resume-from: {tmp_path} holds no result.json" in out
    out = refused(capsys, "run", "-c", f"init-model='{tmp_path}'")
    assert f"init-model: {tmp_path} holds no checkpoint.pt" in out


def test_an_init_model_of_another_architecture_is_refused(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    arrays = {k: v.clone() for k, v in create_model("cnn", 10).state_dict().items()}
    Checkpoint(1, arrays, {}, {}, "x").save(tmp_path)
    with pytest.raises(Launched):  # the same architecture is fine
        main(["run", "-c", f"init-model='{tmp_path}'"])
    out = refused(capsys, "run", "-c", f"init-model='{tmp_path}' model='resnet20'")
    assert "init-model:" in out and "another architecture" in out


def test_a_synth_config_whose_pool_overlaps_the_clients_is_refused(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    recipe = tmp_path / "synth.toml"
    recipe.write_text("seed = 7\n")
    out = refused(capsys, "run", "-c", f"synth-config='{recipe}' seed=0")
    assert f"synth-config='{recipe}'" in out and "would overlap client data" in out
    recipe.write_text("seed = 'x'\n")
    assert "invalid synth config" in refused(capsys, "run", "-c", f"synth-config='{recipe}'")


def test_an_unknown_teacher_model_is_refused_with_close_names(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "run", "-c", "teacher-model='ViT-B-23'")
    assert "teacher-model='ViT-B-23' is not an open_clip model" in out and "ViT-B-32" in out
    out = refused(capsys, "run", "-c", "teacher='openclip' teacher-pretrained='laion9b'")
    assert "teacher-pretrained='laion9b'" in out


def test_an_inverted_frequency_band_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "run", "-c", "freq-band-low=0.8 freq-band-high=0.4")
    assert "freq-band-low=0.8 is not below freq-band-high=0.4" in out


def test_bulyan_that_could_never_aggregate_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "run", "-c", "defense='bulyan' num-clients=20 fraction-train=0.5")
    assert "needs 4f+3 = 19 updates a round (f = num-malicious=4)" in out
    assert "samples 10" in out and "krum-f <= 1" in out
    out = refused(capsys, "run", "-c", "defense='bulyan' num-clients=20 krum-f=2 fraction-train=0.5")
    assert "(f = krum-f=2)" in out
    with pytest.raises(Launched):  # 4f+3 = 7 <= 10 sampled
        main(["run", "-c", "defense='bulyan' num-clients=20 krum-f=1 fraction-train=0.5"])


def test_num_supernodes_other_than_num_clients_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "run", "--num-supernodes", "3", "-c", "num-clients=4")
    assert "--num-supernodes=3 does not match num-clients=4" in out


def test_every_bad_key_is_named_at_once_across_all_checks(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    """Value errors come with the file and name checks; the launch checks (SuperNodes, Bulyan)
    need valid values, and then come all together."""
    out = refused(capsys, "run", "-c", f"partition='x' freq-band-low=0.8 freq-band-high=0.4 "
                                       f"resume-from='{tmp_path / 'a'}' teacher-model='ViT-B-23'")
    assert all(k in out for k in ("partition", "resume-from=", "teacher-model="))
    out = refused(capsys, "run", "--num-supernodes", "3", "-c",
                  f"defense='bulyan' fraction-train=0.5 synth-config='{tmp_path / 'b'}' data-dir='{tmp_path}'")
    assert all(k in out for k in ("defense='bulyan'", "--num-supernodes=3", "synth-config=", "data-dir="))


def test_demo_refuses_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(capsys, "demo", "-c", "num-clients 20 model=cnn")
    assert "'num-clients 20'" in out and "model='cnn'" in out
    assert "min-partition-size" in refused(capsys, "demo", "-c", "min-partition-size=5000")


def test_bench_refuses_a_missing_data_folder_once(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = refused(capsys, "bench", "--suite", "quick", "--out-dir", str(tmp_path / "out"),
                  "--data-dir", str(tmp_path / "nope"))
    assert out.count("no CIFAR-10 there") == 1
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_supernode_node_config_is_parsed_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []
    monkeypatch.setattr(deploy_cli, "_exec", lambda command: commands.append(command) or 0)
    base = ["deploy", "supernode", "--superlink", "10.0.0.1:9091", "--partition-id", "0", "--num-partitions", "2"]
    args = build_parser().parse_args([*base, "--node-config", "attack=blended"])
    with pytest.raises(DeployError, match="attack='blended'"):
        args.func(args)
    args = build_parser().parse_args([*base, "--node-config", "attack='blended'", "poison-rate=0.5"])
    assert args.func(args) == 0
    node_config = commands[-1][commands[-1].index("--node-config") + 1]
    assert 'attack="blended"' in node_config and "poison-rate=0.5" in node_config
