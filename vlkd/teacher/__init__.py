"""The frozen CLIP teacher: loading, prompt templates and the text-embedding cache."""

from vlkd.teacher.backends import PreprocessConfig
from vlkd.teacher.clip import FrozenCLIP
from vlkd.teacher.factory import TeacherSpec, create_teacher, list_tiny_configs
from vlkd.teacher.prompts import PHOTO_TEMPLATES, TEMPLATE_SETS, VIDEO_TEMPLATES, resolve_templates

__all__ = [
    "FrozenCLIP",
    "PHOTO_TEMPLATES",
    "PreprocessConfig",
    "TEMPLATE_SETS",
    "TeacherSpec",
    "VIDEO_TEMPLATES",
    "create_teacher",
    "list_tiny_configs",
    "resolve_templates",
]
