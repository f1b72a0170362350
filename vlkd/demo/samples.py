"""The sample clips the demo offers: a few SynthActions videos shipped in ``data/samples``.

They are rendered with the package's own renderer (:func:`vlkd.data.synthetic.render_clip`)
from the generator of a class's first evaluation clip in the default flat world
(:func:`vlkd.data.synthetic.clip_rng`, seed 0), at twice the world's frame size so
they look less blocky in the browser; the teacher resizes them back to its input
size. One sample chains three static scenes, so the per-frame plot shows *when*
each of them is on screen. Regenerate the folder with::

    python -m vlkd.demo.samples data/samples
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlkd.errors import MissingFileError

INDEX_NAME = "samples.json"
FPS = 8
SIZE = 128
FRAMES = 16


@dataclass(frozen=True)
class Sample:
    """One shipped clip: its file, what it shows (in order) and a suggested query."""

    file: str
    classes: tuple[str, ...]
    queries: str

    @property
    def title(self) -> str:
        return ", then ".join(self.classes)


#: What is shipped. Static classes are recognised from single frames by the shipped
#: teacher; the temporal ones show that it finds the motion but not its direction.
SAMPLES: tuple[Sample, ...] = (
    Sample("red_square_on_grass.mp4", ("red square on grass",),
           "red square on grass, red square on sand, orange ball on grass, blue square on grass, green star on snow"),
    Sample("purple_ball_in_water.mp4", ("purple ball in water",),
           "purple ball in water, green ball in water, purple ball on grass, purple star on snow, yellow square in water"),
    Sample("green_triangle_rotating_clockwise.mp4", ("green triangle rotating clockwise",),
           "green triangle rotating clockwise, green triangle rotating counterclockwise, green triangle on grass, "
           "green triangle moving left"),
    Sample("red_ball_moving_left.mp4", ("red ball moving left",),
           "red ball moving left, red ball moving right, red ball growing, red ball on sand"),
    Sample("three_scenes.mp4", ("orange ball on grass", "red star in water", "blue star on sand"),
           "orange ball on grass, red star in water, blue star on sand, green square on sand"),
)


def render_sample(sample: Sample, size: int = SIZE, frames: int = FRAMES) -> np.ndarray:
    """The uint8 RGB frames ``(T, size, size, 3)`` of ``sample``: its scenes one after the other."""
    from vlkd.data.synthetic import clip_rng, render_clip

    parts = [render_clip(clip_rng(0, "flat", name, "val", 0), name, "flat", size, frames) for name in sample.classes]
    return np.concatenate(parts)


def write_samples(out_dir: str | Path, samples: Sequence[Sample] = SAMPLES, size: int = SIZE,
                  frames: int = FRAMES, crf: int = 23) -> Path:
    """Render ``samples`` as H.264 files into ``out_dir`` with their index (``samples.json``)."""
    from vlkd.data.writer import write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        write_video(out / sample.file, render_sample(sample, size, frames), fps=FPS, codec="h264", crf=crf)
    index = {"fps": FPS, "frames_per_scene": frames, "size": size, "samples": [asdict(s) for s in samples]}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return out


def load_samples(folder: str | Path | None = None) -> list[tuple[Path, Sample]]:
    """The shipped samples (or those of ``folder``) as ``(video path, sample)`` pairs."""
    if folder is None:
        from vlkd.paths import asset_dir

        folder = asset_dir() / "samples"
    index_path = Path(folder) / INDEX_NAME
    if not index_path.is_file():
        raise MissingFileError(index_path, "demo sample index", "regenerate it: python -m vlkd.demo.samples data/samples")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    pairs = []
    for entry in index["samples"]:
        sample = Sample(entry["file"], tuple(entry["classes"]), entry["queries"])
        pairs.append((Path(folder) / sample.file, sample))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlkd.demo.samples", description="render the demo's sample clips")
    parser.add_argument("out", help="output folder (the shipped one is data/samples)")
    args = parser.parse_args(argv)
    out = write_samples(args.out)
    total = sum(p.stat().st_size for p in out.glob("*.mp4"))
    print(f"{len(SAMPLES)} samples written to {out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
