"""What a teacher is: the one interface every distillation method relies on.

A method never knows which form of the frozen CLIP it was given:

* in-process: :class:`~vlkd.teacher.clip.FrozenCLIP`, the model in the training process;
* remote: :class:`~vlkd.teacher.remote.RemoteTeacher`, a client of ``vlkd serve``;
* cached: outputs precomputed by ``vlkd cache`` and read back with each batch
  (:mod:`vlkd.teacher.cache`); a method asks for them through its own
  ``teacher_targets(batch)``, which a cached batch already carries.

:class:`Teacher` is the contract of the first two. Inputs are pixels in [0, 1]
(the teacher resizes and normalises them as its weights expect); outputs are
L2-normalised float32 embeddings on the device of the input.
:class:`TeacherMixin` writes the methods that follow from the others once, and
:class:`TeacherIdentity` says which weights a teacher runs, so that a server, a
cache and a training run can check that they mean the same teacher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from vlkd.errors import ConfigError
from vlkd.teacher.backends import PreprocessConfig
from vlkd.teacher.regions import RegionCrop


@runtime_checkable
class Teacher(Protocol):
    """A frozen CLIP teacher: what FROSTER, DHO, EZAD and MulKI may ask of it.

    Shapes: ``B`` images, ``T`` frames, ``N`` texts or classes, ``M`` regions, ``D`` the embedding width.
    """

    @property
    def preprocess(self) -> PreprocessConfig:
        """Image size, mean, std and interpolation the weights expect."""

    @property
    def image_size(self) -> int:
        """Side of the square input the image tower takes (pixels of other sizes are resized)."""

    @property
    def embed_dim(self) -> int:
        """``D``."""

    @property
    def logit_scale(self) -> float:
        """The learned temperature, exponentiated (100 for OpenAI's weights)."""

    @property
    def identity(self) -> TeacherIdentity:
        """Which model and weights this teacher runs."""

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, D)."""

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) frames in [0, 1] -> (B, T, D)."""

    def encode_regions(self, images, boxes: torch.Tensor, crop: RegionCrop | None = None) -> torch.Tensor:
        """Images ((B, 3, H, W) or a list of (3, H_i, W_i)) and (M, 5) boxes ``[image, x0, y0, x1, y1]``
        in pixels -> (M, D), each box cropped by ``crop``'s rule."""

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N,) literal sentences -> (N, D)."""

    def encode_text(self, class_names: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """(N,) class names -> (N, D) prompt-ensembled class embeddings."""

    def zero_shot_logits(
        self, images: torch.Tensor, class_names: Sequence[str], templates: str | Sequence[str] | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) pixels -> (B, N) logits: logit scale x cosine to the class embeddings."""


class TeacherMixin:
    """The :class:`Teacher` methods that follow from ``encode_images`` and ``encode_text``."""

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) frames in [0, 1] -> (B, T, D) per-frame L2-normalised embeddings."""
        if video.ndim != 5:
            raise ValueError(f"encode_frames expects (B, T, C, H, W) frames, got shape {tuple(video.shape)}")
        batch, frames = video.shape[:2]
        return self.encode_images(video.flatten(0, 1)).view(batch, frames, -1)

    def zero_shot_logits(
        self, images: torch.Tensor, class_names: Sequence[str], templates: str | Sequence[str] | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, N) CLIP zero-shot logits over ``class_names``."""
        text = self.encode_text(class_names, templates)
        return self.logit_scale * self.encode_images(images) @ text.to(images.device).T


@dataclass(frozen=True)
class TeacherIdentity:
    """Which teacher a server runs, a cache was built with, or a run expects.

    ``weights_sha256`` is the SHA-256 of the model's state dict (:func:`weights_sha256`), so two
    teachers agree exactly when they hold the same weights, whatever file or folder they came from.
    """

    model: str
    pretrained: str | None
    weights_sha256: str
    embed_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    logit_scale: float

    @classmethod
    def from_dict(cls, values: dict) -> TeacherIdentity:
        fields = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
        missing = set(cls.__dataclass_fields__) - set(fields)
        if missing:
            raise ConfigError(f"teacher description lacks {sorted(missing)}: it was written by another vlkd version")
        return cls(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"])})

    def to_dict(self) -> dict:
        """The fields as JSON would hold them (lists, not tuples)."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> str:
        return f"{self.model} ({self.pretrained or 'random weights'}, weights sha256 {self.weights_sha256[:12]})"

    def differences(self, other: TeacherIdentity) -> list[str]:
        """The fields in which ``other`` differs, as ``name: mine != other's`` (floats to 1e-6)."""
        out = []
        for key in ("weights_sha256", "model", "embed_dim", "image_size", "mean", "std", "interpolation",
                    "logit_scale"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if isinstance(mine, float) and abs(mine - theirs) <= 1e-6 * max(1.0, abs(mine)):
                continue
            if key in ("mean", "std") and all(abs(a - b) <= 1e-6 for a, b in zip(mine, theirs)):
                continue
            if mine != theirs:
                out.append(f"{key}: {mine!r} != {theirs!r}")
        return out


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict: every entry's name, dtype, shape and bytes, in name order.

    The same weights hash the same whether they were read from a safetensors file, a
    TorchScript archive or a Hugging Face folder into the same architecture.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_same_teacher(expected: TeacherIdentity, actual: TeacherIdentity, where: str, fix: str) -> None:
    """Raise :class:`~vlkd.errors.ConfigError` unless ``actual`` (found at ``where``) is ``expected``."""
    differences = expected.differences(actual)
    if differences:
        raise ConfigError(
            f"{where} has another teacher: {actual.describe()}, but this run's teacher is {expected.describe()} "
            f"({'; '.join(differences)}): {fix}"
        )
