"""Fine-tuning CLIP on videos: the shared student machinery and the ViFi-CLIP baseline.

:class:`VideoCLIPMethod` holds everything a method that fine-tunes a
:class:`~vlkd.models.VideoCLIP` student needs, written once:

* the student, a trainable deep copy of a CLIP model (both towers);
* prompts: one template sampled per optimisation step in training (the same
  template for every class in the step), all templates averaged at evaluation
  (per-template L2 normalisation, mean, normalisation again, with the
  *student's* text tower); optional class descriptions appended to each prompt;
* the video-level logits and the cross-entropy over the training classes;
* AdamW with a linear warm-up and a per-step cosine schedule.

:class:`FineTuneCLIP` is ViFi-CLIP ("Fine-tuned CLIP Models are Efficient Video
Learners", Rasheed et al., CVPR 2023): both towers fine-tuned with cross-entropy
only, frames encoded independently (``temporal="none"``) and their embeddings
mean-pooled over time before the cosine with the class embeddings. FROSTER
(:mod:`vlkd.methods.froster`) adds a frozen teacher and distillation on top.

Choices shared by the methods built on this class:

* **Logit scale.** The CE and the evaluation logits use the CLIP model's logit
  scale *fixed* at its pretrained value (100 for OpenAI's weights); the student's
  ``logit_scale`` parameter is frozen, so an exported student carries the scale it
  was trained with.
* **Weight decay** applies to matrices only: biases, LayerNorm weights, the logit
  scale and the token / positional / class embeddings get none.
* **Optimiser.** AdamW with betas (0.9, 0.98) and eps 1e-8 (CLIP's and ViFi-CLIP's
  setting); the schedule warms up linearly for ``warmup_epochs`` (converted to
  optimisation steps with ``trainer.estimated_stepping_batches``), then decays
  with a half cosine to ``min_lr_ratio`` x lr at the last step (0 by default; the
  real-scale configs use the authors' 1 %, where the warm-up also starts). The
  scheduler steps every optimisation step.
* **Gradient clipping** is the Trainer's job: ``trainer.gradient_clip_val: 1.0``
  in the configs.
* **Template sampling** is seeded by the global step, so every DDP rank (and a
  resumed run) picks the same template for the same step.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError, MissingFileError
from vlkd.methods.base import ClassificationMethod, trainable_parameters
from vlkd.models import create_student
from vlkd.teacher import FrozenCLIP, TeacherSpec, resolve_templates
from vlkd.teacher.prompts import class_prompts

log = logging.getLogger(__name__)

POOLINGS = ("logits", "features")

#: Parameters whose names contain one of these get no weight decay (with every
#: parameter of fewer than two dimensions: biases, norms, the logit scale).
NO_DECAY_NAMES = ("embedding",)


class VideoCLIPMethod(ClassificationMethod):
    """Fine-tunes a :class:`~vlkd.models.VideoCLIP` student with cross-entropy (see the module docstring).

    Subclasses add loss terms through :meth:`extra_losses`, and set ``initial_weights``,
    the :class:`~vlkd.teacher.TeacherSpec` of the weights the student started from
    (``vlkd export`` reads the architecture from it).

    Args:
        clip: the frozen CLIP model the student is copied from (not kept by this class).
        templates: template set name (``video``) or a list of templates with one ``{}``.
        class_descriptions: a JSON file mapping class names to a description that is
            appended to every prompt of that class (``"a video of a person {}. {description}"``).
        temporal: the student's temporal mode, ``"neighbour"``, ``"neighbour_zeros"`` or ``"none"``
            (:class:`vlkd.models.VideoCLIP`).
        pooling: ``"logits"``: per-frame cosine logits averaged over time;
            ``"features"``: cosine of the time-averaged (then normalised) frame embedding.
        lr: peak learning rate.
        weight_decay: AdamW weight decay on matrices.
        warmup_epochs: linear warm-up length, in epochs (fractions allowed).
        min_lr_ratio: the schedule's floor as a fraction of ``lr``: the warm-up starts
            from it and the cosine ends at it.
        grad_checkpointing: recompute the towers' blocks in the backward pass to save memory.
    """

    def __init__(
        self,
        clip: FrozenCLIP,
        templates: str | Sequence[str] = "video",
        class_descriptions: str | None = None,
        temporal: str = "neighbour",
        pooling: str = "logits",
        lr: float = 3.33e-6,
        weight_decay: float = 0.01,
        warmup_epochs: float = 2.0,
        min_lr_ratio: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if lr <= 0 or weight_decay < 0 or warmup_epochs < 0 or not 0 <= min_lr_ratio < 1:
            raise ConfigError(
                "need lr > 0, weight_decay >= 0, warmup_epochs >= 0 and 0 <= min_lr_ratio < 1; got "
                f"{lr}, {weight_decay}, {warmup_epochs}, {min_lr_ratio}"
            )
        self.student = create_student(
            "video_clip", teacher=clip, temporal=temporal, grad_checkpointing=grad_checkpointing
        )
        # The scale is fixed at the pretrained value (module docstring): freeze the copy's parameter.
        self.student.model.logit_scale.requires_grad_(False)
        self.logit_scale = clip.logit_scale
        self.templates = resolve_templates(templates)
        self.descriptions = load_class_descriptions(class_descriptions)
        self.pooling = pooling
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        # Prompt-ensembled student class embeddings, by class list. The student changes
        # during training, so every training loss computation and the start of every
        # evaluation epoch empty the cache.
        self._eval_text: dict[tuple[str, ...], torch.Tensor] = {}

    # -- prompts ------------------------------------------------------------------------
    def prompts(self, class_names: Sequence[str], template: str) -> list[str]:
        """One sentence per class: the filled template, then the class description if there is one."""
        return class_prompts(class_names, template, self.descriptions)

    def sample_template(self) -> str:
        """The training template of the current optimisation step (same on every rank)."""
        return self.templates[random.Random(self.global_step).randrange(len(self.templates))]

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(K,) sentences -> (K, D) L2-normalised embeddings from the student's text tower."""
        return self.student.encode_text(self.student.tokenize(prompts), normalize=True)

    def class_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(K,) class names -> (K, D) prompt-ensembled student text embeddings (cached, see ``__init__``)."""
        key = tuple(class_names)
        if key not in self._eval_text:
            self._eval_text[key] = self.student.class_embeddings(key, self.templates, self.descriptions)
        return self._eval_text[key]

    # -- logits -------------------------------------------------------------------------
    def video_logits(self, frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, T, D) normalised frame embeddings, (K, D) normalised class embeddings -> (B, K) logits."""
        if self.pooling == "logits":
            return self.logit_scale * torch.einsum("btd,kd->btk", frames, text).mean(dim=1)
        return self.logit_scale * F.normalize(frames.mean(dim=1), dim=-1) @ text.T

    def classify(self, video: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """(N, T, C, H, W) clips in [0, 1] -> (N, K) logits with the student and ensembled prompts."""
        frames = self.student.encode_video(video, normalize=True)
        return self.video_logits(frames, self.class_embeddings(class_names))

    # -- training -----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        # A descriptions file that matches no class at all is a mistake (a misspelt or
        # differently formatted key set), not a choice: stop before training on it.
        if self.descriptions:
            names = list(dict.fromkeys([
                *self.train_class_names,
                *(name for eval_set in getattr(self.trainer.datamodule, "eval_sets", [])
                  for name in eval_set.class_names),
            ]))
            covered = sum(name in self.descriptions for name in names)
            if covered == 0:
                raise ConfigError(
                    f"model.class_descriptions names none of the {len(names)} classes of this run "
                    f"(e.g. {names[0]!r}; the file has {next(iter(self.descriptions))!r}): key the "
                    "descriptions by the class names of the label CSVs"
                )
            log.info("class descriptions for %d of the %d classes of this run", covered, len(names))

    @property
    def train_class_names(self) -> list[str]:
        names = getattr(getattr(self.trainer, "datamodule", None), "train_classes", None)
        if not names:
            raise ConfigError("training needs a data module with train_classes (vlkd.data.VideoDataModule)")
        return names

    def extra_losses(
        self, video: torch.Tensor, frames: torch.Tensor, text: torch.Tensor, prompts: list[str],
        teacher_targets: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms added to the cross-entropy, already weighted; none here.

        Args:
            video: (B, T, C, H, W) the training clips in [0, 1].
            frames: (B, T, D) the student's normalised frame embeddings.
            text: (K, D) the student's normalised embeddings of ``prompts``.
            prompts: (K,) this step's prompt of every training class.
            teacher_targets: the batch's :meth:`teacher_targets` when they came with it (a
                cached batch); ``None``: compute what is needed.
        """
        return {}

    def training_loss(
        self, video: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
        teacher_targets: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The loss of one batch of (B, T, C, H, W) clips with (B,) labels indexing ``class_names``.

        Returns the total loss, its named terms (``ce`` and :meth:`extra_losses`) and the (B, K) logits.
        """
        self._eval_text.clear()  # the weights are about to change
        prompts = self.prompts(class_names, self.sample_template())
        frames = self.student.encode_video(video, normalize=True)  # (B, T, D)
        text = self.encode_prompts(prompts)  # (K, D)
        logits = self.video_logits(frames, text)
        extra = self.extra_losses(video, frames, text, prompts, teacher_targets)
        terms = {"ce": F.cross_entropy(logits.float(), labels), **extra}
        return torch.stack(list(terms.values())).sum(), terms, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video, labels = batch["video"], batch["label"]
        loss, terms, logits = self.training_loss(video, labels, self.train_class_names,
                                                 self.cached_teacher_targets(batch))
        batch_size = video.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()}, batch_size=batch_size)
        self.log("train/top1", 100.0 * (logits.argmax(dim=1) == labels).float().mean(), batch_size=batch_size)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._eval_text.clear()
        super().on_validation_epoch_start()

    def on_test_epoch_start(self) -> None:
        self._eval_text.clear()
        super().on_test_epoch_start()

    # -- optimisation -------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """AdamW groups: trainable matrices with weight decay, everything else trainable without."""
        trainable = {id(p) for p in trainable_parameters(self)}
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if id(param) not in trainable:
                continue
            exempt = param.ndim < 2 or any(part in name for part in NO_DECAY_NAMES)
            (no_decay if exempt else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.lr, betas=(0.9, 0.98), eps=1e-8)
        return {"optimizer": optimizer,
                "lr_scheduler": step_schedule(self.trainer, optimizer, self.warmup_epochs, self.min_lr_ratio)}


def step_schedule(trainer: pl.Trainer, optimizer: torch.optim.Optimizer, warmup_epochs: float,
                  floor: float = 0.0) -> dict:
    """Lightning's ``lr_scheduler`` entry for :func:`warmup_cosine`, stepped every optimisation step.

    The warm-up, given in epochs, becomes optimisation steps through
    ``trainer.estimated_stepping_batches`` (which counts gradient accumulation).
    """
    total = max(1, int(trainer.estimated_stepping_batches))
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        warmup = min(total, round(warmup_epochs * total / max_epochs))
    else:
        log.warning("trainer.max_epochs is not set: warm-up epochs cannot be converted to steps; no warm-up")
        warmup = 0
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, floor))
    return {"scheduler": schedule, "interval": "step"}


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float = 0.0):
    """LR multiplier of step ``s``: linear from ``floor`` to 1 over the first ``W`` steps
    (``floor + (1 - floor) (s+1)/W``), then a half cosine from 1 down to ``floor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return floor + (1.0 - floor) * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def load_class_descriptions(path: str | None) -> dict[str, str]:
    """A JSON object ``{"class name": "description", ...}``; ``None`` gives no descriptions."""
    if path is None:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingFileError(file, "class descriptions JSON", "a JSON object mapping class names to text")
    try:
        descriptions = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(descriptions, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in descriptions.items()
    ):
        raise ConfigError(f"{file}: class descriptions must be a JSON object of class name -> text")
    if descriptions and all(key.strip().isdigit() for key in descriptions):
        # The FROSTER / Open-VCLIP "index2cls" files ({"0": "Abseiling: ..."}) look like this.
        raise ConfigError(
            f"{file}: the keys are class indices ({next(iter(descriptions))!r}, ...), but class "
            "descriptions are looked up by class name; key each text by its class's name as the "
            "label CSV spells it"
        )
    return {key: value.strip() for key, value in descriptions.items() if value.strip()}


class FineTuneCLIP(VideoCLIPMethod):
    """ViFi-CLIP: fine-tune both CLIP towers on videos with cross-entropy only.

    Frames are encoded independently and their embeddings averaged over time
    before the cosine similarity (module docstring). Defaults are FROSTER's real-scale
    optimisation settings, so the two methods differ only in what the paper changes.

    Args:
        clip: the CLIP weights to start from.
        templates, class_descriptions, lr, weight_decay, warmup_epochs, min_lr_ratio,
        grad_checkpointing: see :class:`VideoCLIPMethod`.
    """

    def __init__(
        self,
        clip: TeacherSpec | None = None,
        templates: str | list[str] = "video",
        class_descriptions: str | None = None,
        lr: float = 3.33e-6,
        weight_decay: float = 0.01,
        warmup_epochs: float = 2.0,
        min_lr_ratio: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        # The frozen model is only the source of the weights, tokenizer and pixel
        # statistics: it is not kept, so it costs no memory after construction.
        clip = clip or TeacherSpec()
        super().__init__(
            clip.build(),
            templates=templates,
            class_descriptions=class_descriptions,
            temporal="none",
            pooling="features",
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            min_lr_ratio=min_lr_ratio,
            grad_checkpointing=grad_checkpointing,
        )
        self.save_hyperparameters()
        self.initial_weights = clip
