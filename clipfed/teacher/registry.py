"""The teacher registry: ``create_teacher(spec, pool)`` builds the backend ``spec.backend`` names."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.data import ImageSet
    from clipfed.teacher.base import Teacher, TeacherSpec

TEACHERS: Registry[Callable[..., Teacher]] = Registry("teacher")


def list_teachers(pattern: str = "*") -> list[str]:
    return TEACHERS.names(pattern)


def create_teacher(spec: TeacherSpec, pool: ImageSet | None = None) -> Teacher:
    """The teacher ``spec`` describes; ``pool`` is the public pool (the reference teacher's data)."""
    return TEACHERS.get(spec.backend)(spec, pool)
