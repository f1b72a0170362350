"""Loading a trained method (FROSTER, FineTuneCLIP, DHO) from the checkpoint ``vlkd fit`` wrote.

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
from vlkd.teacher import TeacherServiceSpec, TeacherSpec

#: The classes a method's hyperparameters may hold besides plain values (read with ``weights_only=True``).
SPEC_CLASSES = [TeacherSpec, TeacherServiceSpec]

#: The methods whose checkpoints hold a video CLIP student, by class name.
VIDEO_STUDENT_METHODS = {cls.__name__: cls for cls in (FROSTER, FineTuneCLIP)}


def load_video_method(checkpoint: str | Path, device: str | torch.device = "cpu") -> VideoCLIPMethod:
    """The video CLIP method (FROSTER, FineTuneCLIP) saved in ``checkpoint`` (e.g. ``averaged.ckpt``), in eval
    mode on ``device`` (see :func:`load_method`)."""
    return load_method(checkpoint, VIDEO_STUDENT_METHODS, "a video CLIP student such as FROSTER", device)


def load_method(checkpoint: str | Path, methods: dict[str, type], kind: str, device: str | torch.device = "cpu"):
    """The method saved in ``checkpoint``, one of ``methods`` (by class name), in eval mode on ``device``.

    The teacher named in the checkpoint's hyperparameters is rebuilt (the methods keep it
    for training), so its weights must be available.

    Raises:
        MissingFileError: no file at ``checkpoint``.
        ConfigError: the file is not a checkpoint of one of ``methods`` (``kind`` says which in the message).
    """
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingFileError(path, "student checkpoint", "pass the .ckpt file a `vlkd fit` run wrote, e.g. averaged.ckpt")
    if not path.is_file():
        raise ConfigError(f"student checkpoint {path} is a folder: pass the .ckpt file inside it, e.g. averaged.ckpt")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{path} is not a PyTorch checkpoint: pass the .ckpt file a `vlkd fit` run wrote")
    try:
        method_class = method_class_of(path, methods, kind)
        # The hyperparameters name the teacher with specs: the only classes allowed besides tensors.
        with torch.serialization.safe_globals(SPEC_CLASSES):
            method = method_class.load_from_checkpoint(path, map_location=device, weights_only=True)
    except VlkdError:
        raise
    except Exception as error:  # torch, pickle and Lightning raise many types for a bad file
        text = str(error)
        match = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
        reason = match.group(1) if match else " ".join(text.split())[:300] or type(error).__name__
        raise ConfigError(f"cannot load {path} as the checkpoint of {kind}: {reason}") from None
    return method.to(device).eval()


def method_class_of(path: Path, methods: dict[str, type], kind: str) -> type:
    """The class of ``methods`` that the Lightning checkpoint ``path`` names."""
    class_path = checkpoint_class_path(path)
    method_class = methods.get(class_path.rsplit(".", 1)[-1])
    if method_class is None:
        raise ConfigError(f"{path} holds a {class_path}, not {kind}")
    return method_class


def checkpoint_class_path(path: Path) -> str:
    """The class path of the method a Lightning checkpoint holds (``vlkd.methods.FROSTER`` when it names none)."""
    # A memory-mapped look at the hyperparameters only (loading the method would build its teacher).
    with torch.serialization.safe_globals(SPEC_CLASSES):
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(content, dict) or not {"state_dict", "hyper_parameters"} <= set(content):
        raise ConfigError(
            f"{path} is not a Lightning checkpoint of a method (no state_dict and hyper_parameters): "
            "pass the .ckpt file a `vlkd fit` run wrote"
        )
    return str(content["hyper_parameters"].get("_class_path", "vlkd.methods.FROSTER"))
