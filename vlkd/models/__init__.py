"""Student backbones, by name: ``create_student("video_clip", teacher=teacher)``.

A builder is a function registered with :func:`register_student` under its own
name (timm style); it returns an ``nn.Module``. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from vlkd.errors import ConfigError
from vlkd.models.dual_head import DualHeadClassifier, DualHeadOutput
from vlkd.models.ezad_detector import EZADFasterRCNN
from vlkd.models.residual_vit import ResidualViT, StreamState, residual_vit_from_checkpoint
from vlkd.models.video_clip import VideoCLIP

__all__ = [
    "DualHeadClassifier",
    "DualHeadOutput",
    "EZADFasterRCNN",
    "ResidualViT",
    "StreamState",
    "VideoCLIP",
    "create_student",
    "list_students",
    "register_student",
    "residual_vit_from_checkpoint",
]

_STUDENTS: dict[str, Callable[..., nn.Module]] = {}


def register_student(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``builder`` available as ``create_student(builder.__name__, ...)``."""
    if builder.__name__ in _STUDENTS:
        raise ValueError(f"a student named {builder.__name__!r} is already registered")
    _STUDENTS[builder.__name__] = builder
    return builder


def create_student(name: str, **kwargs) -> nn.Module:
    """Build the student registered as ``name`` with the builder's keyword arguments."""
    if name not in _STUDENTS:
        raise ConfigError(f"unknown student {name!r}; registered: {list_students()}")
    return _STUDENTS[name](**kwargs)


def list_students() -> list[str]:
    """Names accepted by :func:`create_student`."""
    return sorted(_STUDENTS)


@register_student
def video_clip(teacher, temporal: str = "neighbour", grad_checkpointing: bool = False) -> VideoCLIP:
    """A trainable copy of ``teacher``'s (a FrozenCLIP) open_clip model that encodes clips frame by frame."""
    return VideoCLIP.from_teacher(teacher, temporal=temporal, grad_checkpointing=grad_checkpointing)


@register_student
def residual_vit(
    teacher,
    group_size: int | None = None,
    drop_ratio: float | None = None,
    selection: str = "motion",
    residual_token: bool = True,
    tokenizer: str = "linear",
    checkpoint: str | None = None,
) -> ResidualViT:
    """ResidualViT on ``teacher``'s frozen image tower (shared, not copied).

    ``checkpoint``: a trained tokenizer, whose group size and drop ratio are used unless
    given here; without one the published defaults (4, 0.85) and an untrained tokenizer.
    """
    if checkpoint is not None:
        return residual_vit_from_checkpoint(
            teacher, checkpoint, group_size=group_size, drop_ratio=drop_ratio, selection=selection
        )
    return ResidualViT(
        teacher, 4 if group_size is None else group_size, 0.85 if drop_ratio is None else drop_ratio,
        selection, residual_token, tokenizer,
    )


@register_student
def dual_head(num_classes: int | None = None, backbone: str = "resnet18", pretrained: bool = False,
              image_size: int | None = None, folder: str | None = None) -> DualHeadClassifier:
    """DHO's student: the timm model ``backbone`` with a CE head and a KD head (see
    :class:`~vlkd.models.dual_head.DualHeadClassifier`; ``from_clip`` for a CLIP image tower),
    or with ``folder`` the trained student ``vlkd export`` wrote there (its classes, alpha and beta)."""
    if folder is not None:
        return DualHeadClassifier.from_pretrained(folder)
    if num_classes is None:
        raise ConfigError("create_student('dual_head') needs num_classes (a new student) or folder (an exported one)")
    return DualHeadClassifier.from_timm(backbone, num_classes, pretrained=pretrained, image_size=image_size)


@register_student
def ezad_faster_rcnn(class_embeddings=None, embed_dim: int | None = None, teacher=None,
                     class_names: list[str] | None = None, templates="photo", folder: str | None = None,
                     **settings) -> EZADFasterRCNN:
    """EZAD's detector student (see :class:`~vlkd.models.ezad_detector.EZADFasterRCNN`, whose keyword
    arguments ``settings`` are): its vocabulary from ``class_embeddings`` (C, D), or ``teacher``'s
    text embeddings of ``class_names`` (prompt-ensembled over ``templates``), or only ``embed_dim``
    (set it later); or with ``folder`` the detector ``save_pretrained`` wrote there."""
    if folder is not None:
        return EZADFasterRCNN.from_pretrained(folder)
    if class_embeddings is None and teacher is not None:
        if not class_names:
            raise ConfigError("create_student('ezad_faster_rcnn', teacher=...) needs class_names to embed")
        class_embeddings = teacher.encode_text(class_names, templates).float().cpu()
    elif teacher is not None:
        raise ConfigError("create_student('ezad_faster_rcnn') takes class_embeddings or teacher + class_names, "
                          "not both")
    if class_embeddings is None and embed_dim is None:
        raise ConfigError("create_student('ezad_faster_rcnn') needs class_embeddings, teacher + class_names, "
                          "embed_dim (a vocabulary set later) or folder (a saved detector)")
    model = EZADFasterRCNN(class_embeddings, embed_dim, **settings)
    if class_names is not None and class_embeddings is not None:
        model.set_class_embeddings(model.class_embeddings, class_names)
    return model
