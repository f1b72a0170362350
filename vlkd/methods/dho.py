"""DHO: dual-head semi-supervised distillation of a frozen CLIP into a compact student.

Paper: "Simple Semi-supervised Knowledge Distillation from Vision-Language Models
via Dual-Head Optimization", Kang et al., 2025 (official code: erjui/DHO).

Method
------
A student backbone ``f`` feeds two linear heads: ``h_ce`` learns from the labels,
``h_kd`` from the frozen CLIP teacher's zero-shot predictions ``t`` (prompt-ensembled
class-text embeddings; logits = the teacher's logit scale x cosine). With a
labelled batch ``x_l`` and an unlabelled batch ``x_u`` per step (1 : 1, the labelled
loader cycling)::

    L = lambda CE(h_ce(x_l), y) + (1 - lambda) [KD(x_l) + KD(x_u)]
    KD(x) = T^2 KL(softmax(t(x) / T) || softmax(h_kd(x) / T))      (a batch mean each)

with ``T = 2`` and ``lambda = 0.5``. Giving each signal its own head is the point:
with one head the CE and KD gradients on the shared feature pull against each other
(the paper's "gradient conflict"), with two heads each head's loss is only its own.
At inference the heads are combined::

    p = alpha softmax(h_ce) + (1 - alpha) softmax(h_kd / beta)

with ``alpha`` in {0, 0.05, ..., 1} and ``beta`` in {0.5, 0.75, 1, 1.25, 1.5, 2, 4}
chosen by accuracy on the *validation* split at every validation epoch (the values
of the last one are kept with the weights and used for the test split). The
authors' ImageNet script searches on ImageNet-val, its test set; here the data
module holds a validation split out of the training pool instead. Without a
validation loop, ``alpha = lambda`` and ``beta = 1``.

Variants (``variant``), the paper's baselines on the same data, schedule and seeds:

* ``dho``: the method above;
* ``ce``: the CE head on the labelled images alone;
* ``logit_kd``: one head trained with ``lambda CE + (1 - lambda) [KD(x_l) + KD(x_u)]``
  (Hinton's distillation, the single-head counterpart of DHO);
* ``feature_kd``: one head with CE, plus ``(1 - lambda) [FD(x_l) + FD(x_u)]`` where
  ``FD = 1 - cos(P f(x), g(x))`` aligns a linear projection of the feature with the
  teacher's image embedding ``g``.

DHO's heads alone are its ``alpha = 1`` and ``alpha = 0`` (``beta = 1``) predictions,
reported beside the combination (``*_ce_head_top1``, ``*_kd_head_top1``).

Teacher outputs
---------------
The teacher is in-process, a ``vlkd serve`` server (``teacher_service``), or a
``vlkd cache`` of the training split (``data.teacher_cache``): the cache stores each
training image's teacher embedding for K stored crops, and the zero-shot logits are
``logit scale x`` its cosine to the class-text embeddings, computed per step from
it exactly as the live teacher would, so a cached run never runs the image tower.

Gradient conflict (measured)
----------------------------
Every ``conflict_every`` steps the method takes the gradients of the labelled CE
loss and of the labelled KD loss with respect to the shared feature (the same
forward pass, ``torch.autograd.grad``) and logs their cosine, per image averaged
(``train/grad_cosine``): negative means the two losses pull the feature apart.

Defaults and the real-scale settings
------------------------------------
``lambda = 0.5``, ``T = 2`` and the grids are the paper's. The authors' code
scales the KD head of CLIP-tower students' normalised feature by 100 and
initialises both heads from the student CLIP's class-text embeddings
(:class:`~vlkd.models.dual_head.DualHeadClassifier`); their semi-supervised
ImageNet script weights the three losses 1 : 1 : 1 rather than 0.5 : 0.5 : 0.5,
which only rescales the learning rate under AdamW up to its epsilon, so the
paper's lambda is kept. Optimiser: AdamW, a linear warm-up over ``warmup_steps`` (or
``warmup_fraction`` of all steps) from 1 % of the peak, then a half cosine down to 1 %
(ImageNet: lr 5e-5, weight decay 0.05, 5,000 warm-up steps, 32 epochs, as the authors;
few-shot: lr 1e-3 with 10 % warm-up, where the authors decay linearly: one schedule
shape for every config here).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.errors import ConfigError
from vlkd.methods.base import ClassificationMethod, trainable_parameters
from vlkd.models.dual_head import DualHeadClassifier
from vlkd.teacher import TeacherServiceSpec, TeacherSpec

log = logging.getLogger(__name__)

VARIANTS = ("dho", "ce", "logit_kd", "feature_kd")
ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))
BETAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 4.0)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t / T) || softmax(s / T))``, the batch mean."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)


def combination_hits(ce: torch.Tensor, kd: torch.Tensor, labels: torch.Tensor, alphas=ALPHAS, betas=BETAS
                     ) -> torch.Tensor:
    """``(len(alphas), len(betas))`` counts of images that ``alpha softmax(ce) + (1 - alpha) softmax(kd / beta)``
    classifies right: counts, so that batches and DDP ranks can simply be summed."""
    ce_prob = ce.float().softmax(dim=-1)
    hits = torch.zeros(len(alphas), len(betas), dtype=torch.long, device=ce.device)
    for j, beta in enumerate(betas):
        kd_prob = (kd.float() / beta).softmax(dim=-1)
        for i, alpha in enumerate(alphas):
            hits[i, j] = ((alpha * ce_prob + (1 - alpha) * kd_prob).argmax(dim=-1) == labels).sum()
    return hits


def best_combination(hits: torch.Tensor, total: int, alphas=ALPHAS, betas=BETAS) -> tuple[float, float, float]:
    """``(alpha, beta, top-1 %)`` of the most hits; ties go to the smallest alpha, then the smallest beta."""
    if total <= 0:
        raise ValueError("no labelled validation images to choose alpha and beta on")
    flat = int(torch.argmax(hits.flatten()).item())  # the first maximum in (alpha, beta) order
    i, j = divmod(flat, len(betas))
    return alphas[i], betas[j], 100.0 * hits[i, j].item() / total


def search_combination(ce: torch.Tensor, kd: torch.Tensor, labels: torch.Tensor, alphas=ALPHAS, betas=BETAS
                       ) -> tuple[float, float, float]:
    """``(alpha, beta, top-1 %)`` maximising top-1 of ``alpha softmax(ce) + (1 - alpha) softmax(kd / beta)``.

    Ties go to the first pair in grid order (alphas outer, ascending).
    """
    return best_combination(combination_hits(ce, kd, labels, alphas, betas), labels.numel(), alphas, betas)


class DHO(ClassificationMethod):
    """DHO and its baselines (see the module docstring).

    Args:
        teacher: the frozen CLIP teacher (in-process).
        teacher_service: take the teacher's outputs from a ``vlkd serve`` server instead
            (it must hold ``teacher``'s weights).
        student: a timm model name, or ``clip:<open_clip name>`` for the image tower of a CLIP.
        student_pretrained: timm: load its pretrained weights (they must be on disk offline);
            ``clip:``: the open_clip pretrained tag or file of the student CLIP.
        variant: ``dho``, ``ce``, ``logit_kd`` or ``feature_kd``.
        ce_weight: lambda.
        temperature: T of the KD loss.
        templates: the prompt templates of the teacher's (and a CLIP student's) class embeddings.
        alphas, betas: the inference grids (default: the paper's).
        lr, weight_decay, warmup_steps: AdamW and the warm-up-then-cosine schedule.
        warmup_fraction: the warm-up as a fraction of all steps instead (the authors' few-shot 10 %).
        conflict_every: measure the gradient cosine every this many steps (0: never).
    """

    def __init__(
        self,
        teacher: TeacherSpec | None = None,
        teacher_service: TeacherServiceSpec | None = None,
        student: str = "resnet18",
        student_pretrained: bool | str | None = False,
        variant: str = "dho",
        ce_weight: float = 0.5,
        temperature: float = 2.0,
        templates: str | list[str] = "photo",
        alphas: list[float] | None = None,
        betas: list[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        warmup_fraction: float | None = None,
        conflict_every: int = 0,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {VARIANTS}, got {variant!r}")
        if not 0 <= ce_weight <= 1:
            raise ConfigError(f"model.ce_weight (lambda) must lie in [0, 1], got {ce_weight}")
        if temperature <= 0:
            raise ConfigError(f"model.temperature must be > 0, got {temperature}")
        self.save_hyperparameters()
        teacher = teacher or TeacherSpec()
        frozen = teacher.build()
        self.teacher = teacher_service.build(expect=frozen.identity) if teacher_service and teacher_service.url else frozen
        self.student_name = student
        self.student_pretrained = student_pretrained
        self.variant = variant
        self.ce_weight = ce_weight
        self.temperature = temperature
        self.templates = templates
        self.alphas = tuple(alphas or ALPHAS)
        self.betas = tuple(betas or BETAS)
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        if warmup_fraction is not None and not 0 <= warmup_fraction < 1:
            raise ConfigError(f"model.warmup_fraction must lie in [0, 1), got {warmup_fraction}")
        self.warmup_fraction = warmup_fraction
        self.conflict_every = conflict_every
        self.class_names: list[str] = []
        self.student: DualHeadClassifier | None = None
        self.projector: nn.Linear | None = None
        self._collected: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = []
        self._extra: dict[str, float] = {}

    # -- the student, built once the data names the classes ---------------------------------
    def setup(self, stage: str) -> None:
        if self.student is None:
            names = getattr(getattr(self.trainer, "datamodule", None), "class_names", None)
            if not names:
                raise ConfigError("DHO needs a data module that names its classes (vlkd.data.ImageDataModule)")
            self.build_student(list(names))

    def build_student(self, class_names: list[str]) -> None:
        """The student for ``class_names`` (and, for ``feature_kd``, the feature projector), on this module's device."""
        self.class_names = list(class_names)
        # Drawn on a fork of the global generator, so every variant leaves the data order and
        # augmentation draws of a seed the same: the variants differ only in their losses.
        with torch.random.fork_rng(devices=[]):
            if self.student_name.startswith("clip:"):
                clip = TeacherSpec(self.student_name[5:], self.student_pretrained or None).build()
                student = DualHeadClassifier.from_clip(clip, self.class_names, self.templates, alpha=self.ce_weight)
            else:
                student = DualHeadClassifier.from_timm(self.student_name, len(self.class_names),
                                                       pretrained=bool(self.student_pretrained),
                                                       image_size=self.teacher.image_size, alpha=self.ce_weight)
            if self.variant != "dho":  # single-head variants: the KD head takes no part (and no gradient)
                student.kd_head.requires_grad_(False)
                student.alpha.fill_(1.0)
            self.projector = (nn.Linear(student.ce_head.in_features, self.teacher.embed_dim)
                              if self.variant == "feature_kd" else None)
        self.student = student.to(self.device)
        if self.projector is not None:
            self.projector.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["class_names"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.student is None:
            self.build_student(checkpoint["class_names"])

    # -- teacher ----------------------------------------------------------------------------
    @property
    def teacher_target_names(self) -> tuple[str, ...]:
        return () if self.variant == "ce" else ("image_embedding",)

    @torch.no_grad()
    def teacher_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"image_embedding": (B, D)}``: the frozen teacher's normalised embedding of every training image.

        What ``vlkd cache`` stores: the zero-shot logits follow from it exactly
        (:meth:`teacher_logits_from`), so one cache serves every variant, template and class list.
        """
        return {"image_embedding": self.teacher.encode_images(batch["image"]).float()} if self.teacher_target_names else {}

    @torch.no_grad()
    def teacher_logits_from(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) teacher image embeddings -> (B, C) its zero-shot logits: logit scale x cosine to the class texts."""
        text = self.teacher.encode_text(self.class_names, self.templates).float().to(embeddings.device)
        return self.teacher.logit_scale * embeddings.float() @ text.T

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher_logits_from(self.teacher_targets({"image": images})["image_embedding"])

    # -- training ---------------------------------------------------------------------------
    def teacher_targets_for(self, labelled: dict, unlabelled: dict | None) -> torch.Tensor:
        """The variant's teacher targets for the labelled then the unlabelled images (one teacher pass for both,
        or none when the batches come from a teacher cache): image embeddings for ``feature_kd``, else logits."""
        parts = [labelled] + ([unlabelled] if unlabelled is not None else [])
        cached = [self.cached_teacher_targets(part) for part in parts]
        if all(cached):
            embeddings = torch.cat([targets["image_embedding"] for targets in cached])
        else:
            images = torch.cat([part["image"] for part in parts])
            embeddings = self.teacher_targets({"image": images})["image_embedding"]
        return embeddings if self.variant == "feature_kd" else self.teacher_logits_from(embeddings)

    def distillation(self, out, target: torch.Tensor) -> torch.Tensor:
        """The variant's distillation term for one batch: its outputs ``out`` against the teacher's ``target``."""
        if self.variant == "feature_kd":
            return (1.0 - F.cosine_similarity(self.projector(out.feature).float(), target, dim=-1)).mean()
        logits = out.kd if self.variant == "dho" else out.ce
        return kd_loss(logits, target, self.temperature)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        labelled = batch["labelled"]
        unlabelled = batch.get("unlabelled")
        self._skipped.extend(labelled["skipped"] + (unlabelled["skipped"] if unlabelled else []))
        images, labels = labelled["image"], labelled["label"]
        out = self.student(images)
        ce = F.cross_entropy(out.ce.float(), labels)
        losses = {"ce": ce}
        if self.variant == "ce":
            loss = ce
        else:
            # One teacher pass (or cache read) for both batches; the student sees them apart (its BatchNorm
            # statistics then come from labelled and unlabelled images separately, as in the authors' code).
            targets = self.teacher_targets_for(labelled, unlabelled)
            kd_labelled = self.distillation(out, targets[: len(images)])
            losses["kd_labelled"] = kd_labelled
            distill = kd_labelled
            if unlabelled is not None:
                out_u = self.student(unlabelled["image"])
                losses["kd_unlabelled"] = self.distillation(out_u, targets[len(images):])
                distill = distill + losses["kd_unlabelled"]
            loss = self.ce_weight * ce + (1.0 - self.ce_weight) * distill
            if self.conflict_every and self.global_step % self.conflict_every == 0:
                losses["grad_cosine"] = self.gradient_cosine(ce, kd_labelled, out.feature)
        batch_size = images.shape[0] + (unlabelled["image"].shape[0] if unlabelled is not None else 0)
        self.log_dict({f"train/{name}": value.detach() for name, value in losses.items()}, batch_size=batch_size)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        return loss

    @staticmethod
    def gradient_cosine(ce: torch.Tensor, kd: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Mean over images of cos(dCE/df, dKD/df) on the shared feature ``f`` (the same forward pass)."""
        grad_ce, = torch.autograd.grad(ce, feature, retain_graph=True)
        grad_kd, = torch.autograd.grad(kd, feature, retain_graph=True)
        return F.cosine_similarity(grad_ce.flatten(1).float(), grad_kd.flatten(1).float(), dim=-1, eps=1e-12).mean()

    def configure_optimizers(self):
        from vlkd.methods.finetune import warmup_cosine

        parameters = trainable_parameters(self.student) + (list(self.projector.parameters()) if self.projector else [])
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = round(self.warmup_fraction * total) if self.warmup_fraction is not None else self.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(min(warmup, total), total, 0.01))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- evaluation -------------------------------------------------------------------------
    def classify(self, pixels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """Log-probabilities of the combined heads (with the chosen alpha and beta)."""
        if list(class_names) != self.class_names:
            raise ConfigError("DHO's student classifies its training classes only; this set names other classes")
        return self.student.predict_proba(pixels).clamp_min(1e-12).log()

    def _start_eval(self) -> None:
        super()._start_eval()
        # Choosing alpha and beta needs the whole validation split; everything else is counted as it comes.
        self._searching = self.variant == "dho" and self._eval_stage() != "test" and not self.trainer.sanity_checking
        self._collected = []  # the validation outputs, scored once alpha and beta are chosen
        self._grid_hits = torch.zeros(len(self.alphas), len(self.betas), dtype=torch.long, device=self.device)
        self._head_hits = torch.zeros(2, dtype=torch.long, device=self.device)  # CE head, KD head
        self._seen = torch.zeros((), dtype=torch.long, device=self.device)

    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        self._skipped.extend(batch["skipped"])
        keep = batch["label"] >= 0
        if not keep.any():
            return
        out, labels = self.student(batch["image"][keep]), batch["label"][keep]
        self._seen += labels.numel()
        self._head_hits += torch.stack([(out.ce.argmax(-1) == labels).sum(), (out.kd.argmax(-1) == labels).sum()])
        if self._searching:
            self._grid_hits += combination_hits(out.ce, out.kd, labels, self.alphas, self.betas)
            self._collected.append((out.ce.float(), out.kd.float(), labels, dataloader_idx))
        else:
            self._score(out.ce, out.kd, labels, dataloader_idx)

    def _score(self, ce: torch.Tensor, kd: torch.Tensor, labels: torch.Tensor, dataloader_idx: int) -> None:
        combined = self.student.combine(ce.float(), kd.float(), self.student.alpha, self.student.beta)
        self._eval_metric.update(combined.clamp_min(1e-12).log(), labels, group=self.eval_sets()[dataloader_idx].name)

    def _end_eval(self, stage: str) -> None:
        # Counts summed over DDP ranks, so every rank chooses the same alpha and beta.
        reduce = self.trainer.strategy.reduce
        seen = int(reduce(self._seen, reduce_op="sum").item())
        head_hits = reduce(self._head_hits, reduce_op="sum")
        name = "_".join(s.name for s in self.eval_sets())
        self._extra = {}
        if self._searching and seen:
            alpha, beta, accuracy = best_combination(reduce(self._grid_hits, reduce_op="sum"), seen,
                                                     self.alphas, self.betas)
            self.student.alpha.fill_(alpha)
            self.student.beta.fill_(beta)
            self._extra[f"{name}_search_top1"] = accuracy
        for ce, kd, labels, index in self._collected:
            self._score(ce, kd, labels, index)
        self._collected = []
        if self.variant == "dho" and seen:
            self._extra[f"{name}_ce_head_top1"] = 100.0 * head_hits[0].item() / seen
            self._extra[f"{name}_kd_head_top1"] = 100.0 * head_hits[1].item() / seen
        self._extra.update(alpha=float(self.student.alpha), beta=float(self.student.beta))
        super()._end_eval(stage)

    def extra_eval_results(self, stage: str) -> dict[str, float]:
        return dict(self._extra)
