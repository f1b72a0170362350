"""What every classification method shares, for clips and images: open-vocabulary evaluation and data bookkeeping.

A method subclasses :class:`ClassificationMethod` and implements
:meth:`ClassificationMethod.classify` (clips or images + class names -> logits).
This base class then

* evaluates every validation/test dataloader against its own class names: the
  data module names them per loop (``val_sets`` / ``test_sets``: base, novel and
  cross-dataset sets of :class:`vlkd.data.VideoDataModule`; the validation and
  test splits of :class:`vlkd.data.ImageDataModule`), averaging a clip's logits
  over its temporal views, and logs top-1/top-5/mean-class accuracy per set plus
  the base/novel harmonic mean;
* writes ``results.json`` / ``results.md`` into the run's log folder after ``test``
  (and ``validate``) and prints the table; a zero-shot dataset evaluated on
  several splits also gets its top-1 mean ± std over them under its own name;
* counts the files (videos or images) the datasets had to skip and reports them
  at the end of each epoch, in the log and in ``skipped_videos.txt``.

A batch carries ``video`` ``(B, V, T, C, H, W)`` or ``image`` ``(B, C, H, W)``
pixels in [0, 1] (see :meth:`ClassificationMethod.eval_logits`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn

from vlkd.eval.metrics import MeanStd, OpenVocabAccuracy, summarize_seeds
from vlkd.eval.results import format_cell, markdown_table, write_results
from vlkd.errors import ConfigError

log = logging.getLogger(__name__)


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters that require gradients: a frozen teacher's never reach an optimiser."""
    return [p for p in module.parameters() if p.requires_grad]


class ClassificationMethod(pl.LightningModule):
    """Base class of the classification methods (see the module docstring)."""

    #: ``vlkd fit`` ends with the test loop (results.json).
    tests_after_fit = True

    def __init__(self) -> None:
        super().__init__()
        self._skipped: list[str] = []
        self.eval_results: dict[str, float] = {}
        self._eval_metric: OpenVocabAccuracy | None = None

    # -- what a method provides ------------------------------------------------------
    def classify(self, pixels: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """(N, T, C, H, W) clips (video methods) or (N, C, H, W) images (image methods) in [0, 1]
        -> (N, len(class_names)) logits."""
        raise NotImplementedError

    def teacher_targets(self, batch: dict) -> dict[str, torch.Tensor]:
        """The frozen teacher's outputs a training batch needs, by name, each with the batch as first dimension.

        ``vlkd cache`` stores exactly these for every training sample and view; a batch read
        from such a cache carries them as ``batch["teacher"]`` (see :meth:`cached_teacher_targets`),
        and the method uses them instead of running the teacher. Methods without a teacher return ``{}``.
        """
        return {}

    @property
    def teacher_target_names(self) -> tuple[str, ...]:
        """The names :meth:`teacher_targets` returns (what a ``vlkd cache`` for this method must hold)."""
        return ()

    @staticmethod
    def cached_teacher_targets(batch: dict) -> dict[str, torch.Tensor] | None:
        """The teacher outputs a batch from a ``vlkd cache`` carries (as float32); ``None`` if it has none."""
        cached = batch.get("teacher")
        return {name: value.float() for name, value in cached.items()} if cached else None

    def on_fit_start(self) -> None:
        # A teacher cache must hold this method's targets, from this method's teacher.
        cache = getattr(getattr(self.trainer, "datamodule", None), "teacher_cache_reader", None)
        if cache is not None:
            cache.check_method(self)

    # -- evaluation --------------------------------------------------------------------
    def eval_sets(self, stage: str | None = None):
        """The evaluation sets of ``stage``'s loop (``val`` or ``test``; default: the loop running now),
        in the order of its dataloaders."""
        stage = stage or self._eval_stage()
        datamodule = getattr(self.trainer, "datamodule", None)
        sets = getattr(datamodule, f"{stage}_sets", None) or getattr(datamodule, "eval_sets", None)
        if not sets:
            raise ConfigError(
                "evaluation needs a data module with evaluation sets (vlkd.data.VideoDataModule with "
                "base2novel or zero_shot, vlkd.data.ImageDataModule with a val or test split): set data in the config"
            )
        return sets

    def _eval_stage(self) -> str:
        return "test" if self.trainer.testing else "val"

    def view_averaged_logits(self, video: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """(B, V, T, C, H, W) clips with V temporal views -> (B, K) logits averaged over views."""
        batch, views = video.shape[:2]
        logits = self.classify(video.flatten(0, 1), class_names)
        return logits.view(batch, views, -1).mean(dim=1)

    def eval_logits(self, batch: dict, keep: torch.Tensor, class_names: list[str]) -> torch.Tensor:
        """Logits of the ``keep`` rows of an evaluation batch: clips averaged over their views, or images."""
        if "video" in batch:
            return self.view_averaged_logits(batch["video"][keep], class_names)
        return self.classify(batch["image"][keep], class_names)

    def _start_eval(self) -> None:
        sets = self.eval_sets()
        self._eval_metric = OpenVocabAccuracy(
            {s.name: len(s.class_names) for s in sets}, subsets={s.name: s.subsets for s in sets if s.subsets},
            unit=sets[0].unit,
        ).to(self.device)

    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        eval_set = self.eval_sets()[dataloader_idx]
        self._skipped.extend(batch["skipped"])
        readable = batch["label"] >= 0  # unreadable files are reported, not scored
        if not readable.any():
            return
        logits = self.eval_logits(batch, readable, eval_set.class_names)
        self._eval_metric.update(logits, batch["label"][readable], group=eval_set.name)

    def extra_eval_results(self, stage: str) -> dict[str, float]:
        """Further numbers a method reports with an evaluation (logged and written to results.json)."""
        return {}

    def _end_eval(self, stage: str) -> None:
        results = {name: float(value) for name, value in self._eval_metric.compute().items()}
        results.update(self.extra_eval_results(stage))
        self._eval_metric.reset()
        self.eval_results = results
        self.log_dict({f"{stage}/{name}": value for name, value in results.items()}, sync_dist=False)
        out_dir = self._out_dir()
        self._report_skipped(stage, out_dir)
        if stage in ("test", "validate") and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self._write_results(results, stage, out_dir)

    def _out_dir(self) -> Path:
        # trainer.log_dir broadcasts from rank 0, so every rank must ask for it, not just the writer.
        return Path(self.trainer.log_dir or self.trainer.default_root_dir)

    def _write_results(self, results: dict[str, float], stage: str, out_dir: Path) -> None:
        headline = {
            key: results[f"{key}_top1"] for key in ("base", "novel") if f"{key}_top1" in results
        }
        if "hm" in results:
            headline["hm"] = results["hm"]
        if not headline:  # no base/novel protocol (e.g. an image benchmark's test split): each set's top-1
            headline = {f"{s.name}_top1": results[f"{s.name}_top1"] for s in self.eval_sets() if f"{s.name}_top1" in results}
        headline.update(self._split_summaries(results))
        summary = {**headline, "metrics": results, "stage": stage}
        json_path, _ = write_results(summary, out_dir, name="results")
        rows = [
            {"set": name, **{m: results[f"{name}_{m}"] for m in ("top1", "top5", "mean_class", self._eval_metric_unit()) if f"{name}_{m}" in results}}
            for name in (eval_set.name for eval_set in self.eval_sets())
        ]
        table = markdown_table(rows)
        print(f"\n{table}")
        if headline:
            print("  ".join(f"{key}: {format_cell(value)}" for key, value in headline.items()))
        print(f"results written to {json_path}")

    def _eval_metric_unit(self) -> str:
        return self.eval_sets()[0].unit

    def _split_summaries(self, results: dict[str, float]) -> dict[str, MeanStd]:
        """Top-1 mean ± std over the splits of each zero-shot dataset evaluated on several."""
        splits: dict[str, list[str]] = {}
        for eval_set in self.eval_sets():
            if eval_set.dataset is not None:
                splits.setdefault(eval_set.dataset, []).append(eval_set.name)
        return {
            dataset: summarize_seeds([{"top1": results[f"{name}_top1"]} for name in names])["top1"]
            for dataset, names in splits.items()
            if len(names) > 1
        }

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        # `vlkd validate` is the validation loop outside fitting: write results then too.
        stage = "validate" if self.trainer.state.fn == "validate" else "val"
        self._end_eval(stage)

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test")

    # -- unreadable videos ---------------------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._skipped.extend(batch.get("skipped", []))

    def on_train_epoch_end(self) -> None:
        self._report_skipped("train", self._out_dir())

    def _report_skipped(self, stage: str, out_dir: Path) -> None:
        skipped = self._skipped
        if dist.is_available() and dist.is_initialized():
            gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, skipped)
            skipped = [path for part in gathered for path in part]
        self._skipped = []
        self.log(f"{stage}/skipped_videos", float(len(skipped)), sync_dist=False)
        if not skipped or not self.trainer.is_global_zero:
            return
        log.warning(
            "%d unreadable video(s) were skipped and replaced during this %s epoch (first: %s)",
            len(skipped), stage, skipped[0],
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "skipped_videos.txt", "a", encoding="utf-8") as handle:
            for path in skipped:
                handle.write(f"{stage}\tepoch {self.current_epoch}\t{path}\n")
