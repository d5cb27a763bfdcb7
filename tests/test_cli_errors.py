"""Bad input to any ``clipfed`` subcommand ends as ``clipfed: <message>`` on stderr with exit 2 (no
traceback, nothing written); a bug keeps its traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipfed import cli
from clipfed.cli import main
from clipfed.engines.launch import FlowerRunError, Interrupted

# Placeholders, replaced per test: EMPTY (a folder without CIFAR-10), MISSING (no such path),
# OUT (an output folder that must not appear), NORUN (a folder without result.json), BADJSON
# (a result.json that is not JSON), NOTRESULT (JSON, but not a clipfed result), BADTOML, BADSYNTH.
BAD_INPUTS: list[tuple[list[str], str]] = [
    (["table", "NORUN"], "not a run folder"),
    (["table", "MISSING"], "no such folder"),
    (["table", "BADJSON"], "not valid JSON"),
    (["table", "NOTRESULT"], "not a clipfed result"),
    (["run", "-c", "no-such-key=1"], "no-such-key"),
    (["teacher", "eval", "--data-dir", "EMPTY"], "no CIFAR-10 found under"),
    (["teacher", "eval", "--limit", "-5"], "--limit -5"),
    (["teacher", "eval", "--teacher", "openclip", "--teacher-checkpoint", "MISSING"], "--teacher-checkpoint"),
    (["teacher", "eval", "--teacher", "openclip"], "teacher-pretrained"),
    (["teacher", "eval", "--teacher", "openclip", "--teacher-model", "ViT-B-23", "--teacher-pretrained", "random"],
     "--teacher-model 'ViT-B-23' is not an open_clip model; did you mean"),
    (["deploy", "superlink", "--tls-dir", "EMPTY"], "--tls-dir"),
    (["teacher", "audit", "--teacher-checkpoint", "MISSING", "--out-dir", "OUT"], "--teacher-checkpoint"),
    (["teacher", "guard-demo", "--poison-rate", "2", "--out-dir", "OUT"], "--poison-rate 2"),
    (["teacher", "guard-demo", "--attack", "none", "--out-dir", "OUT"], "--attack none"),
    (["teacher", "guard-demo", "--attack", "nosuch", "--out-dir", "OUT"], "attack: unknown value 'nosuch'"),
    (["teacher", "guard-demo", "--data-dir", "EMPTY", "--out-dir", "OUT"], "no CIFAR-10 found under"),
    (["deploy", "superlink", "--auth"], "--tls-dir"),
    (["deploy", "stop", "MISSING"], "pids.json"),
    (["bench", "--seeds", "a", "--out-dir", "OUT"], "--seeds a"),
    (["bench", "--workers", "0", "--out-dir", "OUT"], "--workers 0"),
    (["bench", "--settings", "nosuch", "--out-dir", "OUT"], "--settings"),
    (["bench-cost", "--defenses", "foo", "--sizes", "10", "--out-dir", "OUT"], "--defenses: unknown foo"),
    (["bench-cost", "--defenses", "fedavg", "--sizes", "10,x", "--out-dir", "OUT"], "--sizes 10,x"),
    (["bench-cost", "--defenses", "fedavg", "--sizes", "0", "--out-dir", "OUT"], "--sizes 0"),
    (["bench-cost", "--defenses", "fedavg", "--model", "foo", "--sizes", "10", "--out-dir", "OUT"], "--model foo"),
    (["bench-cost", "--defenses", "clipfed", "--sizes", "10", "--data-dir", "EMPTY", "--out-dir", "OUT"],
     "no CIFAR-10 found under"),
    (["synth", "build", "--config", "MISSING", "--store", "OUT"], "--config"),
    (["synth", "build", "--config", "BADTOML", "--store", "OUT"], "not a readable TOML/JSON file"),
    (["synth", "build", "--config", "BADSYNTH", "--store", "OUT"], "seed"),
    (["synth", "build", "--data-dir", "EMPTY", "--store", "OUT"], "no CIFAR-10 found under"),
]


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.delenv("CLIPFED_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    paths = {name: tmp_path / name.lower() for name in
             ("EMPTY", "MISSING", "OUT", "NORUN", "BADJSON", "NOTRESULT", "BADTOML", "BADSYNTH")}
    for name in ("EMPTY", "NORUN", "BADJSON", "NOTRESULT"):
        paths[name].mkdir()
    (paths["BADJSON"] / "result.json").write_text("{not json")
    (paths["NOTRESULT"] / "result.json").write_text(json.dumps({"status": "completed"}))
    paths["BADTOML"] = tmp_path / "bad.toml"
    paths["BADTOML"].write_text("seed = = 1\n")
    paths["BADSYNTH"] = tmp_path / "synth.toml"
    paths["BADSYNTH"].write_text('seed = "x"\n')
    return paths


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("argv", "expected"), BAD_INPUTS, ids=[" ".join(a[:3]) + f"-{i}"
                                                                for i, (a, _) in enumerate(BAD_INPUTS)])
def test_bad_input_is_one_clean_error(argv: list[str], expected: str, places: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(places[a]) if a in places else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipfed: "), err
    assert expected in err and "Traceback" not in err, err
    if "invalid run config" not in err:  # a ConfigError lists each bad key on a line of its own
        assert len(err.strip().splitlines()) == 1, err
    assert not places["OUT"].exists(), "nothing is written for bad input"


def test_bench_cost_writes_no_row_for_an_unknown_defense(places: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = places["OUT"]
    out.mkdir()
    earlier = [{"defense": "fedavg", "updates": 10, "seconds": 0.01, "peak_mb": 1.0}]
    (out / "cost.json").write_text(json.dumps(earlier))
    assert main(["bench-cost", "--defenses", "fedavg,foo", "--sizes", "10", "--out-dir", str(out)]) == 2
    assert json.loads((out / "cost.json").read_text()) == earlier
    assert sorted(p.name for p in out.iterdir()) == ["cost.json"]


def test_download_offline_is_a_clean_error(places: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from urllib.error import URLError

    def offline(data_dir: str) -> Path:
        raise URLError("Name or service not known")

    monkeypatch.setattr("clipfed.data.cifar.download_cifar10", offline)
    assert main(["download", "--data-dir", str(places["OUT"])]) == 2
    assert capsys.readouterr().err.startswith("clipfed: download failed (Name or service not known)")


@pytest.mark.parametrize(("error", "code"), [
    (FlowerRunError("run 7 ended as 'finished:failed'; logs kept in runs/x.logs"), 1),
    (Interrupted(15, "interrupted by SIGTERM; logs kept in runs/x.logs"), 143),
    (Interrupted(2), 130),
    (KeyboardInterrupt(), 130),
])
def test_a_failed_or_interrupted_run_is_one_line_too(error: BaseException, code: int, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def fails(args: object) -> int:
        raise error

    monkeypatch.setattr(cli, "cmd_list", fails)
    assert main(["list"]) == code
    err = capsys.readouterr().err
    assert err == f"clipfed: {str(error) or 'interrupted'}\n"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only errors that mean bad input are turned into one line; a plain ValueError is a bug."""
    def broken(args: object) -> int:
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "cmd_list", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["list"])


def test_a_probe_that_is_not_an_images_labels_npz_is_a_user_error(tmp_path: Path) -> None:
    from clipfed.errors import UserError
    from clipfed.guard.policy import load_probe

    wrong_keys = tmp_path / "wrong.npz"
    np.savez(wrong_keys, pictures=np.zeros((2, 32, 32, 3), dtype=np.uint8))
    not_npz = tmp_path / "probe.toml"
    not_npz.write_text("x = 1")
    for path in (wrong_keys, not_npz):
        with pytest.raises(UserError, match="not an npz with 'images'"):
            load_probe(str(path), ("a", "b"))


@pytest.mark.parametrize(("node_config", "expected"), [
    ("posion-rate=0.9", "posion-rate: unknown node-config key"),
    ("lr=1.0", "lr: unknown node-config key"),
    ("poison-rate=2.0", "poison-rate"),
    ("attack='nosuch'", "attack"),
    ("role='attacker'", "role='attacker'; allowed: benign, malicious"),
])
def test_a_supernode_node_config_typo_or_bad_value_is_refused_before_it_starts(
        node_config: str, expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """node_run_config kept only known keys, so a typo ran silently with the run's value."""
    import clipfed.deploy.cli

    monkeypatch.setattr(clipfed.deploy.cli, "_exec", lambda command: pytest.fail(f"started {command}"))
    argv = ["deploy", "supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "2",
            "--node-config", node_config]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


def test_the_clientapp_refuses_an_unknown_node_config_key_with_its_reason() -> None:
    from flwr.app import Context, RecordDict

    from clipfed.app.client_app import node_run_config

    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2, "posion-rate": 0.9},
                      state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="posion-rate: unknown node-config key"):
        node_run_config(context)
