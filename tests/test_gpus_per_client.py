"""--gpus-per-client: the flwr command line carries it, and values no run could honour are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipfed.cli import main
from clipfed.engines.launch import CONNECTION, client_gpu_note, federation_config, flwr_run_command
from clipfed.errors import UserError


def test_the_flwr_command_line_carries_a_fractional_gpu_per_client() -> None:
    federation = federation_config(num_supernodes=20, cpus_per_client=2, gpus_per_client=0.25)
    command = flwr_run_command(Path("/app"), Path("/home/run-config.toml"), federation)
    assert command[1:] == ["run", "/app", CONNECTION, "--stream", "--run-config", "/home/run-config.toml",
                           "--federation-config", federation]
    assert federation.split() == ["num-supernodes=20", "client-resources-num-cpus=2",
                                  "client-resources-num-gpus=0.25"]


def test_the_key_is_one_flwr_accepts_as_its_simulation_config() -> None:
    """flwr run turns each key's '-' into '_' and refuses a field SimulationConfig lacks."""
    from flwr.common.config import parse_config_args
    from flwr.supercore.utils import simulation_config_from_json

    parsed = parse_config_args([federation_config(10, 1, 0.25)])
    config = simulation_config_from_json({k.replace("-", "_"): v for k, v in parsed.items()})
    assert config.client_resources_num_gpus == pytest.approx(0.25)
    assert (config.num_supernodes, config.client_resources_num_cpus) == (10, 1)


@pytest.mark.parametrize("value", [-0.5, 0.00001, 1.5])
def test_impossible_values_are_refused(value: float) -> None:
    with pytest.raises(UserError, match=f"--gpus-per-client {value:g}"):
        client_gpu_note(value, "auto")


def test_a_gpu_is_refused_where_cuda_is_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"--gpus-per-client 0\.25, but this machine has 0 visible CUDA"):
        client_gpu_note(0.25, "auto")
    assert client_gpu_note(0.0, "auto") == ""


def test_with_cuda_visible_a_fraction_passes_and_no_gpu_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert client_gpu_note(0.25, "auto") == "" and client_gpu_note(1, "cuda") == ""
    assert "train on the CPU" in client_gpu_note(0.0, "auto")
    with pytest.raises(UserError, match="Ray hides every GPU"):
        client_gpu_note(0.0, "cuda:0")
    with pytest.raises(UserError, match="1 visible CUDA"):
        client_gpu_note(2, "auto")
    with pytest.raises(UserError, match="as cuda:0..cuda:0"):  # Ray renumbers an actor's GPUs from 0
        client_gpu_note(0.5, "cuda:1")


def test_the_in_process_engine_refuses_the_flag(fake_data_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--gpus-per-client", "0.5", "-c", f"data-dir='{fake_data_dir}' out-dir='{tmp_path}'"])
    assert code == 2
    assert "--gpus-per-client 0.5 applies to --engine flwr" in capsys.readouterr().err
