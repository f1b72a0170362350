"""Write a SynthActions dataset: H.264 clips plus the label, split and zero-shot files of the real protocol.

Output folder (``out_dir`` is both the video root and the ``split_dir``)::

    out_dir/
      world_info.json                      manifest: settings, classes (group, half, twin), counts, files
      videos/<class_name_with_underscores>/train_000.mp4   base training pool (base classes only)
      videos/<class_name_with_underscores>/val_000.mp4     evaluation clips (every class)
      labels/<name>_base_labels.csv        base ids 0..B-1
      labels/<name>_novel_labels.csv       novel ids 0..N-1
      labels/<name>_labels.csv             all classes, world order (zero-shot ids)
      splits/<name>_splits/fs_base_s{1,2,3}_train.txt   ``shots`` clips per base class, one draw per seed
      splits/<name>_splits/base_train.txt  the whole base training pool
      splits/<name>_splits/base_val.txt    evaluation clips of base classes, base ids
      splits/<name>_splits/novel_val.txt   evaluation clips of novel classes, novel ids
      zero_shot/<name>_splits_val1.txt     evaluation clips of all classes, full ids

so ``load_base2novel(name, seed, split_dir=out_dir)`` and
``load_zero_shot(name, 1, split_dir=out_dir)`` read it with ``root=out_dir``.
The default name is ``synth_<style>``.  The cross-dataset protocol trains on
one style's base split and evaluates the other style's zero-shot list (its
world shares three quarters of the classes; see ``world``).  There is one
zero-shot split, since a world has one evaluation pool.

Horizontal flips swap "moving left" and "moving right" (and the two rotation
directions), so train on these videos with flips turned off
(``VideoDataModule(flip=False)``); the manifest records ``"flip_safe": false``.

Determinism
-----------
Every clip has its own random generator, seeded by ``(seed, style, class
name, role, index)`` (:func:`clip_rng`), so its frames do not depend on worker
scheduling, on the other classes or on the number of clips: the same settings
always render byte-identical frames, and ``render_clip(clip_rng(...), ...)``
reproduces any clip.  The writer encodes H.264 deterministically (no
macroblock tree, one thread), so the MP4 files are byte-identical across runs
too, and so are the label and list files; the split draws depend on ``seed``
and the split seed only.

Generation is idempotent: when ``world_info.json`` matches the requested
settings and every file exists, nothing is rendered; missing clips alone are
rendered again; any other difference renders everything.  The manifest is
written last, so an interrupted run is redone.  Clips are written to a
temporary name and renamed, so a clip file is never half-written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlkd.data.annotations import VideoSample, write_class_names, write_video_list
from vlkd.data.splits import Base2NovelSplit, DatasetLayout, ZeroShotLayout, write_base2novel
from vlkd.data.synthetic.render import DEFAULT_FRAMES, DEFAULT_SIZE, render_clip
from vlkd.data.synthetic.world import ActionClass, Concepts, World, build_world
from vlkd.errors import ConfigError

__all__ = [
    "MANIFEST_NAME",
    "GeneratedActions",
    "clip_rng",
    "default_dataset_name",
    "generate_actions",
    "read_manifest",
    "read_world_classes",
]

MANIFEST_NAME = "world_info.json"
# Bump when rendering or the folder layout changes: folders written by an older version then regenerate.
FORMAT_VERSION = 4
_ROLES = ("train", "val")


def default_dataset_name(style: str) -> str:
    """The layout name used when none is given: ``synth_flat``, ``synth_textured``."""
    return f"synth_{style}"


@dataclass(frozen=True)
class GeneratedActions:
    """What :func:`generate_actions` wrote (or found up to date).

    ``root`` is both the video root (list paths are relative to it) and the
    ``split_dir`` of :func:`vlkd.data.splits.load_base2novel`.  ``files`` maps
    ``base_labels``, ``novel_labels``, ``full_labels``, ``fs_s1``..., ``base_train``,
    ``base_val``, ``novel_val`` and ``zero_shot`` to paths.  ``counts`` has the
    class counts by half and group and the clip counts per list.  ``rendered``
    is the number of clips rendered by this call (0 when the folder was up to date).
    """

    root: Path
    name: str
    world: World
    manifest: Path
    files: dict[str, Path]
    counts: dict[str, int]
    rendered: int
    seconds: float

    @property
    def split_dir(self) -> Path:
        return self.root


@dataclass(frozen=True)
class _ClipJob:
    """One clip to render: where, what, and which clip of its class (which fixes its random generator)."""

    path: Path
    concepts: Concepts
    seed: int
    role: str
    index: int


def clip_rng(seed: int, style: str, class_name: str, role: str, index: int) -> np.random.Generator:
    """The random generator of one clip: ``role`` is ``"train"`` or ``"val"``, ``index`` its number.

    ``render_clip(clip_rng(...), class_name, style, size, frames)`` reproduces the
    frames of ``videos/<class>/<role>_<index>.mp4`` exactly (before encoding).
    """
    keys = (zlib.crc32(style.encode()), zlib.crc32(class_name.encode()), _ROLES.index(role))
    return np.random.default_rng((seed, *keys, index))


def generate_actions(
    out_dir: str | Path,
    seed: int = 0,
    style: str = "flat",
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
    clips_per_class: int = 32,
    train_clips_per_class: int = 32,
    shots: int = 16,
    split_seeds: int = 3,
    name: str | None = None,
    fps: int = 8,
    crf: int | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> GeneratedActions:
    """Render a SynthActions world of ``style`` into ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: output folder (created); video root and split folder at once.
        seed: seed of every random choice (scenes and split draws).
        style: ``"flat"`` or ``"textured"`` (each has its own world of classes).
        size: frame side in pixels (even, for H.264's 4:2:0 chroma).
        frames: frames per clip.
        clips_per_class: evaluation clips of every class (``base_val``, ``novel_val``, zero-shot).
        train_clips_per_class: training pool per base class (``base_train.txt``), from which each
            split seed draws ``shots`` clips per class.
        shots: training clips per base class in ``fs_base_s{k}_train.txt``.
        split_seeds: number of few-shot lists (seeds 1..split_seeds).
        name: dataset name in the file names; default ``synth_<style>``.
        fps: frame rate stored in the files.
        crf: H.264 quality (lower is better); ``None``: the writer's high-quality default.
        workers: rendering processes; ``None``: up to 2 (one per core); 0 or 1: this process.
        force: render everything even if the folder is up to date.
        progress: show a tqdm progress bar.
    """
    started = time.perf_counter()
    world = build_world(style)
    name = name or default_dataset_name(world.style)
    settings = _checked_settings(
        name=name, seed=seed, style=world.style, size=size, frames=frames, fps=fps, crf=crf,
        clips_per_class=clips_per_class, train_clips_per_class=train_clips_per_class, shots=shots,
        split_seeds=split_seeds,
    )
    root = Path(out_dir)
    layout, zero_shot_layout = DatasetLayout.generic(name), ZeroShotLayout.generic(name)

    train_jobs = _jobs(root, seed, world.base_classes, "train", train_clips_per_class)
    val_jobs = _jobs(root, seed, world.classes, "val", clips_per_class)
    manifest_path = root / MANIFEST_NAME
    manifest = _manifest(settings, world)
    previous = None if force else _read_json(manifest_path)
    if previous is not None and {k: previous.get(k) for k in manifest} == manifest:
        todo = [job for job in (*train_jobs, *val_jobs) if not job.path.is_file()]
    else:
        todo = [*train_jobs, *val_jobs]
        manifest_path.unlink(missing_ok=True)  # a half-rewritten folder must not look complete
    _render_all(todo, world.style, size, frames, fps, crf, workers, progress)

    files, counts = _write_lists(root, world, name, layout, zero_shot_layout, train_jobs, val_jobs, seed, shots,
                                 split_seeds)
    manifest["counts"] = counts
    manifest["files"] = {key: path.relative_to(root).as_posix() for key, path in files.items()}
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return GeneratedActions(root, name, world, manifest_path, files, counts, len(todo),
                            time.perf_counter() - started)


def read_manifest(out_dir: str | Path) -> dict | None:
    """The ``world_info.json`` of a generated folder, or ``None`` if there is none."""
    return _read_json(Path(out_dir) / MANIFEST_NAME)


def read_world_classes(out_dir: str | Path) -> dict[str, dict] | None:
    """Class name -> its manifest entry (``group``, ``half``, ``twin``, ...) of a generated folder, or ``None``."""
    manifest = read_manifest(out_dir)
    return None if manifest is None else {entry["name"]: entry for entry in manifest["classes"]}


# --------------------------------------------------------------------------- settings and manifest


def _checked_settings(**settings) -> dict:
    """The settings that determine the folder's content (the manifest compares them), checked for sanity."""
    # The name becomes part of file names; the split loaders accept only this shape of name.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(settings["name"])):
        raise ConfigError(f"dataset name {settings['name']!r} must be letters, digits, '_', '.' or '-'")
    for key in ("frames", "fps", "clips_per_class", "train_clips_per_class", "shots", "split_seeds"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {settings[key]!r}")
    if not isinstance(settings["seed"], int) or settings["seed"] < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {settings['seed']!r}")
    size = settings["size"]
    if not isinstance(size, int) or size < 16 or size % 2:
        raise ConfigError(f"size must be an even integer of at least 16 (H.264 4:2:0 needs even sides), got {size!r}")
    if settings["shots"] > settings["train_clips_per_class"]:
        raise ConfigError(
            f"shots ({settings['shots']}) exceeds train_clips_per_class ({settings['train_clips_per_class']}): "
            "the few-shot lists are drawn from the training pool"
        )
    return settings


def _manifest(settings: dict, world: World) -> dict:
    """The manifest without counts and files (which follow from it): what is compared for idempotence."""
    return {
        "generator": "vlkd.data.synthetic",
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "flip_safe": False,
        "classes": [{"id": index, **action.to_dict()} for index, action in enumerate(world.classes)],
    }


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- rendering


def _jobs(root: Path, seed: int, classes: list[ActionClass], role: str, count: int) -> list[_ClipJob]:
    return [
        _ClipJob(root / "videos" / action.name.replace(" ", "_") / f"{role}_{index:03d}.mp4", action.concepts,
                 seed, role, index)
        for action in classes
        for index in range(count)
    ]


def _render_all(jobs: list[_ClipJob], style: str, size: int, frames: int, fps: int, crf: int | None,
                workers: int | None, progress: bool) -> None:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    tasks = [(job, style, size, frames, fps, crf) for job in jobs]
    bar = tqdm(total=len(tasks), desc=f"SynthActions {style}", unit="clip", disable=not progress or not tasks)
    with bar:
        # A pool costs more than it saves on a handful of clips.
        if workers <= 1 or len(tasks) < 8 * workers:
            for task in tasks:
                _render_and_write(task)
                bar.update()
            return
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_and_write, tasks, chunksize=8):
                bar.update()


def _render_and_write(task: tuple) -> None:
    """Render one clip and write it atomically (a worker's unit of work)."""
    from vlkd.data.writer import write_video  # imports torch: keep it out of importing this module

    job, style, size, frames, fps, crf = task
    rng = clip_rng(job.seed, style, job.concepts.name, job.role, job.index)
    video = render_clip(rng, job.concepts, style, size, frames)
    partial = job.path.with_name(f"{job.path.stem}.partial{job.path.suffix}")
    write_video(partial, video, fps=fps, codec="h264", crf=crf)
    os.replace(partial, job.path)


# --------------------------------------------------------------------------- lists


def _write_lists(
    root: Path,
    world: World,
    name: str,
    layout: DatasetLayout,
    zero_shot_layout: ZeroShotLayout,
    train_jobs: list[_ClipJob],
    val_jobs: list[_ClipJob],
    seed: int,
    shots: int,
    split_seeds: int,
) -> tuple[dict[str, Path], dict[str, int]]:
    """Write labels, base-to-novel lists for every split seed, and the zero-shot list."""
    base_ids = {action.name: index for index, action in enumerate(world.base_classes)}
    novel_ids = {action.name: index for index, action in enumerate(world.novel_classes)}
    full_ids = {action.name: index for index, action in enumerate(world.classes)}

    def samples(jobs: list[_ClipJob], ids: dict[str, int]) -> list[VideoSample]:
        return [VideoSample(job.path.relative_to(root).as_posix(), ids[job.concepts.name])
                for job in jobs if job.concepts.name in ids]

    pool = samples(train_jobs, base_ids)
    base_val, novel_val = samples(val_jobs, base_ids), samples(val_jobs, novel_ids)
    split = Base2NovelSplit(name, list(base_ids), list(novel_ids), pool, base_val, novel_val)
    full_files = write_base2novel(split, root, name, train_list="full")
    files = {
        "base_labels": full_files.base_labels,
        "novel_labels": full_files.novel_labels,
        "base_train": full_files.train_list,
        "base_val": full_files.base_val,
        "novel_val": full_files.novel_val,
    }
    for split_seed in range(1, split_seeds + 1):
        few_shot = _few_shot(pool, shots, np.random.default_rng((seed, zlib.crc32(b"few-shot"), split_seed)))
        written = write_base2novel(replace(split, train=few_shot), root, name, seed=split_seed)
        files[f"fs_s{split_seed}"] = written.train_list

    files["full_labels"] = write_class_names(world.names, root / "labels" / layout.full_labels)
    zero_shot_path = root / "zero_shot" / zero_shot_layout.samples.format(split=1)
    files["zero_shot"] = write_video_list(samples(val_jobs, full_ids), zero_shot_path)

    counts = {
        **world.counts(),
        "base_classes": len(base_ids),
        "novel_classes": len(novel_ids),
        "base_train": len(pool),
        "few_shot_train": shots * len(base_ids),
        "base_val": len(base_val),
        "novel_val": len(novel_val),
        "zero_shot": len(val_jobs),
        "videos": len(train_jobs) + len(val_jobs),
    }
    return files, counts


def _few_shot(pool: list[VideoSample], shots: int, rng: np.random.Generator) -> list[VideoSample]:
    """``shots`` samples of every label, drawn without replacement, grouped by label as the real lists are."""
    chosen = []
    for label in sorted({sample.label for sample in pool}):
        candidates = [sample for sample in pool if sample.label == label]
        picks = sorted(rng.choice(len(candidates), size=shots, replace=False))
        chosen.extend(candidates[index] for index in picks)
    return chosen
