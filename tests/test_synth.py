"""The synthesis pipeline: augmentation, artifacts, builds, backends and the HTTP service."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import class_images
from tiny_models import (
    register_tiny_clip,
    write_tiny_clip_checkpoint,
    write_tiny_diffusers_pipeline,
)

from clipfed.config import RunConfig
from clipfed.data.cifar import CIFAR10_CLASSES
from clipfed.data_synth import (
    ArtifactIntegrityError,
    SynthConfig,
    build_server_dataset,
    load_artifact,
)
from clipfed.data_synth.artifact import data_digest
from clipfed.data_synth.captions import build_captions
from clipfed.data_synth.config import (
    AugmentConfig,
    DiffusersConfig,
    FilterConfig,
    ImageConfig,
    PoolConfig,
)
from clipfed.data_synth.frequency import (
    AUGMENTATIONS,
    amplitude_spectrum,
    augment,
)
from clipfed.data_synth.images import build_candidates
from clipfed.data_synth.pipeline import public_pool
from clipfed.data_synth.provider import fetch_artifact, synth_config_for
from clipfed.dct import band_energy
from clipfed.runs.results import RunRecorder, load_result
from clipfed.teacher import TeacherSpec, create_teacher
from clipfed.teacher.reference import ReferenceTeacher, train_reference


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_tiny_clip(tmp_path_factory.mktemp("clip-config"))


def small_config(data_dir: Path, **updates: object) -> SynthConfig:
    base = SynthConfig(
        data_dir=str(data_dir),
        images=ImageConfig(pool=PoolConfig(public_pool_fraction=0.5)),
        teacher=TeacherSpec(backend="reference", reference_epochs=4),
        filter=FilterConfig(threshold=0.2),
        threads=1,
    )
    return base.model_copy(update=updates)


def clean_images(n: int = 60) -> np.ndarray:
    return class_images(np.arange(n) % 10, np.random.default_rng(0))


@pytest.mark.parametrize("band", [(0.35, 1.0), (0.2, 0.5)])
def test_frequency_augmentation_raises_band_energy(band: tuple[float, float]) -> None:
    images = clean_images()
    cfg = AugmentConfig(copies=1, mix={"freq": 1.0}, freq_band=band)
    out, sources, codes = augment(images, cfg, amplitude_spectrum(images), np.random.default_rng(0))
    assert np.array_equal(sources, np.arange(60)) and set(codes) == {AUGMENTATIONS.index("freq")}
    assert band_energy(out, band) > 2 * band_energy(images, band)


def test_augment_mix_and_copies() -> None:
    images = clean_images()
    cfg = AugmentConfig(copies=3)
    out, sources, codes = augment(images, cfg, amplitude_spectrum(images), np.random.default_rng(1))
    assert out.shape == (180, 32, 32, 3) and np.array_equal(sources, np.repeat(np.arange(60), 3))
    assert set(codes) == {1, 2, 3}
    changed = (out != images[sources]).reshape(180, -1).any(1)
    assert changed.mean() > 0.95
    patched = out[codes == 1] != images[sources[codes == 1]]
    assert patched.reshape(len(patched), -1).mean(1).max() <= 8 * 8 * 3 / (32 * 32 * 3) + 1e-9


def test_build_is_byte_reproducible_labels_clean_and_cached(
        fake_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = small_config(fake_data_dir, threads=3)
    threads = torch.get_num_threads()
    first = build_server_dataset(cfg, tmp_path / "a")
    assert torch.get_num_threads() == threads, "the build gives the caller back its thread count"
    second = build_server_dataset(cfg, tmp_path / "b")
    assert not first.cache_hit and first.seconds["teacher"] >= 0
    assert first.dataset.path.name == second.dataset.path.name
    for name in [*first.dataset.manifest["files"], "manifest.json"]:
        assert (first.dataset.path / name).read_bytes() == (second.dataset.path / name).read_bytes(), name

    data = first.dataset
    clean, augmented = data.clean, ~data.clean
    assert augmented.sum() == 2 * clean.sum()  # two copies each by default
    sources = data.arrays["source_index"][augmented]
    assert np.array_equal(data.labels[augmented], data.labels[clean][sources]), "augmentation changed a label"
    assert data.arrays["teacher_logits"].shape == (len(data.labels), 10)
    assert data.arrays["prototypes"].shape == (10, data.arrays["teacher_embeddings"].shape[1])
    assert data.manifest["teacher"]["is_reference"] and not data.manifest["client_data_used"]

    assert data.manifest["data_digest"] == data_digest(data.images, data.labels)
    assert data.manifest["recipe_hash"] == cfg.recipe_hash()
    recorder = RunRecorder.create(RunConfig.from_flower({"out-dir": str(tmp_path / "runs"), "run-name": "r"}))
    recorder.note_server_data(data, cache_hit=False)
    recorded = load_result(recorder.run_dir)["server_data"]  # result.json says which data the server used
    assert recorded["data_digest"] == data.manifest["data_digest"]
    assert recorded["teacher_weights"] == data.manifest["teacher"]["weights_digest"]

    def no_forward_pass(*args: object) -> None:
        raise AssertionError("a cache hit ran the teacher")

    monkeypatch.setattr(ReferenceTeacher, "encode_images", no_forward_pass)
    again = build_server_dataset(cfg, tmp_path / "a")
    assert again.cache_hit and set(again.seconds) == {"teacher", "identify"}


def test_tampered_artifact_is_refused(fake_data_dir: Path, tmp_path: Path) -> None:
    built = build_server_dataset(small_config(fake_data_dir), tmp_path).dataset
    labels = built.path / "labels.npy"
    raw = bytearray(labels.read_bytes())
    raw[-1] ^= 1
    labels.write_bytes(bytes(raw))
    with pytest.raises(ArtifactIntegrityError, match="labels.npy has sha256"):
        load_artifact(built.path)
    with pytest.raises(ArtifactIntegrityError):
        build_server_dataset(small_config(fake_data_dir), tmp_path)


def test_pool_labelling_with_a_tiny_open_clip(tiny_clip: str, fake_data_dir: Path) -> None:
    cfg = small_config(fake_data_dir, teacher=TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random"))
    teacher = create_teacher(cfg.teacher)
    captions = build_captions(CIFAR10_CLASSES, cfg.captions, cfg.seed)
    candidates = build_candidates(cfg, CIFAR10_CLASSES, captions, teacher)
    assert candidates.images.shape == (200, 32, 32, 3) and candidates.embeddings is not None
    means = torch.stack([torch.nn.functional.normalize(teacher.encode_texts(captions[c]).mean(0), dim=0)
                         for c in range(10)])
    expected = (teacher.encode_images(candidates.images) @ means.T).argmax(1).numpy()
    assert np.array_equal(candidates.intended, expected)


@pytest.mark.parametrize("weights", ["random-init", "checkpoint"])
def test_openclip_backend_runs_the_whole_pipeline(
        weights: str, tiny_clip: str, fake_data_dir: Path, tmp_path: Path) -> None:
    checkpoint = str(write_tiny_clip_checkpoint(tmp_path / "tiny.pt")) if weights == "checkpoint" else ""
    teacher = TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=checkpoint,
                          pretrained="" if checkpoint else "random")
    cfg = small_config(fake_data_dir, teacher=teacher, filter=FilterConfig(threshold=0.0, balance="none"))
    data = build_server_dataset(cfg, tmp_path / "store").dataset
    assert data.manifest["teacher"]["id"].startswith(f"openclip:{tiny_clip}:")
    assert not data.manifest["teacher"]["is_reference"]
    assert data.manifest["teacher"]["is_random_init"] == (weights == "random-init")
    assert ("RANDOM INIT (no knowledge)" in data.manifest["teacher"]["label"]) == (weights == "random-init")
    assert data.arrays["teacher_embeddings"].shape[1] == 32 and len(data.labels) > 0


def test_diffusers_backend_with_a_tiny_local_pipeline(tiny_clip: str, tmp_path: Path) -> None:
    pipeline = write_tiny_diffusers_pipeline(tmp_path)
    cfg = SynthConfig(images=ImageConfig(backend="diffusers", diffusers=DiffusersConfig(
        model=str(pipeline), steps=2, size=16, per_class=3, batch_size=3, device="cpu")),
        teacher=TeacherSpec(backend="openclip", model=tiny_clip, pretrained="random"))
    captions = build_captions(CIFAR10_CLASSES, cfg.captions, cfg.seed)
    candidates = build_candidates(cfg, CIFAR10_CLASSES, captions, create_teacher(cfg.teacher))
    assert candidates.images.shape == (30, 32, 32, 3) and candidates.images.dtype == np.uint8
    assert candidates.intended.tolist() == np.repeat(np.arange(10), 3).tolist()
    assert "diffusers" in candidates.source


def test_run_config_maps_to_a_synth_config_on_the_runs_own_pool(tmp_path: Path) -> None:
    run = RunConfig.from_flower({"seed": 4, "public-pool-fraction": 0.2, "teacher": "openclip",
                                 "teacher-model": "RN50", "teacher-pretrained": "openai"})
    cfg = synth_config_for(run)
    assert cfg.seed == 4 and cfg.images.pool.public_pool_fraction == 0.2
    assert cfg.teacher.model == "RN50" and cfg.teacher.pretrained == "openai"
    recipe = tmp_path / "synth.toml"
    recipe.write_text("seed = 9\n")
    mismatched = RunConfig.from_flower({"seed": 4, "synth-config": str(recipe)})
    with pytest.raises(ValueError, match="overlap client data"):
        synth_config_for(mismatched)


def test_artifact_id_pins_the_teachers_weights(tiny_clip: str, fake_data_dir: Path, tmp_path: Path) -> None:
    """The recipe names the teacher, not its weights: a teacher trained (or saved) elsewhere with other
    weights gives other data, so it must give another id; the same weights, the same id."""
    def spec(path: Path) -> TeacherSpec:
        return TeacherSpec(backend="openclip", model=tiny_clip, checkpoint=str(path))

    same_a = write_tiny_clip_checkpoint(tmp_path / "a.pt", seed=3)
    same_b = write_tiny_clip_checkpoint(tmp_path / "b.pt", seed=3)  # the same weights, another file
    other = write_tiny_clip_checkpoint(tmp_path / "c.pt", seed=4)
    cfg = small_config(fake_data_dir, teacher=spec(same_a), filter=FilterConfig(threshold=0.0, balance="none"))
    built = {name: build_server_dataset(cfg, tmp_path / "store", teacher=create_teacher(spec(path)))
             for name, path in (("a", same_a), ("b", same_b), ("other", other))}
    assert built["a"].dataset.path.name == built["b"].dataset.path.name and built["b"].cache_hit
    assert built["other"].dataset.path.name != built["a"].dataset.path.name and not built["other"].cache_hit
    manifests = {name: result.dataset.manifest for name, result in built.items()}
    assert manifests["a"]["recipe_hash"] == manifests["other"]["recipe_hash"]
    assert manifests["a"]["teacher"]["weights_digest"] != manifests["other"]["teacher"]["weights_digest"]
    assert manifests["a"]["data_digest"] != manifests["other"]["data_digest"]

    # the reported case: the same recipe, a reference teacher whose training came out differently
    reference_cfg = small_config(fake_data_dir)
    here = build_server_dataset(reference_cfg, tmp_path / "ref")
    pool_teacher = create_teacher(reference_cfg.teacher, public_pool(reference_cfg))
    elsewhere = ReferenceTeacher(train_reference(public_pool(reference_cfg), reference_cfg.teacher, seed=1),
                                 "pool-elsewhere", reference_cfg.teacher)
    assert build_server_dataset(reference_cfg, tmp_path / "ref", teacher=pool_teacher).cache_hit
    assert build_server_dataset(reference_cfg, tmp_path / "ref", teacher=elsewhere).dataset.path.name \
        != here.dataset.path.name


def test_artifact_id_pins_the_input_images(fake_data_dir: Path, tmp_path: Path) -> None:
    """The same pool file path with other images in it is other data: another id."""
    source = tmp_path / "pool.npz"
    rng = np.random.default_rng(0)
    cfg = small_config(fake_data_dir, images=ImageConfig(pool=PoolConfig(source=str(source))),
                       filter=FilterConfig(threshold=0.0, balance="none"))
    names = []
    for _ in range(2):
        np.savez(source, images=rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8))
        names.append(build_server_dataset(cfg, tmp_path / "store").dataset.path.name)
    assert names[0] != names[1]


def test_run_teacher_keys_that_a_synth_config_contradicts_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "synth.toml"
    recipe.write_text('[teacher]\nbackend = "openclip"\nmodel = "RN50"\npretrained = "openai"\n')
    agreeing = RunConfig.from_flower({"synth-config": str(recipe), "teacher-model": "RN50"})
    assert synth_config_for(agreeing).teacher.pretrained == "openai"
    ignored = RunConfig.from_flower({"synth-config": str(recipe), "teacher-model": "ViT-L-14"})
    with pytest.raises(ValueError, match="teacher-model='ViT-L-14'.*set the teacher in one place"):
        synth_config_for(ignored)
    recipe.write_text('[teacher]\nbackend = "openclip"\n')
    with pytest.raises(ValueError, match="teacher-pretrained"):
        SynthConfig.from_file(recipe)


@pytest.fixture
def service(tmp_path: Path, fake_data_dir: Path) -> Iterator[str]:
    import uvicorn

    from clipfed.data_synth.service import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(tmp_path / "service-store", str(fake_data_dir)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_service_builds_and_serves_artifacts_over_loopback(
        service: str, fake_data_dir: Path, tmp_path: Path) -> None:
    import httpx

    cfg = small_config(fake_data_dir).model_copy(update={"data_dir": ""})  # the service knows its data
    fetched, cache_hit = fetch_artifact(service, cfg, tmp_path / "client-cache", poll_seconds=0.2)
    assert not cache_hit
    assert fetch_artifact(service, cfg, tmp_path / "client-cache")[1], "the second fetch is a cache hit"
    local = build_server_dataset(small_config(fake_data_dir), tmp_path / "local").dataset
    assert fetched.path.name == local.path.name
    assert (fetched.path / "images.npy").read_bytes() == (local.path / "images.npy").read_bytes()
    status = httpx.get(f"{service}/builds/{cfg.recipe_hash()}").json()
    assert status["status"] == "done" and status["content_hash"] == fetched.manifest["content_hash"]
    assert httpx.get(f"{service}/builds/{'0' * 64}").status_code == 404
    assert httpx.get(f"{service}/artifacts/{'0' * 64}").status_code == 404
    bad = httpx.post(f"{service}/builds", json={"filter": {"threshold": 2}})
    assert bad.status_code == 422 and "threshold" in bad.text
