"""``vlkd synth``: build the offline world (SynthActions videos) and its tiny CLIP teacher."""

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
    from vlkd.teacher.pretrain import pretrain_teacher

    kwargs = {} if args.steps is None else {"steps": args.steps}
    out = pretrain_teacher(args.out, seed=args.seed, **kwargs)
    print(f"teacher written to {out}: load it with vlkd.create_teacher({str(out)!r})")
    return 0
