"""EZAD's CLIP re-normalisation on SynthDetection: ground-truth crop top-1 before and after, per recipe and seed.

    python benchmarks/ezad_crops.py                        # every recipe, seed 0
    python benchmarks/ezad_crops.py --recipes bce_bias ce --seeds 0 1 2

Renders the default SynthDetection world into --world if needed, re-normalises the
shipped teacher (``vlkd-synth-vit`` / ``synthactions``) on the base boxes of
``instances_train.json`` with each recipe (:func:`vlkd.teacher.renormalize.renormalize_teacher`;
the folders go to --runs and are reused when up to date), and measures crop top-1 on every
box of ``instances_val.json`` among all 12 names (base and novel reported apart).  Writes
benchmarks/results/ezad_crops.json and .md.

One thread by default: on a small shared CPU, two OpenMP threads make this tiny model's
operations about four times slower than one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vlkd.data.synthetic.detection import generate_detection
from vlkd.eval import markdown_table, write_results
from vlkd.teacher.renormalize import OFFLINE_RECIPE, renormalize_teacher

RESULTS = Path(__file__).parent / "results"
TEACHER = ("vlkd-synth-vit", "synthactions")

_OFFLINE_SCHEDULE = {"lr": 1e-3, "batch_size": 16, "epochs": 8}
_BCE_BIAS = {**_OFFLINE_SCHEDULE, "loss": "bce", "bias_init": -10.0}

#: name -> (what it is, settings beside the defaults of renormalize_teacher, which are EZAD's COCO recipe, seeds).
RECIPES: dict[str, tuple[str, dict, tuple[int, ...]]] = {
    "ezad": ("EZAD's COCO recipe: both towers, sigmoid BCE without bias, lr 1e-4, batch 32, 12 epochs", {}, (0,)),
    "ezad_lvis": ("EZAD's LVIS recipe: the image tower only", {"towers": ("image",)}, (0,)),
    "ezad_lr1e-3": ("EZAD's COCO recipe at lr 1e-3", {"lr": 1e-3}, (0,)),
    "ce_lr1e-4": ("softmax CE over the base names at EZAD's schedule", {"loss": "ce"}, (0,)),
    "bce": ("sigmoid BCE without bias, lr 1e-3, batch 16, 8 epochs", dict(_OFFLINE_SCHEDULE), (0,)),
    "bce_bias": ("sigmoid BCE with a learnable bias from -10 (threshold at cosine 0.5), lr 1e-3, batch 16, "
                 "8 epochs", dict(_BCE_BIAS), (0, 1, 2)),
    "bce_bias_image": ("as bce_bias, the image tower only", {**_BCE_BIAS, "towers": ("image",)}, (0,)),
    "bce_bias-7": ("as bce_bias, the bias from -7 (cosine 0.35)", {**_BCE_BIAS, "bias_init": -7.0}, (0,)),
    "bce_bias-14": ("as bce_bias, the bias from -14 (cosine 0.71)", {**_BCE_BIAS, "bias_init": -14.0}, (0,)),
    "ce": ("softmax CE over the base names, lr 1e-3, batch 16, 8 epochs: OFFLINE_RECIPE", dict(OFFLINE_RECIPE),
           (0, 1, 2)),
    "ce_image": ("as ce, the image tower only", {**OFFLINE_RECIPE, "towers": ("image",)}, (0,)),
}


def _hm(base: float, novel: float) -> float:
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="synth/detection", type=Path)
    parser.add_argument("--runs", default="benchmarks/runs/ezad_crops", type=Path)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds of every recipe (default: its own)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="ezad_crops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = generate_detection(args.world)
    names = world.category_names
    groups = {"base": world.base_names, "novel": world.novel_names}
    runs, per_category = {}, {}
    for recipe in args.recipes:
        description, settings, seeds = RECIPES[recipe]
        for seed in args.seeds or seeds:
            started = time.perf_counter()
            result = renormalize_teacher(
                *TEACHER, world.train_json, world.image_dir("train"), world.base_names,
                args.runs / f"{recipe}-s{seed}", eval_annotations=world.val_json,
                eval_image_root=world.image_dir("val"),
                eval_names=names, eval_groups=groups, threads=args.threads, progress=False,
                **{**settings, "seed": seed})
            before, after = result.before, result.after
            used = result.manifest["key"]["settings"]
            seconds = result.manifest["seconds"]
            runs[f"{recipe} s{seed}"] = {
                "recipe": recipe, "seed": seed, "loss": used["loss"], "bias_init": used["bias_init"],
                "towers": "+".join(used["towers"]), "lr": f"{used['lr']:g}", "batch": used["batch_size"],
                "epochs": used["epochs"],
                "base_before": before.groups["base"], "novel_before": before.groups["novel"],
                "base_after": after.groups["base"], "novel_after": after.groups["novel"],
                "all_after": after.top1, "hm_after": _hm(after.groups["base"], after.groups["novel"]),
                "train_s": seconds["train"], "total_s": seconds["total"],
                "description": description,
            }
            per_category.setdefault("frozen", before.per_category)
            per_category[f"{recipe} s{seed}"] = after.per_category
            print(f"{recipe} s{seed}: before {before.summary()}; after {after.summary()} "
                  f"({seconds['train']:.0f} s training{'' if result.trained else ', reused'}, "
                  f"{time.perf_counter() - started:.0f} s here)", flush=True)
    if not runs:
        sys.exit("no recipe ran")
    means = []
    for recipe in args.recipes:
        rows = [row for row in runs.values() if row["recipe"] == recipe]
        if len(rows) > 1:
            means.append({**rows[0], "seed": f"mean of {len(rows)}",
                          **{key: sum(row[key] for row in rows) / len(rows) for key in
                             ("base_after", "novel_after", "all_after", "hm_after", "train_s", "total_s")}})
    frozen = next(iter(runs.values()))
    write_results({"teacher": ":".join(TEACHER), "world": str(world.root), "threads": args.threads,
                   "counts": world.counts, "frozen": {"base": frozen["base_before"], "novel": frozen["novel_before"]},
                   "runs": runs, "means": {row["recipe"]: row for row in means}, "per_category": per_category},
                  RESULTS, name=args.name)
    columns = ["recipe", "seed", "loss", "bias_init", "towers", "lr", "batch", "epochs", "base_before", "novel_before",
               "base_after", "novel_after", "all_after", "hm_after", "train_s"]
    table = markdown_table(list(runs.values()), columns, digits=1)
    summary = f"Means over seeds:\n\n{markdown_table(means, columns, digits=1)}\n" if means else ""
    categories = markdown_table([{"teacher": key, **values} for key, values in per_category.items()],
                                ["teacher", *names], digits=0)
    recipes = "\n".join(f"* `{recipe}`: {RECIPES[recipe][0]}" for recipe in args.recipes)
    (RESULTS / f"{args.name}.md").write_text(
        "# EZAD re-normalisation on SynthDetection: ground-truth crop top-1 (%) among all 12 names\n\n"
        f"Teacher {':'.join(TEACHER)}; trained on the {world.counts.get('train_annotations', '?')} base boxes of "
        f"instances_train.json, evaluated on the {world.counts.get('val_annotations', '?')} boxes of "
        f"instances_val.json; {args.threads} CPU thread(s); train_s: seconds of training alone.\n\n{recipes}\n\n"
        f"{table}\n{summary}\n"
        f"Per category (base: {', '.join(world.base_names)}; novel: {', '.join(world.novel_names)}):\n\n{categories}",
        encoding="utf-8")
    print(table)
    if summary:
        print(summary)

if __name__ == "__main__":
    main()
