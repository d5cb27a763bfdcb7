"""The ``device``, ``amp`` and ``augment`` keys: device resolution, CPU bit-identity, the
augmentation's geometry, the run record, and (on a machine with a GPU) the CUDA path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flower_mocks import instruction, server_identity  # noqa: F401  (fixture)
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clipfed.app.client_app import train
from clipfed.attacks import create_attack
from clipfed.config import RunConfig
from clipfed.data import load_federated, malicious_clients
from clipfed.data_synth.provider import synth_config_for
from clipfed.defense import create_defense
from clipfed.devices import DeviceUnavailable, resolve_device
from clipfed.engines.inprocess import run_inprocess
from clipfed.evaluation import BackdoorEvaluator
from clipfed.models import create_model
from clipfed.runs.results import load_result
from clipfed.training import CROP_PADDING, random_crop_flip

pytestmark = pytest.mark.usefixtures("server_identity")
NO_GPU = "no CUDA device on this machine: the GPU path runs where one is (the device machine)"


def run_config(data_dir: Path, **overrides: object) -> dict:
    base = {"num-clients": 4, "num-malicious": 1, "data-dir": str(data_dir), "public-pool-fraction": 0.1,
            "partition": "iid", "batch-size": 16, "local-steps": 4}
    return RunConfig.from_flower({**base, **overrides}).to_flower()


def client_round(config: dict, pid: int = 0, **node: object) -> Message:
    """One TRAIN round of partition ``pid`` from the same seeded global CNN."""
    torch.manual_seed(0)
    arrays = ArrayRecord(create_model("cnn", 10).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    context = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": 4, **node},
                      state=RecordDict(), run_config=config)
    return train(instruction(100 + pid, content), context)


def same_reply(a: Message, b: Message) -> bool:
    """Bit-identical arrays (every key, shape, dtype and value) and metrics."""
    left, right = a.content["arrays"].to_torch_state_dict(), b.content["arrays"].to_torch_state_dict()
    return (list(left) == list(right) and all(torch.equal(left[k], right[k]) for k in left)
            and dict(a.content["metrics"]) == dict(b.content["metrics"]))


# resolve_device ---------------------------------------------------------------------------------
def test_auto_is_cuda_when_visible_and_cpu_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_cuda_without_a_gpu_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailable, match=f"device='{spec}'.*no visible CUDA device"):
            resolve_device(spec)


def test_cuda_index_must_name_a_present_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceUnavailable, match=r"device='cuda:2'.*2 CUDA device\(s\).*cuda:0\.\.cuda:1"):
        resolve_device("cuda:2")


def test_a_device_value_of_another_form_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        RunConfig.from_flower({"device": "gpu"})


# The client on the CPU --------------------------------------------------------------------------
def test_cpu_and_auto_give_identical_client_replies(fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto is the CPU, even on a GPU machine
    assert same_reply(client_round(run_config(fake_data_dir, device="cpu")),
                      client_round(run_config(fake_data_dir, device="auto")))


def test_amp_on_the_cpu_changes_nothing(fake_data_dir: Path) -> None:
    plain = client_round(run_config(fake_data_dir, device="cpu"))
    assert same_reply(plain, client_round(run_config(fake_data_dir, device="cpu", amp=True)))


def test_a_node_config_device_overrides_the_runs(fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run asking for CUDA trains on a CPU-only node that says ``device='cpu'``; without that,
    the node refuses, naming the key."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = run_config(fake_data_dir, device="cuda")
    assert same_reply(client_round(config, device="cpu"), client_round(run_config(fake_data_dir, device="cpu")))
    with pytest.raises(DeviceUnavailable, match="device='cuda'"):
        client_round(config)


def test_augment_changes_training_deterministically_and_keeps_shapes(fake_data_dir: Path) -> None:
    plain = client_round(run_config(fake_data_dir, device="cpu"))
    augmented = client_round(run_config(fake_data_dir, device="cpu", augment=True))
    assert same_reply(augmented, client_round(run_config(fake_data_dir, device="cpu", augment=True)))
    assert not same_reply(plain, augmented)
    before, after = plain.content["arrays"], augmented.content["arrays"]
    assert {k: (a.shape, a.dtype) for k, a in before.items()} == {k: (a.shape, a.dtype) for k, a in after.items()}
    other_seed = client_round(run_config(fake_data_dir, device="cpu", augment=True, seed=1))
    assert not same_reply(augmented, other_seed)


def test_an_attacker_trains_with_augmentation_after_poisoning(fake_data_dir: Path) -> None:
    """PGD's hooks and the poisoned shard go through the augmented loop; reruns agree."""
    config = run_config(fake_data_dir, device="cpu", augment=True, attack="pgd")
    attacker = sorted(malicious_clients(RunConfig.from_flower(config)))[0]
    first = client_round(config, attacker)
    assert first.content["metrics"]["is-malicious"] == 1 and first.content["metrics"]["poisoned-examples"] > 0
    assert same_reply(first, client_round(config, attacker))


# The augmentation's geometry --------------------------------------------------------------------
def test_crop_moves_a_marked_pixel_at_most_4_px_and_the_flip_mirrors_it() -> None:
    n, h, w = 400, 32, 32
    x = torch.zeros(n, 3, h, w)
    marks = torch.stack([torch.arange(n) % h, (torch.arange(n) * 7) % w], 1)  # (n, 2): (row, col)
    x[torch.arange(n), :, marks[:, 0], marks[:, 1]] = 1.0
    out = random_crop_flip(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    replay = torch.Generator().manual_seed(3)  # the draws, in the documented order
    dy = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=replay)
    dx = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=replay)
    flip = torch.rand(n, generator=replay) < 0.5
    assert 0 < int(flip.sum()) < n and int(dy.min()) == 0 and int(dy.max()) == 2 * CROP_PADDING
    for k in range(n):
        found = torch.nonzero(out[k, 0])
        row, col = int(marks[k, 0] - dy[k] + CROP_PADDING), int(marks[k, 1] - dx[k] + CROP_PADDING)
        if not (0 <= row < h and 0 <= col < w):
            assert len(found) == 0, "a pixel shifted past the edge is cropped out"
            continue
        seen_col = w - 1 - col if flip[k] else col
        assert found.tolist() == [[row, seen_col]]
        assert abs(row - int(marks[k, 0])) <= CROP_PADDING and abs(col - int(marks[k, 1])) <= CROP_PADDING
        assert torch.equal(out[k, :, row, seen_col], torch.ones(3))


def test_the_padding_is_zero_in_the_normalised_space_and_at_most_4_px_wide() -> None:
    out = random_crop_flip(torch.ones(64, 3, 32, 32), torch.Generator().manual_seed(0))
    inner = out[:, :, CROP_PADDING:-CROP_PADDING, CROP_PADDING:-CROP_PADDING]
    assert bool((inner == 1).all()) and set(out.unique().tolist()) == {0.0, 1.0}


def test_augment_off_draws_nothing_from_the_training_generator() -> None:
    """``augment=False`` leaves the shuffling stream as it was: what the pinned runs rely on."""
    from clipfed.training import train_local

    images = np.zeros((40, 32, 32, 3), np.uint8)
    labels = np.arange(40) % 10
    states = []
    for augment in (False, True):
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        train_local(create_model("cnn", 10), images, labels, epochs=1, batch_size=16, lr=0.01, momentum=0.9,
                    weight_decay=0.0, generator=generator, augment=augment)
        states.append(generator.get_state())
    untouched = torch.Generator().manual_seed(0)
    torch.randperm(40, generator=untouched)
    assert torch.equal(states[0], untouched.get_state()) and not torch.equal(states[1], states[0])


# The server --------------------------------------------------------------------------------------
def test_the_defense_and_the_evaluator_get_the_runs_device(fake_data_dir: Path) -> None:
    cfg = RunConfig.from_flower(run_config(fake_data_dir, device="cpu"))
    assert create_defense(cfg).device == torch.device("cpu")
    _, test, _ = load_federated(cfg)
    model = create_model("cnn", 10)
    default = BackdoorEvaluator(test, create_attack(cfg))(model)
    assert BackdoorEvaluator(test, create_attack(cfg), device=torch.device("cpu"), amp=True)(model) == default


def test_a_local_build_uses_the_runs_device_for_an_openclip_teacher_only(fake_data_dir: Path) -> None:
    openclip = {"teacher": "openclip", "teacher-pretrained": "random"}
    assert synth_config_for(RunConfig.from_flower(run_config(fake_data_dir, device="cuda:1", **openclip))
                            ).teacher.device == "cuda:1"
    auto = synth_config_for(RunConfig.from_flower(run_config(fake_data_dir)))
    cpu = synth_config_for(RunConfig.from_flower(run_config(fake_data_dir, device="cpu")))
    assert cpu.teacher.device == "auto" and cpu.recipe_hash() == auto.recipe_hash()  # the reference teacher


def test_result_json_records_the_servers_device(fake_data_dir: Path, tmp_path: Path) -> None:
    cfg = RunConfig.from_flower({**run_config(fake_data_dir, device="cpu", amp=True), "num-clients": 3,
                                 "num-server-rounds": 1, "out-dir": str(tmp_path), "run-name": "r"})
    result = load_result(run_inprocess(cfg))
    assert result["status"] == "completed"
    assert result["device"] == {"server": "cpu", "amp": False, "configured": "cpu"}


# The GPU path ------------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_on_cuda_with_amp_a_client_round_an_evaluation_and_a_run(fake_data_dir: Path, tmp_path: Path) -> None:
    config = run_config(fake_data_dir, device="cuda", amp=True, augment=True, attack="pgd")
    attacker = sorted(malicious_clients(RunConfig.from_flower(config)))[0]
    for pid in (attacker, next(p for p in range(4) if p != attacker)):  # PGD's hooks on the GPU, and SGD
        reply = client_round(config, pid)
        arrays = reply.content["arrays"].to_torch_state_dict()
        assert all(v.device.type == "cpu" for v in arrays.values())
        assert all(bool(torch.isfinite(v).all()) for v in arrays.values() if v.is_floating_point())
        assert np.isfinite(reply.content["metrics"]["train-loss"])
    # the same crops on both devices (drawn on the CPU): float32 CUDA training stays near the CPU's
    cpu = client_round(run_config(fake_data_dir, device="cpu", augment=True)).content["arrays"].to_torch_state_dict()
    cuda = client_round(run_config(fake_data_dir, device="cuda", augment=True)).content["arrays"].to_torch_state_dict()
    assert max(float((cpu[k].double() - cuda[k].double()).abs().max()) for k in cpu) < 1e-2

    cfg = RunConfig.from_flower(config)
    _, test, _ = load_federated(cfg)
    evaluator = BackdoorEvaluator(test, create_attack(cfg), device=torch.device("cuda"), amp=True)
    assert evaluator.clean_x.is_cuda and evaluator.triggered_x is not None and evaluator.triggered_x.is_cuda
    torch.manual_seed(0)
    model = create_model("cnn", 10)
    on_gpu = evaluator(model)
    assert next(model.parameters()).is_cuda and on_gpu.ma is not None and on_gpu.asr is not None
    on_cpu = BackdoorEvaluator(test, create_attack(cfg))(model.cpu())
    assert on_gpu.ma == pytest.approx(on_cpu.ma, abs=0.05)  # bf16 moves a few borderline predictions

    run = RunConfig.from_flower({**run_config(fake_data_dir, device="cuda", amp=True, augment=True),
                                 "num-clients": 3, "num-server-rounds": 1, "out-dir": str(tmp_path),
                                 "run-name": "r"})
    result = load_result(run_inprocess(run))
    assert result["status"] == "completed" and result["rounds"][1]["ma"] is not None
    assert result["device"]["server"].startswith("cuda:0 ") and result["device"]["amp"] is True


def test_torch_threads_gives_the_caller_its_count_back_even_on_error() -> None:
    """The thread count is process-wide: a block that changes it must not change what later code
    in the process computes (a server-dataset build once left its count behind)."""
    import torch

    from clipfed.devices import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
