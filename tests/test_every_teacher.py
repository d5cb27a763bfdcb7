"""Every registered teacher backend and teacher-guard oracle honours its interface, offline.

The parametrisation comes from the registries (``TEACHERS``, ``ORACLES``): a backend declared in a
catalogue is checked here, and fails until ``TEACHER_BUILDERS`` / ``ORACLE_BUILDERS`` below can
build it offline on tiny data (the openclip teacher and CLIPSeg oracle as tiny random-init models
made here, the reference teacher trained for one epoch on a 40-image pool). What is checked is
what ``clipfed.teacher.base.Teacher`` and ``clipfed.guard.oracle.Oracle`` document: shapes, dtypes,
device, finiteness, unit norms, logits = logit_scale x cosine, determinism, and batch
independence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, get_args

import numpy as np
import pytest
import torch
from conftest import class_images
from flower_mocks import server_identity  # noqa: F401  (fixture)
from tiny_models import register_tiny_clip, write_tiny_clipseg
from torch import nn

from clipfed.config import RunConfig
from clipfed.data import ImageSet
from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.guard.oracle import ORACLES, Oracle
from clipfed.teacher import TEACHERS, Teacher, TeacherSpec, create_teacher

T = TypeVar("T")
IMAGES = class_images(np.arange(5) % 10, np.random.default_rng(1))  # uint8 (5, 32, 32, 3)


def _openclip(folder: Path) -> Teacher:
    """A ~1.6M-parameter open_clip model, random weights (seeded); batch_size 2 splits 5 images."""
    model = register_tiny_clip(folder)
    return create_teacher(TeacherSpec(backend="openclip", model=model, pretrained="random", device="cpu",
                                      batch_size=2))


def _reference(folder: Path) -> Teacher:
    labels = np.arange(40) % 10
    pool = ImageSet(class_images(labels, np.random.default_rng(0)), labels, CIFAR10_CLASSES)
    return create_teacher(TeacherSpec(backend="reference", reference_epochs=1, batch_size=2), pool)


TEACHER_BUILDERS: dict[str, Callable[[Path], Teacher]] = {"openclip": _openclip, "reference": _reference}


def _mean_colour_logits(x: torch.Tensor) -> torch.Tensor:
    """A fixed classifier over CIFAR-normalised images: (N, 3, H, W) -> (N, 10)."""
    return x.mean(dim=(2, 3)) @ torch.linspace(-1, 1, 30).view(3, 10)


ORACLE_BUILDERS: dict[str, Callable[[Path], Oracle]] = {
    "clipseg": lambda folder: ORACLES.get("clipseg")(str(write_tiny_clipseg(folder))),  # random init, local
    "reference": lambda folder: ORACLES.get("reference")(_mean_colour_logits),
}


def build(builders: dict[str, Callable[[Path], T]], name: str, folder: Path) -> T:
    if name not in builders:
        pytest.fail(f"{name!r} is registered but has no offline builder: add one to tests/test_every_teacher.py")
    return builders[name](folder)


def assert_embeddings(x: torch.Tensor, rows: int, dim: int, what: str) -> None:
    """Float32 (rows, dim) on the CPU, no grad, finite, every row of unit L2 norm."""
    assert isinstance(x, torch.Tensor), f"{what} is a {type(x).__name__}, not a tensor"
    assert x.shape == (rows, dim), f"{what}: shape {tuple(x.shape)}, expected {(rows, dim)}"
    assert x.dtype == torch.float32 and x.device.type == "cpu", f"{what}: {x.dtype} on {x.device}"
    assert not x.requires_grad, f"{what} carries a graph: a teacher is frozen"
    assert torch.isfinite(x).all(), f"{what} has NaN/Inf"
    torch.testing.assert_close(x.norm(dim=1), torch.ones(rows), atol=1e-5, rtol=0,
                               msg=lambda m: f"{what} rows are not L2-normalised: {m}")


@pytest.mark.parametrize("name", TEACHERS.names())
def test_every_teacher_honours_the_interface(name: str, tmp_path: Path) -> None:
    teacher = build(TEACHER_BUILDERS, name, tmp_path)
    assert isinstance(teacher, Teacher) and teacher.backend == name
    assert isinstance(teacher.model, nn.Module) and not teacher.model.training, "the model must be in eval mode"
    assert isinstance(teacher.id, str) and teacher.id.startswith(f"{name}:")
    assert len(teacher.weights_digest) == 64
    assert teacher.id in teacher.label
    if teacher.is_reference or teacher.is_random_init:
        assert teacher.label != teacher.id, "a teacher without knowledge must say so in its label"
    dim, scale = teacher.embed_dim, teacher.logit_scale
    assert isinstance(dim, int) and dim > 0
    assert isinstance(scale, float) and np.isfinite(scale) and scale > 0

    images = IMAGES.copy()
    embeddings = teacher.encode_images(images)
    np.testing.assert_array_equal(images, IMAGES, err_msg="encode_images changed its input")
    assert_embeddings(embeddings, len(IMAGES), dim, "encode_images")
    assert torch.equal(teacher.encode_images(IMAGES), embeddings), "encode_images is not deterministic"
    torch.testing.assert_close(teacher.encode_images(IMAGES[3:4]), embeddings[3:4], atol=1e-5, rtol=1e-4,
                               msg=lambda m: f"an image's embedding depends on its batch: {m}")

    prototypes = teacher.class_prototypes(CIFAR10_CLASSES)
    assert_embeddings(prototypes, len(CIFAR10_CLASSES), dim, "class_prototypes")
    assert torch.equal(teacher.class_prototypes(CIFAR10_CLASSES), prototypes), "prototypes are not deterministic"
    with_captions = teacher.class_prototypes(CIFAR10_CLASSES, {3: ["a tabby cat asleep on a sofa."]})
    assert_embeddings(with_captions, len(CIFAR10_CLASSES), dim, "class_prototypes with captions")
    captions = ["a cat.", "a small grey cat on a wall.", "a kitten."]
    caption_embeddings = teacher.caption_embeddings(captions, 3, CIFAR10_CLASSES)
    assert_embeddings(caption_embeddings, len(captions), dim, "caption_embeddings")
    assert torch.equal(teacher.caption_embeddings(captions, 3, CIFAR10_CLASSES), caption_embeddings)

    logits = teacher.zero_shot_logits(embeddings, prototypes)
    assert logits.shape == (len(IMAGES), len(CIFAR10_CLASSES)) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, scale * embeddings @ prototypes.T)
    assert logits.abs().max().item() <= scale * (1 + 1e-5), "logits are scaled cosines: |z| <= logit_scale"


def test_every_teacher_is_selectable_from_config() -> None:
    """A backend in the catalogue that TeacherSpec or RunConfig do not allow could never be used."""
    names = TEACHERS.names()
    assert sorted(get_args(TeacherSpec.model_fields["backend"].annotation)) == names
    assert sorted(get_args(RunConfig.model_fields["teacher"].annotation)) == names


@pytest.mark.parametrize("name", ORACLES.names())
def test_every_oracle_grounds_every_prompt(name: str, tmp_path: Path) -> None:
    oracle = build(ORACLE_BUILDERS, name, tmp_path)
    assert isinstance(oracle, Oracle) and oracle.name == name
    prompts = [[0, 1], [2], [3, 0, 1], [9], [4, 5]]
    found = oracle.ground(IMAGES, prompts, CIFAR10_CLASSES)
    assert [[g.label for g in row] for row in found] == prompts, "one Grounding per prompted label, in order"
    height, width = IMAGES.shape[1:3]
    for row in found:
        for g in row:
            assert isinstance(g.score, float) and 0.0 <= g.score <= 1.0, g
            for top, left, bottom, right in [g.box, *(box for box, _ in g.regions)]:
                assert 0 <= top < bottom <= height and 0 <= left < right <= width, g
            assert all(0.0 <= score <= 1.0 for _, score in g.regions), g
    assert oracle.ground(IMAGES, prompts, CIFAR10_CLASSES) == found, "grounding is not deterministic"


def test_every_oracle_is_selectable_from_config() -> None:
    assert sorted(get_args(RunConfig.model_fields["teacher_guard_oracle"].annotation)) == ORACLES.names()


SYNTH_TEACHERS: dict[str, Callable[[Path], TeacherSpec]] = {
    "openclip": lambda folder: TeacherSpec(backend="openclip", model=register_tiny_clip(folder), pretrained="random",
                                           device="cpu", batch_size=64),
    "reference": lambda folder: TeacherSpec(backend="reference", reference_epochs=2),
}


@pytest.mark.usefixtures("server_identity")
@pytest.mark.parametrize("name", TEACHERS.names())
def test_every_teacher_builds_a_server_dataset_that_clipfed_runs_a_round_with(
        name: str, tmp_path: Path, fake_data_dir: Path) -> None:
    """The teacher as a run uses it: the synthesis pipeline labels the server dataset with it, and
    CLIP-Fed runs a round of the ClientApp and its strategy on that dataset (in-process grid)."""
    from flwr.app import ArrayRecord, ConfigRecord

    from clipfed.data_synth import SynthConfig, build_server_dataset
    from clipfed.data_synth.config import FilterConfig, ImageConfig, PoolConfig
    from clipfed.defense import create_defense
    from clipfed.defense.sampler import PartitionSampler
    from clipfed.engines.inprocess import InProcessGrid
    from clipfed.models import create_model
    from clipfed.runs.report import AggregationReport

    spec = build(SYNTH_TEACHERS, name, tmp_path)
    synth = SynthConfig(data_dir=str(fake_data_dir), images=ImageConfig(pool=PoolConfig(public_pool_fraction=0.5)),
                        teacher=spec, filter=FilterConfig(threshold=0.0), threads=1)
    data = build_server_dataset(synth, tmp_path / "synth").dataset
    assert len(data.labels) > 0 and np.isfinite(data.arrays["teacher_logits"]).all()
    cfg = RunConfig.from_flower({
        "defense": "clipfed", "num-clients": 4, "num-malicious": 1, "data-dir": str(fake_data_dir),
        "public-pool-fraction": 0.5, "partition": "iid", "local-steps": 1, "batch-size": 4,
        "clipfed-post-steps": 2, "clipfed-post-batch": 8, "clipfed-probe-size": 20, "round-timeout": 5.0,
    })
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg, sampler=PartitionSampler(cfg, poll_seconds=0.0), on_report=reports.append,
                              server_data=data)
    torch.manual_seed(0)
    initial = ArrayRecord(create_model(cfg.model, cfg.num_classes).state_dict())
    result = strategy.start(grid=InProcessGrid(cfg), initial_arrays=initial, num_rounds=1,
                            timeout=cfg.round_timeout, train_config=ConfigRecord())
    (report,) = reports
    assert report.participants == [0, 1, 2, 3] and report.rejected == []
    assert "scores" in report.details and "post_loss" in report.details, "CLIP-Fed's two steps did not run"
    assert all(np.isfinite(a.numpy()).all() for a in result.arrays.values())
