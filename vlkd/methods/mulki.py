"""MulKI: multi-stage knowledge integration for continual learning of CLIP, without reference data.

Paper: "Multi-Stage Knowledge Integration of Vision-Language Models for
Continual Learning", Zhang et al., 2024 (arXiv 2411.06764). No code is
public and only the abstract is read here: four stages, *Eliciting Ideas*
(prototypes aligned across modalities), *Adding New Ideas* (fine-grained
intra- and inter-modality relationships with prototypes), *Distinguishing
Ideas* (the knowledge of two teacher models adaptively distinguished and
re-weighted) and *Making Connections* (connections between models, within a
task and between tasks), with no extra reference data. The form of each stage
below is this implementation's choice, after the closest published designs:
ZSCL's distillation and weight ensemble (Zheng et al., ICCV 2023,
:mod:`vlkd.methods.zscl`), the dual teachers of "Select and Distill" (Yu et
al., ECCV 2024), relation distillation, and WiSE-FT's interpolation
(:mod:`vlkd.methods.wiseft`).

Notation: task ``t`` with ``C`` classes; ``f`` the student's normalised image
embeddings of the training batch (B, D); ``s`` the fixed logit scale of the
loop (:class:`~vlkd.methods.continual.ContinualCLIP`); two frozen teachers:
**Z**, the original CLIP (``self.teacher``, zero-shot knowledge, through the
teacher interface, so in-process or a ``vlkd serve`` server), and **P**, the
model after the previous task (``self.previous``, kept by the method: the
old tasks' knowledge; before the first task the model is the original CLIP,
so there P = Z and Z's outputs stand for P's). ``f_k`` is teacher ``k``'s
normalised image embeddings of the same batch.

1. **Eliciting ideas: class prototypes.** At the start of each task, for
   every class ``c`` of the task, a text prototype ``P_txt[c]`` (Z's
   prompt-ensembled embedding of the class over the task's templates,
   ``teacher.encode_text``) and an image prototype ``P_img[c]`` (the mean of
   Z's normalised embeddings of the class's training images, in their
   evaluation view, normalised again, as class embeddings are; one pass over
   the task's training set). Reason: both come from the frozen original CLIP,
   so the anchors do not drift while the student learns, and they need
   nothing beyond the task's own images and names. A class without a readable
   training image takes its text prototype as image prototype. The
   cross-modal alignment loss pulls both towers to the same anchors, the
   image prototypes::

       L_proto = CE(s f P_img^T, y) + CE(s g P_img^T, [0..C-1])

   with ``g`` the student's normalised text embeddings of the class prompts
   (training template; the text -> image direction). Reason: the
   cross-entropy of the loop aligns images to text; this term aligns images
   and texts to image anchors, the other side of the modality gap.
2. **Adding new ideas: relations to the prototypes.** For each image, its
   intra-modal relation ``softmax(s f P_img^T / T)`` and its inter-modal
   relation ``softmax(s f P_txt^T / T)`` over the task's prototypes, distilled
   from the same relations of each teacher's image embeddings (``f_Z``,
   ``f_P`` in place of ``f``): ``T^2 KL(teacher || student)`` per image, with
   ``T = 2`` (LwF's and ZSCL's temperature;
   :func:`~vlkd.methods.continual.distillation`, zero when student and teacher
   agree). Reason: the relations keep the structure of each teacher's
   embedding space around the new classes rather than the embeddings
   themselves, so the student may still move to learn the task.
3. **Distinguishing ideas: two teachers, weighted per sample.** For each
   image ``i`` and teacher ``k``, ``q_k(i)`` is the teacher's probability of
   the image's true class among the task's class names (softmax of
   ``s f_k g_k^T``, ``g_k`` the teacher's own text embeddings of the class
   prompts in the training template). The teachers' weights are
   ``w(i) = softmax_k(q_k(i) / tau_w)`` with ``tau_w = 0.5``: they sum to 1 and
   the teacher that knows this sample better counts more (Select and
   Distill's choice of teacher per sample, made soft). They weight, per
   image, each teacher's relation distillation (2.) and the distillation of
   its image-text logits over the task's names (LwF / ZSCL style, the
   student's side with the teacher's text, as ZSCL's code does)::

       L_rel   = mean_i sum_k w_k(i) [KL_T(r_img(f_k)_i || r_img(f)_i) + KL_T(r_txt(f_k)_i || r_txt(f)_i)]
       L_logit = mean_i sum_k w_k(i) KL_T(s f_k g_k^T || s f g_k^T)_i

   The weights carry no gradient. Only the per-image direction is distilled:
   a per-class distribution over the batch has no single sample to weight.
   For Z the inter-modal relation and the logits differ only in the text
   side (all the task's templates for the prototypes, the training template
   for the logits), which is kept: the relation is the prototype stage's, the
   logits are the teachers' classifiers.
4. **Making connections: within and between tasks.** Within the task, ZSCL's
   weight ensemble: a running uniform average of the weights, started at the
   task's initial weights and joined every ``ensemble_every`` steps and after
   the task's last step; at the task's end the student becomes the average.
   Then, between tasks, the average is interpolated with the previous stage,
   ``theta <- alpha theta_task + (1 - alpha) theta_previous`` (WiSE-FT's
   arithmetic, ``alpha = 0.5``: the new stage and the previous one count
   equally). The result is evaluated, starts the next task, and is its P.

The loss, added to the loop's cross-entropy (weights are hyperparameters;
each default 1, the weight ZSCL and LwF give each of their terms)::

    L = CE + w_proto L_proto + w_rel L_rel + w_logit L_logit

No reference data: everything is computed from the current task's training
images and class names. Resuming: P and the average are saved in checkpoints;
the prototypes and the teachers' text embeddings are recomputed when missing
(they depend on frozen models only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vlkd.data.images import collate_images
from vlkd.errors import ConfigError
from vlkd.methods.continual import ContinualCLIP, average_parameters, copy_parameters, interpolate_parameters
from vlkd.teacher import TeacherServiceSpec, TeacherSpec

__all__ = ["MulKI", "row_distillation", "teacher_weights", "training_images_loader"]


def row_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,) ``T^2 KL(softmax(t / T) || softmax(s / T))`` per row; its mean is
    :func:`~vlkd.methods.continual.distillation`."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)


@torch.no_grad()
def teacher_weights(teacher_logits: list[torch.Tensor], labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, K) per-sample weights of K teachers: softmax over the teachers of their true-class probability / temperature.

    Args:
        teacher_logits: K tensors (B, C), each teacher's logits over the task's classes.
        labels: (B,) the true classes.
        temperature: of the softmax over teachers (lower: the better teacher takes more).
    """
    rows = torch.arange(labels.shape[0], device=labels.device)
    true_class = torch.stack([logits.float().softmax(dim=-1)[rows, labels] for logits in teacher_logits], dim=1)
    return (true_class / temperature).softmax(dim=1)


def training_images_loader(datamodule, task: int) -> DataLoader:
    """The training images of task ``task`` in their evaluation view (no augmentation), in order."""
    info = datamodule.tasks[task]
    dataset = info.dataset_factory(info.train_samples, train=False, image_size=datamodule.image_size,
                                   seed=datamodule.seed)
    return DataLoader(dataset, batch_size=datamodule.eval_batch_size, shuffle=False,
                      num_workers=datamodule.num_workers, collate_fn=collate_images)


class MulKI(ContinualCLIP):
    """MulKI (see the module docstring).

    Args:
        teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2: see
            :class:`~vlkd.methods.continual.ContinualCLIP`; ``teacher`` is also teacher Z.
        teacher_service: take teacher Z's outputs from a ``vlkd serve`` server holding ``teacher``'s weights.
        temperature: T of the relation and logit distillation (LwF's and ZSCL's 2).
        weight_temperature: of the per-sample softmax over the two teachers.
        prototype_weight: weight of the cross-modal prototype alignment.
        relation_weight: weight of the relation distillation.
        logit_weight: weight of the teachers' logit distillation.
        ensemble_every: join the intra-task weight ensemble every this many steps (0: no ensemble).
        alpha: the weight of the task's model in the inter-task interpolation with the previous stage
            (1: no interpolation).
    """

    keeps_teacher = True

    def __init__(self, teacher: TeacherSpec | None = None, lr: float = 1e-5, task_lr: dict[str, float] | None = None,
                 warmup_steps: int = 100, label_smoothing: float = 0.2, weight_decay: float = 0.0,
                 beta2: float = 0.999, teacher_service: TeacherServiceSpec | None = None, temperature: float = 2.0,
                 weight_temperature: float = 0.5, prototype_weight: float = 1.0, relation_weight: float = 1.0,
                 logit_weight: float = 1.0, ensemble_every: int = 100, alpha: float = 0.5):
        super().__init__(teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2,
                         teacher_service=teacher_service)
        if temperature <= 0 or weight_temperature <= 0:
            raise ConfigError(f"need temperature > 0 and weight_temperature > 0, got {temperature}, "
                              f"{weight_temperature}")
        if min(prototype_weight, relation_weight, logit_weight) < 0 or ensemble_every < 0 or not 0 <= alpha <= 1:
            raise ConfigError("need weights >= 0, ensemble_every >= 0 and 0 <= alpha <= 1; got "
                              f"{prototype_weight}, {relation_weight}, {logit_weight}, {ensemble_every}, {alpha}")
        self.temperature = temperature
        self.weight_temperature = weight_temperature
        self.prototype_weight = prototype_weight
        self.relation_weight = relation_weight
        self.logit_weight = logit_weight
        self.ensemble_every = ensemble_every
        self.alpha = alpha
        self.previous = self.keep_copy("previous")
        self.average = self.keep_copy("average") if ensemble_every > 0 else None
        self.register_buffer("average_count", torch.zeros((), dtype=torch.long))
        # Per task: image and text prototypes, and each teacher's text embeddings of the training prompts.
        self._task_state: dict[int, dict[str, torch.Tensor]] = {}

    # -- prototypes and the teachers' texts -------------------------------------------------
    @torch.no_grad()
    def image_prototypes(self, loader, num_classes: int, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) the normalised mean of teacher Z's normalised embeddings of each class's images in ``loader``.

        ``fallback`` (C, D): the rows of classes without a readable image (else an error).
        """
        sums = counts = None
        for batch in loader:
            labels = batch["label"].to(self.device)
            keep = labels >= 0
            if not keep.any():
                continue
            features = self.teacher.encode_images(batch["image"].to(self.device)[keep]).float().to(self.device)
            if sums is None:
                sums = features.new_zeros(num_classes, features.shape[1])
                counts = features.new_zeros(num_classes)
            sums.index_add_(0, labels[keep], features)
            counts.index_add_(0, labels[keep], torch.ones_like(labels[keep], dtype=features.dtype))
        if sums is None:
            raise ConfigError("no readable training image to compute the image prototypes from")
        prototypes = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=-1)
        empty = counts == 0
        if empty.any():
            if fallback is None:
                raise ConfigError(f"classes {empty.nonzero().flatten().tolist()} have no readable training image")
            prototypes[empty] = fallback.to(prototypes)[empty]
        return prototypes

    @torch.no_grad()
    def prepare_task(self, task: int, loader=None) -> dict[str, torch.Tensor]:
        """The prototypes and the teachers' text embeddings of task ``task`` (computed once per task).

        ``loader``: the task's training images (default: the data module's, in their evaluation view).
        """
        info = self.sequence[task]
        text_prototypes = self.teacher.encode_text(info["class_names"], info["templates"]).float().to(self.device)
        if loader is None:
            loader = training_images_loader(self.trainer.datamodule, task)
        image_prototypes = self.image_prototypes(loader, len(info["class_names"]), fallback=text_prototypes)
        teacher_text = self.teacher.encode_prompts(self.training_prompts(task)).float().to(self.device)
        previous_text = (teacher_text if task == 0
                         else self.previous.encode_text(self.training_tokens(task), normalize=True).float())
        self._task_state[task] = {"image": image_prototypes, "text": text_prototypes,
                                  "teacher_text": teacher_text, "previous_text": previous_text}
        return self._task_state[task]

    def task_state(self, task: int) -> dict[str, torch.Tensor]:
        if task not in self._task_state:
            self.prepare_task(task)
        return self._task_state[task]

    # -- the loss ------------------------------------------------------------------------
    def mulki_losses(self, images: torch.Tensor, labels: torch.Tensor, task: int, image: torch.Tensor,
                     text: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted MulKI terms on a training batch (``image``, ``text``: the student's embeddings)."""
        state = self.task_state(task)
        scale, temperature = self.logit_scale, self.temperature
        image = image.float()
        with torch.no_grad():
            zero_shot = self.teacher.encode_images(images).float().to(image.device)
            previous = zero_shot if task == 0 else self.image_embeddings(self.previous, images).float()
        teachers = [(zero_shot, state["teacher_text"]), (previous, state["previous_text"])]
        weights = teacher_weights([scale * f @ g.T for f, g in teachers], labels, self.weight_temperature)
        terms = {}
        if self.prototype_weight > 0:
            classes = torch.arange(text.shape[0], device=text.device)
            terms["mulki_proto_image"] = self.prototype_weight * F.cross_entropy(scale * image @ state["image"].T,
                                                                                 labels)
            terms["mulki_proto_text"] = self.prototype_weight * F.cross_entropy(
                scale * text.float() @ state["image"].T, classes)
        relation = logit = 0.0
        student_image, student_text = scale * image @ state["image"].T, scale * image @ state["text"].T
        for k, (features, teacher_text) in enumerate(teachers):
            relation = relation + weights[:, k] * (
                row_distillation(student_image, scale * features @ state["image"].T, temperature)
                + row_distillation(student_text, scale * features @ state["text"].T, temperature))
            logit = logit + weights[:, k] * row_distillation(scale * image @ teacher_text.T,
                                                             scale * features @ teacher_text.T, temperature)
        terms["mulki_relation"] = self.relation_weight * relation.mean()
        terms["mulki_logit"] = self.logit_weight * logit.mean()
        return terms

    def extra_losses(self, batch: dict, task: int, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.mulki_losses(batch["image"], batch["label"], task, image, text)

    # -- task boundaries: the previous stage, the ensemble, the interpolation ---------------
    def on_task_start(self, task: int) -> None:
        copy_parameters(self.previous, self.student)
        if self.average is not None:
            copy_parameters(self.average, self.student)
            self.average_count.zero_()
        self._task_state.clear()
        if self._trainer is not None:
            self.prepare_task(task)

    def after_step(self, task: int, step: int) -> None:
        if self.average is None:
            return
        if step % self.ensemble_every == 0 or step == self.iterations_per_task - 1:
            self.average_count += 1
            average_parameters(self.average, self.student, int(self.average_count))

    def on_task_end(self, task: int) -> None:
        if self.average is not None:
            copy_parameters(self.student, self.average)
        interpolate_parameters(self.student, self.previous, self.student, self.alpha)
        self._task_state.clear()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._task_state.clear()

    def method_settings(self) -> dict:
        return {"temperature": self.temperature, "weight_temperature": self.weight_temperature,
                "prototype_weight": self.prototype_weight, "relation_weight": self.relation_weight,
                "logit_weight": self.logit_weight, "ensemble_every": self.ensemble_every, "alpha": self.alpha}
