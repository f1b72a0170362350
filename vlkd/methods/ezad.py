"""EZAD: zero-shot annotation object detection distilled from a frozen, re-normalised CLIP.

Paper: "Efficient Feature Distillation for Zero-shot Annotation Object Detection",
Zhuoming Liu, Xuefeng Hu and Ram Nevatia, WACV 2024 (official code: dragonlzm/EZAD,
on mmdetection 2.x). Here on torchvision's detection pieces.

The setting
-----------
The training images are annotated for the base categories only, although objects of
the novel categories appear in them; of the novel categories only the names are known.
At test time the detector finds base and novel objects in one vocabulary.

Method (one ``vlkd fit`` runs the three stages; each is kept and reused)
------------------------------------------------------------------------
1. **Re-normalisation** (:mod:`vlkd.teacher.renormalize`): the teacher's LayerNorm
   parameters (image and text towers on COCO, image tower only on LVIS) are fine-tuned to
   classify base ground-truth crops among the base names, which brings the teacher's
   features of detection crops (small, tight, padded) back into its domain.
2. **CLIP proposals** (:mod:`vlkd.teacher.proposals`): dense anchors scored by the
   re-normalised teacher's ``log C - entropy`` among all names, NMS 0.7, boxes near a base
   box or of a base top class dropped, the best 300 kept with the teacher's confidence.
   Their embeddings and the base boxes' are computed once (``vlkd cache``,
   :mod:`vlkd.teacher.detection_cache`).
3. **Detector** (:class:`vlkd.models.ezad_detector.EZADFasterRCNN`): Faster R-CNN with
   FPN whose box head ends in an embedding; its classifier is a learnable temperature x
   the cosine to the frozen class-text embeddings, plus a learnable background
   embedding; softmax cross-entropy on the base classes. Distillation: L1 between the
   normalised RoI embeddings of the base boxes and of 200 CLIP proposals per image and
   the teacher's, weighted 1 (boxes) and by the confidence renormalised to mean 1
   (proposals). Semantic regression: one class-agnostic regressor fed the text embedding
   of the class (assigned in training, predicted at test).
4. **Inference**: softmax over base + novel + background, multiclass NMS 0.5; COCO AP
   and AP50 at 100 detections per image (and the authors' 1,000) for base, novel and all.

Variants (``variant``), the paper's baselines and ablations on the same data and schedule:

* ``ezad``: everything above;
* ``base_only``: the detector with the text classifier, no distillation;
* ``vild``: ViLD-style distillation: the *raw* teacher's embeddings of the detector's own
  RPN proposals (``vild_proposals`` per image), computed in the step, weight 1;
* ``no_renorm``: EZAD with the raw teacher (proposals, embeddings and text);
* ``no_proposals``: EZAD distilling the base boxes only;
* ``no_semantic_regression``: EZAD with a plain class-agnostic regressor.

Where the stages live
---------------------
``work_dir`` holds the re-normalised teacher and the detection cache, each in a folder
named by a hash of what it was made from, so every variant and seed of a benchmark
shares them and a rerun does not redo them. Single-process for stages 1 and 2 (run
``vlkd cache`` on the config first to spread nothing; real-scale proposal generation
is a GPU job, see the README).

Optimiser: SGD, momentum 0.9, weight decay 1e-4, a linear warm-up over
``warmup_steps`` from ``warmup_factor``, lr steps x 0.1 at the ``milestones`` epochs
(COCO: lr 0.02 for 16 images per step, 12 epochs, steps at 8 and 11: mmdetection's 1x
schedule, the authors'). ``optimizer: adamw`` for the offline world's detector, which
trains from random weights (no ImageNet backbone offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from vlkd.errors import ConfigError
from vlkd.eval.detection import coco_box_ap
from vlkd.eval.results import format_cell, markdown_table, write_results
from vlkd.methods.base import trainable_parameters
from vlkd.teacher import RegionCrop, TeacherSpec
from vlkd.teacher.proposals import ProposalSettings

log = logging.getLogger(__name__)

VARIANTS = ("ezad", "base_only", "vild", "no_renorm", "no_proposals", "no_semantic_regression")
_CACHED = ("ezad", "no_renorm", "no_proposals", "no_semantic_regression")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def gather_detections(detections: list[dict]) -> list[dict]:
    """Every rank's detection rows, once per image: DDP's sampler pads the last batches by repeating images, and a
    repeated image's rows (equal on every rank that saw it) are kept from the first rank that has them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return detections
    parts: list[list[dict]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, detections)
    owner: dict[int, int] = {}
    merged = []
    for rank, rows in enumerate(parts):
        for row in rows:
            if owner.setdefault(row["image_id"], rank) == rank:
                merged.append(row)
    return merged


class EZAD(pl.LightningModule):
    """EZAD and its baselines (see the module docstring).

    Args:
        teacher: the frozen CLIP teacher (before re-normalisation).
        variant: one of ``ezad``, ``base_only``, ``vild``, ``no_renorm``, ``no_proposals``,
            ``no_semantic_regression``.
        renormalization: keyword arguments of :func:`vlkd.teacher.renormalize.renormalize_teacher`
            (towers, epochs, lr, weight_decay, batch_size, loss, ...).
        proposals: :class:`~vlkd.teacher.proposals.ProposalSettings` fields.
        detector: keyword arguments of ``create_student("ezad_faster_rcnn", ...)``.
        templates: prompt templates of the class names (EZAD: ``a photo of a {}``).
        cache_views: 2: the cache holds the mirror image's embeddings too (training flips); 1: not.
        vild_proposals: RPN proposals distilled per image by the ``vild`` variant.
        work_dir: where the re-normalised teacher and the detection cache are kept.
        optimizer: ``sgd`` (the authors') or ``adamw``.
        lr, momentum, weight_decay, warmup_steps, warmup_factor, milestones: the schedule.
    """

    #: ``vlkd fit`` ends with the test loop (results.json).
    tests_after_fit = True

    def __init__(
        self,
        teacher: TeacherSpec | None = None,
        variant: str = "ezad",
        renormalization: dict | None = None,
        proposals: dict | None = None,
        detector: dict | None = None,
        templates: list[str] | str = "a photo of a {}",
        cache_views: int = 2,
        vild_proposals: int = 200,
        work_dir: str = "runs/ezad_work",
        optimizer: str = "sgd",
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_steps: int = 500,
        warmup_factor: float = 0.001,
        milestones: list[int] | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {VARIANTS}, got {variant!r}")
        if optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"model.optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.save_hyperparameters()
        self.teacher_spec = teacher or TeacherSpec()
        self.variant = variant
        self.renormalization = dict(renormalization or {})
        self.proposal_settings = ProposalSettings(**(proposals or {}))
        self.templates = [templates] if isinstance(templates, str) else list(templates)
        self.cache_views, self.vild_proposals = cache_views, vild_proposals
        self.work_dir = Path(work_dir)
        self.optimizer_name, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor
        self.milestones = list(milestones or [8, 11])
        detector_kwargs = dict(detector or {})
        detector_kwargs.setdefault("semantic_regression", variant != "no_semantic_regression")
        self.detector_kwargs = detector_kwargs
        self.detector = None  # built in setup, when the teacher's width is known
        self.teacher = None
        self.teacher_folder: str | None = None
        self._detections: list[dict] = []
        self.eval_results: dict[str, float] = {}
        self.prepared: dict[str, dict] = {}

    # -- stages 1 and 2 ------------------------------------------------------------------------------
    @property
    def uses_renormalization(self) -> bool:
        return self.variant not in ("no_renorm", "vild", "base_only") or bool(self.renormalization.get("always"))

    def _build_detector(self, embed_dim: int) -> None:
        from vlkd.models import create_student

        if self.detector is None:
            self.detector = create_student("ezad_faster_rcnn", embed_dim=embed_dim, **self.detector_kwargs)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        datamodule.setup(stage)
        teacher = self.prepare_teacher(datamodule)
        self._build_detector(teacher.embed_dim)
        self.detector.to(self.device)
        # The frozen class-text embeddings: the base names for training, all names for evaluation.
        self.train_text = teacher.encode_text(datamodule.base_names, self.templates).float()
        self.eval_text = teacher.encode_text(datamodule.class_names, self.templates).float()
        if stage == "fit" and self.variant in _CACHED:
            if datamodule.region_cache is None:
                datamodule.attach_cache(self.build_region_cache(datamodule))
            cache = datamodule.region_cache
            cache.check(teacher, datamodule.annotation_file("train"), datamodule.class_names, datamodule.base_names,
                        len(datamodule.train_records))
            if self.variant == "no_proposals":
                datamodule.proposals_per_image = 0
        elif stage == "fit":
            datamodule.region_cache = None  # base_only and vild distil nothing stored

    def _renormalized_teacher(self, datamodule):
        from vlkd.teacher import create_teacher
        from vlkd.teacher.renormalize import renormalize_teacher

        settings = {key: value for key, value in self.renormalization.items() if key != "always"}
        # Where and how fast it runs does not change the teacher it makes: those settings stay out of its name.
        key_settings = {k: v for k, v in settings.items() if k not in ("progress", "device", "threads", "workers")}
        if "progress" not in settings:  # quiet when the trainer is
            settings["progress"] = self._trainer is None or self.trainer.progress_bar_callback is not None
        key = _digest({"teacher": asdict(self.teacher_spec), "annotations": str(datamodule.annotation_file("train")),
                       "base": datamodule.base_names, "settings": key_settings, "templates": self.templates})
        result = renormalize_teacher(
            self.teacher_spec.name, self.teacher_spec.pretrained, datamodule.annotation_file("train"),
            datamodule.image_dir("train"), datamodule.base_names, self.work_dir / f"teacher-{key}",
            eval_annotations=datamodule.annotation_file("val"), eval_image_root=datamodule.image_dir("val"),
            eval_names=datamodule.class_names,
            eval_groups={"base": datamodule.base_names, "novel": datamodule.novel_names},
            offline=self.teacher_spec.offline, **settings)
        # The premise of EZAD, measured on this run's validation crops among all names.
        self.prepared["crop_top1"] = {when: {"all": accuracy.top1, **accuracy.groups}
                                      for when, accuracy in (("before", result.before), ("after", result.after))}
        self.teacher_folder = str(Path(result.folder).resolve())  # a checkpoint is read from anywhere
        return create_teacher(str(result.folder), None, precision=self.teacher_spec.precision)

    def prepare_teacher(self, datamodule):
        """The run's teacher (re-normalised on ``datamodule``'s base crops unless the variant uses the raw one)."""
        if self.teacher is None:
            raw = self.teacher_spec.build()
            self.teacher = self._renormalized_teacher(datamodule) if self.uses_renormalization else raw
            self.raw_teacher = raw if self.variant == "vild" else None
            # The stored stages run before Lightning moves the module: put the teacher on this rank's device now.
            self.teacher.to(self._stage_device())
        return self.teacher

    def _stage_device(self) -> torch.device:
        if self._trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def build_region_cache(self, datamodule, out: str | Path | None = None, dtype: str = "float16",
                           shard_size: int = 256, progress: bool | None = None) -> Path:
        """Build (or finish, or reuse) the detection cache of ``datamodule``'s training set; ``vlkd cache`` calls
        this with its ``--out``, a fit with ``out=None`` (a folder of ``work_dir`` named by what it holds)."""
        from vlkd.teacher.detection_cache import build_detection_cache

        if self.variant not in _CACHED:
            raise ConfigError(f"the {self.variant} variant distils nothing stored (base_only: no distillation; "
                              "vild: the detector's own proposals, in the step): it needs no vlkd cache")
        teacher = self.prepare_teacher(datamodule)
        key = _digest({"teacher": teacher.identity.to_dict(), "annotations": str(datamodule.annotation_file("train")),
                       "names": datamodule.class_names, "base": datamodule.base_names,
                       "proposals": self.proposal_settings.to_dict(), "views": self.cache_views,
                       "images": len(datamodule.train_records)})
        folder = Path(out) if out is not None else self.work_dir / f"cache-{key}"
        if progress is None:
            progress = self._trainer is None or self.trainer.progress_bar_callback is not None
        return build_detection_cache(teacher, datamodule.train_dataset(augment=False, with_cache=False),
                                     datamodule.class_names, datamodule.base_names,
                                     datamodule.annotation_file("train"), folder, self.proposal_settings,
                                     views=self.cache_views, dtype=dtype, shard_size=shard_size, progress=progress)

    # -- training -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.detector.set_class_embeddings(self.train_text.to(self.device))
        images = [image.to(self.device) for image in batch["images"]]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
                   for t in batch["targets"]]
        distill = region_targets = None
        if self.variant in _CACHED:
            distill = [{k: v.to(self.device) for k, v in d.items()} for d in batch["distill"]]
        elif self.variant == "vild":
            region_targets = self._vild_targets(images)
        losses = self.detector(images, targets, distill=distill, region_targets=region_targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(images))
        return loss

    def _vild_targets(self, images: list[torch.Tensor]):
        """ViLD-style targets: the raw teacher's embeddings of the detector's RPN proposals, in the step."""
        crop = self.proposal_settings.embed_crop

        def targets(proposals: list[torch.Tensor]) -> list[dict]:
            out = []
            for image, boxes in zip(images, proposals):
                boxes = boxes[: self.vild_proposals].detach()
                if len(boxes) == 0:
                    out.append({"boxes": boxes, "embeddings": boxes.new_zeros(0, self.raw_teacher.embed_dim),
                                "weights": boxes.new_zeros(0)})
                    continue
                rows = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1).cpu()
                embeddings = self.raw_teacher.encode_regions([image.to(self.raw_teacher.pixel_mean.device)], rows,
                                                             crop).to(boxes)
                out.append({"boxes": boxes, "embeddings": embeddings, "weights": torch.ones_like(boxes[:, 0])})
            return out

        return targets

    def configure_optimizers(self):
        parameters = trainable_parameters(self.detector)
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1))
        milestones = [epoch * steps_per_epoch for epoch in self.milestones]
        warmup, factor = self.warmup_steps, self.warmup_factor

        def schedule(step: int) -> float:
            scale = 0.1 ** sum(step >= m for m in milestones)
            if step < warmup:
                scale *= factor + (1 - factor) * step / warmup
            return scale

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation ------------------------------------------------------------------------------------
    def _eval_stage(self) -> str:
        return "test" if self.trainer.testing else "val"

    def on_validation_epoch_start(self) -> None:
        self._detections = []

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        stage = self._eval_stage()
        datamodule = self.trainer.datamodule
        self.detector.set_class_embeddings(self.eval_text.to(self.device))
        outputs = self.detector([image.to(self.device) for image in batch["images"]])
        ids = datamodule.eval_category_ids[stage]
        for target, output in zip(batch["targets"], outputs):
            for box, score, label in zip(output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()):
                x0, y0, x1, y1 = box
                self._detections.append({"image_id": int(target["image_id"]), "category_id": int(ids[label]),
                                         "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        stage = "validate" if self.trainer.state.fn == "validate" else "val"
        self._end_eval(stage)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    def _end_eval(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        split = "test" if stage == "test" else "val"
        detections = gather_detections(self._detections)
        # Every rank scores the same gathered detections, so the logged numbers agree without a reduction.
        results = coco_box_ap(datamodule.eval_ground_truth[split], detections, datamodule.groups(split))
        self._detections = []
        self.eval_results = results
        self.log_dict({f"{stage}/{k}": v for k, v in results.items()}, sync_dist=False)
        # trainer.log_dir broadcasts from rank 0, so every rank must ask for it, not just the writer.
        out_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if stage in ("test", "validate") and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            headline = {k: results[k] for k in ("base_ap50", "novel_ap50", "all_ap50") if k in results}
            summary = {**headline, "metrics": results, "stage": stage, "variant": self.variant, **self.prepared}
            json_path, _ = write_results(summary, out_dir, name="results")
            rows = [{"group": g, **{m: results.get(f"{g}_{m}") for m in ("ap", "ap50", "ap_1000det", "ap50_1000det")}}
                    for g in ("base", "novel", "all")]
            print(f"\n{markdown_table(rows)}")
            print("  ".join(f"{k}: {format_cell(v)}" for k, v in headline.items()))
            print(f"results written to {json_path}")

    # -- checkpoints ----------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ezad"] = {"teacher_folder": self.teacher_folder, "embed_dim": self.detector.embed_dim,
                              "class_names": list(self.trainer.datamodule.class_names)
                              if self.trainer and self.trainer.datamodule else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("ezad", {})
        self.teacher_folder = stored.get("teacher_folder")
        if self.detector is None and stored.get("embed_dim"):
            self._build_detector(int(stored["embed_dim"]))
