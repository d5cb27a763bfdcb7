"""Teachers: open_clip with random init and a checkpoint file (the real loading path), reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import register_tiny_clip, write_tiny_clip_checkpoint

from clipfed.data import load_cifar10
from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.teacher import TeacherSpec, create_teacher, list_teachers
from clipfed.teacher.reference import reference_checkpoint_path

IMAGES = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_tiny_clip(tmp_path_factory.mktemp("clip-config"))


def test_registry_lists_both_backends() -> None:
    assert list_teachers() == ["openclip", "reference"]


def test_openclip_random_init_interface(tiny_clip: str) -> None:
    teacher = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, device="cpu"))
    assert teacher.id == f"openclip:{tiny_clip}:random-init" and not teacher.is_reference
    embeddings = teacher.encode_images(IMAGES)
    assert embeddings.shape == (6, teacher.embed_dim) == (6, 32)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(6))
    prototypes = teacher.class_prototypes(CIFAR10_CLASSES, {3: ["a tabby cat on a sofa."]})
    assert prototypes.shape == (10, 32)
    assert not torch.allclose(prototypes[3], teacher.class_prototypes(CIFAR10_CLASSES)[3]), \
        "captions did not enter the prototype"
    logits = teacher.zero_shot_logits(embeddings, prototypes)
    torch.testing.assert_close(logits, teacher.logit_scale * embeddings @ prototypes.T)
    assert teacher.caption_embeddings(["a cat", "a dog"], 0, CIFAR10_CLASSES).shape == (2, 32)


def test_openclip_preprocess_upsamples_with_the_model_config(tiny_clip: str) -> None:
    teacher = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, device="cpu"))
    x = teacher.preprocess(np.full((1, 16, 16, 3), 255, dtype=np.uint8))
    assert x.shape == (1, 3, 32, 32)
    mean, std = teacher.model.visual.preprocess_cfg["mean"], teacher.model.visual.preprocess_cfg["std"]
    assert x[0, 0, 5, 5].item() == pytest.approx((1 - mean[0]) / std[0], rel=1e-4)


def test_openclip_loads_a_local_checkpoint(tiny_clip: str, tmp_path: Path) -> None:
    checkpoint = write_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=3)
    first = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(checkpoint)))
    second = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(checkpoint)))
    random_init = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip))
    assert first.id.startswith(f"openclip:{tiny_clip}:ckpt-") and first.id == second.id
    torch.testing.assert_close(first.encode_images(IMAGES), second.encode_images(IMAGES))
    assert not torch.allclose(first.encode_images(IMAGES), random_init.encode_images(IMAGES))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(tmp_path / "no.pt")))


def test_reference_teacher_trains_once_and_is_labelled(fake_data_dir: Path) -> None:
    train, test = load_cifar10(str(fake_data_dir))
    pool = train.subset(np.arange(200))
    spec = TeacherSpec(backend="reference", reference_epochs=25, reference_lr=0.05)
    teacher = create_teacher(spec, pool)
    assert teacher.is_reference and "reference stand-in" in teacher.label
    assert reference_checkpoint_path(spec, pool).exists()
    cached = create_teacher(spec, pool)
    assert cached.id == teacher.id
    test_x = np.asarray(test.images)
    torch.testing.assert_close(cached.encode_images(test_x), teacher.encode_images(test_x))
    prototypes = teacher.class_prototypes(test.classes)
    accuracy = (teacher.zero_shot_logits(teacher.encode_images(test_x), prototypes).argmax(1).numpy()
                == test.labels).mean()
    assert accuracy > 0.5  # the fake classes are colour-coded: easy
    caption = teacher.caption_embeddings(["anything"], 4, test.classes)
    torch.testing.assert_close(caption[0], prototypes[4])


def test_reference_teacher_needs_the_pool() -> None:
    with pytest.raises(ValueError, match="public pool"):
        create_teacher(TeacherSpec(backend="reference"))
