"""``vlkd demo``: a local web page for zero-shot action queries on a video and object detection on an image.

Upload a video (or pick a shipped SynthActions sample), type action names
separated by commas, and see the top-k actions with their probabilities and,
frame by frame, how well each action matches: the frozen teacher by default,
or a trained FROSTER student from ``--checkpoint``. The Detection tab finds
objects named in free text on an image with a trained EZAD detector from
``--detector``. Needs ``pip install "vlkd[demo]"``.

    vlkd demo                                      # the shipped teacher, http://127.0.0.1:7860
    vlkd demo --checkpoint runs/froster_synth/lightning_logs/version_0/checkpoints/averaged.ckpt
    vlkd demo --checkpoint students/froster_synth   # a student written by `vlkd export`
    vlkd demo --detector runs/ezad_synth/lightning_logs/version_0/checkpoints/last.ckpt
    vlkd demo --teacher ViT-B-16 --pretrained /ckpt/ViT-B-16.pt --port 8080
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from vlkd.commands.teacher_options import add_teacher_arguments, teacher_weights
from vlkd.demo.handler import DEFAULT_FPS, DEFAULT_MAX_FRAMES, MAX_CLASSES
from vlkd.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd demo", description=__doc__.split("\n\n")[0])
    add_teacher_arguments(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="a FROSTER checkpoint (.ckpt from `vlkd fit`) or a folder from `vlkd export`, "
                             "to offer its student besides the teacher")
    parser.add_argument("--detector", default=None,
                        help="an EZAD checkpoint (last.ckpt from `vlkd fit`) or a folder `vlkd export` wrote from one, "
                             "for the Detection tab (without it the tab says how to get one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 exposes the page to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"frames scored per second of video (default {DEFAULT_FPS:g})")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                        help=f"most frames scored per video (default {DEFAULT_MAX_FRAMES}); longer videos are sampled "
                             "evenly over their whole length")
    parser.add_argument("--max-classes", type=int, default=MAX_CLASSES, help=f"most action names per query (default {MAX_CLASSES})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the models run (default: cuda if available, else cpu)")
    return parser


def load_models(args: argparse.Namespace) -> list:
    """The scorers the page offers: the student first when a checkpoint is given, then the teacher."""
    from vlkd.demo.handler import TeacherScorer, load_student_scorer, load_teacher_scorer

    scorers = []
    if args.checkpoint is not None:
        _refuse_detector(args.checkpoint)
        student = load_student_scorer(args.checkpoint, args.device)
        scorers.append(student)
    _, pretrained = teacher_weights(args)
    held = getattr(getattr(scorers[0], "method", None), "teacher", None) if scorers else None
    if held is not None and held.name == f"{args.teacher}:{pretrained}":
        # FROSTER already holds this frozen teacher: offer it rather than loading it twice.
        scorers.append(TeacherScorer(held, f"frozen teacher: {args.teacher} ({pretrained})"))
    else:
        scorers.append(load_teacher_scorer(args.teacher, pretrained, args.device))
    return scorers


def _refuse_detector(checkpoint: str) -> None:
    """``--checkpoint`` is for video students: point an EZAD detector at ``--detector`` instead."""
    from vlkd.methods.ezad_inference import is_exported_detector, is_ezad_checkpoint

    if is_ezad_checkpoint(checkpoint) or is_exported_detector(checkpoint):
        raise ConfigError(f"{checkpoint} is an EZAD detector, not a video student: pass it as --detector {checkpoint}")


def load_detector_model(args: argparse.Namespace):
    """The Detection tab's detector (``--detector``), or ``None``."""
    if args.detector is None:
        return None
    from vlkd.demo.handler import load_detector

    return load_detector(args.detector, args.device)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.fps <= 0 or args.max_frames < 1 or args.max_classes < 1:
        raise ConfigError("--fps, --max-frames and --max-classes must be positive")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        from vlkd.demo.app import build_demo, launch
    except ImportError as error:
        raise ConfigError(f"the demo needs Gradio ({error}): pip install \"vlkd[demo]\"") from None
    scorers = load_models(args)
    detector = load_detector_model(args)
    demo = build_demo(scorers, fps=args.fps, max_frames=args.max_frames, max_classes=args.max_classes,
                      detector=detector)
    print(f"models loaded: {', '.join(s.label for s in scorers)}" + (f", {detector.label}" if detector else ""))
    try:
        launch(demo, host=args.host, port=args.port)
    except OSError as error:
        raise ConfigError(f"cannot serve on {args.host}:{args.port} ({error}): pick another --port") from None
    return 0
