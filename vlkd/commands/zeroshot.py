"""``vlkd zeroshot``: a frozen CLIP teacher, zero-shot, on a base-to-novel video split.

Per-frame logits are averaged over time (and temporal views): the "frozen CLIP"
row of the open-vocabulary action recognition tables. Prints base / novel /
harmonic mean (top-1, percent); on a SynthActions world it also reports the
accuracy of static and temporal classes separately, and how often a temporal
class is mistaken for its twin (the same motion in the other direction).

Works the same on a real dataset root with the published split files::

    vlkd zeroshot --teacher ViT-B-16 --pretrained openai --data /data/k400 --dataset k400 --split s1
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from vlkd.commands.teacher_options import add_teacher_arguments, teacher_weights
from vlkd.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd zeroshot", description=__doc__.split("\n\n")[0])
    add_teacher_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset root (a SynthActions folder or a real video root)")
    parser.add_argument("--dataset", default=None,
                        help="split layout name (k400, hmdb51, ucf101, ssv2, ...); read from a SynthActions folder")
    parser.add_argument("--split-dir", default=None,
                        help="folder with the split files (default: the SynthActions folder, or the shipped real splits)")
    parser.add_argument("--split", default="s1", help="16-shot split seed s1, s2 or s3 (evaluation lists are shared)")
    parser.add_argument("--templates", default="video", help="prompt template set: video, photo or a '{}' template")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--views", type=int, default=1, help="temporal views per video, logits averaged (default 1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser


def _resolve_split(args) -> tuple[str, str | None]:
    manifest_path = Path(args.data) / "world_info.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        return args.dataset or manifest["settings"]["name"], args.split_dir or args.data
    if args.dataset is None:
        raise ConfigError(f"{args.data} is not a SynthActions folder: pass --dataset (k400, hmdb51, ucf101, ssv2, ...)")
    return args.dataset, args.split_dir


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    results = evaluate(args)
    print(format_results(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


@torch.no_grad()
def evaluate(args) -> dict:
    from vlkd.data.datamodule import Base2NovelSpec, VideoDataModule
    from vlkd.eval.metrics import harmonic_mean
    from vlkd.methods.zeroshot import ZeroShotCLIP
    from vlkd.teacher import TeacherSpec

    dataset, split_dir = _resolve_split(args)
    teacher, pretrained = teacher_weights(args)
    model = ZeroShotCLIP(TeacherSpec(teacher, pretrained), templates=args.templates).to(args.device)
    seed = int(str(args.split).lstrip("sS"))
    datamodule = VideoDataModule(
        args.data,
        base2novel=Base2NovelSpec(dataset=dataset, seed=seed, split_dir=split_dir),
        num_frames=args.frames,
        test_views=args.views,
        image_size=model.teacher.image_size,
        eval_batch_size=args.batch_size,
        num_workers=args.workers,
    )
    datamodule.setup("test")
    predictions: dict[str, tuple[list[str], list[str]]] = {}  # set -> (true names, predicted names)
    skipped = []
    for eval_set, loader in zip(datamodule.eval_sets, datamodule.val_dataloader()):
        names = eval_set.class_names
        truth, predicted = [], []
        for batch in tqdm(loader, desc=f"zero-shot {eval_set.name}", leave=False):
            skipped += batch["skipped"]
            keep = batch["label"] >= 0
            logits = model.view_averaged_logits(batch["video"][keep].to(args.device), names)
            truth += [names[i] for i in batch["label"][keep].tolist()]
            predicted += [names[i] for i in logits.argmax(dim=1).tolist()]
        predictions[eval_set.name] = (truth, predicted)

    results = {key: _accuracy(*predictions[key]) for key in ("base", "novel")}
    results["hm"] = harmonic_mean(results["base"], results["novel"])
    results.update(
        teacher=teacher, pretrained=pretrained, dataset=dataset, split=args.split, templates=args.templates,
        frames=args.frames, views=args.views, videos={k: len(v[0]) for k, v in predictions.items()},
        skipped_videos=len(skipped),
    )
    from vlkd.data.synthetic import read_world_classes

    groups = read_world_classes(args.data)
    if groups:
        results["groups"] = _group_report(predictions, groups)
    return results


def _accuracy(truth: list[str], predicted: list[str]) -> float:
    if not truth:
        return 0.0
    return 100.0 * sum(t == p for t, p in zip(truth, predicted)) / len(truth)


def _group_report(predictions: dict, classes: dict[str, dict]) -> dict:
    """Accuracy per (half, group) and the share of temporal errors that pick the twin class."""
    report = {}
    for half, (truth, predicted) in predictions.items():
        for group in ("static", "temporal"):
            pairs = [(t, p) for t, p in zip(truth, predicted) if classes[t]["group"] == group]
            report[f"{half}_{group}"] = _accuracy([t for t, _ in pairs], [p for _, p in pairs])
            if group == "temporal":
                errors = [(t, p) for t, p in pairs if t != p]
                twin = sum(classes[t]["twin"] == p for t, p in errors)
                report[f"{half}_twin_error_share"] = 100.0 * twin / len(errors) if errors else 0.0
    return report


def format_results(results: dict) -> str:
    lines = [f"zero-shot {results['teacher']} ({results['pretrained']}) on {results['dataset']} {results['split']}:",
             f"  base {results['base']:.2f}   novel {results['novel']:.2f}   HM {results['hm']:.2f}"]
    groups = results.get("groups")
    if groups:
        lines.append("  " + "   ".join(f"{key} {value:.2f}" for key, value in groups.items()))
    if results["skipped_videos"]:
        lines.append(f"  {results['skipped_videos']} unreadable video(s) skipped")
    return "\n".join(lines)
