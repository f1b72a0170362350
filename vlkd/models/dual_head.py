"""DHO's student: one shared backbone, a CE head and a KD head, combined at inference.

``DualHeadClassifier`` takes pixels in [0, 1] (it applies its backbone's own
normalisation) and returns both heads' logits and the shared feature. Two kinds
of backbone:

* a **timm** model by name (``resnet18``, ``mobilenetv3_large_100``,
  ``vit_small_patch16_224``, ...), its classifier removed (``num_classes=0``), both
  heads plain linear layers on the pooled feature (DHO's few-shot students);
* the **image tower of an open_clip model** (:meth:`DualHeadClassifier.from_clip`,
  DHO's ImageNet students): both heads start from the class-text embeddings of the
  same CLIP (prompt-ensembled, zero bias), the CE head on the raw feature and the
  KD head on the L2-normalised feature scaled by 100, as in the authors' code, so
  the KD head starts as CLIP's own zero-shot classifier.

At inference the heads are combined as ``p = alpha softmax(ce) + (1 - alpha)
softmax(kd / beta)`` (:meth:`DualHeadClassifier.combine`); ``alpha`` and ``beta``
live in buffers, so a saved student carries the values chosen for it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.errors import ConfigError

__all__ = ["DualHeadClassifier", "DualHeadOutput"]


class DualHeadOutput(NamedTuple):
    ce: torch.Tensor  # (B, C) logits of the CE head
    kd: torch.Tensor  # (B, C) logits of the KD head
    feature: torch.Tensor  # (B, F) the shared feature both heads read


class DualHeadClassifier(nn.Module):
    """A backbone (pixels -> (B, F)) with two linear heads (see the module docstring).

    Args:
        backbone: the feature extractor, taking normalised pixels.
        feature_dim: ``F``.
        num_classes: ``C``.
        mean, std: the backbone's input normalisation.
        image_size: the input side the backbone expects (pixels are resized to it).
        kd_scale: ``None``: the KD head reads the raw feature; a number: it reads the
            L2-normalised feature times this (100 for CLIP-tower students).
        alpha, beta: the inference combination.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, mean, std, image_size: int,
                 kd_scale: float | None = None, alpha: float = 0.5, beta: float = 1.0):
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = backbone
        self.ce_head = nn.Linear(feature_dim, num_classes)
        self.kd_head = nn.Linear(feature_dim, num_classes)
        self.kd_scale = kd_scale
        self.image_size = image_size
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.register_buffer("beta", torch.tensor(float(beta)))

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_timm(cls, name: str, num_classes: int, pretrained: bool = False, image_size: int | None = None,
                  **kwargs) -> DualHeadClassifier:
        """A timm model ``name`` (``pretrained``: its timm weights, which must be on disk offline) as the backbone."""
        import timm

        try:
            backbone = timm.create_model(name, pretrained=pretrained, num_classes=0)
        except RuntimeError as error:  # timm's unknown-model error
            raise ConfigError(f"timm cannot build {name!r}: {error}") from None
        config = backbone.pretrained_cfg
        size = image_size or config.get("input_size", (3, 224, 224))[-1]
        return cls(backbone, backbone.num_features, num_classes, config.get("mean", (0.485, 0.456, 0.406)),
                   config.get("std", (0.229, 0.224, 0.225)), size, **kwargs)

    @classmethod
    def from_clip(cls, clip, class_names: list[str], templates="photo", **kwargs) -> DualHeadClassifier:
        """The image tower of ``clip`` (a :class:`~vlkd.teacher.FrozenCLIP` of the student's architecture, copied and
        made trainable), both heads initialised from its prompt-ensembled class-text embeddings."""
        import copy

        model = getattr(clip.adapter, "model", None)
        if model is None or not hasattr(model, "visual"):
            raise ConfigError("a CLIP-tower student needs an open_clip model (an architecture name or open_clip folder)")
        text = clip.encode_text(class_names, templates).float()  # (C, D), normalised
        preprocess = clip.preprocess
        student = cls(copy.deepcopy(model.visual).float().requires_grad_(True), text.shape[1], len(class_names),
                      preprocess.mean, preprocess.std, clip.image_size, kd_scale=100.0, **kwargs)
        with torch.no_grad():
            for head in (student.ce_head, student.kd_head):
                head.weight.copy_(text)
                head.bias.zero_()
        return student

    # -- use --------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, F)."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return self.backbone((images - self.pixel_mean) / self.pixel_std)

    def heads(self, feature: torch.Tensor) -> DualHeadOutput:
        kd_input = feature if self.kd_scale is None else self.kd_scale * F.normalize(feature, dim=-1)
        return DualHeadOutput(self.ce_head(feature), self.kd_head(kd_input), feature)

    def forward(self, images: torch.Tensor) -> DualHeadOutput:
        return self.heads(self.features(images))

    @staticmethod
    def combine(ce: torch.Tensor, kd: torch.Tensor, alpha, beta) -> torch.Tensor:
        """``alpha softmax(ce) + (1 - alpha) softmax(kd / beta)``: class probabilities."""
        return alpha * ce.softmax(dim=-1) + (1 - alpha) * (kd / beta).softmax(dim=-1)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities with the stored ``alpha`` and ``beta``."""
        out = self(images)
        return self.combine(out.ce, out.kd, self.alpha, self.beta)
