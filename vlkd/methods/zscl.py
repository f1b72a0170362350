"""ZSCL: zero-shot continual learning of CLIP by distillation on reference data and a weight ensemble.

Paper: "Preventing Zero-Shot Transfer Degradation in Continual Learning of
Vision-Language Models", Zheng, Ma, Wang, Qin, Yue and You, ICCV 2023
(official code Thunderbeee/ZSCL, ``mtil/``; the settings are those of
``mtil/scripts/ZSCL.sh``: ``--method ZSCL --image_loss --text_loss --we
--avg_freq 100 --l2 1 --ref-dataset ImageNet --ref-sentences
conceptual_captions``).

Method
------
Fine-tuning on task ``t`` forgets what CLIP knew about everything else. ZSCL
keeps it with three devices, all added to the cross-entropy of the loop
(:class:`~vlkd.methods.continual.ContinualCLIP`):

1. **Distillation in feature space** (paper Sec. 3.2) from the frozen original
   CLIP (the teacher) on *reference* data standing for its pretraining
   distribution: a batch of reference images per step (ZSCL: ImageNet
   training images in their test view, as many as the training batch) and a
   fixed set of reference sentences (ZSCL: the captions of Conceptual
   Captions' validation split). With ``f`` the student's and ``f*`` the
   teacher's normalised embeddings of the reference images and ``g*`` the
   teacher's normalised embeddings of the sentences (computed once: the
   teacher is frozen), the logits are ``s = scale f g*^T`` and
   ``p = scale f* g*^T`` (R images x N sentences), and::

       L_img = T^2 KL(softmax(p / T) || softmax(s / T))        (per image, over the sentences)
       L_txt = T^2 KL(softmax(p^T / T) || softmax(s^T / T))    (per sentence, over the images)

   with ``T = 2``, both weighted 1 (ZSCL's ``image_loss`` and ``text_loss``;
   the KL has the gradient of ZSCL's soft cross-entropy and is zero when
   student and teacher agree, :func:`~vlkd.methods.continual.distillation`).
   As in ZSCL's code, both sides use the teacher's sentence embeddings.
2. **Parameter regularisation** (ZSCL's ``l2_loss``, weight ``l2 = 1``): the
   squared distance of every parameter to its value at the start of the task,
   ``sum_i ||theta_i - theta_i^start||^2``.
3. **Weight ensemble** (paper Sec. 3.3, ZSCL's ``merge_we`` with
   ``avg_freq = 100``): a running uniform average of the weights, started at
   the task's initial weights and joined by the weights after every step
   ``s`` with ``s mod 100 = 0`` and after the task's last step. The task ends
   with the student set to the average, which is evaluated and starts the next
   task. (ZSCL's loop runs ``iterations + 1`` steps and merges after step
   ``iterations``, whose learning rate is 0: the weights after the last real
   step, which is what is merged here.)

The teacher's outputs come through the teacher interface (``self.teacher``):
in-process, or a ``vlkd serve`` server (``teacher_service``). The reference
data are the data module's (:class:`~vlkd.data.continual.ReferenceData`).
"""

from __future__ import annotations

import torch

from vlkd.errors import ConfigError
from vlkd.methods.continual import (
    ContinualCLIP,
    average_parameters,
    copy_parameters,
    distillation,
    parameter_distance,
)
from vlkd.teacher import TeacherServiceSpec, TeacherSpec


class ZSCL(ContinualCLIP):
    """ZSCL (see the module docstring).

    Args:
        teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2: see
            :class:`~vlkd.methods.continual.ContinualCLIP`; ``teacher`` is also the frozen
            original CLIP distilled on the reference data.
        teacher_service: take the teacher's outputs from a ``vlkd serve`` server holding ``teacher``'s weights.
        temperature: T of the distillation (ZSCL: 2).
        image_weight: weight of the per-image term (ZSCL's ``image_loss``: 1).
        text_weight: weight of the per-sentence term (ZSCL's ``text_loss``: 1).
        l2_weight: weight of the distance to the task's initial parameters (ZSCL's ``l2``: 1; 0: none).
        average_every: join the weight ensemble every this many steps (ZSCL's ``avg_freq``: 100; 0: no ensemble).
    """

    keeps_teacher = True
    uses_reference = True

    def __init__(self, teacher: TeacherSpec | None = None, lr: float = 1e-5, task_lr: dict[str, float] | None = None,
                 warmup_steps: int = 100, label_smoothing: float = 0.2, weight_decay: float = 0.0,
                 beta2: float = 0.999, teacher_service: TeacherServiceSpec | None = None, temperature: float = 2.0,
                 image_weight: float = 1.0, text_weight: float = 1.0, l2_weight: float = 1.0,
                 average_every: int = 100):
        super().__init__(teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2,
                         teacher_service=teacher_service)
        if temperature <= 0 or min(image_weight, text_weight, l2_weight) < 0 or average_every < 0:
            raise ConfigError("need temperature > 0, weights >= 0 and average_every >= 0; got "
                              f"{temperature}, {image_weight}, {text_weight}, {l2_weight}, {average_every}")
        self.temperature = temperature
        self.image_weight = image_weight
        self.text_weight = text_weight
        self.l2_weight = l2_weight
        self.average_every = average_every
        self.anchor = self.keep_copy("anchor") if l2_weight > 0 else None
        self.average = self.keep_copy("average") if average_every > 0 else None
        self.register_buffer("average_count", torch.zeros((), dtype=torch.long))
        self._reference_text: torch.Tensor | None = None

    # -- reference sentences -----------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        sentences = self.trainer.datamodule.reference_sentences
        if not sentences:
            raise ConfigError("ZSCL needs reference sentences: data.init_args.reference gives none")
        self._reference_text = self.teacher.encode_prompts(list(sentences)).float().to(self.device)

    def reference_text(self) -> torch.Tensor:
        """(N, D) the teacher's normalised embeddings of the reference sentences."""
        if self._reference_text is None:
            raise ConfigError("the reference sentences are encoded when fitting starts")
        return self._reference_text

    # -- the loss ------------------------------------------------------------------------
    def reference_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(student, teacher)`` (R, N) logits of reference images against the reference sentences."""
        sentences = self.reference_text()
        with torch.no_grad():
            target = self.teacher.encode_images(images).float().to(images.device)
        student = self.image_embeddings(self.student, images)
        return self.logit_scale * student @ sentences.T, self.logit_scale * target @ sentences.T

    def zscl_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted distillation terms on a batch of reference images."""
        student, teacher = self.reference_logits(images)
        return {
            "zscl_image": self.image_weight * distillation(student, teacher, self.temperature),
            "zscl_text": self.text_weight * distillation(student.T, teacher.T, self.temperature),
        }

    def extra_losses(self, batch: dict, task: int, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.zscl_losses(batch["reference"]["image"])
        if self.anchor is not None:
            terms["l2"] = self.l2_weight * parameter_distance(self.student, self.anchor)
        return terms

    # -- task boundaries and the weight ensemble --------------------------------------------
    def on_task_start(self, task: int) -> None:
        if self.anchor is not None:
            copy_parameters(self.anchor, self.student)
        if self.average is not None:
            copy_parameters(self.average, self.student)
            self.average_count.zero_()

    def after_step(self, task: int, step: int) -> None:
        if self.average is None:
            return
        if step % self.average_every == 0 or step == self.iterations_per_task - 1:
            self.average_count += 1
            average_parameters(self.average, self.student, int(self.average_count))

    def on_task_end(self, task: int) -> None:
        if self.average is not None:
            copy_parameters(self.student, self.average)

    def method_settings(self) -> dict:
        datamodule = self.trainer.datamodule
        reference = datamodule.reference
        return {"temperature": self.temperature, "image_weight": self.image_weight, "text_weight": self.text_weight,
                "l2_weight": self.l2_weight, "average_every": self.average_every,
                "reference": {"images": reference.images, "kind": reference.kind,
                              "num_images": len(datamodule.reference_dataset),
                              "sentences": reference.sentences or "generated",
                              "num_sentences": len(datamodule.reference_sentences),
                              "batch_size": datamodule.reference_batch_size}}
