"""The teacher registry: ``create_teacher(spec, pool)`` builds the backend ``spec.backend`` names.

The catalogue below is where a backend is declared (name, module, description); its module
registers the factory with ``@TEACHERS.register(name)`` and is imported on first use, so listing
teachers imports no torch or open_clip.

A factory is ``(spec: TeacherSpec, pool: ImageSet | None) -> Teacher`` and returns a frozen
teacher that satisfies the ``Teacher`` contract (``clipfed.teacher.base``);
``tests/test_every_teacher.py`` checks that contract for every declared name. The backend name is
also listed in ``clipfed.config.TEACHERS``, which ``RunConfig.teacher``, ``TeacherSpec.backend``
and every ``--teacher`` flag allow (``tests/test_teacher.py`` checks it equals the catalogue).
Sources: ``openclip`` is OpenCLIP (Ilharco et al. 2021; Cherti et al., CVPR 2023) for CLIP
(Radford et al., ICML 2021); ``reference`` is this project's stand-in, a cosine classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.data import ImageSet
    from clipfed.teacher.base import Teacher, TeacherSpec

TEACHERS: Registry[Callable[..., Teacher]] = Registry("teacher", {
    "openclip": ("clipfed.teacher.openclip", "any open_clip model: pretrained tag (online) or local checkpoint"),
    "reference": ("clipfed.teacher.reference", "offline stand-in: cosine classifier trained on the public pool"),
})


def list_teachers(pattern: str = "*") -> list[str]:
    """Declared teacher backends matching ``pattern`` (an ``fnmatch`` glob), sorted; imports nothing."""
    return TEACHERS.names(pattern)


def teacher_pool(spec: TeacherSpec, public_pool: ImageSet, train_split: ImageSet) -> ImageSet | None:
    """The ``pool`` that ``create_teacher(spec, pool)`` takes: None for ``openclip`` (and a
    reference checkpoint), the public pool for ``reference``, the whole clean train split with
    ``reference_pool='train-split'`` (the strong stand-in; it has seen the images the clients'
    shards are drawn from, which a real CLIP has not)."""
    if spec.backend != "reference":
        return None
    return train_split if spec.reference_pool == "train-split" else public_pool


def create_teacher(spec: TeacherSpec, pool: ImageSet | None = None) -> Teacher:
    """The teacher ``spec`` describes, built by the factory registered as ``spec.backend``.

    Args:
        spec: Which backend, model and weights.
        pool: What the reference teacher trains on (once per pool and spec, then cached), uint8
            images (N, 32, 32, 3) with labels: ``teacher_pool`` picks it; ``openclip`` ignores it.

    Returns:
        A frozen ``Teacher``.

    Raises:
        KeyError: ``spec.backend`` is not declared.
        ValueError: ``reference`` without ``pool`` or ``spec.checkpoint``.
        FileNotFoundError: ``spec.checkpoint`` names no file.
        RuntimeError: open_clip cannot load ``spec.pretrained`` (an unknown tag; no network).
    """
    return TEACHERS.get(spec.backend)(spec, pool)
