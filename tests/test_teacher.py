"""Teachers: open_clip with random init and a checkpoint file (the real loading path), reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from pydantic import ValidationError
from tiny_models import register_tiny_clip, write_tiny_clip_checkpoint

from clipfed.cli import main
from clipfed.config import TEACHERS, RunConfig
from clipfed.data import load_cifar10
from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.teacher import TeacherSpec, create_teacher, list_teachers
from clipfed.teacher.openclip import preprocess_batch
from clipfed.teacher.reference import reference_checkpoint_path

IMAGES = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_tiny_clip(tmp_path_factory.mktemp("clip-config"))


def test_registry_lists_both_backends() -> None:
    assert list_teachers() == ["openclip", "reference"]


def test_the_registry_declares_the_teachers_the_config_allows() -> None:
    """``teacher`` (RunConfig, TeacherSpec, every --teacher flag) allows config.TEACHERS: the same names."""
    assert list_teachers() == sorted(TEACHERS)


def test_openclip_random_init_interface(tiny_clip: str) -> None:
    teacher = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random", device="cpu"))
    assert teacher.id == f"openclip:{tiny_clip}:random-init" and not teacher.is_reference
    assert teacher.is_random_init and "RANDOM INIT (no knowledge)" in teacher.label
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


def test_openclip_needs_named_weights_and_says_when_they_are_random(tiny_clip: str, tmp_path: Path) -> None:
    """No pretrained tag and no checkpoint would be a silent random init: refused, naming the keys."""
    with pytest.raises(ValidationError, match="teacher-pretrained.*teacher-checkpoint"):
        TeacherSpec(backend="openclip", model=tiny_clip)
    with pytest.raises(ValueError, match="teacher-pretrained.*teacher-checkpoint"):
        RunConfig.from_flower({"teacher": "openclip"})
    with pytest.raises(ValueError, match="contradict"):
        RunConfig.from_flower({"teacher": "openclip", "teacher-pretrained": "random",
                               "teacher-checkpoint": str(tmp_path / "w.pt")})
    assert RunConfig.from_flower({"teacher": "openclip", "teacher-pretrained": "random"}).teacher == "openclip"
    checkpoint = str(write_tiny_clip_checkpoint(tmp_path / "w.pt"))
    loaded = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=checkpoint))
    assert "RANDOM" not in loaded.label
    # the guard's repair adds a checkpoint to a random-init spec with model_copy: the file is loaded
    repaired = TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random").model_copy(
        update={"checkpoint": checkpoint})
    assert create_teacher(repaired).weights_digest == loaded.weights_digest
    first, second = (create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random"))
                     for _ in range(2))
    assert first.weights_digest == second.weights_digest, "random init is seeded: the same weights every time"
    with pytest.raises(RuntimeError, match="not a known tag"):  # a typo is not a random init either
        create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, pretrained="no-such-tag"))


def test_cli_teacher_eval_refuses_unnamed_openclip_weights(fake_data_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["teacher", "eval", "--teacher", "openclip", "--data-dir", str(fake_data_dir), "--limit", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipfed: --teacher openclip: ") and "teacher-pretrained" in err


def _register_sized_clip(folder: Path, size: int) -> str:
    """A tiny open_clip config with a ``size`` px input, so that CIFAR's 32 px get resized."""
    name = f"clipfed-tiny-clip-{size}"
    (folder / f"{name}.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": size, "layers": 1, "width": 32, "patch_size": 32, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(folder / f"{name}.json")
    return name


def _open_clip_reference(images: np.ndarray, cfg: dict[str, object]) -> torch.Tensor:
    """open_clip's own eval transform, image by image through PIL, as open_clip's users run it."""
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    return torch.stack([transform(Image.fromarray(image)) for image in images])


@pytest.mark.parametrize(("interpolation", "resize_mode", "size"), [
    ("bilinear", "shortest", 224), ("bilinear", "squash", 224), ("bicubic", "shortest", 224),
    ("bicubic", "squash", (224, 256)), ("bilinear", "longest", (224, 256)), ("bicubic", "shortest", (256, 224)),
])
def test_preprocess_batch_matches_open_clips_own_transform(
        interpolation: str, resize_mode: str, size: int | tuple[int, int]) -> None:
    cfg = {"size": size, "interpolation": interpolation, "resize_mode": resize_mode,
           "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}
    expected = _open_clip_reference(IMAGES, cfg)
    ours = preprocess_batch(torch.tensor(IMAGES).permute(0, 3, 1, 2).float() / 255, cfg)
    assert ours.shape == expected.shape
    assert (ours - expected).abs().mean().item() < 0.01  # bicubic for a bilinear model: ~0.15


def test_openclip_teacher_follows_the_models_preprocess_config(tmp_path: Path) -> None:
    """MobileCLIP's weights come with bilinear resizing and no normalisation; the teacher must feed
    the model what open_clip's own transform would, not a fixed bicubic resize."""
    name = _register_sized_clip(tmp_path, 224)
    teacher = create_teacher(TeacherSpec(backend="openclip", model=name, pretrained="random", device="cpu"))
    mobileclip = open_clip.get_pretrained_cfg("MobileCLIP-S1", "datacompdr")
    assert mobileclip["interpolation"] == "bilinear"
    cfg = {**teacher.model.visual.preprocess_cfg,
           **{k: mobileclip[k] for k in ("interpolation", "resize_mode", "mean", "std")}}
    teacher.model.visual.preprocess_cfg = cfg
    ours = teacher.preprocess(IMAGES)
    assert ours.shape == (6, 3, 224, 224)
    assert (ours - _open_clip_reference(IMAGES, cfg)).abs().mean().item() < 0.01


def test_openclip_preprocess_upsamples_with_the_model_config(tiny_clip: str) -> None:
    teacher = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random", device="cpu"))
    x = teacher.preprocess(np.full((1, 16, 16, 3), 255, dtype=np.uint8))
    assert x.shape == (1, 3, 32, 32)
    mean, std = teacher.model.visual.preprocess_cfg["mean"], teacher.model.visual.preprocess_cfg["std"]
    assert x[0, 0, 5, 5].item() == pytest.approx((1 - mean[0]) / std[0], rel=1e-4)


def test_openclip_loads_a_local_checkpoint(tiny_clip: str, tmp_path: Path) -> None:
    checkpoint = write_tiny_clip_checkpoint(tmp_path / "tiny.pt", seed=3)
    first = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(checkpoint)))
    second = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(checkpoint)))
    random_init = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random"))
    assert first.id.startswith(f"openclip:{tiny_clip}:ckpt-") and first.id == second.id
    torch.testing.assert_close(first.encode_images(IMAGES), second.encode_images(IMAGES))
    assert not torch.allclose(first.encode_images(IMAGES), random_init.encode_images(IMAGES))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(tmp_path / "no.pt")))


def test_a_local_dir_model_brings_its_own_weights(tiny_clip: str, tmp_path: Path) -> None:
    """``local-dir:`` (like ``hf-hub:``) carries config and weights: no tag is asked for, a tag
    (which open_clip would ignore) is refused naming the key, and a checkpoint (the guard's repair)
    is loaded over the folder's weights rather than silently ignored."""
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config(tiny_clip),
                                                              "preprocess_cfg": {}}))
    write_tiny_clip_checkpoint(folder / "open_clip_pytorch_model.bin", seed=5)
    model = f"local-dir:{folder}"
    assert RunConfig.from_flower({"teacher": "openclip", "teacher-model": model}).teacher_model == model
    with pytest.raises(ValueError, match="teacher-pretrained='hub' has no effect"):
        RunConfig.from_flower({"teacher": "openclip", "teacher-model": model, "teacher-pretrained": "hub"})
    with pytest.raises(ValidationError, match="teacher-pretrained='random' has no effect"):
        TeacherSpec(backend="openclip", model=model, pretrained="random")
    own = create_teacher(TeacherSpec(backend="openclip", model=model, device="cpu"))
    same_file = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip,
                                           checkpoint=str(folder / "open_clip_pytorch_model.bin"), device="cpu"))
    assert not own.is_random_init and "RANDOM" not in own.label
    assert own.weights_digest == same_file.weights_digest, "the folder's weights were not the ones loaded"
    assert own.id == f"openclip:{model}:sha-{own.weights_digest[:12]}"
    repair = write_tiny_clip_checkpoint(tmp_path / "repaired.pt", seed=6)
    repaired = create_teacher(TeacherSpec(backend="openclip", model=model, device="cpu").model_copy(
        update={"checkpoint": str(repair)}))
    expected = create_teacher(TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(repair), device="cpu"))
    assert repaired.weights_digest == expected.weights_digest != own.weights_digest
    assert repaired.id.startswith(f"openclip:{model}:ckpt-")


def test_a_local_dir_path_is_checked_and_made_absolute(fake_data_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """open_clip reads the folder as given, from wherever the ServerApp runs: `~` and relative
    paths are resolved first, and a folder open_clip cannot read is refused before the run."""
    from clipfed.cli import resolved_config
    from clipfed.config import ConfigError

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "my-clip").mkdir()
    keys = {"teacher": "openclip", "teacher-model": "local-dir:~/my-clip", "data-dir": str(fake_data_dir)}
    with pytest.raises(ConfigError, match="teacher-model='local-dir:~/my-clip': no open_clip_config.json"):
        resolved_config(keys)
    (tmp_path / "my-clip" / "open_clip_config.json").write_text("{}")
    assert resolved_config(keys).teacher_model == f"local-dir:{tmp_path / 'my-clip'}"
    with pytest.raises(ConfigError, match="no such folder"):
        resolved_config({**keys, "teacher-model": "local-dir:~/nothing"})


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
