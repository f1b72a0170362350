"""``vlkd encode``: dense per-frame CLIP features of long videos with ResidualViT (or the full ViT).

Each video is resampled to ``--fps`` frames per second (every frame by default),
decoded and encoded in chunks of ``--chunk`` frames, so memory stays bounded
whatever the video's length; the ResidualViT groups (one full frame, ``N - 1``
reduced ones) run on across chunk boundaries exactly as if the video had been
encoded in one piece. One ``.npz`` file per video holds

* ``features``: ``(T, D)`` float32 L2-normalised frame embeddings (float16 with ``--half``);
* ``timestamps``: ``(T,)`` float64, each frame's presentation time in seconds;
* ``frame_indices``: ``(T,)`` int64, the decoded frame each feature comes from;
* ``meta``: a JSON string (mode, teacher, group size, drop ratio, selection, fps, source).

Read one with ``numpy.load(path)``. Examples::

    vlkd encode clip.mp4 --fps 2 --out clip.npz --checkpoint runs/.../residual_tokenizer.safetensors
    vlkd encode videos.txt --fps 2 --out features/ --checkpoint tokenizer.safetensors   # a list
    vlkd encode clip.mp4 --fps 2 --out clip_full.npz --full                             # the full ViT

A list is a text file with one video path a line (relative paths are relative to
``--root``, by default the list's folder; a trailing label id is ignored), or a
folder whose video files are all encoded. A video of a list that cannot be read
is skipped and reported (and named in ``failed.txt`` in the output folder), the
others are still encoded; the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlkd.commands.teacher_options import add_teacher_arguments, teacher_weights
from vlkd.errors import ConfigError, MissingFileError, VideoReadError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
# Frames converted to float and resized at once: bounds the memory of full-resolution decoded frames.
_CONVERT_BATCH = 8


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd encode", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="a video file, a text file listing videos, or a folder of videos")
    parser.add_argument("--out", required=True,
                        help="output .npz for one video, or a folder (one .npz per video, list paths mirrored)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second to encode (default: every frame of the video)")
    parser.add_argument("--group", type=int, default=None,
                        help="ResidualViT group size N: one full frame then N-1 reduced ones "
                             "(default: the checkpoint's, else 4)")
    parser.add_argument("--drop-ratio", type=float, default=None,
                        help="share of patch tokens a reduced frame drops (default: the checkpoint's, else 0.85)")
    parser.add_argument("--selection", default="motion", choices=("motion", "uniform", "centre", "random"),
                        help="which patch tokens a reduced frame keeps (default: motion)")
    parser.add_argument("--checkpoint", default=None,
                        help="trained residual tokenizer: residual_tokenizer.safetensors (or a .ckpt) of a "
                             "`vlkd fit --config configs/residualvit_*.yaml` run")
    parser.add_argument("--full", action="store_true", help="encode every frame with the full ViT (the teacher)")
    parser.add_argument("--no-residual-token", action="store_true",
                        help="token reduction alone, without the residual token (an ablation; needs no checkpoint)")
    add_teacher_arguments(parser)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--root", default=None, help="folder that a list's relative paths start from")
    parser.add_argument("--chunk", type=int, default=64, help="frames decoded and encoded at once (default 64)")
    parser.add_argument("--backend", default=None, help="video decoding backend: decord, pyav or torchcodec")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--half", action="store_true", help="store the features as float16")
    parser.add_argument("--overwrite", action="store_true", help="encode videos whose output file already exists")
    return parser


@dataclass
class EncodedVideo:
    """One video's dense features: ``features`` (T, D), ``timestamps`` (T,) seconds, ``frame_indices`` (T,)."""

    features: torch.Tensor
    timestamps: np.ndarray
    frame_indices: np.ndarray
    source_fps: float


class DenseEncoder:
    """Encodes whole videos chunk by chunk with a :class:`~vlkd.models.ResidualViT` (or its full ViT).

    Args:
        model: the ResidualViT (its teacher is the full ViT).
        full: encode every frame with the full ViT.
        selection: token selection of the reduced frames.
        chunk: frames decoded and encoded at once.
        backend: video decoding backend (``None``: the default one).
    """

    def __init__(self, model, full: bool = False, selection: str = "motion", chunk: int = 64,
                 backend: str | None = None):
        if chunk < 1:
            raise ConfigError(f"--chunk must be >= 1, got {chunk}")
        self.model = model
        self.full = full
        self.selection = selection
        self.chunk = chunk
        self.backend = backend

    @property
    def device(self) -> torch.device:
        return self.model.teacher.pixel_mean.device

    def frames_to_pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (t, C, H, W) decoded frames -> float (t, C, S, S) in [0, 1] at the model's size, on its device."""
        parts = [
            self.model.resize(part.to(self.device).float().div_(255.0)) for part in frames.split(_CONVERT_BATCH)
        ]
        return torch.cat(parts)

    @torch.inference_mode()
    def encode_frames(self, chunks, total: int | None = None, progress: bool = False, desc: str = "") -> torch.Tensor:
        """Encode an iterable of uint8 (t, C, H, W) chunks of one video, in order -> (T, D) on the CPU."""
        outputs, state = [], None
        bar = tqdm(total=total, desc=desc, unit="frame", leave=False, disable=not progress)
        for frames in chunks:
            pixels = self.frames_to_pixels(frames)
            if self.full:
                features = self.model.encode_full(pixels)
            else:
                features, state = self.model.encode_video(
                    pixels.unsqueeze(0), state=state, selection=self.selection, return_state=True
                )
                features = features[0]
            outputs.append(features.float().cpu())
            bar.update(len(frames))
        bar.close()
        if not outputs:
            return torch.zeros(0, self.model.embed_dim)
        return torch.cat(outputs)

    def encode_file(self, path: str | Path, fps: float | None = None, progress: bool = False) -> EncodedVideo:
        """Every frame of ``path`` at ``fps`` (``None``: all frames) -> :class:`EncodedVideo`.

        Raises:
            VideoReadError: the file is missing or cannot be decoded.
        """
        from vlkd.data.sampling import fps_indices
        from vlkd.data.video import open_video

        with open_video(path, self.backend) as reader:
            info = reader.info
            indices, timestamps = fps_indices(info.num_frames, info.fps, fps or info.fps)
            chunks = reader.read_chunks(indices, self.chunk)
            features = self.encode_frames(chunks, total=len(indices), progress=progress, desc=Path(path).name)
        return EncodedVideo(features, np.asarray(timestamps, np.float64), np.asarray(indices, np.int64), info.fps)


def save_features(encoded: EncodedVideo, path: str | Path, meta: dict, half: bool = False) -> Path:
    """Write ``encoded`` as an ``.npz`` (module docstring); the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    features = encoded.features.numpy().astype(np.float16 if half else np.float32)
    meta = {**meta, "source_fps": encoded.source_fps, "frames": int(len(features))}
    tmp = path.with_name(path.name + ".part.npz")  # a crash never leaves a half-written output behind
    np.savez(tmp, features=features, timestamps=encoded.timestamps, frame_indices=encoded.frame_indices,
             meta=np.array(json.dumps(meta)))
    tmp.replace(path)
    return path


def read_input_list(source: Path, root: Path | None) -> tuple[list[Path], Path]:
    """The videos named by ``source`` (a list file or a folder) and the folder outputs mirror."""
    if source.is_dir():
        videos = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ConfigError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) under {source}")
        return videos, source
    base = root if root is not None else source.parent
    videos = []
    for line in source.read_text(encoding="utf-8-sig").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        candidate = base / line
        parts = line.rsplit(maxsplit=1)
        if not candidate.exists() and len(parts) == 2 and parts[1].lstrip("-").isdigit():
            candidate = base / parts[0]  # a `path label` line of a dataset list
        videos.append(candidate)
    if not videos:
        raise ConfigError(f"{source}: the list names no video")
    return videos, base


def _is_single_video(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES


def build_model(args):
    """The ResidualViT (with its teacher) the options describe."""
    from vlkd.models import create_student
    from vlkd.teacher import create_teacher

    teacher = create_teacher(*teacher_weights(args), device=args.device, precision=args.precision)
    if args.full:
        return create_student("residual_vit", teacher=teacher, residual_token=False)
    if args.checkpoint is None and not args.no_residual_token:
        raise ConfigError(
            "ResidualViT needs a trained residual tokenizer: pass --checkpoint (the residual_tokenizer.safetensors "
            "that `vlkd fit --config configs/residualvit_synth.yaml` writes), or --full for the full ViT, or "
            "--no-residual-token for token reduction alone"
        )
    if args.no_residual_token:
        return create_student("residual_vit", teacher=teacher, group_size=args.group, drop_ratio=args.drop_ratio,
                              selection=args.selection, residual_token=False)
    return create_student("residual_vit", teacher=teacher, group_size=args.group, drop_ratio=args.drop_ratio,
                          selection=args.selection, checkpoint=args.checkpoint)


def _meta(args, model) -> dict:
    mode = "full" if args.full else ("reduced" if args.no_residual_token else "residual_vit")
    meta = {"mode": mode, "teacher": model.teacher.name, "fps": args.fps}
    if not args.full:
        meta.update(group_size=model.group_size, drop_ratio=model.drop_ratio, selection=args.selection,
                    kept_patches=model.num_kept, num_patches=model.num_patches, checkpoint=args.checkpoint)
    return meta


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.fps is not None and not args.fps > 0:
        raise ConfigError(f"--fps must be > 0, got {args.fps}")
    if args.full and (args.checkpoint or args.no_residual_token):
        raise ConfigError("--full encodes with the full ViT: it takes no --checkpoint or --no-residual-token")
    source = Path(args.input).expanduser()
    if not source.exists():
        raise MissingFileError(source, "input video or list", "pass a video file, a list of videos or a folder")
    out = Path(args.out).expanduser()

    if _is_single_video(source):
        target = out / f"{source.stem}.npz" if out.is_dir() or out.suffix == "" else out
        jobs = [(source, target)]
    else:
        videos, base = read_input_list(source, Path(args.root).expanduser() if args.root else None)
        if out.suffix == ".npz":
            raise ConfigError(f"--out must be a folder when encoding several videos, got {out}")
        jobs = [(video, out / _relative(video, base).with_suffix(".npz")) for video in videos]

    model = build_model(args)
    model.eval()
    encoder = DenseEncoder(model, full=args.full, selection=args.selection, chunk=args.chunk, backend=args.backend)
    meta = _meta(args, model)
    single = len(jobs) == 1 and _is_single_video(source)
    failed: list[tuple[Path, str]] = []
    written = 0
    for video, target in tqdm(jobs, desc="videos", unit="video", disable=single):
        if target.exists() and not args.overwrite:
            log.info("%s exists, skipped (use --overwrite to encode again)", target)
            continue
        try:
            encoded = encoder.encode_file(video, args.fps, progress=True)
        except VideoReadError as error:
            if single:
                raise
            failed.append((video, error.reason))
            tqdm.write(f"skipped {video}: {error.reason}", file=sys.stderr)
            continue
        save_features(encoded, target, {**meta, "video": str(video)}, half=args.half)
        written += 1
    print(f"wrote {written} feature file(s) to {out if not single else jobs[0][1]}")
    if failed:
        out.mkdir(parents=True, exist_ok=True)
        report = out / "failed.txt"
        report.write_text("".join(f"{video}\t{reason}\n" for video, reason in failed), encoding="utf-8")
        print(f"{len(failed)} of {len(jobs)} video(s) could not be read and were skipped; listed in {report}",
              file=sys.stderr)
        return 1
    return 0


def _relative(video: Path, base: Path) -> Path:
    try:
        return video.resolve().relative_to(base.resolve())
    except ValueError:
        return Path(video.name)
