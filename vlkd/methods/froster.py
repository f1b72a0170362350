"""FROSTER: "Frozen CLIP Is A Strong Teacher for Open-Vocabulary Action Recognition"
(Huang et al., ICLR 2024).

Fine-tuning CLIP on a video dataset teaches it video-specific cues but makes it
forget the general knowledge that lets it recognise unseen actions. FROSTER
fine-tunes both CLIP towers (with a temporal module) by cross-entropy over the
training classes, and at the same time distils from a frozen copy of the
original CLIP: each student feature passes through a small *residual* projector
whose output is pulled towards the frozen teacher's feature by a cosine loss.
Because the projector sits beside an identity path (``f + alpha * MLP(f)``), the
student feature itself is only loosely tied to the teacher: it can learn
video-specific information while staying close to CLIP's generalisable space.
Both the visual and the text branch are distilled this way. At test time only
the student is used; the projectors are training-time only.

Equations (``B`` clips of ``T`` frames, ``K`` training classes, ``D`` embedding width)
-------------------------------------------------------------------------------------
* Student frame and text embeddings, L2-normalised:
  ``f_v[b,t] = norm(E_v(x[b,t]))`` (neighbour-frame attention inside ``E_v``),
  ``f_t[k] = norm(E_t(prompt_k))``.
* Video logits (frame logits averaged over time, fixed scale ``s``):
  ``z[b,k] = s / T * sum_t <f_v[b,t], f_t[k]>``; ``L_ce = CE(z, y)``.
* Residual projectors (one per branch, no biases, second layer zero-initialised so
  ``P(f) = f`` at step 0, first layer Kaiming-normal as in the authors' code):
  ``P(f) = f + alpha * W_2 GELU(W_1 f)``, ``alpha = 0.1``.
* Distillation against the frozen teacher's L2-normalised embeddings of the same
  frames and the same prompts:
  ``L_v = mean_{b,t} (1 - cos(P_v(f_v[b,t]), g_v[b,t]))``,
  ``L_t = mean_k (1 - cos(P_t(f_t[k]), g_t[k]))``.
* ``L = L_ce + lambda * (L_v + L_t)``, ``lambda = 2``.

Where the paper is vague, this implementation chooses
------------------------------------------------------
* The distilled features are the *normalised* student embeddings, per frame for
  the visual branch (not the time-pooled video embedding), per class prompt for the
  text branch; the teacher encodes the very same frames and prompts.
* Temporal modelling is parameter-free neighbour-frame attention in every block
  (:mod:`vlkd.models.video_clip`); the missing neighbours at the ends of the clip
  are masked, not wrapped around, so a one-frame clip is plain CLIP. The authors'
  code pads them with zero keys and values that stay in the softmax; that variant
  is ``temporal="neighbour_zeros"``, for matching their training exactly.
* The logit scale is the pretrained CLIP's, fixed (see :mod:`vlkd.methods.finetune`).
* One prompt template per step for all classes (seeded by the global step);
  evaluation averages all templates through the student's text tower.
* Optimiser details (AdamW betas, no decay on biases/norms/embeddings/scale,
  per-step cosine with linear warm-up) are in :mod:`vlkd.methods.finetune`.
* Weight averaging over epochs is done by
  :class:`vlkd.methods.callbacks.EpochWeightAveraging` and averages the student
  only: the projectors are not used at inference. The real-scale configs average
  the end-of-epoch weights from the end of the second warm-up epoch (0-based epoch
  1) to the last, as the authors average their checkpoints 2 to the last (numbered
  from 1).
* The real-scale configs follow the authors' training scripts where the paper is
  silent: 32 clips per optimisation step (64 for Kinetics-400 cross-dataset and for
  UCF101 base-to-novel), reached on one device by gradient accumulation; PySlowFast's
  8 x 16 clips, 8 frames spread over 128 frames counted at 30 fps (random start in
  training, test views from the start to the end of the video); training crops by short-side scale jitter (224
  to 256 pixels, then a random 224 crop) and flips. Their loader flips SSv2 clips too;
  the SSv2 config does not, since its labels name left and right. Their schedule
  warms up from, and decays to, 1 % of the peak learning rate (``min_lr_ratio: 0.01``).
* ``residual=False`` (ablation) distils the student features directly
  (``1 - cos(f, g)``) and builds no projector.

Where the frozen targets come from
----------------------------------
The student always starts from the local weights of ``teacher``. The frozen
frame targets ``g_v`` may come from any form of the teacher
(:mod:`vlkd.teacher.protocol`): the in-process copy (default), a ``vlkd serve``
server (``teacher_service.url``; it must hold the same weights), or a ``vlkd cache``
built for the config (``data.teacher_cache``), whose batches carry them. The text
targets ``g_t`` are few (one prompt list per template) and are cached in memory.

Checkpoints hold the student and the projectors; the teacher is rebuilt from its
spec and left out (FrozenCLIP drops its weights from the state dict), and
checkpoints still load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.methods.finetune import VideoCLIPMethod
from vlkd.teacher import TeacherServiceSpec, TeacherSpec


class ResidualProjector(nn.Module):
    """``f -> f + alpha * MLP(f)``: (..., D) -> (..., D), the identity at initialisation.

    MLP = Linear(D, D, bias=False) -> GELU -> Linear(D, D, bias=False) with the second
    layer zero-initialised and the first Kaiming-normal (std sqrt(2 / D)), as the
    authors' implementation initialises it.
    """

    def __init__(self, dim: int, alpha: float = 0.1):
        super().__init__()
        self.alpha = alpha
        self.mlp = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.GELU(), nn.Linear(dim, dim, bias=False))
        # The first layer's scale sets how fast the zero second layer starts to learn
        # (its gradient is the hidden activation); PyTorch's default would be 2.4x smaller.
        nn.init.kaiming_normal_(self.mlp[0].weight)
        nn.init.zeros_(self.mlp[2].weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.alpha * self.mlp(features)


class FROSTER(VideoCLIPMethod):
    """FROSTER: a fine-tuned CLIP student with residual feature distillation from a frozen CLIP.

    Args:
        teacher: the CLIP weights; the frozen teacher and the student's initial weights.
        teacher_service: take the frozen targets from a ``vlkd serve`` server at ``url`` instead
            of the in-process copy (the server must hold the same weights).
        templates: template set name (``video``) or list; one is sampled per training step.
        class_descriptions: JSON file of class name -> description appended to the prompts.
        temporal: ``"neighbour"`` (neighbour-frame attention), ``"neighbour_zeros"`` (the
            authors' variant, unmasked zero padding at the clip's ends; see
            :mod:`vlkd.models.video_clip`) or ``"none"``.
        residual: distil through residual projectors (False: direct cosine to the teacher).
        visual_distill: distil the per-frame visual embeddings.
        text_distill: distil the class-prompt text embeddings.
        distill_weight: lambda, the weight of the summed distillation terms.
        alpha: the projectors' residual weight.
        lr, weight_decay, warmup_epochs, min_lr_ratio, grad_checkpointing: see
            :class:`~vlkd.methods.finetune.VideoCLIPMethod`.
    """

    def __init__(
        self,
        teacher: TeacherSpec | None = None,
        teacher_service: TeacherServiceSpec | None = None,
        templates: str | list[str] = "video",
        class_descriptions: str | None = None,
        temporal: str = "neighbour",
        residual: bool = True,
        visual_distill: bool = True,
        text_distill: bool = True,
        distill_weight: float = 2.0,
        alpha: float = 0.1,
        lr: float = 3.33e-6,
        weight_decay: float = 0.01,
        warmup_epochs: float = 2.0,
        min_lr_ratio: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        teacher = teacher or TeacherSpec()
        frozen = teacher.build()
        super().__init__(
            frozen,
            templates=templates,
            class_descriptions=class_descriptions,
            temporal=temporal,
            pooling="logits",
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=warmup_epochs,
            min_lr_ratio=min_lr_ratio,
            grad_checkpointing=grad_checkpointing,
        )
        self.save_hyperparameters()
        self.initial_weights = teacher
        if teacher_service is not None and teacher_service.url:
            # The local copy only initialised the student; the targets come from the server.
            self.teacher = teacher_service.build(expect=frozen.identity)
        else:
            self.teacher = frozen
        self.distill_weight = distill_weight
        self.visual_distill = visual_distill
        self.text_distill = text_distill
        # Projectors only for the distilled branches: an unused parameter would stall DDP.
        # Their random init is drawn on a fork of the global generator, so whether they are
        # built (FROSTER) or not (the ablations) leaves every later draw (data order,
        # augmentation) the same: with one seed, the variants differ only in their losses.
        dim = self.student.embed_dim
        with torch.random.fork_rng(devices=[]):
            self.visual_projector = ResidualProjector(dim, alpha) if residual and visual_distill else None
            self.text_projector = ResidualProjector(dim, alpha) if residual and text_distill else None
        # Teacher embeddings of each step's prompts: there are only len(templates) distinct
        # prompt lists for a fixed class list, and the teacher never changes.
        self._teacher_text: dict[tuple[str, ...], torch.Tensor] = {}

    def teacher_text(self, prompts: list[str]) -> torch.Tensor:
        """(K,) prompts -> (K, D) the teacher's normalised embeddings, cached."""
        key = (*prompts, str(self.device))
        if key not in self._teacher_text:
            self._teacher_text[key] = self.teacher.encode_prompts(prompts)
        return self._teacher_text[key]

    @staticmethod
    def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, projector: nn.Module | None) -> torch.Tensor:
        """Mean of ``1 - cos(P(student), teacher)`` over all leading dimensions of (..., D) features."""
        if projector is not None:
            student = projector(student)
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()

    @property
    def teacher_target_names(self) -> tuple[str, ...]:
        return ("frames",) if self.visual_distill else ()

    def teacher_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"frames": (B, T, D)}``: the frozen teacher's embedding of every training frame (``g_v``)."""
        return {"frames": self.teacher.encode_frames(batch["video"])} if self.visual_distill else {}

    def extra_losses(self, video, frames, text, prompts, teacher_targets=None) -> dict[str, torch.Tensor]:
        """``lambda * L_v`` and ``lambda * L_t`` (module docstring) for the enabled branches."""
        losses = {}
        if self.visual_distill:
            targets = teacher_targets or self.teacher_targets({"video": video})
            target = targets["frames"]  # (B, T, D), no gradient
            losses["distill_visual"] = self.distill_weight * self.cosine_distance(frames, target, self.visual_projector)
        if self.text_distill:
            target = self.teacher_text(prompts)  # (K, D)
            losses["distill_text"] = self.distill_weight * self.cosine_distance(text, target, self.text_projector)
        return losses
