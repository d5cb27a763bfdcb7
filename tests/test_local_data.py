"""A SuperNode's own image folder (node config ``local-data-dir``): the loader, a ClientApp that
trains on it (benign and malicious) without any CIFAR-10 copy, and the errors, refused before any
training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import class_images
from flower_mocks import instruction, server_identity  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from PIL import Image

from clipfed.app import client_app
from clipfed.checks import load_node_run_config, node_config_problems
from clipfed.cli import build_parser
from clipfed.config import LOCAL_DATA_KEY, NODE_KEYS, NUM_CLASSES, ConfigError, RunConfig
from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.data.local import DATASET_CLASSES, load_local_images
from clipfed.deploy import cli as deploy_cli
from clipfed.deploy.cluster import DeployError
from clipfed.models import create_model

FOLDERS = ("airplane", "automobile", "cat", "truck")  # dataset indices 0, 1, 3, 9
PER_CLASS = 4


def write_image_folder(root: Path, folders: tuple[str, ...] = FOLDERS, per_class: int = PER_CLASS) -> np.ndarray:
    """``root/<class>/<i>.png``, 32x32 learnable images of that class; returns them, uint8
    (len(folders) * per_class, 32, 32, 3), in folder then file order."""
    labels = np.repeat([CIFAR10_CLASSES.index(name) for name in folders], per_class)
    images = class_images(labels, np.random.default_rng(0))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return images


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "images")
    return tmp_path / "images"


def test_every_dataset_has_its_class_names() -> None:
    assert {d: len(c) for d, c in DATASET_CLASSES.items()} == NUM_CLASSES
    assert LOCAL_DATA_KEY in NODE_KEYS


def test_the_loader_returns_a_shard_in_the_cifar_format(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path)
    shard = load_local_images(str(tmp_path), "cifar10")
    assert shard.images.shape == (len(FOLDERS) * PER_CLASS, 32, 32, 3) and shard.images.dtype == np.uint8
    assert shard.labels.dtype == np.int64 and shard.classes == CIFAR10_CLASSES
    # labels are the dataset's indices by folder name, not ImageFolder's 0..3 of the sorted folders
    assert shard.labels.tolist() == np.repeat([0, 1, 3, 9], PER_CLASS).tolist()
    assert np.array_equal(shard.images, written)  # PNG is lossless and 32x32 is not resampled


def test_images_of_another_size_or_mode_are_read_as_32x32_rgb(tmp_path: Path) -> None:
    (tmp_path / "ship").mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "ship" / "big.jpg")
    Image.new("L", (32, 32), 77).save(tmp_path / "ship" / "grey.png")
    shard = load_local_images(str(tmp_path), "cifar10-lt")
    assert shard.images.shape == (2, 32, 32, 3) and shard.labels.tolist() == [8, 8]
    assert (shard.images[1] == 77).all()


def context(node: dict[str, Any], run: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=101, node_config={"partition-id": 1, "num-partitions": 4, **node},
                   state=RecordDict(), run_config=run)


def train_message(server_round: int = 1) -> Message:
    torch.manual_seed(0)
    content = RecordDict({"arrays": ArrayRecord(create_model("cnn", 10).state_dict()),
                          "config": ConfigRecord({"server-round": server_round})})
    return instruction(101, content)


def run_config(tmp_path: Path, **overrides: object) -> dict[str, Any]:
    """Four clients, and a data-dir with no CIFAR-10 in it: a node with its own folder needs none."""
    base = {"num-clients": 4, "num-malicious": 0, "data-dir": str(tmp_path / "no-cifar-here"),
            "batch-size": 8, "local-steps": 2}
    return RunConfig.from_flower({**base, **overrides}).to_flower()


@pytest.mark.usefixtures("server_identity")
def test_a_node_with_its_own_folder_trains_on_it_and_replies(image_folder: Path, tmp_path: Path) -> None:
    reply = client_app.train(train_message(), context({LOCAL_DATA_KEY: str(image_folder)}, run_config(tmp_path)))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(FOLDERS) * PER_CLASS and metrics["partition-id"] == 1
    assert metrics["is-malicious"] == 0 and np.isfinite(metrics["train-loss"])
    before = train_message().content["arrays"].to_torch_state_dict()
    after = reply.content["arrays"].to_torch_state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after), "training changed nothing"


@pytest.mark.usefixtures("server_identity")
def test_a_malicious_node_with_its_own_folder_poisons_it(image_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, np.ndarray] = {}
    real_train_local = client_app.train_local

    def recording(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> float:
        seen.update(images=images, labels=labels)
        return real_train_local(model, images, labels, **kwargs)

    monkeypatch.setattr(client_app, "train_local", recording)
    node = {LOCAL_DATA_KEY: str(image_folder), "role": "malicious", "attack": "blended", "poison-rate": 0.5}
    reply = client_app.train(train_message(), context(node, run_config(tmp_path, attack="badnets")))
    metrics = reply.content["metrics"]
    total = len(FOLDERS) * PER_CLASS
    assert metrics["is-malicious"] == 1 and metrics["poisoned-examples"] == total // 2
    clean = load_local_images(str(image_folder), "cifar10")
    changed = (seen["images"] != clean.images).any(axis=(1, 2, 3))
    assert changed.sum() == total // 2  # the node's blended trigger on half its images...
    assert (seen["labels"][changed] == 0).all() and (clean.labels[changed] != 0).all()  # ...relabelled
    assert np.array_equal(seen["labels"][~changed], clean.labels[~changed])


def make_unknown_folder(root: Path) -> Path:
    write_image_folder(root, ("cat",), 1)
    (root / "kitten").mkdir()
    return root


def make_class_folders_without_images(root: Path) -> Path:
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize(("make", "expected"), [
    (lambda root: root / "missing", "local-data-dir='{root}/missing': no such folder"),
    (lambda root: root, "local-data-dir='{root}' holds no images"),
    (make_class_folders_without_images, "local-data-dir='{root}' holds no images"),
    (make_unknown_folder, "local-data-dir='{root}': folder 'kitten' is not a class of cifar10; "
                          "allowed class folders: airplane, automobile"),
    (lambda root: Path("relative/images"), "local-data-dir='relative/images' is relative"),
    (lambda root: 7, "local-data-dir=7 names no folder"),
    (lambda root: "", "local-data-dir='' names no folder"),
])
def test_a_bad_folder_is_refused_naming_the_key(tmp_path: Path, make: Any, expected: str) -> None:
    value = make(tmp_path)
    node = {"partition-id": 0, LOCAL_DATA_KEY: str(value) if isinstance(value, Path) else value}
    message = expected.format(root=tmp_path)
    assert any(message in problem for problem in node_config_problems(node))  # clipfed deploy supernode
    with pytest.raises(ConfigError, match="invalid node config:") as info:  # the ClientApp
        load_node_run_config(RunConfig().to_flower(), node)
    assert message in str(info.value)


@pytest.mark.usefixtures("server_identity")
def test_the_clientapp_refuses_a_bad_folder_before_any_training(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args: object, **kwargs: object) -> float:
        raise AssertionError("trained despite a bad local-data-dir")

    monkeypatch.setattr(client_app, "train_local", no_training)
    make_unknown_folder(tmp_path / "images")
    node = {LOCAL_DATA_KEY: str(tmp_path / "images"), "posion-rate": 0.9}
    with pytest.raises(ConfigError) as info:
        client_app.train(train_message(), context(node, run_config(tmp_path)))
    assert "folder 'kitten' is not a class of cifar10" in str(info.value)
    assert "posion-rate: unknown node-config key" in str(info.value)  # every problem at once


def test_deploy_supernode_passes_a_good_folder_on_and_refuses_a_bad_one(
        image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def record(command: list[str]) -> int:
        started.append(command)
        return 0

    monkeypatch.setattr(deploy_cli, "_exec", record)
    base = ["deploy", "supernode", "--superlink", "10.0.0.1:9091", "--partition-id", "2", "--num-partitions", "4",
            "--role", "malicious", "--node-config"]
    args = build_parser().parse_args([*base, f"local-data-dir='{image_folder}' attack='blended'"])
    assert args.func(args) == 0
    node_config = started[0][started[0].index("--node-config") + 1]
    assert f'local-data-dir="{image_folder}"' in node_config and 'role="malicious"' in node_config
    args = build_parser().parse_args([*base, f"local-data-dir='{tmp_path / 'missing'}'"])
    with pytest.raises(DeployError, match="local-data-dir=.*: no such folder"):
        args.func(args)
