"""How many of the unannotated novel objects of SynthDetection's training images the CLIP proposals find,
with the frozen teacher and with re-normalised ones.

    python benchmarks/ezad_proposals.py              # ~10 min on one CPU thread
    python benchmarks/ezad_proposals.py --images 100

The proposals are those of configs/ezad_synth.yaml (anchors, crops, NMS, the base filter, the kept count);
the novel objects are the world's annotations/novel_in_train.json, which no method trains on. Per teacher:
recall of the novel objects at IoU 0.5 by all kept proposals and by the first 20 (what a training step
distils), the share of the kept proposals that touch a novel object (IoU > 0.1), and their mean confidence.
The re-normalised teachers are built (and kept under benchmarks/runs/ezad_proposals/) with the recipes of
benchmarks/ezad_crops.py: OFFLINE_RECIPE (softmax CE over the base names) and sigmoid BCE with a bias
from -10 at the same schedule. Writes benchmarks/results/ezad_proposals.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
import yaml

from vlkd.eval import markdown_table, write_results

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "ezad_proposals"
WORLD = REPO / "synth" / "detection"
CONFIG = REPO / "configs" / "ezad_synth.yaml"


def teachers() -> dict:
    from vlkd.teacher import create_teacher
    from vlkd.teacher.renormalize import OFFLINE_RECIPE, renormalize_teacher

    split = json.loads((WORLD / "split.json").read_text())
    common = dict(towers=("image", "text"), threads=1, progress=False,
                  eval_annotations=WORLD / "annotations" / "instances_val.json", eval_image_root=WORLD / "images" / "val",
                  eval_names=split["base"] + split["novel"])
    out = {"frozen teacher": create_teacher("vlkd-synth-vit", pretrained="synthactions")}
    for name, folder, recipe in (
            ("re-normalised, softmax CE (OFFLINE_RECIPE)", RUNS / "ce", OFFLINE_RECIPE),
            ("re-normalised, BCE + bias from -10", RUNS / "bce_bias", {**OFFLINE_RECIPE, "loss": "bce",
                                                                        "bias_init": -10.0})):
        result = renormalize_teacher("vlkd-synth-vit", "synthactions", WORLD / "annotations" / "instances_train.json",
                                     WORLD / "images" / "train", split["base"], folder, **{**recipe, **common})
        out[name] = (result.load(), result.after)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="the first N training images (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("VLKD_OFFLINE", "1")
    torch.set_num_threads(1)
    from torchvision.ops import box_iou

    from vlkd.data.detection import read_coco_annotations
    from vlkd.data.images import read_image
    from vlkd.data.synthetic.detection import generate_detection
    from vlkd.teacher.proposals import ProposalSettings, generate_proposals

    generate_detection(WORLD)
    settings = ProposalSettings(**yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["proposals"])
    per_step = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]["proposals_per_image"]
    split = json.loads((WORLD / "split.json").read_text())
    names = split["base"] + split["novel"]
    base = torch.tensor([name in split["base"] for name in names])
    train, _, _ = read_coco_annotations(WORLD / "annotations" / "instances_train.json")
    hidden, _, _ = read_coco_annotations(WORLD / "annotations" / "novel_in_train.json")
    novel_of = {record.image_id: record.boxes for record in hidden}
    train = train[: args.images] if args.images else train
    rows = []
    for name, entry in teachers().items():
        teacher, crops = entry if isinstance(entry, tuple) else (entry, None)
        text = teacher.encode_text(names, list(settings.templates))
        found = first = objects = touching = kept = 0
        confidence = 0.0
        for record in train:
            image = read_image(WORLD / "images" / "train" / record.path).float() / 255
            proposals = generate_proposals(teacher, image, text, record.boxes, base, settings)
            novel = novel_of.get(record.image_id, torch.zeros(0, 4))
            objects += len(novel)
            kept += len(proposals)
            confidence += float(proposals.confidence.sum())
            if len(novel) and len(proposals):
                iou = box_iou(novel, proposals.boxes)
                found += int((iou.max(dim=1).values >= 0.5).sum())
                first += int((iou[:, :per_step].max(dim=1).values >= 0.5).sum())
                touching += int((iou.max(dim=0).values > 0.1).sum())
        rows.append({"teacher": name, "novel_recall_at_0.5": 100 * found / max(objects, 1),
                     f"recall_first_{per_step}": 100 * first / max(objects, 1),
                     "proposals_per_image": kept / len(train),
                     "proposals_touching_a_novel_object": 100 * touching / max(kept, 1),
                     "mean_confidence": confidence / max(kept, 1),
                     "crop_top1_base_novel": "-" if crops is None else
                     f"{crops.groups['base']:.1f} / {crops.groups['novel']:.1f}"})
        print(rows[-1])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    write_results({"machine": machine, "images": len(train), "novel_objects": objects, "rows": rows}, RESULTS,
                  name="ezad_proposals")
    (RESULTS / "ezad_proposals.md").write_text(
        "# CLIP proposals on SynthDetection's training images: the unannotated novel objects they find\n\n"
        f"{len(train)} training images, {objects} novel objects (annotations/novel_in_train.json); proposals of "
        "configs/ezad_synth.yaml; recall in %, IoU 0.5.\n\n" + markdown_table(rows))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
