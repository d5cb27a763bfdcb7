"""Teachers: frozen vision-language models (or the offline stand-in) behind one interface.

``create_teacher(spec, pool=...)`` resolves a ``TeacherSpec`` through the registry:
``openclip`` (any open_clip model, pretrained tag or local checkpoint) or ``reference`` (a
cosine classifier trained on the public pool; a stand-in with no zero-shot knowledge, and every
output made with it says so).
"""

from __future__ import annotations

from clipfed.teacher import openclip as _openclip  # noqa: F401  (registers "openclip")
from clipfed.teacher import reference as _reference  # noqa: F401  (registers "reference")
from clipfed.teacher.base import Teacher, TeacherSpec
from clipfed.teacher.registry import TEACHERS, create_teacher, list_teachers

__all__ = ["TEACHERS", "Teacher", "TeacherSpec", "create_teacher", "list_teachers"]
