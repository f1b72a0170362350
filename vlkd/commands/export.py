"""``vlkd export``: a trained video student as an open_clip weights folder.

Takes the checkpoint a FROSTER or fine-tuning run wrote (``averaged.ckpt``: the
epoch-averaged weights the final evaluation used) and writes the student's CLIP
model in open_clip's folder layout, with the student's temporal mode, prompt
templates and class descriptions in the config. The folder then loads three ways:

* ``VideoCLIP.from_pretrained(folder)``: the video student, neighbour-frame attention included;
* ``create_teacher(folder)``: a frozen, frame-by-frame CLIP (e.g. as a teacher, or for
  ``vlkd zeroshot --teacher folder``);
* ``open_clip.create_model_and_transforms("local-dir:" + folder)``: plain open_clip.

    vlkd export runs/froster_synth/lightning_logs/version_0/checkpoints/averaged.ckpt --out students/froster_synth
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlkd.errors import ConfigError
from vlkd.models.video_clip import CONFIG_FILE, WEIGHTS_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the .ckpt file of a FROSTER or FineTuneCLIP run (e.g. averaged.ckpt)")
    parser.add_argument("--out", required=True, help="folder to write the student to (created if missing)")
    parser.add_argument("--overwrite", action="store_true", help="replace a student already exported to --out")
    return parser


def export_student(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the student of ``checkpoint`` to the folder ``out``; returns the folder."""
    from vlkd.methods.checkpoints import load_video_method
    from vlkd.teacher.factory import open_clip_model_config

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: the export is a folder, pass a folder path")
    if not overwrite and any((out / name).exists() for name in (WEIGHTS_FILE, CONFIG_FILE)):
        raise ConfigError(f"{out} already holds an exported model: pass --overwrite to replace it, or another --out")
    checkpoint = Path(checkpoint).expanduser()
    method = load_video_method(checkpoint)
    weights = method.initial_weights
    metadata = {
        "method": type(method).__name__,
        "source_checkpoint": checkpoint.name,
        "initial_weights": {"name": weights.name, "pretrained": weights.pretrained},
        "pooling": method.pooling,
        "logit_scale": float(method.logit_scale),
        "templates": list(method.templates),
        "class_descriptions": dict(method.descriptions),
    }
    model_cfg = open_clip_model_config(weights.name, method.student.model)
    return method.student.save_pretrained(out, model_cfg, metadata)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    folder = export_student(args.checkpoint, args.out, args.overwrite)
    print(f"wrote {folder / WEIGHTS_FILE} and {folder / CONFIG_FILE}\n"
          f"load it with vlkd.models.VideoCLIP.from_pretrained({str(folder)!r}) (video student) "
          f"or vlkd.create_teacher({str(folder)!r}) (frame by frame)")
    return 0
