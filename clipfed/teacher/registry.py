"""The teacher registry: ``create_teacher(spec, pool)`` builds the backend ``spec.backend`` names.

The catalogue below is where a backend is declared (name, module, description); its module
registers the factory with ``@TEACHERS.register(name)`` and is imported on first use, so listing
teachers imports no torch or open_clip.
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
    return TEACHERS.names(pattern)


def create_teacher(spec: TeacherSpec, pool: ImageSet | None = None) -> Teacher:
    """The teacher ``spec`` describes; ``pool`` is the public pool (the reference teacher's data)."""
    return TEACHERS.get(spec.backend)(spec, pool)
