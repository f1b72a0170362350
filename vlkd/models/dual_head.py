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

Exported (:meth:`DualHeadClassifier.save_pretrained`, ``vlkd export``), a timm student
is a folder timm itself loads, ``model.safetensors`` and timm's ``config.json``: the
timm model with one linear classifier of ``2C`` outputs, the CE head's ``C`` logits
then the KD head's (a linear head on the shared feature each, so both fit in one
layer, and ``timm.create_model("local-dir:<folder>", pretrained=True)`` gives both
heads' logits); alpha, beta and the class names are under ``"vlkd_dual_head"`` in the
config, and :meth:`DualHeadClassifier.from_pretrained` loads the folder through timm
and splits the classifier into the two heads again. A CLIP-tower student (its KD head
reads the *normalised* feature, which no single linear layer can express) is written
in the same two files with the open_clip architecture config instead of timm's, and
loads with :meth:`~DualHeadClassifier.from_pretrained` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.errors import ConfigError, MissingFileError

__all__ = ["DualHeadClassifier", "DualHeadOutput"]

#: The files of an exported student (timm's names, so that timm reads the folder as it is).
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
CONFIG_KEY = "vlkd_dual_head"


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
        # How the backbone was built, for save_pretrained: ("timm", model name) or ("open_clip", model_cfg).
        self.source: tuple[str, str | dict] | None = None
        self.class_names: list[str] = []  # set by from_pretrained (a trained student's classes)

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
        # The pooled output's width: head_hidden_size where a head layer follows the features (MobileNetV3's 1280).
        width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        student = cls(backbone, width, num_classes, config.get("mean", (0.485, 0.456, 0.406)),
                      config.get("std", (0.229, 0.224, 0.225)), size, **kwargs)
        student.source = ("timm", name)
        return student

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
        from vlkd.teacher.factory import open_clip_model_config

        student.source = ("open_clip", open_clip_model_config(clip.identity.model, model))
        return student

    # -- export -----------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, class_names: list[str], metadata: dict | None = None) -> Path:
        """Write this student to ``folder`` (see the module docstring); returns the folder."""
        from safetensors.torch import save_file

        if self.source is None:
            raise ConfigError("this student was not built by from_timm or from_clip: its backbone cannot be exported")
        if len(class_names) != self.ce_head.out_features:
            raise ConfigError(f"{len(class_names)} class names for a {self.ce_head.out_features}-class student")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        kind, spec = self.source
        settings = {"class_names": list(class_names), "alpha": float(self.alpha), "beta": float(self.beta),
                    "kd_scale": self.kd_scale, "image_size": self.image_size, "mean": self.pixel_mean.flatten().tolist(),
                    "std": self.pixel_std.flatten().tolist(), "backbone": kind, **(metadata or {})}
        if kind == "timm":
            from timm.models import save_for_hf

            num = len(class_names)
            settings["classifier"] = f"outputs [0, {num}) are the CE head's logits, [{num}, {2 * num}) the KD head's"
            model = self._timm_with_both_heads(spec)
            labels = [f"ce:{name}" for name in class_names] + [f"kd:{name}" for name in class_names]
            save_for_hf(model, str(folder), model_config={"label_names": labels, CONFIG_KEY: settings},
                        safe_serialization=True,
                        data_config={"input_size": (3, self.image_size, self.image_size),
                                     "mean": settings["mean"], "std": settings["std"]})
            return folder
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        config = {"open_clip_model_cfg": spec, CONFIG_KEY: settings}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder

    def _timm_with_both_heads(self, name: str) -> nn.Module:
        """The timm model ``name`` holding this backbone, its classifier the two heads stacked (2C outputs)."""
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=2 * self.ce_head.out_features)
        classifier = model.get_classifier()
        missing, unexpected = model.load_state_dict(self.backbone.state_dict(), strict=False)
        own = {f"{prefix}.{key}" for prefix, module in model.named_modules() if module is classifier
               for key in ("weight", "bias")}
        if unexpected or set(missing) - own:
            raise ConfigError(f"timm's {name} does not hold this backbone's weights (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
        with torch.no_grad():
            classifier.weight.copy_(torch.cat([self.ce_head.weight, self.kd_head.weight]))
            classifier.bias.copy_(torch.cat([self.ce_head.bias, self.kd_head.bias]))
        return model.eval()

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> DualHeadClassifier:
        """The student :meth:`save_pretrained` (``vlkd export``) wrote, in eval mode; ``class_names`` attached."""
        folder = Path(folder).expanduser()
        config_file = folder / CONFIG_FILE
        if not config_file.is_file():
            raise MissingFileError(config_file, "exported DHO student config", "pass the folder `vlkd export` wrote")
        config = json.loads(config_file.read_text())
        settings = config.get(CONFIG_KEY)
        if settings is None:
            raise ConfigError(f"{config_file} has no {CONFIG_KEY!r} entry: not a DHO student `vlkd export` wrote")
        num = len(settings["class_names"])
        common = dict(mean=settings["mean"], std=settings["std"], image_size=settings["image_size"],
                      kd_scale=settings["kd_scale"], alpha=settings["alpha"], beta=settings["beta"])
        if settings["backbone"] == "timm":
            import timm

            model = timm.create_model(f"local-dir:{folder}", pretrained=True)  # timm's own loader
            classifier = model.get_classifier()
            weight, bias = classifier.weight.detach().clone(), classifier.bias.detach().clone()
            model.reset_classifier(0)
            student = cls(model, weight.shape[1], num, **common)
            with torch.no_grad():
                student.ce_head.weight.copy_(weight[:num])
                student.ce_head.bias.copy_(bias[:num])
                student.kd_head.weight.copy_(weight[num:])
                student.kd_head.bias.copy_(bias[num:])
            student.source = ("timm", config["architecture"])
        else:
            import open_clip
            from safetensors.torch import load_file

            model_cfg = config["open_clip_model_cfg"]
            visual = open_clip.model.CLIP(**model_cfg).visual
            student = cls(visual, model_cfg["embed_dim"], num, **common)
            student.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
            student.source = ("open_clip", model_cfg)
        student.class_names = list(settings["class_names"])
        return student.to(device).eval()

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
