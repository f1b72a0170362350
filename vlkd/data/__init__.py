"""Video and image data: decoding backends, frame samplers, annotation lists, splits, datasets and the data modules.

Names are imported lazily so that light users (the teacher uses the transforms,
a split script uses the list readers) do not pay for importing Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VideoSample": "vlkd.data.annotations",
    "read_annotations": "vlkd.data.annotations",
    "read_class_names": "vlkd.data.annotations",
    "read_video_list": "vlkd.data.annotations",
    "Base2NovelSplit": "vlkd.data.splits",
    "load_base2novel": "vlkd.data.splits",
    "load_zero_shot": "vlkd.data.splits",
    "VideoClipDataset": "vlkd.data.datasets",
    "Base2NovelSpec": "vlkd.data.datamodule",
    "EvalSet": "vlkd.data.datamodule",
    "VideoDataModule": "vlkd.data.datamodule",
    "ZeroShotSpec": "vlkd.data.datamodule",
    "SynthActionsDataModule": "vlkd.data.datamodule",
    "ImageSample": "vlkd.data.images",
    "ImageDataset": "vlkd.data.images",
    "load_imagenet_subset": "vlkd.data.images",
    "read_split_zhou": "vlkd.data.images",
    "read_subset_list": "vlkd.data.images",
    "ImageDataModule": "vlkd.data.image_datamodule",
    "SynthImagesDataModule": "vlkd.data.image_datamodule",
    "ContinualDataModule": "vlkd.data.continual",
    "ContinualTask": "vlkd.data.continual",
    "ReferenceData": "vlkd.data.continual",
    "DetectionDataset": "vlkd.data.detection",
    "read_coco_annotations": "vlkd.data.detection",
    "DetectionDataModule": "vlkd.data.detection_datamodule",
    "SynthDetectionDataModule": "vlkd.data.detection_datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlkd.data' has no attribute {name!r}")
