"""LwF for continual learning of CLIP, as ZSCL's MTIL baseline runs it.

Paper: "Learning without Forgetting", Li and Hoiem, ECCV 2016; the CLIP form is
the LwF baseline of ZSCL (Zheng et al., ICCV 2023; ``mtil/scripts/lwf.sh``:
``--method ZSCL --image_loss --text_loss --ref-dataset <current task>
--ref-model <previous stage>``).

Method
------
While task ``t`` is learnt, the model as it was before the task (the
previous stage; before the first task, the original CLIP) is kept frozen and
its image-text similarities on the current task's images are distilled into
the student. With ``f`` the student's and ``f'`` the previous model's
normalised image embeddings of a batch, and ``g'`` the previous model's
normalised text embeddings of the current classes in the training template,
the logits are ``s = scale f g'^T`` and ``p = scale f' g'^T`` (B x C), and::

    L = CE(scale f g^T, y) + w_img T^2 KL(softmax(p / T) || softmax(s / T))
                           + w_txt T^2 KL(softmax(p^T / T) || softmax(s^T / T))

with ``T = 2`` and ``w_img = w_txt = 1`` (ZSCL's ``distillation`` with
``image_loss`` and ``text_loss``; the KL has the gradient of ZSCL's soft
cross-entropy, :func:`~vlkd.methods.continual.distillation`). The second term
distils, for each image, its distribution over the classes; the third, for
each class, its distribution over the batch's images. As in ZSCL's code, both
sides use the *previous* model's text embeddings, so the student's text tower
is trained by the cross-entropy alone.

One difference: ZSCL draws a second batch of the current task (without
augmentation) for the distillation; here the training batch itself is
distilled, in its training view (crops of 90-100 % of the image, ZSCL's
augmentation), which spares a second student pass over another batch.
"""

from __future__ import annotations

import torch

from vlkd.errors import ConfigError
from vlkd.methods.continual import ContinualCLIP, copy_parameters, distillation
from vlkd.teacher import TeacherSpec


class LwF(ContinualCLIP):
    """Learning without Forgetting on a task sequence (see the module docstring).

    Args:
        teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2: see
            :class:`~vlkd.methods.continual.ContinualCLIP`.
        temperature: T of the distillation (ZSCL: 2).
        image_weight: weight of the per-image term (ZSCL's ``image_loss``: 1).
        text_weight: weight of the per-class term (ZSCL's ``text_loss``: 1).
    """

    def __init__(self, teacher: TeacherSpec | None = None, lr: float = 1e-5, task_lr: dict[str, float] | None = None,
                 warmup_steps: int = 100, label_smoothing: float = 0.2, weight_decay: float = 0.0,
                 beta2: float = 0.999, temperature: float = 2.0, image_weight: float = 1.0, text_weight: float = 1.0):
        super().__init__(teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2)
        if temperature <= 0 or image_weight < 0 or text_weight < 0:
            raise ConfigError(f"need temperature > 0 and weights >= 0, got {temperature}, {image_weight}, "
                              f"{text_weight}")
        self.temperature = temperature
        self.image_weight = image_weight
        self.text_weight = text_weight
        self.previous = self.keep_copy("previous")
        self._previous_text: dict[int, torch.Tensor] = {}

    def on_task_start(self, task: int) -> None:
        copy_parameters(self.previous, self.student)
        self._previous_text.clear()

    def previous_text(self, task: int) -> torch.Tensor:
        """(C, D) the previous model's embeddings of the task's training prompts (fixed during the task)."""
        if task not in self._previous_text:
            with torch.no_grad():
                self._previous_text[task] = self.previous.encode_text(self.training_tokens(task), normalize=True)
        return self._previous_text[task]

    def extra_losses(self, batch: dict, task: int, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        previous_text = self.previous_text(task)
        with torch.no_grad():
            previous_image = self.image_embeddings(self.previous, batch["image"])
        student = self.logit_scale * image @ previous_text.T
        target = self.logit_scale * previous_image @ previous_text.T
        return {
            "lwf_image": self.image_weight * distillation(student, target, self.temperature),
            "lwf_text": self.text_weight * distillation(student.T, target.T, self.temperature),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._previous_text.clear()

    def method_settings(self) -> dict:
        return {"temperature": self.temperature, "image_weight": self.image_weight, "text_weight": self.text_weight}
