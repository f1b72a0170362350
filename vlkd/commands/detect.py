"""``vlkd detect``: find objects named in free text on image files, with a trained EZAD detector.

    vlkd detect photos/a.jpg photos/b.jpg --checkpoint runs/ezad_synth/lightning_logs/version_0/checkpoints/last.ckpt \\
        --classes "red ball, blue triangle, green star" --out detections/
    vlkd detect photos/ --checkpoint detectors/ezad_synth --classes "red ball, orange triangle" --out detections/ \\
        --score-threshold 0.5 --max-detections 20

``--checkpoint`` is the ``last.ckpt`` of a ``vlkd fit`` run of :class:`vlkd.methods.EZAD`, or
the folder ``vlkd export`` wrote from one. Any names work (open vocabulary): they are
embedded by the run's teacher, the re-normalised teacher folder the run made (recorded in
the checkpoint and in the exported folder's config) or, for a variant that did not
re-normalise, the config's teacher, with the run's prompt templates; the detector's
classifier compares every region with those embeddings.

Written to ``--out``:

* ``detections.json``, in COCO's dataset layout, so ``pycocotools.COCO("detections.json")``
  reads it and ``annotations`` is a COCO results list::

      {"info": {"checkpoint": ..., "classes": [...], "score_threshold": 0.3, "max_detections": 100,
                "templates": [...], "teacher": {...}},
       "images": [{"id": 1, "file_name": "photos/a.jpg", "width": 640, "height": 480, "drawn": "a.png"}],
       "categories": [{"id": 1, "name": "red ball"}, ...],          # ids 1..K in the order of --classes
       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h],
                        "area": w * h, "score": 0.93, "iscrowd": 0}, ...],
       "skipped": [{"file_name": "photos/broken.jpg", "reason": "..."}]}

  ``bbox`` is COCO's ``[x, y, width, height]`` in the image's pixels (top-left origin,
  after the EXIF orientation is applied), best score first within each image; only
  detections scoring above ``--score-threshold`` are kept, at most ``--max-detections``
  per image (after per-class NMS at IoU 0.5).
* per image, a PNG (``images[i]["drawn"]``, the image's name with ``.png``; ``-2``, ``-3``
  ... added where names collide) with every kept box and its ``name score`` label drawn.
  Images smaller than 512 px on the shorter side are drawn enlarged by a whole factor
  (nearest neighbour), so the labels stay legible; the JSON keeps the original pixels.

An image that cannot be read is skipped, reported on stderr and in ``skipped``, and the
others are processed; if none can be read the command fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vlkd.errors import ConfigError, ImageReadError
from vlkd.methods.ezad_inference import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_SCORE_THRESHOLD,
    IMAGE_SUFFIXES,
    OpenVocabularyDetector,
    collect_images,
    draw_detections,
    image_tensor,
    load_detector,
    load_image,
)

OUTPUT_FILE = "detections.json"
# --------------------------------------------------------------------------- the command

def parse_class_names(text: str | None) -> list[str]:
    """``--classes`` (comma-separated) -> names; empty, duplicate (ignoring case) or overlong names are refused."""
    from vlkd.demo.handler import DemoInputError, parse_names

    try:
        return parse_names(text, max_classes=None, what="class")
    except DemoInputError as error:
        raise ConfigError(f"--classes: {error}, e.g. --classes \"red ball, blue triangle\"") from None


def _drawn_name(image: Path, used: set[str], inputs: set[Path], out: Path) -> str:
    stem, number = image.stem or "image", 1
    while True:
        name = f"{stem}.png" if number == 1 else f"{stem}-{number}.png"
        if name not in used and (out / name).resolve() not in inputs:
            used.add(name)
            return name
        number += 1


def _round(value: float, digits: int) -> float:
    return float(round(float(value), digits))


def _no_images(skipped: list[dict]) -> ConfigError:
    reasons = "; ".join(f"{s['file_name']}: {s['reason']}" for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
    return ConfigError(f"no image to read ({reasons}): pass image files ({', '.join(IMAGE_SUFFIXES)}) "
                       "or folders holding them")


def detect_files(paths: Sequence[str | Path], detector: OpenVocabularyDetector, names: Sequence[str],
                 out: str | Path, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 max_detections: int = DEFAULT_MAX_DETECTIONS, draw: bool = True,
                 report=None) -> dict:
    """Detect ``names`` on the image files ``paths`` (folders: their images), write ``detections.json`` and the
    drawn PNGs into ``out``; returns the JSON's content. ``report(message)`` hears of every skipped file.

    Raises:
        ConfigError: no image could be read.
    """
    out = Path(out).expanduser()
    images, skipped = collect_images(paths)
    for entry in skipped:
        if report:
            report(f"skipped {entry['file_name']}: {entry['reason']}")
    if not images:
        raise _no_images(skipped)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder to write the detections into")
    out.mkdir(parents=True, exist_ok=True)
    inputs = {p.resolve() for p in images}
    embeddings = detector.embed(names)
    records, annotations, used = [], [], set()
    for path in images:
        try:
            image = load_image(path)
        except ImageReadError as error:
            skipped.append({"file_name": str(path), "reason": error.reason})
            if report:
                report(f"skipped {path}: {error.reason}")
            continue
        (output,) = detector.detect([image_tensor(image)], embeddings, score_threshold, max_detections)
        image_id = len(records) + 1
        record = {"id": image_id, "file_name": str(path), "width": image.width, "height": image.height}
        boxes, scores, labels = output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [_round(x0, 2), _round(y0, 2), _round(w, 2), _round(h, 2)],
                                "area": _round(w * h, 2), "score": _round(score, 5), "iscrowd": 0})
        if draw:
            record["drawn"] = _drawn_name(path, used, inputs, out)
            draw_detections(image, boxes, labels, scores, names).save(out / record["drawn"])
        records.append(record)
    if not records:
        reasons = "; ".join(f"{s['file_name']}: {s['reason']}" for s in skipped[:3])
        raise ConfigError(f"none of the {len(images)} images could be read ({reasons}): pass image files "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    result = {
        "info": {"description": "vlkd detect", "checkpoint": str(detector.source), "classes": list(names),
                 "score_threshold": float(score_threshold), "max_detections": int(max_detections),
                 "templates": list(detector.templates), "teacher": detector.teacher_record,
                 "bbox": "[x, y, width, height] in the image's pixels"},
        "images": records,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)],
        "annotations": annotations,
        "skipped": skipped,
    }
    (out / OUTPUT_FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd detect", description=__doc__.split("\n\n")[0],
                                     epilog="Output: detections.json (COCO layout: images, categories, annotations "
                                            "with [x, y, w, h] boxes and scores, skipped) and one PNG per image "
                                            "with the boxes drawn. See the README's EZAD section.")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (PNG, JPEG, WebP, BMP, GIF, TIFF) or folders of them")
    parser.add_argument("--checkpoint", required=True,
                        help="the last.ckpt of a `vlkd fit` run of vlkd.methods.EZAD, or a folder `vlkd export` "
                             "wrote from one")
    parser.add_argument("--classes", required=True,
                        help='the object names to find, separated by commas, e.g. "red ball, blue triangle" '
                             "(any names: they are embedded by the run's teacher)")
    parser.add_argument("--out", required=True, help="folder to write detections.json and the drawn PNGs to")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help=f"keep detections scoring above this, in [0, 1] (default {DEFAULT_SCORE_THRESHOLD})")
    parser.add_argument("--max-detections", type=int, default=DEFAULT_MAX_DETECTIONS,
                        help=f"most detections kept per image (default {DEFAULT_MAX_DETECTIONS})")
    parser.add_argument("--no-draw", action="store_true", help="write detections.json only, no PNGs")
    parser.add_argument("--teacher", default=None,
                        help="embed the names with this teacher (open_clip name or folder) instead of the run's, "
                             "e.g. when the run's re-normalised teacher folder was moved")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file of --teacher")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda if available, else cpu)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold must be in [0, 1] (a class probability), got {args.score_threshold:g}")
    if args.max_detections < 1:
        raise ConfigError(f"--max-detections must be at least 1, got {args.max_detections}")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: no CUDA device is available here, pass --device cpu")
    if args.pretrained is not None and args.teacher is None:
        raise ConfigError("--pretrained needs --teacher: it names the weights of that teacher")
    names = parse_class_names(args.classes)
    images, skipped = collect_images(args.images)
    if not images:  # fail before loading any model
        raise _no_images(skipped)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: pass a folder to write the detections into")
    started = time.perf_counter()
    detector = load_detector(args.checkpoint, args.device, args.teacher, args.pretrained)

    def report(message: str) -> None:
        print(f"vlkd detect: {message}", file=sys.stderr)

    result = detect_files(args.images, detector, names, out, args.score_threshold, args.max_detections,
                          draw=not args.no_draw, report=report)
    images_done, skipped = len(result["images"]), len(result["skipped"])
    print(f"{len(result['annotations'])} detections above {args.score_threshold:g} of {len(names)} classes on "
          f"{images_done} image{'s' if images_done != 1 else ''} in {time.perf_counter() - started:.1f} s "
          f"({detector.label}); wrote {out / OUTPUT_FILE}" + ("" if args.no_draw else " and the drawn PNGs")
          + (f"; {skipped} skipped (listed in 'skipped')" if skipped else ""))
    return 0
