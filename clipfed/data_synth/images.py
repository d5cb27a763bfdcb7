"""Stage 2: candidate images for the captions, each with the class it was meant to show.

``pool`` takes unlabelled public images (the held-out CIFAR pool, an npz, a folder, or a
torchvision dataset) and assigns each to the class whose captions it is most similar to in the
teacher's embedding space; their true labels, where any exist, are never read. ``diffusers``
renders the captions with a text-to-image pipeline and resizes to the task's 32 px.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipfed.data import load_cifar10, public_pool_indices
from clipfed.data.cifar import sha256_file
from clipfed.data_synth.config import SynthConfig
from clipfed.registry import Registry
from clipfed.teacher import Teacher

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass(frozen=True)
class Candidates:
    """Images (uint8 NHWC, 32 px) with intended classes and where each came from."""

    images: np.ndarray
    intended: np.ndarray
    source: str
    embeddings: torch.Tensor | None = None  # teacher embeddings, when the stage computed them


ImageBackend = Callable[[SynthConfig, Sequence[str], dict[int, list[str]], Teacher], Candidates]
IMAGES: Registry[ImageBackend] = Registry("image backend", {
    "diffusers": (__name__, "text-to-image diffusers pipeline (model id or local folder)"),
    "pool": (__name__, "public image pool assigned to classes by teacher similarity to captions"),
})


def resize_uint8(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Any-size uint8 or [0,1] float NHWC -> uint8 (N, size, size, 3), antialiased."""
    x = torch.tensor(np.asarray(images)).float()
    if np.asarray(images).dtype == np.uint8:
        x = x / 255.0
    x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def read_pool(cfg: SynthConfig) -> tuple[np.ndarray, str]:
    """The pool's images and a description of their origin."""
    source = cfg.images.pool.source
    if source == "public-pool":
        fraction = cfg.images.pool.public_pool_fraction
        train, _ = load_cifar10(cfg.data_dir)
        pool = public_pool_indices(train.labels, cfg.seed, fraction)
        return np.asarray(train.images[pool]), (
            f"cifar10 train split, public pool (fraction {fraction}, seed {cfg.seed}), "
            f"{len(pool)} images held out from every client; labels not read")
    if source.startswith("torchvision:"):
        import torchvision

        name = source.split(":", 1)[1]
        dataset = getattr(torchvision.datasets, name)(cfg.data_dir or ".", download=cfg.images.pool.download)
        images = np.stack([np.asarray(dataset[i][0].convert("RGB").resize((32, 32))) for i in range(len(dataset))])
        return images, f"torchvision.datasets.{name} ({len(images)} images)"
    path = Path(source).expanduser()
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return resize_uint8(npz["images"]), f"npz {path} ({len(npz['images'])} images)"
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"images.pool.source={source}: no image files in the folder")
        images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
                           for f in files])
        return images, f"folder {path} ({len(files)} images)"
    raise FileNotFoundError(f"images.pool.source={source!r}: not public-pool, an .npz, a folder or "
                            "torchvision:NAME")


def input_digest(cfg: SynthConfig) -> str:
    """sha256 of the images the image stage starts from, so that the artifact id pins them: the
    pool's decoded images (whatever file, folder or dataset they come from), or, for diffusers,
    every file of a local pipeline folder. A hub model id is pinned by its name only."""
    digest = hashlib.sha256(cfg.images.backend.encode())
    if cfg.images.backend == "pool":
        digest.update(np.ascontiguousarray(read_pool(cfg)[0]).data)
        return digest.hexdigest()
    folder = Path(cfg.images.diffusers.model).expanduser()
    if folder.is_dir():
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(folder)}|{sha256_file(file)}|".encode())
    else:
        digest.update(f"hub:{cfg.images.diffusers.model}".encode())
    return digest.hexdigest()


@IMAGES.register("pool")
def pool_images(cfg: SynthConfig, classes: Sequence[str], captions: dict[int, list[str]],
                teacher: Teacher) -> Candidates:
    images, origin = read_pool(cfg)
    embeddings = teacher.encode_images(images)
    caption_means = torch.stack([
        F.normalize(teacher.caption_embeddings(captions[c], c, classes).mean(0), dim=0)
        for c in range(len(classes))
    ])
    intended = (embeddings @ caption_means.T).argmax(1).numpy().astype(np.int64)
    return Candidates(images, intended, origin, embeddings)


@IMAGES.register("diffusers")
def diffusers_images(cfg: SynthConfig, classes: Sequence[str], captions: dict[int, list[str]],
                     teacher: Teacher) -> Candidates:
    from diffusers import DiffusionPipeline

    from clipfed.devices import resolve_device

    settings = cfg.images.diffusers
    if not settings.model:
        raise ValueError("images.diffusers.model is empty: give a diffusers model id or a local folder")
    device = resolve_device(settings.device)
    pipe = DiffusionPipeline.from_pretrained(settings.model, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    images, intended = [], []
    for c in range(len(classes)):
        prompts = [captions[c][i % len(captions[c])] for i in range(settings.per_class)]
        for start in range(0, len(prompts), settings.batch_size):
            batch = prompts[start : start + settings.batch_size]
            generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 100_003 + c * 1009 + start)
            out = pipe(prompt=batch, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                       height=settings.size, width=settings.size, generator=generator, output_type="np")
            images.append(resize_uint8(np.asarray(out.images)))
            intended.extend([c] * len(batch))
    return Candidates(np.concatenate(images), np.asarray(intended, dtype=np.int64),
                      f"diffusers {settings.model} ({settings.steps} steps, guidance {settings.guidance})")


def build_candidates(cfg: SynthConfig, classes: Sequence[str], captions: dict[int, list[str]],
                     teacher: Teacher) -> Candidates:
    return IMAGES.get(cfg.images.backend)(cfg, classes, captions, teacher)
