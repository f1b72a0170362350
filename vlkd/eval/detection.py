"""COCO box AP of detections, for named groups of categories (base, novel, all), through pycocotools.

Zero-shot-annotation and open-vocabulary detection report AP50 (and AP over IoU
0.5:0.95) separately for the base categories, the novel ones and all of them (the
generalised setting, where base and novel compete in one vocabulary). pycocotools
matches detections to ground truth and accumulates the precision / recall table
once (``COCOeval.evaluate`` and ``accumulate``, with every category); each group's
AP is then the mean of that table over the group's categories, exactly what
``COCOeval.summarize`` computes for the categories it is given. Results are in
percent, at 100 detections per image (COCO's standard) and at 1,000 (what EZAD's and
ViLD's code report for LVIS / COCO novel AP).
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vlkd.errors import ConfigError

__all__ = ["coco_box_ap"]

MAX_DETS = (100, 1000)


def _silent(fn, *args):
    """pycocotools prints its progress; the results are returned instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def coco_box_ap(ground_truth: str | Path | Mapping, detections: Sequence[Mapping],
                groups: Mapping[str, Sequence[int]], max_dets: Sequence[int] = MAX_DETS) -> dict[str, float]:
    """Box AP (IoU 0.5:0.95) and AP50 of ``detections`` per group of category ids, in percent.

    Args:
        ground_truth: a COCO annotation file or its loaded dict (every group's categories annotated).
        detections: COCO result rows ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
        groups: name -> category ids, e.g. ``{"base": [...], "novel": [...], "all": [...]}``.
        max_dets: detections kept per image (the highest scored), each giving its own keys.

    Returns:
        ``{"<group>_ap", "<group>_ap50"}`` at ``max_dets[0]`` and ``"<group>_ap_<m>det"``,
        ``"<group>_ap50_<m>det"`` at every other ``m``. A group whose categories have no
        ground-truth box in these images gets no keys (its AP is undefined, not 0).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    content = ground_truth if isinstance(ground_truth, Mapping) else json.loads(Path(ground_truth).read_text())
    gt = COCO()
    gt.dataset = dict(content)
    _silent(gt.createIndex)
    known = set(gt.getCatIds())
    for name, ids in groups.items():
        unknown = sorted(set(ids) - known)
        if unknown:
            raise ConfigError(f"evaluation group {name!r} names category ids {unknown[:5]} the ground truth lacks")
    for row in detections:
        if row.get("category_id") not in known:
            raise ConfigError(f"a detection has category_id {row.get('category_id')!r}, which the ground truth lacks")
    if not detections:  # pycocotools cannot load an empty result list: nothing detected is AP 0
        return {key: 0.0 for name, ids in groups.items() if _has_boxes(gt, ids)
                for key in _keys(name, max_dets)}
    dt = _silent(gt.loadRes, [dict(row) for row in detections])
    evaluation = COCOeval(gt, dt, "bbox")
    evaluation.params.maxDets = sorted({1, 10, *max_dets})
    _silent(evaluation.evaluate)
    _silent(evaluation.accumulate)
    precision = evaluation.eval["precision"]  # (IoU thresholds, recall points, categories, areas, max dets)
    position = {category_id: k for k, category_id in enumerate(evaluation.params.catIds)}
    iou50 = int(np.argmin(np.abs(evaluation.params.iouThrs - 0.5)))
    results = {}
    for name, ids in groups.items():
        columns = [position[i] for i in ids]
        for m in max_dets:
            table = precision[:, :, columns, 0, evaluation.params.maxDets.index(m)]  # area "all"
            if not (table > -1).any():
                continue  # no ground truth in the group: AP undefined
            ap_key, ap50_key = _keys(name, max_dets, m)
            results[ap_key] = 100.0 * float(table[table > -1].mean())
            at50 = table[iou50]
            results[ap50_key] = 100.0 * float(at50[at50 > -1].mean())
    return results


def _keys(name: str, max_dets: Sequence[int], m: int | None = None) -> list[str]:
    chosen = [m] if m is not None else list(max_dets)
    keys = []
    for value in chosen:
        suffix = "" if value == max_dets[0] else f"_{value}det"
        keys += [f"{name}_ap{suffix}", f"{name}_ap50{suffix}"]
    return keys


def _has_boxes(gt, ids: Sequence[int]) -> bool:
    return bool(gt.getAnnIds(catIds=list(ids), iscrowd=False))
