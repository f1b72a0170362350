"""ResidualViT distillation: "ResidualViT for Efficient Temporally Dense Video Encoding"
(Soldan, Caba Heilbron, Ghanem, Sivic and Russell, ICCV 2025).

Temporally dense tasks (grounding a sentence in a long video, localising
activities) need a CLIP embedding for every frame at a high frame rate, which is
expensive. ResidualViT (:mod:`vlkd.models.residual_vit`) encodes one frame in
``N`` with the full frozen CLIP ViT and the others with the same frozen weights on
a small subset of their patch tokens, plus a *residual token* made from the last
full frame's embedding. This module trains the only new part, the residual
tokenizer, by distillation: the frozen CLIP on the full P-frame is the target,
and the student must induce the same *frame-to-text similarity distribution*.
No labels are needed.

Equations (``B`` clips of ``T`` frames, ``M`` P-frames among them, ``K`` texts, ``D`` embedding width)
----------------------------------------------------------------------------------------------------
* Teacher (full tokens, every frame): ``g_t = norm(E_V(x_t))``.
* Student on P-frame ``t + k`` of the group starting at I-frame ``t``:
  ``f_{t+k} = norm(E_S(g_t, R(x_{t+k})))``, ``R`` keeping ``round((1-p) P)`` patches
  (random ones in training) and ``E_S`` inserting the residual token ``A(g_t)``
  (see :mod:`vlkd.models.residual_vit`). I-frames are the teacher's own embedding.
* Text set ``c_1..c_K`` (prompt-ensembled, L2-normalised teacher text embeddings),
  similarity distributions at the teacher's temperature ``s`` (CLIP's logit scale):
  ``q_i = softmax_k(s <g_i, c_k>)``, ``r_i = softmax_k(s <f_i, c_k>)``.
* Distillation loss, soft-target cross-entropy over the batch's P-frames:
  ``L = -1/M sum_i sum_k q_i[k] log r_i[k]``.
* Options: ``loss="cosine"``: ``L = 1/M sum_i (1 - <f_i, g_i>)``; ``loss="mse"``:
  ``L = 1/M sum_i ||f_i - g_i||^2`` (on the normalised features, ``= 2 (1 - cos)``).

Where the paper is vague, this implementation chooses
------------------------------------------------------
* **Text set.** The paper distils against the texts of its training batches; the
  clips here come without captions, so the text set is the data module's
  ``train_classes``, each filled into every prompt template and ensembled,
  embedded once by the frozen teacher. Labels are never read: any list of names
  describing the domain would do. On a real video list these are its class names;
  the SynthActions config distils on unlabelled clips of random compositions
  (``data.random_clips``, the offline world's generic video) with every
  composition of the vocabulary as the text set. Distilling on the 16-shot base
  clips instead lost 13 of 96 novel static videos (scenes with words no base
  class has), against 1 of 96 with random clips (8 evaluation clips per class).
* **Temperature.** ``s`` is the teacher's logit scale (100 for OpenAI's weights);
  ``temperature`` overrides it.
* **Which frames are distilled.** Only P-frames: an I-frame's student embedding *is*
  the teacher's, its loss would be 0 and only dilute the mean.
* **Groups in a training clip** start at the clip's first frame; a clip of ``T`` frames
  holds ``ceil(T / N)`` groups. Training uses random token selection (as published);
  evaluation uses ``eval_selection`` (motion by default).
* **Optimisation.** AdamW on the tokenizer only (the teacher gets no gradient and no
  optimiser state), linear warm-up then a per-step half cosine
  (:func:`vlkd.methods.finetune.step_schedule`); weight decay on matrices only.
* **Evaluation** (``vlkd test``, and at the end of ``vlkd fit``): zero-shot open-vocabulary
  classification from the ResidualViT features: per-frame logits against the
  prompt-ensembled teacher text embeddings of each set's class names, averaged over
  time and views, base / novel / HM as for every video method.
* **Export.** At the end of training the tokenizer and its settings are written to
  ``residual_tokenizer.safetensors`` beside the logs, the file ``vlkd encode --checkpoint``
  reads (Lightning checkpoints work too).

Checkpoints hold the tokenizer only: the teacher (shared by the backbone) is rebuilt
from its spec and left out of the state dict.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError
from vlkd.methods.base import ClassificationMethod, trainable_parameters
from vlkd.methods.finetune import step_schedule
from vlkd.models import create_student
from vlkd.models.residual_vit import SELECTIONS, TOKENIZER_FILE
from vlkd.teacher import TeacherSpec, resolve_templates

log = logging.getLogger(__name__)

LOSSES = ("soft_ce", "cosine", "mse")


class ResidualViTDistillation(ClassificationMethod):
    """Trains ResidualViT's residual tokenizer by distillation from the frozen CLIP (module docstring).

    Args:
        teacher: the frozen CLIP; its image tower is also the student's backbone.
        group_size: ``N``, frames per group (one I-frame, ``N - 1`` P-frames).
        drop_ratio: ``p``, the share of patch tokens a P-frame drops.
        train_selection: token selection in training (``random``, as published).
        eval_selection: token selection in evaluation (``motion``, ``uniform``, ``centre``, ``random``).
        tokenizer: ``linear`` or ``mlp``.
        residual_token: False evaluates token reduction alone (nothing to train).
        loss: ``soft_ce`` (similarity-distribution distillation), ``cosine`` or ``mse``.
        temperature: logit scale of the similarity distributions (default: the teacher's).
        templates: prompt template set name or list, for the text set and evaluation.
        lr: peak learning rate.
        weight_decay: AdamW weight decay on the tokenizer's matrices.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
    """

    def __init__(
        self,
        teacher: TeacherSpec | None = None,
        group_size: int = 4,
        drop_ratio: float = 0.85,
        train_selection: str = "random",
        eval_selection: str = "motion",
        tokenizer: str = "linear",
        residual_token: bool = True,
        loss: str = "soft_ce",
        temperature: float | None = None,
        templates: str | list[str] = "video",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_epochs: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {loss!r}")
        for name, value in (("train_selection", train_selection), ("eval_selection", eval_selection)):
            if value not in SELECTIONS:
                raise ConfigError(f"{name} must be one of {SELECTIONS}, got {value!r}")
        if lr <= 0 or weight_decay < 0 or warmup_epochs < 0:
            raise ConfigError(
                f"need lr > 0, weight_decay >= 0 and warmup_epochs >= 0; got {lr}, {weight_decay}, {warmup_epochs}"
            )
        if temperature is not None and temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.teacher = (teacher or TeacherSpec()).build()
        self.student = create_student(
            "residual_vit", teacher=self.teacher, group_size=group_size, drop_ratio=drop_ratio,
            selection=eval_selection, residual_token=residual_token, tokenizer=tokenizer,
        )
        self.train_selection = train_selection
        self.eval_selection = eval_selection
        self.loss_kind = loss
        self.temperature = float(temperature) if temperature is not None else self.teacher.logit_scale
        self.templates = resolve_templates(templates)
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs

    # -- text -----------------------------------------------------------------------------
    def text_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """(K,) names -> (K, D) the frozen teacher's prompt-ensembled embeddings (cached by the teacher)."""
        return self.teacher.encode_text(class_names, self.templates)

    @property
    def train_class_names(self) -> list[str]:
        names = getattr(getattr(self.trainer, "datamodule", None), "train_classes", None)
        if not names:
            raise ConfigError(
                "training needs a text set: a data module with train_classes (vlkd.data.VideoDataModule)"
            )
        return names

    # -- evaluation -----------------------------------------------------------------------
    def classify(self, video: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """(N, T, C, H, W) clips in [0, 1] -> (N, K) logits: ResidualViT frame logits averaged over time."""
        frames = self.student.encode_video(video, selection=self.eval_selection)  # (N, T, D)
        text = self.text_embeddings(class_names)
        return self.teacher.logit_scale * torch.einsum("ntd,kd->ntk", frames, text).mean(dim=1)

    # -- training -------------------------------------------------------------------------
    def distillation_loss(self, student: torch.Tensor, target: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(M, D) student and teacher P-frame embeddings, (K, D) text set -> the loss (module docstring)."""
        if self.loss_kind == "cosine":
            return (1.0 - (student * target).sum(dim=-1)).mean()
        if self.loss_kind == "mse":
            return (student - target).pow(2).sum(dim=-1).mean()
        target_probs = F.softmax(self.temperature * target @ text.T, dim=-1)
        log_probs = F.log_softmax(self.temperature * student @ text.T, dim=-1)
        return -(target_probs * log_probs).sum(dim=-1).mean()

    def training_loss(self, video: torch.Tensor, class_names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a batch of (B, T, C, H, W) clips, and monitoring terms (no gradient)."""
        if self.student.tokenizer is None:
            raise ConfigError("residual_token is false: nothing to train; evaluate it with `vlkd test` instead")
        frames = video.shape[1]
        p_frames = ~self.student.i_frame_mask(frames).to(video.device)
        if not p_frames.any():
            raise ConfigError(
                f"clips of {frames} frame(s) with group_size {self.student.group_size} hold no P-frame to distil: "
                "use more frames per clip (data.num_frames) or a group size > 1"
            )
        target = self.teacher.encode_frames(video)  # (B, T, D), no gradient
        student = self.student.encode_video(video, selection=self.train_selection, full_features=target)
        student, target = student[:, p_frames].flatten(0, 1), target[:, p_frames].flatten(0, 1)
        text = self.text_embeddings(class_names)
        loss = self.distillation_loss(student, target, text)
        with torch.no_grad():
            agree = ((student @ text.T).argmax(-1) == (target @ text.T).argmax(-1)).float().mean()
            terms = {"p_cosine": (student * target).sum(dim=-1).mean(), "p_top1_agreement": 100.0 * agree}
        return loss, terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        loss, terms = self.training_loss(video, self.train_class_names)
        batch_size = video.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, batch_size=batch_size,
                      prog_bar=False)
        return loss

    def on_train_end(self) -> None:
        if self.student.tokenizer is None or not self.trainer.is_global_zero:
            return
        path = self.student.save_tokenizer(self._tokenizer_path())
        log.info("residual tokenizer written to %s", path)
        print(f"residual tokenizer written to {path}")

    # -- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        params = trainable_parameters(self)
        if not params:
            raise ConfigError("residual_token is false: nothing to train; evaluate it with `vlkd test` instead")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": step_schedule(self.trainer, optimizer, self.warmup_epochs)}

    def _tokenizer_path(self) -> Path:
        """Where training exports the tokenizer: ``residual_tokenizer.safetensors`` in the run's log folder."""
        return self._out_dir() / TOKENIZER_FILE
