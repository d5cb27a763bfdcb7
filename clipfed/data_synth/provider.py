"""Where the ServerApp gets its server dataset: a local build (default) or the service at
``synth-url``, cached by the artifact's id either way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from clipfed.data.cifar import cache_dir
from clipfed.data_synth.artifact import (
    ArtifactIntegrityError,
    ServerDataset,
    artifact_name,
    load_artifact,
    unpack_artifact,
)
from clipfed.data_synth.config import ImageConfig, PoolConfig, SynthConfig
from clipfed.data_synth.pipeline import build_server_dataset
from clipfed.teacher import TeacherSpec

if TYPE_CHECKING:
    from clipfed.config import RunConfig


def default_store() -> Path:
    return cache_dir() / "synth"


def fetch_artifact(url: str, cfg: SynthConfig, store: Path, timeout: float = 3600.0,
                   poll_seconds: float = 1.0) -> tuple[ServerDataset, bool]:
    """Ask the service to build ``cfg``, wait, download, verify and cache the artifact.

    The service answers with the artifact's id (which its teacher's weights decide, so only it
    can name it); an artifact with that id already in ``store`` is not downloaded again.
    Returns the dataset and whether it came from the local cache."""
    recipe = cfg.recipe_hash()
    base = url.rstrip("/")
    with httpx.Client(timeout=60.0) as client:
        status = client.post(f"{base}/builds", json=cfg.model_dump(mode="json")).raise_for_status().json()
        deadline = time.monotonic() + timeout
        while status["status"] in ("queued", "running"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"synthesis service {base}: build {recipe[:16]} not done after {timeout:.0f} s")
            time.sleep(poll_seconds)
            status = client.get(f"{base}/builds/{recipe}").raise_for_status().json()
        if status["status"] != "done":
            raise RuntimeError(f"synthesis service {base}: build {recipe[:16]} failed: {status.get('error')}")
        key = status["content_hash"]
        local = store / artifact_name(key)
        if local.exists():
            return load_artifact(local), True
        blob = client.get(f"{base}/artifacts/{key}").raise_for_status().content
    store.mkdir(parents=True, exist_ok=True)
    dataset = load_artifact(unpack_artifact(blob, store, key))
    if dataset.manifest["recipe_hash"] != recipe:
        raise ArtifactIntegrityError(f"synthesis service {base} sent artifact {key[:16]} for recipe "
                                     f"{dataset.manifest['recipe_hash'][:16]}, asked for {recipe[:16]}")
    return dataset, False


def obtain_server_dataset(cfg: SynthConfig, synth_url: str = "",
                          store: Path | None = None) -> tuple[ServerDataset, bool]:
    """The artifact for ``cfg`` (from the local cache, the service, or a local build) and whether
    it was a cache hit: the teacher's outputs on it are computed once per artifact id, not per run."""
    store = store or default_store()
    if synth_url:
        return fetch_artifact(synth_url, cfg, store)
    built = build_server_dataset(cfg, store)
    return built.dataset, built.cache_hit


def synth_config_for(run: RunConfig) -> SynthConfig:
    """The server dataset recipe of a run: ``synth-config`` if given, else the defaults, with the
    run's teacher keys. A public-pool source must use the run's own split (seed and pool fraction),
    or the 'public' pool could contain client samples: that is refused. So is a teacher key the run
    sets (to other than its default) that the recipe's teacher contradicts: it would be ignored.
    A local build runs on the run's ``device`` (``on_run_device``)."""
    if run.synth_config:
        cfg = SynthConfig.from_file(run.synth_config)
        cfg = cfg.model_copy(update={"data_dir": cfg.data_dir or run.data_dir})
        clash = [f"{type(run).model_fields[field].alias or field}={getattr(run, field)!r} (recipe: "
                 f"teacher.{attr}={getattr(cfg.teacher, attr)!r})"
                 for field, attr in (("teacher", "backend"), ("teacher_model", "model"),
                                     ("teacher_pretrained", "pretrained"), ("teacher_checkpoint", "checkpoint"),
                                     ("teacher_pool", "reference_pool"))
                 if getattr(run, field) not in (type(run).model_fields[field].default, getattr(cfg.teacher, attr))]
        if clash:
            raise ValueError(f"synth-config {run.synth_config} names its own teacher, which the run's "
                             f"{', '.join(clash)} contradict: set the teacher in one place")
    else:
        teacher = TeacherSpec(backend=run.teacher, model=run.teacher_model, pretrained=run.teacher_pretrained,
                              checkpoint=run.teacher_checkpoint, reference_pool=run.teacher_pool)
        pool = PoolConfig(public_pool_fraction=run.public_pool_fraction)
        cfg = SynthConfig(seed=run.seed, data_dir=run.data_dir, images=ImageConfig(pool=pool), teacher=teacher)
    if not run.synth_url:  # a service builds on its own machine's devices
        cfg = on_run_device(cfg, run.device)
    if cfg.images.backend == "pool" and cfg.images.pool.source == "public-pool" and (
        cfg.seed != run.seed or cfg.images.pool.public_pool_fraction != run.public_pool_fraction
    ):
        raise ValueError(
            f"synth-config draws the public pool with seed={cfg.seed}, fraction="
            f"{cfg.images.pool.public_pool_fraction}, but the run splits with seed={run.seed}, "
            f"public-pool-fraction={run.public_pool_fraction}: the pool would overlap client data")
    return cfg


def on_run_device(cfg: SynthConfig, device: str) -> SynthConfig:
    """``cfg`` with the run's ``device`` wherever the recipe leaves a device it uses at ``auto``:
    the openclip teacher's and, with the diffusers image backend, the pipeline's.

    A device the recipe names itself is kept. The reference teacher always trains on the CPU, so
    its spec keeps ``auto``: a device in it would only change its cache key and the artifact's id.
    The default run device, ``auto``, changes nothing (nor the recipe's hash).
    """
    update: dict[str, Any] = {}
    if cfg.teacher.backend != "reference" and cfg.teacher.device == "auto":
        update["teacher"] = cfg.teacher.model_copy(update={"device": device})
    diffusers = cfg.images.diffusers
    if cfg.images.backend == "diffusers" and diffusers.device == "auto":
        update["images"] = cfg.images.model_copy(
            update={"diffusers": diffusers.model_copy(update={"device": device})})
    return cfg.model_copy(update=update)
