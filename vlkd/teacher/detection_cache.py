"""The teacher's region targets of a detection training set, computed once: base-box embeddings and CLIP proposals.

EZAD distils the teacher's embeddings of two kinds of regions into the detector: the
annotated base boxes and the CLIP proposals (:mod:`vlkd.teacher.proposals`). Both
depend only on the image and the frozen (re-normalised) teacher, so ``vlkd cache``
computes them once per training image, for the image as it is and, when training
flips images, for its mirror image (a flipped crop is another input to CLIP, so its
embedding is computed, not assumed equal). The proposals are found on the unflipped
image; the mirror view holds the embeddings of the same boxes mirrored.

Layout (the file names, shard entries and ``vlkd cache --verify`` of
:mod:`vlkd.teacher.cache`)::

    manifest.json            kind "detection", teacher identity, data (annotation file sha256, names, base names,
                             images), proposal settings, views, dtype, shard size
    shard-00000.safetensors  images [0, S) of the annotation file's order, rows of all their regions concatenated:
                             "gt.boxes" (G, 4), "gt.embeddings" (G, V, D), "gt.offsets" (S + 1,),
                             "proposals.boxes" (P, 4), "proposals.scores", "proposals.confidence",
                             "proposals.labels" (P,), "proposals.embeddings" (P, V, D), "proposals.offsets" (S + 1,),
                             "anchors" (S,), "valid" (S,)
    shard-00000.json         that shard's sha256, its images and the ones that could not be read
    index.json               every shard's entry; written last

A shard is written under a temporary name and renamed, so a killed build leaves whole
shards only, and running it again computes the missing ones.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vlkd.data.detection import flip_boxes
from vlkd.errors import ConfigError, MediaReadError
from vlkd.paths import file_sha256
from vlkd.teacher.cache import DTYPES, INDEX, MANIFEST, first_difference, shard_name, write_json_atomic
from vlkd.teacher.proposals import ProposalSettings, embed_boxes, generate_proposals

__all__ = ["DetectionCache", "RegionTargets", "build_detection_cache", "detection_cache_manifest"]

KIND = "detection"
FORMAT = 1
VIEW_NAMES = ("original", "flipped")


def detection_cache_manifest(teacher, annotations: str | Path, class_names: Sequence[str], base_names: Sequence[str],
                             num_images: int, settings: ProposalSettings, views: int, dtype: str,
                             shard_size: int) -> dict:
    """What a detection cache was built from; a cache is used only by runs with the same manifest."""
    return {
        "format": FORMAT,
        "kind": KIND,
        "teacher": teacher.identity.to_dict(),
        "data": {"annotations_sha256": file_sha256(Path(annotations)), "class_names": list(class_names),
                 "base_names": list(base_names), "num_samples": num_images},
        "proposals": settings.to_dict(),
        "views": views,
        "dtype": dtype,
        "shard_size": shard_size,
    }


def build_detection_cache(teacher, dataset, class_names: Sequence[str], base_names: Sequence[str],
                          annotations: str | Path, out: str | Path, settings: ProposalSettings | None = None,
                          views: int = 2, dtype: str = "float16", shard_size: int = 256,
                          progress: bool = True) -> Path:
    """Compute the region targets of every image of ``dataset`` into ``out`` (module docstring).

    Args:
        teacher: the (re-normalised) teacher.
        dataset: a :class:`~vlkd.data.detection.DetectionDataset` of the training images whose labels index
            ``base_names`` (its boxes are the base boxes), read without augmentation.
        class_names: all names the proposals are classified among (base and novel).
        base_names: the annotated categories.
        annotations: the training annotation file (its hash goes into the manifest).
        views: 1 (the image as it is) or 2 (and its mirror image).
    Returns the folder. A finished cache with the same manifest is left as it is; an unfinished
    one is completed; one built from anything else is refused.
    """
    if views not in (1, 2):
        raise ConfigError(f"a detection cache has 1 view (the image) or 2 (and its mirror), got {views}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    unknown = [name for name in base_names if name not in class_names]
    if unknown:
        raise ConfigError(f"base names {unknown} are not among the class names: list every base name in class_names")
    settings = settings or ProposalSettings()
    folder = Path(out).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    manifest = detection_cache_manifest(teacher, annotations, class_names, base_names, len(dataset), settings, views,
                                        dtype, shard_size)
    stored = folder / MANIFEST
    if stored.is_file():
        difference = first_difference(manifest, json.loads(stored.read_text()))
        if difference:
            raise ConfigError(f"{folder} holds a detection cache built otherwise ({difference}): "
                              "give another --out, or delete the folder to rebuild it")
    else:
        write_json_atomic(stored, manifest)
    if (folder / INDEX).is_file():
        return folder
    text = teacher.encode_text(list(class_names), list(settings.templates)).float().cpu()
    base_mask = torch.tensor([name in set(base_names) for name in class_names])
    base_label = torch.tensor([class_names.index(name) for name in base_names])
    num_shards = math.ceil(len(dataset) / shard_size)
    todo = [s for s in range(num_shards) if not (folder / f"{shard_name(s)}.json").is_file()]
    bar = tqdm(total=sum(len(range(s * shard_size, min(len(dataset), (s + 1) * shard_size))) for s in todo),
               desc="detection cache", unit="image", disable=not progress, dynamic_ncols=True)
    for shard in todo:
        _write_shard(teacher, dataset, folder, shard, shard_size, text, base_mask, base_label, settings, views,
                     DTYPES[dtype], bar)
    bar.close()
    entries = [json.loads((folder / f"{shard_name(s)}.json").read_text()) for s in range(num_shards)]
    write_json_atomic(folder / INDEX, {"format": FORMAT, "kind": KIND, "shards": entries})
    return folder


def _write_shard(teacher, dataset, folder: Path, shard: int, shard_size: int, text: torch.Tensor,
                 base_mask: torch.Tensor, base_label: torch.Tensor, settings: ProposalSettings, views: int,
                 dtype: torch.dtype, bar) -> None:
    first, last = shard * shard_size, min(len(dataset), (shard + 1) * shard_size)
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in (
        "gt.boxes", "gt.embeddings", "proposals.boxes", "proposals.scores", "proposals.confidence",
        "proposals.labels", "proposals.embeddings")}
    gt_offsets, proposal_offsets, anchors, valid, missing = [0], [0], [], [], {}
    started = time.perf_counter()
    for index in range(first, last):
        try:
            item = dataset.read(index)
        except MediaReadError as error:  # reported in the shard entry; training skips the image
            missing[str(index)] = str(error)
            gt_offsets.append(gt_offsets[-1])
            proposal_offsets.append(proposal_offsets[-1])
            anchors.append(0)
            valid.append(0)
            bar.update(1)
            continue
        image, boxes = item["image"], item["target"]["boxes"]
        # The proposal filter needs every base box; the dataset's labels index the base names.
        found = generate_proposals(teacher, image, text, boxes, base_mask, settings)
        width = image.shape[-1]
        gt_views = [_regions(teacher, image, boxes, settings)]
        proposal_views = [found.embeddings]
        if views == 2:
            mirror = image.flip(-1)
            gt_views.append(_regions(teacher, mirror, flip_boxes(boxes, width), settings))
            proposal_views.append(_regions(teacher, mirror, flip_boxes(found.boxes, width), settings))
        parts["gt.boxes"].append(boxes.float())
        parts["gt.embeddings"].append(torch.stack(gt_views, dim=1).to(dtype))
        parts["proposals.boxes"].append(found.boxes.float())
        parts["proposals.scores"].append(found.scores.float())
        parts["proposals.confidence"].append(found.confidence.float())
        parts["proposals.labels"].append(found.labels.long())
        parts["proposals.embeddings"].append(torch.stack(proposal_views, dim=1).to(dtype))
        gt_offsets.append(gt_offsets[-1] + len(boxes))
        proposal_offsets.append(proposal_offsets[-1] + len(found))
        anchors.append(found.anchors)
        valid.append(1)
        bar.update(1)
    dim = text.shape[-1]
    empty = {"gt.boxes": (0, 4), "gt.embeddings": (0, views, dim), "proposals.boxes": (0, 4),
             "proposals.scores": (0,), "proposals.confidence": (0,), "proposals.labels": (0,),
             "proposals.embeddings": (0, views, dim)}
    tensors = {key: (torch.cat(values) if values else torch.zeros(empty[key])) for key, values in parts.items()}
    tensors["gt.embeddings"] = tensors["gt.embeddings"].to(dtype)
    tensors["proposals.embeddings"] = tensors["proposals.embeddings"].to(dtype)
    tensors["proposals.labels"] = tensors["proposals.labels"].long()
    tensors.update({"gt.offsets": torch.tensor(gt_offsets), "proposals.offsets": torch.tensor(proposal_offsets),
                    "anchors": torch.tensor(anchors), "valid": torch.tensor(valid, dtype=torch.uint8)})
    name = shard_name(shard)
    path = folder / f"{name}.safetensors"
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(temporary))
    os.replace(temporary, path)
    write_json_atomic(folder / f"{name}.json", {
        "shard": shard, "file": path.name, "sha256": file_sha256(path), "samples": [first, last], "missing": missing,
        "seconds": round(time.perf_counter() - started, 3)})


def _regions(teacher, image: torch.Tensor, boxes: torch.Tensor, settings: ProposalSettings) -> torch.Tensor:
    return embed_boxes(teacher, image, boxes, settings.embed_crop, settings.batch_size)


@dataclass
class RegionTargets:
    """One image's stored targets for one view: base boxes and proposals with their teacher embeddings."""

    gt_boxes: torch.Tensor
    gt_embeddings: torch.Tensor
    proposal_boxes: torch.Tensor
    proposal_scores: torch.Tensor
    proposal_confidence: torch.Tensor
    proposal_labels: torch.Tensor
    proposal_embeddings: torch.Tensor


class DetectionCache:
    """A finished detection cache, read one image at a time (memory-mapped)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        if not (self.folder / MANIFEST).is_file():
            raise ConfigError(f"{self.folder} is not a detection teacher cache (no {MANIFEST}): build it with "
                              "`vlkd cache --config CONFIG --out DIR`")
        if not (self.folder / INDEX).is_file():
            raise ConfigError(f"the detection cache {self.folder} is unfinished (no {INDEX}): run the same "
                              "`vlkd cache` again to finish it (finished shards are kept)")
        self.manifest = json.loads((self.folder / MANIFEST).read_text())
        if self.manifest.get("kind") != KIND:
            raise ConfigError(f"{self.folder} is a classification teacher cache, not a detection one: build one "
                              "with an EZAD config")
        self.index = json.loads((self.folder / INDEX).read_text())
        self.views = int(self.manifest["views"])
        self.shard_size = int(self.manifest["shard_size"])
        self.num_samples = int(self.manifest["data"]["num_samples"])
        self.missing = {int(sample) for entry in self.index["shards"] for sample in entry["missing"]}
        self._shards: dict[int, dict[str, torch.Tensor]] = {}
        self._pid = os.getpid()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state

    def check(self, teacher, annotations: str | Path, class_names: Sequence[str], base_names: Sequence[str],
              num_images: int) -> None:
        """Refuse the cache unless it was built by this teacher for this training set and vocabulary."""
        from vlkd.teacher.protocol import TeacherIdentity, check_same_teacher

        expected = {"annotations_sha256": file_sha256(Path(annotations)), "class_names": list(class_names),
                    "base_names": list(base_names), "num_samples": num_images}
        difference = first_difference(expected, self.manifest["data"])
        if difference:
            raise ConfigError(f"the detection cache {self.folder} was built for other data (data.{difference}): "
                              "rebuild it for this config with `vlkd cache --config ... --out DIR`")
        check_same_teacher(teacher.identity, TeacherIdentity.from_dict(self.manifest["teacher"]),
                           f"the detection cache {self.folder}",
                           "rebuild the cache with this run's teacher, or train with the teacher it was built with")

    def has(self, index: int) -> bool:
        return 0 <= index < self.num_samples and index not in self.missing

    def _shard(self, shard: int) -> dict[str, torch.Tensor]:
        if self._pid != os.getpid():
            self._shards, self._pid = {}, os.getpid()
        if shard not in self._shards:
            with safe_open(str(self.folder / f"{shard_name(shard)}.safetensors"), framework="pt") as handle:
                self._shards[shard] = {key: handle.get_tensor(key) for key in handle.keys()}
        return self._shards[shard]

    def targets(self, index: int, flipped: bool = False) -> RegionTargets:
        """Image ``index``'s targets; ``flipped``: for its mirror image (boxes mirrored too)."""
        if not self.has(index):
            raise KeyError(f"image {index} is not in the detection cache {self.folder}")
        view = 1 if flipped else 0
        if view >= self.views:
            raise ConfigError(f"the detection cache {self.folder} has no mirror-image view: rebuild it with "
                              "views 2, or train without flips (data.init_args.flip false)")
        shard, row = divmod(index, self.shard_size)
        tensors = self._shard(shard)
        g0, g1 = tensors["gt.offsets"][row : row + 2].tolist()
        p0, p1 = tensors["proposals.offsets"][row : row + 2].tolist()
        return RegionTargets(tensors["gt.boxes"][g0:g1], tensors["gt.embeddings"][g0:g1, view].float(),
                             tensors["proposals.boxes"][p0:p1], tensors["proposals.scores"][p0:p1],
                             tensors["proposals.confidence"][p0:p1], tensors["proposals.labels"][p0:p1],
                             tensors["proposals.embeddings"][p0:p1, view].float())
