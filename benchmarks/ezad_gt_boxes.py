"""Where the SynthDetection detectors' novel AP goes: RPN recall, what they call the validation ground-truth
boxes (background, a base class, the right or another novel class), how close their region embeddings are to
the teacher's, and what their confident novel detections hit.

    python benchmarks/ezad_gt_boxes.py                    # every finished run of benchmarks/ezad_synth.py

AP mixes three failures: a novel object the RPN never proposes (``rpn_recall``: share of the boxes with an
RPN proposal at IoU >= 0.5 among the test-time top proposals), one proposed but named wrongly, and
confident novel detections where there is no novel object. For the second every validation box is given
to the detector as a region (``EZADFasterRCNN.region_embeddings``) and classified among all 12 names and
the background by the detector's own classifier (``EmbeddingPredictor.logits``; % of the boxes), and its
embedding is compared (cosine) with the embedding the run's teacher gives the box's 1.2x crop (EZAD's
distillation target). For the third, ``novel_detections_on_novel``: of the detections scoring >= 0.3
with a novel label, the share at IoU >= 0.5 with a novel box of that label, and how many there are per image.
Reads the runs in benchmarks/runs/ezad_synth/<variant>/s<seed>/; writes
benchmarks/results/ezad_gt_boxes.{json,md}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vlkd.eval import markdown_table, write_results

HERE = Path(__file__).parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "ezad_synth"
WORLD = HERE.parent / "synth" / "detection"


def checkpoints() -> list[tuple[str, int, Path]]:
    found = []
    for summary in sorted(RUNS.glob("*/s*/summary.json")):
        ckpts = sorted(summary.parent.rglob("last.ckpt"))
        if ckpts:
            found.append((summary.parent.parent.name, int(summary.parent.name[1:]), ckpts[-1]))
    return found


@torch.no_grad()
def classify_boxes(checkpoint: Path) -> dict:
    from torchvision.ops import box_iou

    from vlkd.data.detection import read_coco_annotations
    from vlkd.data.images import read_image
    from vlkd.methods.ezad_inference import load_detector
    from vlkd.teacher.proposals import embed_boxes
    from vlkd.teacher.regions import RegionCrop

    split = json.loads((WORLD / "split.json").read_text())
    names = split["base"] + split["novel"]
    model = load_detector(checkpoint)
    detector = model.detector
    text = model.embed(names)
    records, name_of, _ = read_coco_annotations(WORLD / "annotations" / "instances_val.json")
    crop = RegionCrop(enlarge=1.2, min_size=10, square=True)
    counts = {half: {"background": 0, "base": 0, "right novel": 0, "other novel": 0, "right base": 0, "boxes": 0,
                     "cosine_to_teacher": 0.0, "rpn_recall": 0} for half in ("base", "novel")}
    confident = on_novel = 0
    novel_ids = {i for i, name in name_of.items() if name in split["novel"]}
    for record in records:
        image = read_image(WORLD / "images" / "val" / record.path).float() / 255
        if not len(record.boxes):
            continue
        image_list, _, features = detector._encode([image.to(model.device)])
        (proposals,), _ = detector.rpn(image_list, features)
        rpn_hit = (box_iou(record.boxes, proposals.cpu()).max(1).values >= 0.5 if len(proposals)
                   else torch.zeros(len(record.boxes), dtype=torch.bool))
        (found,) = model.detect([image], text, score_threshold=0.3)
        for box, label in zip(found["boxes"], found["labels"].tolist()):
            if names[label] in split["novel"]:
                confident += 1
                same = [b for b, c in zip(record.boxes, record.category_ids.tolist()) if name_of[c] == names[label]]
                on_novel += bool(same) and box_iou(box[None], torch.stack(same)).max().item() >= 0.5
        (embeddings,) = detector.region_embeddings([image], [record.boxes])
        detector.predictor.set_class_embeddings(text)
        predicted = detector.predictor.logits(embeddings).argmax(-1)
        teacher = torch.nn.functional.normalize(embed_boxes(model.teacher, image, record.boxes, crop), dim=-1)
        cosine = (embeddings.cpu() * teacher).sum(-1)
        for category, guess, cos, hit in zip(record.category_ids.tolist(), predicted.tolist(), cosine.tolist(),
                                             rpn_hit.tolist()):
            name = name_of[category]
            half = "novel" if category in novel_ids else "base"
            row = counts[half]
            row["boxes"] += 1
            row["cosine_to_teacher"] += cos
            row["rpn_recall"] += hit
            if guess == len(names):
                row["background"] += 1
            elif names[guess] in split["base"]:
                row["right base" if names[guess] == name else "base"] += 1
            else:
                row["right novel" if names[guess] == name else "other novel"] += 1
    for row in counts.values():
        total = max(row["boxes"], 1)
        for key in ("background", "base", "right base", "right novel", "other novel", "rpn_recall"):
            row[key] = 100 * row[key] / total
        row["cosine_to_teacher"] /= total
    counts["novel"]["novel_detections_on_novel"] = 100 * on_novel / max(confident, 1)
    counts["novel"]["novel_detections_per_image"] = confident / len(records)
    return counts


def main() -> None:
    os.environ.setdefault("VLKD_OFFLINE", "1")
    torch.set_num_threads(1)
    rows = []
    for variant, seed, checkpoint in checkpoints():
        kept = RUNS / variant / f"s{seed}" / "gt_boxes.json"  # a finished run is measured once
        if kept.is_file() and kept.stat().st_mtime > checkpoint.stat().st_mtime:
            counts = json.loads(kept.read_text())
        else:
            counts = classify_boxes(checkpoint)
            kept.write_text(json.dumps(counts, indent=1))
        for half, row in counts.items():
            rows.append({"variant": variant, "seed": seed, "half": half, **row})
            print(rows[-1], flush=True)
    write_results({"rows": rows}, RESULTS, name="ezad_gt_boxes")
    columns = ["variant", "seed", "half", "boxes", "rpn_recall", "background", "right base", "base", "right novel",
               "other novel", "cosine_to_teacher", "novel_detections_on_novel", "novel_detections_per_image"]
    (RESULTS / "ezad_gt_boxes.md").write_text(
        "# What the SynthDetection detectors call the validation ground-truth boxes (% of the boxes)\n\n"
        + __doc__.split("\n\n")[2] + "\n\n" + markdown_table(rows, columns, digits=1), encoding="utf-8")


if __name__ == "__main__":
    main()
