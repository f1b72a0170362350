"""Frozen CLIP zero-shot classification of clips and images: the "frozen CLIP" row of the papers' tables.

Each frame (or image) is embedded by the frozen image tower and compared with the
prompt-ensembled class embeddings; a clip's per-frame logits are averaged over
time (and over temporal views). Nothing is trained; run it with
``vlkd validate`` or ``vlkd test``. The teacher may be in-process or a ``vlkd serve``
server (``--model.init_args.teacher_service.url``), which must serve the model and
pretrained tag that ``teacher`` names.
"""

from __future__ import annotations

import torch

from vlkd.methods.base import ClassificationMethod
from vlkd.teacher import TeacherServiceSpec, TeacherSpec


class ZeroShotCLIP(ClassificationMethod):
    """Frozen CLIP: image logits, or per-frame logits averaged over time.

    Args:
        teacher: which CLIP weights to use.
        templates: prompt template set name (``video``, ``photo``) or a list of templates.
        teacher_service: evaluate the teacher served at ``url`` instead of loading it here.
    """

    def __init__(self, teacher: TeacherSpec | None = None, templates: str | list[str] = "video",
                 teacher_service: TeacherServiceSpec | None = None):
        super().__init__()
        self.save_hyperparameters()
        teacher = teacher or TeacherSpec()
        if teacher_service is not None and teacher_service.url:
            self.teacher = teacher_service.build(expect_name=(teacher.name, teacher.pretrained))
        else:
            self.teacher = teacher.build()
        self.templates = templates

    def classify(self, pixels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        if pixels.ndim == 4:  # (N, C, H, W) images
            return self.teacher.zero_shot_logits(pixels, class_names, self.templates)
        frames = self.teacher.encode_frames(pixels)  # (N, T, D)
        text = self.teacher.encode_text(class_names, self.templates)  # (K, D)
        per_frame = self.teacher.logit_scale * frames @ text.T  # (N, T, K)
        return per_frame.mean(dim=1)

    def training_step(self, batch, batch_idx):
        raise RuntimeError("ZeroShotCLIP has nothing to train: use `vlkd validate` or `vlkd test` with this model")

    def configure_optimizers(self):
        return None
