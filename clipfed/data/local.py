"""A SuperNode's own training images: a local folder in torchvision's ImageFolder layout.

A node whose node config sets ``local-data-dir`` trains on ``<folder>/<class name>/<image>``
instead of its partition of the run's CIFAR-10 split, so its data never leaves its machine and it
needs no CIFAR-10 copy. Class folders are matched to the dataset's class indices by name (not by
torchvision's sorted order), and images are resized to the dataset's 32x32, so attacks,
augmentation and training see exactly what a CIFAR shard gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipfed.config import LOCAL_DATA_KEY, ConfigError
from clipfed.data.cifar import CIFAR10_CLASSES, ImageSet

# Each dataset's class names, by index (its labels); both are CIFAR-10's.
DATASET_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar10-lt": CIFAR10_CLASSES}
IMAGE_SIZE = (32, 32)  # (height, width) of every dataset's images
LAYOUT = "one sub-folder of images per class, named as the dataset's classes (torchvision ImageFolder)"


def local_folder_problems(value: Any, dataset: str) -> list[str]:
    """Why ``value`` (a node's ``local-data-dir``) cannot be trained on for ``dataset``, or [].

    It must be an absolute path (the ClientApp does not run in the folder the node was started
    from) to a folder whose sub-folders are all class names of ``dataset`` and hold at least one
    image between them.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    key = f"{LOCAL_DATA_KEY}={value!r}"
    if not isinstance(value, str) or not value:
        return [f"{key} names no folder; allowed: an absolute path to a folder with {LAYOUT}"]
    folder = Path(value).expanduser()
    if not folder.is_absolute():
        return [f"{key} is relative; allowed: an absolute path (the ClientApp runs in another folder)"]
    if not folder.is_dir():
        return [f"{key}: no such folder; allowed: a folder with {LAYOUT}"]
    classes = DATASET_CLASSES[dataset]
    present = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    unknown = [name for name in present if name not in classes]
    if unknown:
        return [f"{key}: folder {name!r} is not a class of {dataset}; allowed class folders: "
                f"{', '.join(classes)}" for name in unknown]
    if not present or not make_dataset(str(folder), {name: classes.index(name) for name in present},
                                       extensions=IMG_EXTENSIONS, allow_empty=True):
        return [f"{key} holds no images; allowed: a folder with {LAYOUT} (image files: "
                f"{', '.join(IMG_EXTENSIONS)})"]
    return []


def load_local_images(folder: str, dataset: str) -> ImageSet:
    """The images under ``folder`` as uint8 (N, 32, 32, 3) with int64 (N,) labels: the dataset's
    index of each image's class folder. Read with torchvision's ImageFolder (RGB, resized to 32x32
    where they are not already); ``ConfigError`` naming ``local-data-dir`` if the folder cannot be
    used."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import Resize

    if problems := local_folder_problems(folder, dataset):
        raise ConfigError.listing(problems, "invalid node config:")
    classes = DATASET_CLASSES[dataset]
    found = ImageFolder(str(Path(folder).expanduser()), transform=Resize(IMAGE_SIZE), allow_empty=True)
    to_dataset = np.array([classes.index(name) for name in found.classes], dtype=np.int64)
    images = np.stack([np.asarray(image, dtype=np.uint8) for image, _ in found])
    return ImageSet(images, to_dataset[np.asarray(found.targets, dtype=np.int64)], classes)
