"""``vlkd synth``: build the offline worlds (SynthActions videos, SynthImages stills, SynthDetection scenes, the
SynthTasks sequence) and their tiny CLIP teacher."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from vlkd.data.synthetic.render import DEFAULT_FRAMES, DEFAULT_SIZE
from vlkd.data.synthetic.world import STYLES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd synth", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)

    actions = sub.add_parser("actions", help="render a SynthActions video world with its split files")
    actions.add_argument("--out", required=True, help="output folder (video root and split folder)")
    actions.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    actions.add_argument("--style", choices=sorted(STYLES), default="flat", help="render style (default flat)")
    actions.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"frame side in pixels (default {DEFAULT_SIZE})")
    actions.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"frames per clip (default {DEFAULT_FRAMES})")
    actions.add_argument("--clips-per-class", type=int, default=32, help="evaluation clips per class (default 32)")
    actions.add_argument("--train-clips-per-class", type=int, default=32,
                         help="base training pool per class; each seed's 16-shot list is drawn from it (default 32)")
    actions.add_argument("--shots", type=int, default=16, help="training clips per base class in each seed's list (default 16)")
    actions.add_argument("--workers", type=int, default=None, help="render processes (default: up to 2)")
    actions.add_argument("--force", action="store_true", help="render again even if the folder is up to date")

    images = sub.add_parser("images", help="render the SynthImages world (CoOp layout, labelled-subset lists)")
    images.add_argument("--out", required=True, help="output folder")
    images.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    images.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    images.add_argument("--pool-per-class", type=int, default=100,
                        help="training images per class: the labelled subsets and the unlabelled pool (default 100)")
    images.add_argument("--val-per-class", type=int, default=10, help="validation images per class (default 10)")
    images.add_argument("--test-per-class", type=int, default=30, help="test images per class (default 30)")
    images.add_argument("--force", action="store_true", help="render again even if the folder is up to date")

    detection = sub.add_parser("detection", help="render the SynthDetection world (COCO layout, base/novel split)")
    detection.add_argument("--out", required=True, help="output folder")
    detection.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    detection.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    detection.add_argument("--train-images", type=int, default=600, help="training images (default 600)")
    detection.add_argument("--val-images", type=int, default=200, help="validation images (default 200)")
    detection.add_argument("--min-objects", type=int, default=2, help="fewest category objects drawn per image (default 2)")
    detection.add_argument("--max-objects", type=int, default=5, help="most category objects per image (default 5)")
    detection.add_argument("--force", action="store_true", help="render again even if the folder is up to date")

    tasks = sub.add_parser("tasks", help="render the SynthTasks sequence (one CoOp dataset per task, tasks.json)")
    tasks.add_argument("--out", required=True, help="output folder (one sub-folder per task and tasks.json)")
    tasks.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    tasks.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    tasks.add_argument("--train-per-class", type=int, default=64, help="training images per class (default 64)")
    tasks.add_argument("--val-per-class", type=int, default=10, help="validation images per class (default 10)")
    tasks.add_argument("--test-per-class", type=int, default=30, help="test images per class (default 30)")
    tasks.add_argument("--force", action="store_true", help="render again even if the folder is up to date")

    teacher = sub.add_parser("teacher", help="pretrain the tiny CLIP teacher on captioned still frames")
    teacher.add_argument("--out", required=True, help="output folder for the open_clip config and weights")
    teacher.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    teacher.add_argument("--steps", type=int, default=None, help="optimisation steps (default: the shipped teacher's)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.what == "actions":
        from vlkd.data.synthetic import generate_actions

        data = generate_actions(
            args.out,
            seed=args.seed,
            style=args.style,
            size=args.size,
            frames=args.frames,
            clips_per_class=args.clips_per_class,
            train_clips_per_class=args.train_clips_per_class,
            shots=args.shots,
            workers=args.workers,
            force=args.force,
        )
        state = f"rendered {data.rendered} clips in {data.seconds:.0f} s" if data.rendered else "already up to date"
        print(f"SynthActions '{data.name}' in {data.root}: {len(data.world.classes)} classes, {state}")
        return 0
    if args.what == "images":
        from vlkd.data.synthetic.images import generate_images

        world = generate_images(args.out, seed=args.seed, size=args.size, pool_per_class=args.pool_per_class,
                                val_per_class=args.val_per_class, test_per_class=args.test_per_class, force=args.force)
        state = f"rendered {world.rendered} images in {world.seconds:.0f} s" if world.rendered else "already up to date"
        print(f"SynthImages in {world.root}: {len(world.class_names)} classes, {world.counts}, {state}; "
              f"split file {world.split_file.name}, labelled lists in labelled/")
        return 0
    if args.what == "detection":
        from vlkd.data.synthetic.detection import generate_detection

        world = generate_detection(args.out, seed=args.seed, size=args.size, train_images=args.train_images,
                                   val_images=args.val_images, min_objects=args.min_objects,
                                   max_objects=args.max_objects, force=args.force)
        counts = world.counts
        state = f"rendered in {world.seconds:.1f} s" if world.rendered else "already up to date"
        print(f"SynthDetection in {world.root}: train {counts.get('train_images')} images, "
              f"{counts.get('train_annotations')} base boxes (+{counts.get('train_novel_objects')} novel objects "
              f"unannotated); val {counts.get('val_images')} images, {counts.get('val_annotations')} boxes; "
              f"{len(world.base_names)} base / {len(world.novel_names)} novel categories; {state}")
        return 0
    if args.what == "tasks":
        from vlkd.data.synthetic.tasks import MANIFEST_NAME, generate_tasks

        world = generate_tasks(args.out, seed=args.seed, size=args.size, train_per_class=args.train_per_class,
                               val_per_class=args.val_per_class, test_per_class=args.test_per_class, force=args.force)
        classes = sum(len(names) for names in world.class_names.values())
        state = f"rendered {world.rendered} images in {world.seconds:.0f} s" if world.rendered else "already up to date"
        print(f"SynthTasks in {world.root}: {len(world.tasks)} tasks, {classes} classes, {world.total()}, {state}; "
              f"manifest {MANIFEST_NAME} with orders {', '.join(world.orders)}")
        return 0
    from vlkd.teacher.pretrain import pretrain_teacher

    kwargs = {} if args.steps is None else {"steps": args.steps}
    out = pretrain_teacher(args.out, seed=args.seed, **kwargs)
    print(f"teacher written to {out}: load it with vlkd.create_teacher({str(out)!r})")
    return 0
