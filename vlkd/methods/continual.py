"""Continual learning of CLIP over a task sequence: the loop, the zero-shot reference and sequential fine-tuning.

Protocol: Multi-domain Task-Incremental Learning (MTIL) of "Preventing Zero-Shot
Transfer Degradation in Continual Learning of Vision-Language Models", Zheng et
al., ICCV 2023 (ZSCL; official code Thunderbeee/ZSCL, folder ``mtil/``). One
CLIP model is fine-tuned on a sequence of T datasets, one after another; after
each training stage every dataset of the sequence is evaluated among its own
class names, which gives the accuracy matrix ``A[t, d]`` and its transfer /
average / last (:mod:`vlkd.eval.continual`).

The loop (:class:`ContinualCLIP`)
---------------------------------
* **Student**: a trainable copy of the teacher's CLIP, both towers, with the
  logit scale fixed at its pretrained value (ZSCL trains every parameter but
  ``logit_scale``; 100 for OpenAI's weights).
* **Training step** (ZSCL's ``finetune``): the current task's class names in its
  first template, encoded by the student's text tower; softmax cross-entropy
  of ``scale x cos(image, text)`` with label smoothing (ZSCL: 0.2). Methods add
  terms through :meth:`ContinualCLIP.extra_losses`.
* **Steps and tasks**: task ``t`` covers global steps ``[t I, (t + 1) I)``,
  ``I = data.iterations_per_task``; the data module's batches are a function of
  the step (:mod:`vlkd.data.continual`). The run's length is the sequence's
  ``T I`` steps (``trainer.max_steps`` may stop it earlier; ``trainer.max_epochs``
  is not used: one Lightning epoch is (the rest of) one task).
* **Optimiser**: AdamW with betas (0.9, 0.999) and weight decay 0 (ZSCL's
  defaults) over the student; the learning rate of a task is ``lr`` or its
  ``task_lr`` entry (ZSCL: 1e-5, and 5e-5 for Aircraft and MNIST), warmed up
  linearly over ``warmup_steps`` (ZSCL: 100; ``lr (s + 1) / W``) and then decayed
  by a half cosine to 0 at the task's end, within each task. ZSCL runs each
  task as a new process with a new optimiser, so the optimiser state (Adam's
  moments and step count) is reset at every task start here too.
* **Evaluation** (ZSCL's ``zeroshot_classifier``): every dataset among its own
  class names, each class embedding the mean of its L2-normalised template
  embeddings (all the dataset's templates), normalised again; the student's
  text tower; top-1 %. It runs once before training (the zero-shot row) and
  after the last step of every task (after :meth:`ContinualCLIP.on_task_end`,
  where WiSE-FT and ZSCL change the weights), over every dataset's test split.
* **State and resuming**: the rows, how many tasks have started and ended, and
  the cost per task are saved in every checkpoint. Task boundaries are handled
  as soon as a hook sees the step counter reach them (the next batch start at
  the latest), so a checkpoint taken anywhere, even between the last step of a
  task and its evaluation, resumes into the same results. A run resumed with
  ``--ckpt_path last`` gives the results of an uninterrupted run (tested on
  CPU, cost aside).
* **Results**: at the end, ``results.json`` (the three metrics, the matrix, the
  zero-shot row, per-dataset columns, the cost per task in minutes and steps
  per second, the settings), ``results.md`` and ``accuracy_matrix.png`` in the
  run's log folder (:func:`vlkd.eval.write_continual_results`), and the metrics
  printed. ``vlkd test --ckpt_path ...`` evaluates a checkpoint's model on every
  test split (the ordinary ``results.json`` of one row).

Methods here: :class:`ZeroShotContinual` (no training: every row is the
zero-shot row, the reference for transfer) and :class:`SequentialFineTune`
(ZSCL's "Continual-FT": cross-entropy only). :mod:`vlkd.methods.lwf`,
:mod:`vlkd.methods.wiseft` and :mod:`vlkd.methods.zscl` add the baselines and ZSCL.
One device only (ZSCL's batch of 64 ViT-B/16 images fits one GPU).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.data.continual import step_to_task
from vlkd.errors import ConfigError, VlkdError
from vlkd.eval.continual import continual_metrics, matrix_table, write_continual_results
from vlkd.methods.base import ClassificationMethod
from vlkd.methods.finetune import warmup_cosine
from vlkd.models import VideoCLIP
from vlkd.teacher import TeacherServiceSpec, TeacherSpec

log = logging.getLogger(__name__)

__all__ = [
    "ContinualCLIP",
    "SequentialFineTune",
    "ZeroShotContinual",
    "average_parameters",
    "copy_parameters",
    "distillation",
    "frozen_copy",
    "interpolate_parameters",
    "parameter_distance",
]


# --------------------------------------------------------------------------- weight-space arithmetic


def _pairs(target: nn.Module, *sources: nn.Module):
    """The parameters of ``target`` and each source, by position; the names must agree."""
    named = [list(module.named_parameters()) for module in (target, *sources)]
    names = [[name for name, _ in params] for params in named]
    if any(other != names[0] for other in names[1:]):
        raise ValueError("weight-space arithmetic needs modules of the same architecture")
    return zip(*[[param for _, param in params] for params in named])


@torch.no_grad()
def copy_parameters(target: nn.Module, source: nn.Module) -> None:
    """``target <- source``, parameter by parameter (in place)."""
    for target_param, source_param in _pairs(target, source):
        target_param.copy_(source_param)


@torch.no_grad()
def interpolate_parameters(target: nn.Module, start: nn.Module, end: nn.Module, alpha: float) -> None:
    """``target <- alpha end + (1 - alpha) start`` (WiSE-FT; ``target`` may be ``end`` itself)."""
    for target_param, start_param, end_param in _pairs(target, start, end):
        target_param.copy_(alpha * end_param + (1.0 - alpha) * start_param)


@torch.no_grad()
def average_parameters(average: nn.Module, model: nn.Module, count: int) -> None:
    """``average <- (count average + model) / (count + 1)``: ``model`` joins a uniform average of ``count`` models
    (ZSCL's ``merge_we``)."""
    for average_param, model_param in _pairs(average, model):
        average_param.mul_(count).add_(model_param).div_(count + 1)


def parameter_distance(model: nn.Module, anchor: nn.Module) -> torch.Tensor:
    """``sum_i ||theta_i - anchor_i||^2`` over all parameters (ZSCL's ``l2_loss``); the anchor gets no gradient."""
    total = None
    for param, anchor_param in _pairs(model, anchor):
        term = (param.float() - anchor_param.detach().float()).pow(2).sum()
        total = term if total is None else total + term
    return total


def distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(t / T) || softmax(s / T))`` over the last dimension, averaged over the rows.

    ZSCL's ``distillation`` is the soft cross-entropy ``T^2 H(softmax(t / T), softmax(s / T))``, which is
    this KL plus the teacher's entropy: the same gradient, and zero here when student equals teacher.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)
    return temperature**2 * kl.mean()


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without gradients, in eval mode."""
    clone = copy.deepcopy(model)
    clone.requires_grad_(False)
    return clone.eval()


# --------------------------------------------------------------------------- the loop


class ContinualCLIP(ClassificationMethod):
    """Continual fine-tuning of a CLIP copy over the data module's task sequence (see the module docstring).

    Subclasses act through :meth:`on_task_start`, :meth:`on_task_end`, :meth:`after_step` and
    :meth:`extra_losses`; they keep their own frozen copies of the student with :meth:`keep_copy`.

    Args:
        teacher: the CLIP weights the student starts from (the frozen original CLIP).
        lr: the peak learning rate of every task without a ``task_lr`` entry.
        task_lr: per-task peak learning rates by task name (``{Aircraft: 5.0e-5, MNIST: 5.0e-5}``).
        warmup_steps: linear warm-up steps at the start of every task.
        label_smoothing: of the cross-entropy.
        weight_decay: AdamW's (decoupled) weight decay.
        beta2: AdamW's second-moment decay.
        teacher_service: for methods that keep the teacher (:attr:`keeps_teacher`): take its outputs from a
            ``vlkd serve`` server holding ``teacher``'s weights.
    """

    tests_after_fit = False  # the fit writes the continual results itself
    #: keep the frozen teacher (the original CLIP) as ``self.teacher``: methods that distil it.
    keeps_teacher = False
    #: the method reads the data module's reference images and sentences.
    uses_reference = False

    def __init__(self, teacher: TeacherSpec | None = None, lr: float = 1e-5, task_lr: dict[str, float] | None = None,
                 warmup_steps: int = 100, label_smoothing: float = 0.2, weight_decay: float = 0.0,
                 beta2: float = 0.999, teacher_service: TeacherServiceSpec | None = None):
        super().__init__()
        if lr <= 0 or any(value <= 0 for value in (task_lr or {}).values()):
            raise ConfigError(f"model.lr and model.task_lr must be > 0, got {lr} and {task_lr}")
        if warmup_steps < 0 or not 0 <= label_smoothing < 1 or weight_decay < 0 or not 0 < beta2 < 1:
            raise ConfigError("need warmup_steps >= 0, 0 <= label_smoothing < 1, weight_decay >= 0, 0 < beta2 < 1; "
                              f"got {warmup_steps}, {label_smoothing}, {weight_decay}, {beta2}")
        self.save_hyperparameters()
        spec = teacher or TeacherSpec()
        frozen = spec.build()
        #: the weights the student started from (results.json names them)
        self.initial_weights = spec
        self.student = VideoCLIP.from_teacher(frozen, temporal="none")
        # The scale is fixed at the pretrained value (ZSCL leaves logit_scale out of the optimiser).
        self.student.model.logit_scale.requires_grad_(False)
        self.logit_scale = frozen.logit_scale
        if self.keeps_teacher:
            self.teacher = (teacher_service.build(expect=frozen.identity)
                            if teacher_service is not None and teacher_service.url else frozen)
        elif teacher_service is not None and teacher_service.url:
            raise ConfigError(f"{type(self).__name__} uses no teacher outputs: remove model.teacher_service")
        self.lr = lr
        self.task_lr = dict(task_lr or {})
        self.warmup_steps = warmup_steps
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.beta2 = beta2
        self._copies: list[str] = []
        # The sequence, from the data module: name, class names and templates of every task.
        self.sequence: list[dict] = []
        self.iterations_per_task = 0
        # Row 0: zero-shot; row t + 1: after task t. None: not evaluated yet.
        self.rows: list[list[float] | None] = []
        self.tasks_started = 0
        self.tasks_ended = 0
        self.steps_processed = 0  # steps whose after-step work (after_step, task ends) is done
        self.cost: dict = {}
        self._clock: float | None = None
        self._tokens: dict[int, torch.Tensor] = {}
        self._text_cache: dict[tuple, torch.Tensor] = {}
        self._templates_by_names: dict[tuple[str, ...], tuple[str, ...]] = {}

    # -- copies of the student ---------------------------------------------------------
    def keep_copy(self, name: str) -> nn.Module:
        """A frozen copy of the student kept as attribute ``name`` (saved in checkpoints, always in eval mode)."""
        clone = frozen_copy(self.student)
        setattr(self, name, clone)
        self._copies.append(name)
        return clone

    def train(self, mode: bool = True):
        super().train(mode)
        for name in getattr(self, "_copies", ()):
            getattr(self, name).eval()
        return self

    # -- the sequence ------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.sequence)

    @property
    def task_names(self) -> list[str]:
        return [task["name"] for task in self.sequence]

    def task_learning_rate(self, task: int) -> float:
        return float(self.task_lr.get(self.sequence[task]["name"], self.lr))

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        tasks = getattr(datamodule, "tasks", None)
        if not tasks:
            raise ConfigError("continual methods need a data module with a task sequence "
                              "(vlkd.data.ContinualDataModule)")
        sequence = [{"name": t.name, "class_names": list(t.class_names), "templates": list(t.templates)}
                    for t in tasks]
        unknown = sorted(set(self.task_lr) - {task["name"] for task in sequence})
        if unknown:
            raise ConfigError(f"model.task_lr names {unknown}, which are not tasks of this sequence "
                              f"({', '.join(task['name'] for task in sequence)})")
        self.sequence = sequence
        self._templates_by_names = {tuple(t["class_names"]): tuple(t["templates"]) for t in sequence}
        if stage != "fit":
            return
        if self.trainer.world_size > 1:
            raise ConfigError("the continual loop runs on one device: set trainer.devices 1")
        has_reference = getattr(datamodule, "reference", None) is not None
        if self.uses_reference and not has_reference:
            raise ConfigError(f"{type(self).__name__} distils on reference data: set data.init_args.reference")
        if has_reference and not self.uses_reference:
            raise ConfigError(f"{type(self).__name__} uses no reference data: remove data.init_args.reference")
        self.iterations_per_task = int(datamodule.iterations_per_task)
        if not self.rows:
            self.rows = [None] * (self.num_tasks + 1)
            self.cost = {"zero_shot_eval_seconds": 0.0,
                         "tasks": [{"task": task["name"], "steps": 0, "train_seconds": 0.0, "eval_seconds": 0.0}
                                   for task in sequence]}
        # The sequence decides the run's length; a smaller trainer.max_steps stops it earlier.
        total = self.num_tasks * self.iterations_per_task
        epoch_loop = self.trainer.fit_loop.epoch_loop
        if epoch_loop.max_steps is None or epoch_loop.max_steps < 0 or epoch_loop.max_steps > total:
            epoch_loop.max_steps = total
        self.trainer.fit_loop.max_epochs = -1

    # -- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["continual"] = {
            "datasets": self.task_names, "iterations_per_task": self.iterations_per_task, "rows": self.rows,
            "tasks_started": self.tasks_started, "tasks_ended": self.tasks_ended,
            "steps_processed": self.steps_processed, "cost": self.cost,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("continual")
        if state is None:
            raise ConfigError("this checkpoint was not written by a continual method: its rows and task state are "
                              "missing")
        if self._trainer is not None and self._trainer.state.fn == "fit":
            if state["datasets"] != self.task_names or state["iterations_per_task"] != self.iterations_per_task:
                raise ConfigError(
                    f"the checkpoint trained the sequence {state['datasets']} with {state['iterations_per_task']} "
                    f"steps per task; this run has {self.task_names} with {self.iterations_per_task}: resume with "
                    "the data settings of the checkpoint's run")
        self.rows = [None if row is None else list(row) for row in state["rows"]]
        self.tasks_started, self.tasks_ended = state["tasks_started"], state["tasks_ended"]
        self.steps_processed, self.cost = state["steps_processed"], state["cost"]

    # -- optimisation --------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        """The learning rate of global step ``step`` as a fraction of ``lr`` (the task's peak, warm-up, cosine)."""
        if step >= self.num_tasks * self.iterations_per_task:
            return 0.0
        task, local = step_to_task(step, self.iterations_per_task)
        schedule = warmup_cosine(min(self.warmup_steps, self.iterations_per_task), self.iterations_per_task)
        return self.task_learning_rate(task) / self.lr * schedule(local)

    def configure_optimizers(self):
        parameters = [param for param in self.student.parameters() if param.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, betas=(0.9, self.beta2), weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- hooks for methods --------------------------------------------------------------
    def on_task_start(self, task: int) -> None:
        """Before the first step of task ``task`` (after the optimiser state was reset)."""

    def on_task_end(self, task: int) -> None:
        """After the last step of task ``task``, before its row is evaluated."""

    def after_step(self, task: int, step: int) -> None:
        """After optimisation step ``step`` (within the task) of task ``task``."""

    def extra_losses(self, batch: dict, task: int, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms added to the cross-entropy, already weighted; none here.

        Args:
            batch: the training batch (``image``, ``label``, and ``reference`` with reference data).
            task: the current task.
            image: (B, D) the student's normalised embeddings of ``batch["image"]``.
            text: (C, D) the student's normalised embeddings of the task's classes in its training template.
        """
        return {}

    # -- encoders -----------------------------------------------------------------------
    @staticmethod
    def image_embeddings(model: VideoCLIP, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, D) normalised embeddings of ``model`` (the student or a copy)."""
        return model.encode_video(images.unsqueeze(1), normalize=True)[:, 0]

    def training_prompts(self, task: int) -> list[str]:
        info = self.sequence[task]
        return [info["templates"][0].format(name) for name in info["class_names"]]

    def training_tokens(self, task: int) -> torch.Tensor:
        if task not in self._tokens:
            self._tokens[task] = self.student.tokenize(self.training_prompts(task))
        return self._tokens[task].to(self.device)

    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """(C, D) the student's prompt-ensembled class embeddings (cached until the weights change)."""
        key = (tuple(class_names), tuple(templates))
        if key not in self._text_cache:
            self._text_cache[key] = self.student.class_embeddings(list(class_names), list(templates))
        return self._text_cache[key]

    def classify(self, pixels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """(N, 3, H, W) images -> (N, C) logits among ``class_names`` with the dataset's templates ensembled."""
        templates = self._templates_by_names.get(tuple(class_names))
        if templates is None:
            raise ConfigError("these class names belong to no task of the sequence")
        text = self.class_embeddings(class_names, templates)
        return self.logit_scale * self.image_embeddings(self.student, pixels) @ text.T

    def on_test_epoch_start(self) -> None:
        self._text_cache.clear()
        super().on_test_epoch_start()

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        task, _ = step_to_task(self.global_step, self.iterations_per_task)
        if batch["task"] != task or batch["step"] != self.global_step:
            raise VlkdError(f"step {self.global_step} (task {task}) got the batch of step {batch['step']} "
                            f"(task {batch['task']}): the loader does not follow the trainer's step")
        self._text_cache.clear()  # the weights are about to change
        images, labels = batch["image"], batch["label"]
        text = self.student.encode_text(self.training_tokens(task), normalize=True)
        image = self.image_embeddings(self.student, images)
        logits = self.logit_scale * image @ text.T
        terms = {"ce": F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)}
        terms.update(self.extra_losses(batch, task, image, text))
        loss = torch.stack(list(terms.values())).sum()
        size = images.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size)
        self.log_dict({f"train/{name}": value.detach() for name, value in terms.items()}, batch_size=size)
        self.log("train/top1", 100.0 * (logits.argmax(dim=1) == labels).float().mean(), batch_size=size)
        self.log("train/task", float(task), batch_size=size)
        return loss

    def on_train_start(self) -> None:
        self._clock = time.perf_counter()
        self._sync()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._sync()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        now = time.perf_counter()
        task, _ = step_to_task(self.global_step - 1, self.iterations_per_task)
        entry = self.cost["tasks"][task]
        entry["train_seconds"] += now - (self._clock or now)
        entry["steps"] += 1
        self._clock = now
        self._sync()

    def on_train_end(self) -> None:
        self._sync()
        if self.tasks_ended < self.num_tasks:
            log.warning("training stopped at step %d of %d, before the end of the sequence: no continual results "
                        "(resume with --ckpt_path last)", self.global_step, self.num_tasks * self.iterations_per_task)
            return
        self.write_results()

    # -- task boundaries ---------------------------------------------------------------
    def _sync(self) -> None:
        """Do the work the step counter has reached and that is not done yet: the after-step work of the last step
        (with the end and row of a task that ended there), the zero-shot row, the start of a task."""
        step = self.global_step
        pending = step - self.steps_processed
        if pending not in (0, 1):
            raise VlkdError(f"the trainer is at step {step} but the method has processed {self.steps_processed} "
                            "steps: resume from a checkpoint of this run (--ckpt_path), not from weights alone")
        if pending:
            task, local = step_to_task(self.steps_processed, self.iterations_per_task)
            self.after_step(task, local)
            self.steps_processed += 1
            if local == self.iterations_per_task - 1:
                self._end_task(task)
        if self.rows[0] is None:
            if step != 0:
                raise VlkdError("the zero-shot row is missing from a run past step 0")
            started = time.perf_counter()
            self.rows[0] = self.evaluate_sequence("zero-shot")
            self.cost["zero_shot_eval_seconds"] = time.perf_counter() - started
        if step < self.num_tasks * self.iterations_per_task:
            task, local = step_to_task(step, self.iterations_per_task)
            if local == 0 and self.tasks_started == task:
                self._start_task(task)

    def _start_task(self, task: int) -> None:
        for optimizer in self.trainer.optimizers:  # a new optimiser per task, as ZSCL's one process per task
            optimizer.state.clear()
        self.on_task_start(task)
        self.tasks_started += 1
        log.info("task %d of %d: %s (lr %.3g, %d steps)", task + 1, self.num_tasks, self.sequence[task]["name"],
                 self.task_learning_rate(task), self.iterations_per_task)

    def _end_task(self, task: int) -> None:
        if self.tasks_ended != task:
            raise VlkdError(f"task {task} ended, but {self.tasks_ended} tasks had ended before it")
        self.on_task_end(task)
        self._text_cache.clear()
        self.tasks_ended += 1
        started = time.perf_counter()
        self.rows[task + 1] = self.evaluate_sequence(f"after {self.sequence[task]['name']}")
        self.cost["tasks"][task]["eval_seconds"] = time.perf_counter() - started
        self._clock = time.perf_counter()  # evaluation is not training time

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_sequence(self, label: str = "") -> list[float]:
        """Top-1 % of the student on every task's test split, each among its own names with its templates."""
        datamodule = self.trainer.datamodule
        was_training = self.training
        self.eval()
        self._text_cache.clear()
        row = []
        try:
            with self.trainer.precision_plugin.forward_context():
                for index, task in enumerate(self.sequence):
                    text = self.class_embeddings(task["class_names"], task["templates"])
                    hits = count = 0
                    for batch in datamodule.test_loader(index):
                        self._skipped.extend(batch["skipped"])
                        labels = batch["label"].to(self.device)
                        keep = labels >= 0  # unreadable files are reported, not scored
                        if not keep.any():
                            continue
                        image = self.image_embeddings(self.student, batch["image"].to(self.device)[keep])
                        hits += int(((image @ text.T).argmax(dim=1) == labels[keep]).sum())
                        count += int(keep.sum())
                    if count == 0:
                        raise VlkdError(f"task {task['name']}: no readable test images")
                    row.append(100.0 * hits / count)
        finally:
            self._text_cache.clear()
            self.train(was_training)
        if self.trainer.is_global_zero:
            cells = "  ".join(f"{name} {value:.1f}" for name, value in zip(self.task_names, row))
            print(f"[{label}] {cells}", flush=True)
        for logger in self.loggers:
            stage = label.replace(" ", "_") or "row"
            logger.log_metrics({f"matrix/{stage}/{name}": value for name, value in zip(self.task_names, row)},
                               step=self.global_step)
        return row

    # -- results ------------------------------------------------------------------------
    def results_extra(self) -> dict:
        """What ``results.json`` holds besides the matrix and its metrics: the cost and the settings."""
        tasks = []
        for entry in self.cost["tasks"]:
            seconds = entry["train_seconds"]
            tasks.append({"task": entry["task"], "steps": entry["steps"], "train_minutes": seconds / 60,
                          "steps_per_second": entry["steps"] / seconds if seconds > 0 else None,
                          "eval_minutes": entry["eval_seconds"] / 60})
        total = (sum(e["train_seconds"] + e["eval_seconds"] for e in self.cost["tasks"])
                 + self.cost["zero_shot_eval_seconds"])
        datamodule = self.trainer.datamodule
        return {
            "cost": {"tasks": tasks, "zero_shot_eval_minutes": self.cost["zero_shot_eval_seconds"] / 60,
                     "total_minutes": total / 60},
            "settings": {"iterations_per_task": self.iterations_per_task,
                         "batch_size": getattr(datamodule, "batch_size", None),
                         "lr": {task["name"]: self.task_learning_rate(i) for i, task in enumerate(self.sequence)},
                         "warmup_steps": self.warmup_steps, "label_smoothing": self.label_smoothing,
                         "weight_decay": self.weight_decay, "teacher": vars(self.initial_weights),
                         **self.method_settings()},
        }

    def method_settings(self) -> dict:
        """The method's own settings for ``results.json``."""
        return {}

    def write_results(self) -> None:
        """results.json, results.md and accuracy_matrix.png in the log folder; the metrics printed."""
        out_dir = self._out_dir()
        if not self.trainer.is_global_zero:
            return
        matrix, zero_shot = self.rows[1:], self.rows[0]
        paths = write_continual_results(out_dir, matrix, self.task_names, type(self).__name__, zero_shot=zero_shot,
                                        extra=self.results_extra())
        metrics = continual_metrics(matrix)
        print(f"\n{matrix_table(matrix, self.task_names, zero_shot)}")
        print("  ".join(f"{name}: {metrics[name]:.2f}" for name in ("transfer", "average", "last")))
        print(f"results written to {paths['json']}")


# --------------------------------------------------------------------------- the two simplest methods


class SequentialFineTune(ContinualCLIP):
    """Sequential fine-tuning (ZSCL's "Continual-FT"): each task with cross-entropy only, nothing kept of the past.

    The lower bound of forgetting: what the loop does with no method on top (see :class:`ContinualCLIP`).
    """


class ZeroShotContinual(ContinualCLIP):
    """The frozen CLIP on every stage: no training, every row of the matrix is the zero-shot row.

    The reference a method's transfer is read against (ZSCL's "Zero-shot" row). ``vlkd fit`` evaluates the
    zero-shot row once, fills every row with it, writes the results and stops before the first step.
    """

    def on_train_start(self) -> None:
        if self.rows[0] is None:
            started = time.perf_counter()
            self.rows[0] = self.evaluate_sequence("zero-shot")
            self.cost["zero_shot_eval_seconds"] = time.perf_counter() - started
        self.rows = [list(self.rows[0]) for _ in range(self.num_tasks + 1)]
        self.tasks_started = self.tasks_ended = self.num_tasks
        self.trainer.should_stop = True

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int:
        return -1  # no step: skip the epoch

    def on_train_end(self) -> None:
        self.write_results()
