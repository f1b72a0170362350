"""The ``--teacher`` / ``--pretrained`` options of every command that loads a frozen teacher."""

from __future__ import annotations

import argparse

#: The teacher shipped in data/teachers: what every command uses when none is named.
DEFAULT_TEACHER = ("vlkd-synth-vit", "synthactions")


def add_teacher_arguments(parser: argparse.ArgumentParser, what: str = "the frozen teacher") -> None:
    parser.add_argument("--teacher", default=DEFAULT_TEACHER[0],
                        help=f"open_clip architecture name or a weights folder of {what} (default: the shipped "
                             "SynthActions teacher)")
    parser.add_argument("--pretrained", default=None,
                        help="pretrained tag or checkpoint file for an architecture name (default: "
                             f"{DEFAULT_TEACHER[1]!r} for {DEFAULT_TEACHER[0]}, else random weights; 'none': random)")


def teacher_weights(args: argparse.Namespace) -> tuple[str, str | None]:
    """``(name, pretrained)`` from the options: the shipped teacher gets its tag when none is given,
    and ``none`` asks for random weights."""
    pretrained = args.pretrained
    if pretrained is None and args.teacher == DEFAULT_TEACHER[0]:
        pretrained = DEFAULT_TEACHER[1]
    elif isinstance(pretrained, str) and pretrained.strip().lower() in ("none", "null", ""):
        pretrained = None
    return args.teacher, pretrained
