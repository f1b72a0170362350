"""``vlkd cache``: the teacher's outputs for every training sample, computed once and read back with each batch.

A frozen teacher gives the same answer every epoch, so a distillation run that
calls it on every step pays for the same forward pass many times. A cache
computes, for each training sample, ``K`` augmentation views (``K = 1``: the
evaluation view), and stores per view the augmentation itself (frame indices,
crop box, flip) beside the teacher's outputs for exactly those pixels. Training
with ``data.teacher_cache`` then picks one stored view per sample and step and
replays it, so the cached target always belongs to the pixels the student gets
(the consistency "A good teacher is patient and consistent", Beyer et al. 2022,
asks for; FKD and MobileCLIP's DataCompDR store augmentations the same way).

What is stored is whatever the method's ``teacher_targets(batch)`` returns
(FROSTER: the frame embeddings; DHO: the image embeddings), so each method caches
what it distils from. Any training set whose items are drawn as a stored view can
be cached: a video clip dataset (a view is frame indices and a crop) or an image
dataset (a view is a crop and a flip); see :class:`ViewItems` for what it provides.

Layout of a cache folder::

    manifest.json            teacher (name, tag, weights sha256, preprocessing), data (list hash, sampling,
                             image size, crops), method and target shapes, views K, seed, dtype, shard size
    shard-00000.safetensors  samples [0, S): "valid" (S,), "view.<part>" (S, K, ...) (videos: "view.frames"
                             (S, K, T) and "view.crop" (S, K, 8); images: "view.crop"),
                             "target.<name>" (S, K, ...) in the manifest's dtype
    shard-00000.json         that shard's sha256, its samples and the ones that could not be read
    index.json               every shard's entry; written last, so a cache without it is unfinished

Building runs as a Lightning predict loop (``--trainer.devices 8 --trainer.num_nodes 4``
spreads it; shard ``s`` belongs to rank ``s mod world size`` and each rank writes its
own). A shard is written under a temporary name and renamed, its ``.json`` after it,
so a killed build leaves only whole shards; rerunning the command computes only the
missing ones, with the same batches, and ends with the same bytes as an
uninterrupted build. ``vlkd cache --verify DIR`` re-hashes every shard.
"""

from __future__ import annotations

import json
import math
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vlkd.errors import ConfigError, MediaReadError
from vlkd.paths import file_sha256

FORMAT = 1
MANIFEST = "manifest.json"
INDEX = "index.json"
DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file and a rename (never half a file)."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)


def first_difference(expected: dict, found: dict, prefix: str = "") -> str | None:
    """The first dotted key at which two manifests differ, as ``key: found != expected``; ``None`` if equal.

    ``sources`` entries (where files were read from) are informational and never compared.
    """
    for key in sorted(set(expected) | set(found)):
        if key == "sources":
            continue
        name = f"{prefix}{key}"
        mine, theirs = expected.get(key), found.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            inner = first_difference(mine, theirs, f"{name}.")
            if inner:
                return inner
        elif mine != theirs:
            return f"{name}: {json.dumps(theirs)} in the cache, {json.dumps(mine)} here"
    return None


def build_manifest(method, datamodule, views: int, seed: int, dtype: str, shard_size: int, batch_size: int) -> dict:
    """The manifest of a cache of ``datamodule``'s training set for ``method`` (see the module docstring)."""
    return {
        "format": FORMAT,
        "teacher": method.teacher.identity.to_dict(),
        "data": datamodule.cache_fingerprint(),
        "method": {"class": f"{type(method).__module__}.{type(method).__qualname__}",
                   "targets": sorted(method.teacher_target_names)},
        "views": views,
        "seed": seed,
        "dtype": dtype,
        "shard_size": shard_size,
        "batch_size": batch_size,
    }


# --------------------------------------------------------------------------- reading


class TeacherCache:
    """A finished cache folder, read back one sample and view at a time (memory-mapped safetensors)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        manifest_path, index_path = self.folder / MANIFEST, self.folder / INDEX
        if not manifest_path.is_file():
            raise ConfigError(f"{self.folder} is not a teacher cache (no {MANIFEST}): build one with "
                              "`vlkd cache --config CONFIG --out DIR`, or fix data.teacher_cache")
        if not index_path.is_file():
            raise ConfigError(f"the teacher cache {self.folder} is unfinished (no {INDEX}): run the same "
                              "`vlkd cache --config ... --out` again to finish it (finished shards are kept)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"the teacher cache {self.folder} has format {self.manifest.get('format')}, this vlkd "
                              f"reads format {FORMAT}: rebuild it with vlkd cache")
        self.index = json.loads(index_path.read_text())
        self.views = int(self.manifest["views"])
        self.shard_size = int(self.manifest["shard_size"])
        self.num_samples = int(self.manifest["data"]["num_samples"])
        self.target_names = sorted(self.manifest["method"]["targets"])
        self.missing = {int(sample) for entry in self.index["shards"] for sample in entry["missing"]}
        self.shapes = self.index.get("shapes", {})  # per-view shape of each stored tensor
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles are per process (DataLoader workers open their own)
        return state

    # -- checks -----------------------------------------------------------------------------
    def check_data(self, fingerprint: dict) -> None:
        """Refuse the cache unless it was built for this training set, naming the first setting that differs."""
        difference = first_difference(fingerprint, self.manifest["data"])
        if difference:
            raise ConfigError(f"the teacher cache {self.folder} was built for other data (data.{difference}): "
                              "rebuild it for this config with `vlkd cache --config ... --out DIR`, or use the "
                              "config it was built with")

    def check_method(self, method) -> None:
        """Refuse the cache unless it holds ``method``'s targets from ``method``'s teacher."""
        from vlkd.teacher.protocol import TeacherIdentity, check_same_teacher

        wanted = sorted(method.teacher_target_names)
        if wanted != self.target_names:
            raise ConfigError(
                f"the teacher cache {self.folder} holds targets {self.target_names} ({self.manifest['method']['class']}), "
                f"but {type(method).__name__} trains on {wanted}: build a cache with this method's config, or drop "
                "data.teacher_cache")
        check_same_teacher(method.teacher.identity, TeacherIdentity.from_dict(self.manifest["teacher"]),
                           f"the teacher cache {self.folder}",
                           "rebuild the cache with this run's teacher, or train with the teacher it was built with")

    # -- lookups ------------------------------------------------------------------------------
    def has(self, sample: int) -> bool:
        return 0 <= sample < self.num_samples and sample not in self.missing

    def _handle(self, shard: int):
        if self._pid != os.getpid():  # a forked worker: the parent's handles are not ours
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / f"{shard_name(shard)}.safetensors"), framework="pt")
        return self._handles[shard]

    def _row(self, key: str, sample: int, view: int) -> torch.Tensor:
        if not self.has(sample):
            raise KeyError(f"sample {sample} is not in the teacher cache {self.folder}")
        if not 0 <= view < self.views:
            raise KeyError(f"view {view} is not in the teacher cache {self.folder} ({self.views} views)")
        shard, row = divmod(sample, self.shard_size)
        return self._handle(shard).get_slice(key)[row : row + 1, view][0]

    def view(self, sample: int, view: int) -> dict[str, torch.Tensor]:
        """The stored augmentation of ``sample``'s view ``view`` by part (videos: ``{"frames": (T,), "crop": (8,)}``,
        images: ``{"crop": (8,)}``)."""
        parts = sorted(key[len("view."):] for key in self.shapes if key.startswith("view."))
        return {part: self._row(f"view.{part}", sample, view) for part in parts}

    def targets(self, sample: int, view: int) -> dict[str, torch.Tensor]:
        """The teacher's outputs for that view, by name, in the cache's dtype."""
        return {name: self._row(f"target.{name}", sample, view) for name in self.target_names}


def verify_cache(folder: str | Path) -> tuple[int, list[str]]:
    """Re-hash every shard of a cache against its index; returns (shards checked, problems found)."""
    folder = Path(folder).expanduser()
    problems = []
    for required in (MANIFEST, INDEX):
        if not (folder / required).is_file():
            return 0, [f"{folder / required} is missing" + (" (the build is unfinished)" if required == INDEX else "")]
    manifest = json.loads((folder / MANIFEST).read_text())
    index = json.loads((folder / INDEX).read_text())
    expected = math.ceil(manifest["data"]["num_samples"] / manifest["shard_size"])
    listed = sorted(entry["shard"] for entry in index["shards"])
    if listed != list(range(expected)):
        problems.append(f"the index lists shards {listed[:5]}..., expected 0..{expected - 1}")
    for entry in tqdm(index["shards"], desc="verifying", unit="shard", leave=False):
        path = folder / entry["file"]
        if not path.is_file():
            problems.append(f"{entry['file']}: missing")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['file']}: sha256 differs from the index (the file changed or is damaged)")
    return len(index["shards"]), problems


# --------------------------------------------------------------------------- building


class ViewItems(Dataset):
    """(sample, view) pairs of a training dataset, each view drawn from its own seed.

    The dataset provides ``pixels_key`` (the batch key its pixels go under: ``"video"``,
    ``"image"``), ``draw_view(index, rng, evaluation) -> (pixels, view)`` with a view
    object that has ``to_tensors()``, and ``placeholder_view() -> (pixels, view)`` of zeros
    (:class:`~vlkd.data.datasets.VideoClipDataset`, :class:`~vlkd.data.images.ImageDataset`).
    View ``k`` of sample ``i`` is a pure function of ``(seed, i, k)``, so any rank, and a
    resumed build, draws the same one. A sample that cannot be read gives the zero
    placeholder with ``ok`` false, and is recorded as missing rather than replaced.
    """

    def __init__(self, dataset, items: Sequence[tuple[int, int]], views: int, seed: int):
        self.dataset = dataset
        self.items = list(items)
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict:
        sample, view = self.items[position]
        rng = random.Random(f"vlkd-cache/{self.seed}/{sample}/{view}")
        try:
            pixels, drawn = self.dataset.draw_view(sample, rng, evaluation=self.views == 1)
            ok, reason = True, ""
        except MediaReadError as error:
            (pixels, drawn), ok, reason = self.dataset.placeholder_view(), False, error.reason
        return {"pixels": pixels, "sample": sample, "view": view, "ok": ok, "reason": reason,
                "view_tensors": drawn.to_tensors()}


def collate_view_items(items: list[dict]) -> dict:
    return {
        "pixels": torch.stack([item["pixels"] for item in items]),
        "sample": torch.tensor([item["sample"] for item in items]),
        "view": torch.tensor([item["view"] for item in items]),
        "ok": torch.tensor([item["ok"] for item in items]),
        "reason": [item["reason"] for item in items],
        "view_tensors": {key: torch.stack([item["view_tensors"][key] for item in items])
                         for key in items[0]["view_tensors"]},
    }


class ShardBatches:
    """Batches of at most ``batch_size`` items that never cross a shard, so a shard is always batched the same."""

    def __init__(self, shard_lengths: Sequence[int], batch_size: int):
        self.batches, start = [], 0
        for length in shard_lengths:
            self.batches += [list(range(s, min(s + batch_size, start + length)))
                             for s in range(start, start + length, batch_size)]
            start += length

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class CacheBuilder(LightningModule):
    """The predict loop of ``vlkd cache``: the method's :meth:`teacher_targets` on every view of its shards."""

    def __init__(self, method, dataset, folder: Path, manifest: dict, num_workers: int = 0):
        super().__init__()
        self.method = method
        self.dataset = dataset
        self.folder = folder
        self.manifest = manifest
        self.num_workers = num_workers
        self.views = manifest["views"]
        self.shard_size = manifest["shard_size"]
        self.num_shards = math.ceil(len(dataset) / self.shard_size)
        self.todo: list[int] = []
        self.kept = 0

    def setup(self, stage: str) -> None:
        # Every rank compares the manifest; only rank 0 writes it and clears a killed build's temporary files.
        manifest_path = self.folder / MANIFEST
        if manifest_path.is_file():
            difference = first_difference(self.manifest, json.loads(manifest_path.read_text()))
            if difference:
                raise ConfigError(f"{self.folder} holds a cache of another configuration ({difference}): "
                                  "use another --out, or delete the folder to rebuild it")
        if self.trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            for leftover in self.folder.glob("*.tmp-*"):
                leftover.unlink()
            if not manifest_path.is_file():
                write_json_atomic(manifest_path, self.manifest)
        self.trainer.strategy.barrier()
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = [shard for shard in range(self.num_shards) if shard % world == rank]
        self.todo = [shard for shard in mine if not (self.folder / f"{shard_name(shard)}.json").is_file()]
        self.kept = len(mine) - len(self.todo)

    def shard_samples(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, len(self.dataset)))

    def predict_dataloader(self) -> DataLoader:
        # Lightning warns that it cannot check a custom batch sampler for dropped samples:
        # ShardBatches drops none (every item of every shard to build is in exactly one batch).
        warnings.filterwarnings("ignore", message=r".*custom batch sampler `ShardBatches`")
        items = [(sample, view) for shard in self.todo for sample in self.shard_samples(shard)
                 for view in range(self.views)]
        lengths = [len(self.shard_samples(shard)) * self.views for shard in self.todo]
        dataset = ViewItems(self.dataset, items, self.views, self.manifest["seed"])
        return DataLoader(dataset, batch_sampler=ShardBatches(lengths, self.manifest["batch_size"]),
                          num_workers=self.num_workers, collate_fn=collate_view_items)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        targets = self.method.teacher_targets({self.dataset.pixels_key: batch["pixels"]})
        return {name: value.detach().cpu() for name, value in targets.items()}

    def on_predict_end(self) -> None:
        self.trainer.strategy.barrier()
        if self.trainer.is_global_zero:
            finish_index(self.folder, self.num_shards)


def finish_index(folder: Path, num_shards: int) -> None:
    """Gather the shards' entries into ``index.json`` (only once every shard is there), with the
    per-view shape of every stored tensor."""
    entries = []
    for shard in range(num_shards):
        entry_path = folder / f"{shard_name(shard)}.json"
        if not entry_path.is_file():
            raise ConfigError(f"shard {shard} of {folder} was not built (a rank stopped early?): rerun vlkd cache")
        entries.append(json.loads(entry_path.read_text()))
    with safe_open(str(folder / entries[0]["file"]), framework="pt") as first:
        shapes = {key: first.get_slice(key).get_shape()[2:] for key in first.keys() if key != "valid"}
    write_json_atomic(folder / INDEX, {"format": FORMAT, "shards": entries, "shapes": shapes})


class ShardWriter(BasePredictionWriter):
    """Collects each batch's outputs and writes a shard as soon as all its samples and views are in."""

    def __init__(self, dtype: torch.dtype, show_progress: bool = True):
        super().__init__(write_interval="batch")
        self.dtype = dtype
        self.show_progress = show_progress
        self.pending: dict[int, list] = {}
        self.written = 0
        self.progress = None

    def on_predict_start(self, trainer, module) -> None:
        if self.show_progress and trainer.is_global_zero:
            samples = sum(len(module.shard_samples(shard)) for shard in module.todo)
            self.progress = tqdm(total=samples, desc="teacher cache", unit="sample", dynamic_ncols=True)

    def write_on_batch_end(self, trainer, module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        shard = int(batch["sample"][0]) // module.shard_size
        self.pending.setdefault(shard, []).append((batch, prediction))
        expected = len(module.shard_samples(shard)) * module.views
        if sum(len(b["sample"]) for b, _ in self.pending[shard]) == expected:
            self.write_shard(module, shard, self.pending.pop(shard))
            self.written += 1
            if self.progress is not None:
                self.progress.update(len(module.shard_samples(shard)))

    def on_predict_end(self, trainer, module) -> None:
        if self.progress is not None:
            self.progress.close()

    def write_shard(self, module: CacheBuilder, shard: int, parts: list) -> None:
        samples = module.shard_samples(shard)
        first, count, views = samples.start, len(samples), module.views
        tensors: dict[str, torch.Tensor] = {"valid": torch.ones(count, dtype=torch.uint8)}
        missing: dict[str, str] = {}
        for batch, prediction in parts:
            rows, cols = batch["sample"].cpu() - first, batch["view"].cpu()
            for key, value in batch["view_tensors"].items():
                out = tensors.setdefault(f"view.{key}", torch.zeros(count, views, *value.shape[1:], dtype=value.dtype))
                out[rows, cols] = value.cpu()
            for name, value in prediction.items():
                out = tensors.setdefault(f"target.{name}", torch.zeros(count, views, *value.shape[1:], dtype=self.dtype))
                out[rows, cols] = value.to(self.dtype)
            for sample, ok, reason in zip(batch["sample"].tolist(), batch["ok"].tolist(), batch["reason"]):
                if not ok:
                    tensors["valid"][sample - first] = 0
                    missing[str(sample)] = reason
        name = shard_name(shard)
        path = module.folder / f"{name}.safetensors"
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(temporary))
        os.replace(temporary, path)
        write_json_atomic(module.folder / f"{name}.json", {
            "shard": shard, "file": path.name, "sha256": file_sha256(path), "samples": [first, first + count],
            "missing": missing,
        })
