"""Loading a trained video CLIP student (FROSTER, FineTuneCLIP) from the checkpoint ``vlkd fit`` wrote.

Used wherever a run's result is picked up outside Lightning's loop: the demo and
``vlkd export``. The file is read with ``weights_only=True``; every way it can be
the wrong file ends in one :class:`~vlkd.errors.ConfigError` or
:class:`~vlkd.errors.MissingFileError` naming it.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from vlkd.errors import ConfigError, MissingFileError, VlkdError
from vlkd.methods.finetune import FineTuneCLIP, VideoCLIPMethod
from vlkd.methods.froster import FROSTER
from vlkd.teacher import TeacherSpec

#: The methods whose checkpoints hold a video CLIP student, by class name.
VIDEO_STUDENT_METHODS = {cls.__name__: cls for cls in (FROSTER, FineTuneCLIP)}


def load_video_method(checkpoint: str | Path, device: str | torch.device = "cpu") -> VideoCLIPMethod:
    """The method saved in ``checkpoint`` (e.g. ``averaged.ckpt``), in eval mode on ``device``.

    The teacher named in the checkpoint's hyperparameters is rebuilt (FROSTER keeps it
    for training), so its weights must be available.

    Raises:
        MissingFileError: no file at ``checkpoint``.
        ConfigError: the file is not a checkpoint of a video CLIP method.
    """
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingFileError(path, "student checkpoint", "pass the .ckpt file a `vlkd fit` run wrote, e.g. averaged.ckpt")
    if not path.is_file():
        raise ConfigError(f"student checkpoint {path} is a folder: pass the .ckpt file inside it, e.g. averaged.ckpt")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is not a PyTorch checkpoint: pass the .ckpt file a `vlkd fit` run wrote")
    # The hyperparameters name the teacher with a TeacherSpec: the one class allowed besides tensors.
    with torch.serialization.safe_globals([TeacherSpec]):
        try:
            # A memory-mapped look first: a plain state dict would otherwise build a default ViT-B/16 teacher.
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(content, dict) or not {"state_dict", "hyper_parameters"} <= set(content):
                raise ConfigError(
                    f"{path} is not a Lightning checkpoint of a method (no state_dict and hyper_parameters): "
                    "pass the .ckpt file a `vlkd fit` run wrote"
                )
            # Load with the class the checkpoint names (its hyperparameters are parsed
            # against that class's signature), among the video CLIP students only.
            class_path = str(content["hyper_parameters"].get("_class_path", "vlkd.methods.FROSTER"))
            del content
            method_class = VIDEO_STUDENT_METHODS.get(class_path.rsplit(".", 1)[-1])
            if method_class is None:
                raise ConfigError(f"{path} holds a {class_path}, not a video CLIP student such as FROSTER")
            method = method_class.load_from_checkpoint(path, map_location=device, weights_only=True)
        except VlkdError:
            raise
        except Exception as error:  # torch, pickle and Lightning raise many types for a bad file
            text = str(error)
            match = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
            reason = match.group(1) if match else " ".join(text.split())[:300] or type(error).__name__
            raise ConfigError(f"cannot load {path} as a video CLIP student checkpoint: {reason}") from None
    return method.to(device).eval()
