"""clipfed bench-device: the quick mode end to end for the CNN on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipfed.cli import main


def test_quick_cnn_on_cpu_writes_positive_rates_and_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench-device", "--quick", "--models", "cnn", "--devices", "cpu", "--threads", "1",
                 "--out-dir", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / "bench-device.json").read_text())
    assert {"command", "commit", "torch", "cpu_count", "settings", "rows"} <= set(document)
    assert document["settings"]["models"] == ["cnn"] and document["settings"]["threads"] == 1
    [row] = document["rows"]
    assert (row["model"], row["device"], row["device_name"]) == ("cnn", "cpu", "cpu")
    train, evaluation, [server] = row["train"], row["eval"], row["server"]
    assert train["images"] == 2 * 16
    for value in (train["clientapp_images_per_s"], train["bare_images_per_s"], train["overhead"],
                  evaluation["evaluator_images_per_s"], evaluation["bare_images_per_s"], evaluation["overhead"]):
        assert isinstance(value, float) and value > 0
    assert server["clients"] == 3 and server["seconds"] > 0
    assert all(isinstance(server[part], float) for part in ("pre_seconds", "aggregate_seconds", "post_seconds"))
    table = (tmp_path / "bench-device.md").read_text()
    assert "| cnn | cpu |" in table and "`clipfed bench-device --quick --models cnn --devices cpu" in table
    assert "error" not in table


@pytest.mark.parametrize(("flags", "message"), [
    (["--models", "vgg"], "--models: unknown vgg"),
    (["--devices", "tpu"], "--devices tpu"),
    (["--clients", "2"], "--clients 2"),
    (["--steps", "0"], "--steps 0"),
])
def test_bad_options_are_refused_before_measuring(flags: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-device", "--quick", *flags, "--out-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bench-device.json").exists()
