"""The frozen CLIP teacher: one interface (:class:`Teacher`) and its forms.

In-process (:class:`FrozenCLIP`, built by :func:`create_teacher`), remote
(:class:`RemoteTeacher`, a client of ``vlkd serve``; the server is
:mod:`vlkd.teacher.server`), and cached (``vlkd cache``, :mod:`vlkd.teacher.cache`).
Also here: prompt templates, the text-embedding cache and the crop rule of regions.
"""

from vlkd.teacher.backends import PreprocessConfig
from vlkd.teacher.clip import FrozenCLIP
from vlkd.teacher.factory import TeacherSpec, create_teacher, list_tiny_configs
from vlkd.teacher.prompts import PHOTO_TEMPLATES, TEMPLATE_SETS, VIDEO_TEMPLATES, resolve_templates
from vlkd.teacher.protocol import Teacher, TeacherIdentity
from vlkd.teacher.regions import RegionCrop
from vlkd.teacher.remote import RemoteTeacher, TeacherServiceSpec

__all__ = [
    "FrozenCLIP",
    "PHOTO_TEMPLATES",
    "PreprocessConfig",
    "RegionCrop",
    "RemoteTeacher",
    "TEMPLATE_SETS",
    "Teacher",
    "TeacherIdentity",
    "TeacherServiceSpec",
    "TeacherSpec",
    "VIDEO_TEMPLATES",
    "create_teacher",
    "list_tiny_configs",
    "resolve_templates",
]
