"""Teachers: frozen vision-language models (or the offline stand-in) behind one interface.

``create_teacher(spec, pool=...)`` resolves a ``TeacherSpec`` through the registry:
``openclip`` (any open_clip model, pretrained tag or local checkpoint) or ``reference`` (a
cosine classifier trained on the public pool; a stand-in with no zero-shot knowledge, and every
output made with it says so). Backends are imported on first use, so importing this package (and
listing teachers) loads no torch or open_clip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.teacher.registry import TEACHERS, create_teacher, list_teachers, teacher_pool

if TYPE_CHECKING:
    from clipfed.teacher.base import Teacher, TeacherSpec

__all__ = ["TEACHERS", "Teacher", "TeacherSpec", "create_teacher", "list_teachers", "teacher_pool"]


def __getattr__(name: str) -> Any:
    """``Teacher`` and ``TeacherSpec`` load with ``clipfed.teacher.base`` (torch) on first use."""
    if name in ("Teacher", "TeacherSpec"):
        from clipfed.teacher import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
