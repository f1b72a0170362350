"""Accuracy metrics for open-vocabulary action recognition, all in percent.

Base-to-novel reporting (the ViFi-CLIP protocol): base videos are classified
among the base class names only and novel videos among the novel names only;
``base_top1`` and ``novel_top1`` are the micro top-1 accuracies of the two
evaluations and ``hm`` is their harmonic mean.  Papers report each number as the
mean over the three 16-shot training seeds (:func:`summarize_seeds`).

Functions here work on whole tensors; :class:`OpenVocabAccuracy` accumulates the
same numbers batch by batch and sums its counters across DDP ranks, so it can
live inside a LightningModule::

    self.val_accuracy = OpenVocabAccuracy({"base": num_base, "novel": num_novel})
    # validation_step (dataloader 0 = base_val, 1 = novel_val):
    self.val_accuracy.update(logits, labels, group=("base", "novel")[dataloader_idx])
    # on_validation_epoch_end:
    self.log_dict(self.val_accuracy.compute()); self.val_accuracy.reset()

Ties between logits are broken by ``torch.topk``/``argmax`` (lowest index first
on CPU); with real-valued logits they practically never occur.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torchmetrics
from torch import Tensor

__all__ = [
    "MeanStd",
    "OpenVocabAccuracy",
    "harmonic_mean",
    "mean_class_accuracy",
    "summarize_seeds",
    "topk_accuracy",
]


class MeanStd(NamedTuple):
    """A metric summarized over runs (seeds): a plain ``(mean, std)`` tuple with names."""

    mean: float
    std: float


# --------------------------------------------------------------------------- functional


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Micro top-k accuracy in percent, as ``{"top1": ..., "top5": ...}``.

    ``logits`` is ``(N, C)``, ``targets`` is ``(N,)`` with ids in ``0..C-1``.  A
    ``k`` larger than ``C`` is capped at ``C`` (so it is 100 %); the key keeps the
    requested ``k`` so tables stay comparable across datasets.
    """
    logits, targets = _check_inputs(logits, targets, allow_empty=False)
    return {f"top{k}": 100.0 * _topk_hits(logits, targets, k).float().mean().item() for k in _check_ks(ks)}


def mean_class_accuracy(logits: Tensor, targets: Tensor, num_classes: int | None = None) -> float:
    """Top-1 recall averaged over the classes that occur in ``targets``, in percent.

    Classes without any target sample are left out of the mean rather than
    counted as 0 % (or 100 %): their recall is undefined, and evaluation lists are
    not guaranteed to cover every class.  (torchmetrics'
    ``MulticlassAccuracy(average="macro")`` differs: it also averages in, at 0 %,
    classes that are predicted but absent from the targets.)  ``num_classes`` defaults to
    ``logits.shape[1]`` and, when given, must equal it.
    """
    logits, targets = _check_inputs(logits, targets, allow_empty=False)
    if num_classes is not None and num_classes != logits.shape[1]:
        raise ValueError(f"num_classes={num_classes} but logits have {logits.shape[1]} columns")
    hits, support = _per_class_counts(logits, targets)
    present = support > 0
    return 100.0 * (hits[present].double() / support[present].double()).mean().item()


def harmonic_mean(base: float, novel: float) -> float:
    """Harmonic mean of base and novel accuracy; 0 when either is 0 (no division by zero)."""
    base, novel = float(base), float(novel)
    if base < 0 or novel < 0:
        raise ValueError(f"accuracies must be non-negative, got base={base}, novel={novel}")
    if base == 0 or novel == 0:
        return 0.0
    return 2 * base * novel / (base + novel)


def summarize_seeds(runs: Sequence[Mapping[str, Any]], ddof: int = 1) -> dict[str, MeanStd]:
    """Mean and standard deviation of every numeric metric over runs (one dict per seed).

    ``std`` is the sample standard deviation (``ddof=1``, the spread one would
    expect between independent seeds); with a single run it is reported as 0.0
    instead of undefined.  Numbers may be Python, NumPy or 0-d tensor scalars;
    non-numeric entries (names, paths) are skipped.  A metric missing from some
    runs is an error, because averaging it over fewer seeds would be misleading.
    """
    if not runs:
        raise ValueError("summarize_seeds needs at least one run")
    numeric_keys = [key for key, value in runs[0].items() if _as_number(value) is not None]
    summary = {}
    for key in numeric_keys:
        values = []
        for index, run in enumerate(runs):
            value = _as_number(run.get(key))
            if value is None:
                raise ValueError(f"run {index} lacks a numeric {key!r}; every run must report the same metrics")
            values.append(value)
        mean = sum(values) / len(values)
        spread = len(values) - ddof
        std = math.sqrt(sum((value - mean) ** 2 for value in values) / spread) if spread > 0 else 0.0
        summary[key] = MeanStd(mean, std)
    return summary


# --------------------------------------------------------------------------- accumulator


class OpenVocabAccuracy(torchmetrics.Metric):
    """Top-1, top-k and mean-class accuracy per evaluation group, plus the base/novel harmonic mean.

    ``num_classes`` maps each group to the size of its own classifier, e.g.
    ``{"base": 200, "novel": 200}`` for base-to-novel or ``{"ucf101": 101}`` for a
    cross-dataset zero-shot run.  :meth:`compute` returns 0-d tensors in percent:
    ``<group>_top1``, ``<group>_top<k>``, ``<group>_mean_class`` (percent) and
    ``<group>_<unit>`` (the sample count; ``unit`` is ``videos`` or ``images``) for every group
    that received samples, and ``hm`` (of ``base_top1`` and ``novel_top1``) when
    both ``base`` and ``novel`` did.  All state is integer counts summed across
    DDP ranks, so the result is exact under distributed evaluation (apart from
    samples a distributed sampler duplicates to pad the last batch).

    ``subsets`` optionally names subsets of a group's classes, e.g.
    ``{"base": {"static": [0, 3, ...], "temporal": [1, 2, ...]}}``; :meth:`compute`
    then also returns ``<group>_<subset>_top1`` (top-1 over the subset's videos,
    still classified among all of the group's classes), from the same per-class counts.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: Mapping[str, int], top_k: int = 5,
                 subsets: Mapping[str, Mapping[str, Sequence[int]]] | None = None, unit: str = "videos",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unit = unit
        if not num_classes:
            raise ValueError("OpenVocabAccuracy needs at least one group, e.g. {'base': 200, 'novel': 200}")
        (self.top_k,) = _check_ks((top_k,))
        self.num_classes = dict(num_classes)
        for group, count in self.num_classes.items():
            if not group.isidentifier() or count < 1:
                raise ValueError(f"group names must be identifiers with >= 1 class, got {group!r}: {count}")
            self.add_state(f"{group}_hits", torch.zeros(count, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{group}_support", torch.zeros(count, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{group}_topk_hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.subsets = {group: {name: list(ids) for name, ids in named.items()} for group, named in (subsets or {}).items()}
        for group, named in self.subsets.items():
            for name, ids in named.items():
                if group not in self.num_classes or not name.isidentifier():
                    raise ValueError(f"subset {name!r} of unknown group {group!r} (or not an identifier)")
                if any(not 0 <= i < self.num_classes[group] for i in ids):
                    raise ValueError(f"subset {group}/{name} has class ids outside 0..{self.num_classes[group] - 1}")

    def update(self, logits: Tensor, targets: Tensor, group: str = "base") -> None:
        """Add a batch of ``(N, C)`` logits over ``group``'s classes and their ``(N,)`` targets."""
        if group not in self.num_classes:
            raise ValueError(f"unknown group {group!r}; this metric tracks {sorted(self.num_classes)}")
        logits, targets = _check_inputs(logits, targets, allow_empty=True)
        if logits.shape[1] != self.num_classes[group]:
            raise ValueError(f"group {group!r} has {self.num_classes[group]} classes, logits have {logits.shape[1]}")
        hits, support = _per_class_counts(logits, targets)
        setattr(self, f"{group}_hits", getattr(self, f"{group}_hits") + hits)
        setattr(self, f"{group}_support", getattr(self, f"{group}_support") + support)
        topk_hits = _topk_hits(logits, targets, self.top_k).sum()
        setattr(self, f"{group}_topk_hits", getattr(self, f"{group}_topk_hits") + topk_hits)

    def compute(self) -> dict[str, Tensor]:
        results = {}
        for group in self.num_classes:
            hits, support = getattr(self, f"{group}_hits"), getattr(self, f"{group}_support")
            total = support.sum()
            if total == 0:
                continue  # this group was not evaluated (e.g. only base_val ran)
            present = support > 0
            results[f"{group}_top1"] = 100.0 * hits.sum().double() / total
            results[f"{group}_top{self.top_k}"] = 100.0 * getattr(self, f"{group}_topk_hits").double() / total
            results[f"{group}_mean_class"] = 100.0 * (hits[present].double() / support[present]).mean()
            results[f"{group}_{self.unit}"] = total.double()  # how many samples the accuracies are over
            for name, ids in self.subsets.get(group, {}).items():
                subset_total = support[ids].sum()
                if subset_total > 0:
                    results[f"{group}_{name}_top1"] = 100.0 * hits[ids].sum().double() / subset_total
        if "base_top1" in results and "novel_top1" in results:
            hm = harmonic_mean(results["base_top1"].item(), results["novel_top1"].item())
            results["hm"] = torch.tensor(hm, dtype=torch.float64)
        return {key: value.float() for key, value in results.items()}


# --------------------------------------------------------------------------- shared helpers


def _check_inputs(logits: Tensor, targets: Tensor, allow_empty: bool) -> tuple[Tensor, Tensor]:
    """Validate ``(N, C)`` logits and ``(N,)`` integer targets in range; returns them detached."""
    logits, targets = torch.as_tensor(logits).detach(), torch.as_tensor(targets).detach()
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (N, C) with C >= 1, got shape {tuple(logits.shape)}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets must be ({logits.shape[0]},) to match logits, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class ids, got dtype {targets.dtype}")
    if targets.numel() == 0:
        if allow_empty:
            return logits, targets.long()
        raise ValueError("no samples to evaluate (empty logits)")
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(
            f"target ids must be in 0..{logits.shape[1] - 1}, got {targets.min().item()}..{targets.max().item()}"
        )
    return logits, targets.long()


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return ks


def _topk_hits(logits: Tensor, targets: Tensor, k: int) -> Tensor:
    """Boolean ``(N,)``: is the target among the ``min(k, C)`` highest logits?"""
    k = min(k, logits.shape[1])
    return logits.topk(k, dim=1).indices.eq(targets.unsqueeze(1)).any(dim=1)


def _per_class_counts(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class top-1 hits and per-class sample counts, both ``(C,)`` long tensors."""
    num_classes = logits.shape[1]
    correct = logits.argmax(dim=1).eq(targets)
    return torch.bincount(targets[correct], minlength=num_classes), torch.bincount(targets, minlength=num_classes)


def _as_number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, NumPy or 0-d tensor), else None."""
    if isinstance(value, Tensor):
        return float(value.item()) if value.numel() == 1 else None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)
