"""A trained EZAD detector as an open-vocabulary detector, without Lightning at inference: loaded from a
``vlkd fit`` checkpoint of :class:`vlkd.methods.EZAD` or from the folder ``vlkd export`` wrote, with the
teacher that embeds any class names (the run's re-normalised teacher, recorded in the checkpoint), plus
reading images (EXIF orientation applied) and drawing the boxes.

Used by ``vlkd detect``, ``vlkd export`` and the demo's Detection tab::

    from vlkd.methods.ezad_inference import load_detector, load_image, image_tensor
    detector = load_detector("detectors/ezad_synth")
    names = ["purple ball", "orange triangle"]
    (found,) = detector.detect([image_tensor(load_image("a.png"))], detector.embed(names))
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlkd.errors import ConfigError, ImageReadError, MissingFileError, VlkdError

DEFAULT_SCORE_THRESHOLD = 0.3
DEFAULT_MAX_DETECTIONS = 100
#: What a folder given as IMAGE is searched for (not recursively).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Images are drawn at least this large on the shorter side (enlarged by a whole factor).
DRAW_MIN_SIDE = 512
#: The EZAD templates, where an exported folder records none.
DEFAULT_TEMPLATES = ("a photo of a {}",)
#: Box colours, one per class (cycled).
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000",
           "#ffd8b1", "#000075", "#a9a9a9", "#ffe119")

_CHECKPOINT_FIX = ("pass the last.ckpt of a `vlkd fit` run of vlkd.methods.EZAD (configs/ezad_synth.yaml), "
                   "or a folder `vlkd export` wrote from one")


# --------------------------------------------------------------------------- the detector and its text encoder

@dataclass
class OpenVocabularyDetector:
    """A trained EZAD detector with the teacher and templates that embed class names for it.

    Attributes:
        detector: the :class:`~vlkd.models.ezad_detector.EZADFasterRCNN`, in eval mode.
        teacher: the frozen CLIP whose text tower embeds the names (the run's).
        templates: the run's prompt templates.
        label: a short name for messages and the demo (``EZAD detector: last.ckpt``).
        source: the checkpoint file or exported folder it was loaded from.
        teacher_record: how the teacher was found: ``{"folder": path}`` or ``{"name", "pretrained"}``.
        trained_names: the class names of the run's data (base and novel), where recorded.
    """

    detector: torch.nn.Module
    teacher: object
    templates: tuple[str, ...]
    label: str
    source: Path
    teacher_record: dict
    trained_names: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.detector.parameters()).device

    def embed(self, names: Sequence[str]) -> torch.Tensor:
        """(K,) names -> (K, D) prompt-ensembled text embeddings of the run's teacher."""
        return self.teacher.encode_text(list(names), self.templates).float().to(self.device)

    @torch.no_grad()
    def detect(self, images: Sequence[torch.Tensor], class_embeddings: torch.Tensor,
               score_threshold: float = DEFAULT_SCORE_THRESHOLD,
               max_detections: int = DEFAULT_MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
        """Per (3, H, W) image in [0, 1]: ``boxes`` (N, 4) ``[x0, y0, x1, y1]`` pixels, ``scores`` (N,) and
        ``labels`` (N,) positions in ``class_embeddings``, best first, scores above ``score_threshold``."""
        heads = self.detector.roi_heads
        saved = heads.score_thresh, heads.detections_per_img
        heads.score_thresh, heads.detections_per_img = float(score_threshold), int(max_detections)
        try:
            outputs = self.detector.detect([image.to(self.device) for image in images], class_embeddings)
        finally:
            heads.score_thresh, heads.detections_per_img = saved
        return [{key: value.cpu() for key, value in output.items()} for output in outputs]


def is_exported_detector(folder: str | Path) -> bool:
    """Whether ``folder`` holds a detector :meth:`EZADFasterRCNN.save_pretrained` wrote (``vlkd export``)."""
    from vlkd.models.ezad_detector import CONFIG_FILE, CONFIG_KEY

    config_file = Path(folder) / CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        return CONFIG_KEY in json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
        return False


def is_ezad_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a readable Lightning checkpoint of :class:`vlkd.methods.EZAD`."""
    from vlkd.methods.checkpoints import checkpoint_class_path

    path = Path(path).expanduser()
    try:
        return path.is_file() and checkpoint_class_path(path).rsplit(".", 1)[-1] == "EZAD"
    except Exception:  # noqa: BLE001 - any other file is simply not one
        return False


def teacher_spec_of(method):
    """The EZAD method's teacher as a :class:`~vlkd.teacher.TeacherSpec` (a checkpoint may hold it as a dict)."""
    from vlkd.teacher import TeacherSpec

    spec = method.teacher_spec
    return TeacherSpec(**spec) if isinstance(spec, dict) else spec


def _find_folder(recorded: str, anchor: Path) -> Path | None:
    """``recorded`` as it is (absolute, or relative to the working folder), else relative to a folder
    above ``anchor`` (a run's checkpoint: its work_dir was relative to where the training ran)."""
    path = Path(recorded).expanduser()
    if path.is_dir():
        return path.resolve()
    if not path.is_absolute():
        for parent in anchor.resolve().parents:
            if (parent / path).is_dir():
                return (parent / path).resolve()
    return None


def run_teacher_record(method, checkpoint: str | Path) -> dict:
    """How to rebuild the teacher that embedded the class names of the EZAD run ``method`` (loaded from
    ``checkpoint``): ``{"folder": absolute path, "precision"}`` for a re-normalised teacher, else the
    config's ``{"name", "pretrained", "precision"}``.

    Raises:
        MissingFileError: the re-normalised teacher folder the run recorded is gone.
        ConfigError: a re-normalising variant whose checkpoint records no teacher folder.
    """
    spec = teacher_spec_of(method)
    if method.teacher_folder:
        folder = _find_folder(method.teacher_folder, Path(checkpoint))
        if folder is None:
            raise MissingFileError(
                method.teacher_folder, "re-normalised teacher folder of the run",
                "run the command from the folder the training ran in, restore the run's model.work_dir, "
                "or pass --teacher FOLDER")
        return {"folder": str(folder), "precision": spec.precision}
    if method.uses_renormalization:
        raise ConfigError(
            f"{checkpoint} records no re-normalised teacher (variant {method.variant!r} re-normalises one): "
            "pass the last.ckpt a finished `vlkd fit` run wrote, or name the teacher with --teacher")
    return {"name": spec.name, "pretrained": spec.pretrained, "precision": spec.precision}


def build_teacher(record: dict, base: Path | None = None, device: str | torch.device = "cpu"):
    """The frozen teacher ``record`` describes (see :func:`run_teacher_record`); a relative ``folder``
    is read relative to ``base`` (an exported detector's folder)."""
    from vlkd.teacher import create_teacher

    precision = record.get("precision") or "fp32"
    if record.get("folder"):
        folder = Path(record["folder"]).expanduser()
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        if not folder.is_dir():
            raise MissingFileError(folder, "teacher folder of the detector",
                                   "restore it, re-export with `vlkd export --include-teacher`, or pass --teacher")
        return create_teacher(str(folder), None, device=device, precision=precision)
    if not record.get("name"):
        raise ConfigError("the detector records no teacher to embed class names with: pass --teacher "
                          "(and --pretrained), or re-export it with `vlkd export`")
    return create_teacher(record["name"], record.get("pretrained"), device=device, precision=precision)


def _override_record(teacher: str | None, pretrained: str | None) -> dict | None:
    if teacher is None:
        return None
    if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none", "null"):
        pretrained = None
    return {"name": teacher, "pretrained": pretrained}


def load_ezad_method(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """The :class:`vlkd.methods.EZAD` of a ``vlkd fit`` checkpoint, detector built and loaded, in eval mode."""
    from vlkd.methods import EZAD
    from vlkd.methods.checkpoints import load_method

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingFileError(path, "detector checkpoint", _CHECKPOINT_FIX)
    method = load_method(path, {"EZAD": EZAD}, f"an EZAD detector ({_CHECKPOINT_FIX})", device)
    if method.detector is None:
        raise ConfigError(f"{path} holds no detector weights (an EZAD checkpoint saved before training): "
                          + _CHECKPOINT_FIX)
    method.detector.eval()
    return method


def _folder_error(path: Path) -> ConfigError:
    from vlkd.models.video_clip import is_exported_student

    if is_exported_student(path):
        return ConfigError(f"{path} holds a video student written by `vlkd export`, not an EZAD detector: "
                           + _CHECKPOINT_FIX)
    config = path / "config.json"
    if config.is_file() and "vlkd_dual_head" in config.read_text(encoding="utf-8", errors="replace"):
        return ConfigError(f"{path} holds a DHO classifier written by `vlkd export`, not an EZAD detector: "
                           + _CHECKPOINT_FIX)
    return ConfigError(f"{path} is a folder without an exported EZAD detector (no config.json with a "
                       f"'vlkd_ezad' entry): {_CHECKPOINT_FIX}")


def load_detector(checkpoint: str | Path, device: str | torch.device = "cpu", teacher: str | None = None,
                  pretrained: str | None = None) -> OpenVocabularyDetector:
    """The detector of an EZAD ``vlkd fit`` checkpoint or of a folder ``vlkd export`` wrote, with its teacher.

    ``teacher`` / ``pretrained``: embed the names with this teacher instead of the run's (it must have the
    run's embedding width).

    Raises:
        MissingFileError: no such file or folder, or the run's teacher folder is gone.
        ConfigError: the file or folder is not an EZAD detector (the message names what it is).
    """
    from vlkd.models.ezad_detector import EZADFasterRCNN

    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingFileError(path, "detector checkpoint", _CHECKPOINT_FIX)
    override = _override_record(teacher, pretrained)
    if path.is_dir():
        if not is_exported_detector(path):
            raise _folder_error(path)
        try:
            detector = EZADFasterRCNN.from_pretrained(path, device=device)
        except VlkdError:
            raise
        except Exception as error:  # noqa: BLE001 - a damaged weights file or config raises many types
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise ConfigError(f"cannot load the EZAD detector in {path}: {reason} (export it again with "
                              "`vlkd export`)") from None
        metadata = dict(detector.metadata or {})
        record = override or dict(metadata.get("teacher") or {})
        templates = tuple(metadata.get("templates") or DEFAULT_TEMPLATES)
        built = build_teacher(record, base=path, device=device)
        if record.get("folder") and not Path(record["folder"]).expanduser().is_absolute():
            record = {**record, "folder": str((path / record["folder"]).resolve())}
        trained_names = list(detector.class_names)
        label = f"EZAD detector: {path.name}"
    else:
        method = load_ezad_method(path, device)
        record = override or run_teacher_record(method, path)
        detector = method.detector
        templates = tuple(method.templates)
        built = build_teacher(record, device=device)
        trained_names = list(stored_class_names(path) or [])
        label = f"EZAD detector: {path.name}"
    if built.embed_dim != detector.embed_dim:
        raise ConfigError(f"the teacher {built.name} embeds {built.embed_dim}-wide, the detector expects "
                          f"{detector.embed_dim}: use the teacher the detector was trained with")
    return OpenVocabularyDetector(detector.eval(), built, templates, label, path, record, trained_names)


def stored_class_names(checkpoint: Path) -> list[str] | None:
    """The class names the EZAD run's data module had (``checkpoint["ezad"]["class_names"]``)."""
    from vlkd.methods.checkpoints import SPEC_CLASSES

    with torch.serialization.safe_globals(SPEC_CLASSES):
        content = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return (content.get("ezad") or {}).get("class_names")


# --------------------------------------------------------------------------- images

def load_image(path: str | Path):
    """The image at ``path`` as an RGB ``PIL.Image`` (EXIF orientation applied).

    Raises:
        ImageReadError: no such file, or it does not decode as an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file of a known format") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, str(error)) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(path, " ".join(str(error).split())[:200] or "cannot be decoded") from None
    if image.width < 1 or image.height < 1:
        raise ImageReadError(path, "the image has no pixels")
    return image


def image_tensor(image) -> torch.Tensor:
    """An RGB ``PIL.Image`` -> (3, H, W) float pixels in [0, 1]."""
    import numpy as np

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)


def collect_images(paths: Sequence[str | Path]) -> tuple[list[Path], list[dict]]:
    """Files to read: every path given, each folder's image files (sorted, not recursive); missing paths and
    folders without images as ``{"file_name", "reason"}`` entries. A path given twice is read once."""
    images: list[Path] = []
    skipped: list[dict] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                skipped.append({"file_name": str(given),
                                "reason": f"a folder with no image files ({', '.join(IMAGE_SUFFIXES)})"})
            candidates = found
        elif not path.exists():
            skipped.append({"file_name": str(given), "reason": "no such file"})
            candidates = []
        else:
            candidates = [path]
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                images.append(candidate)
    return images, skipped


# --------------------------------------------------------------------------- drawing

def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def draw_detections(image, boxes: Sequence[Sequence[float]], labels: Sequence[int], scores: Sequence[float],
                    names: Sequence[str], min_side: int = DRAW_MIN_SIDE):
    """A copy of the RGB ``PIL.Image`` with each ``[x0, y0, x1, y1]`` box (in its pixels) and a
    ``name score`` label drawn, one colour per class; enlarged by a whole factor when its shorter side
    is under ``min_side``. Lower scores are drawn first, so the best boxes end on top."""
    from PIL import Image, ImageDraw, ImageFont

    scale = max(1, math.ceil(min_side / max(1, min(image.width, image.height))))
    canvas = image.convert("RGB")
    if scale > 1:
        canvas = canvas.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    side = min(canvas.width, canvas.height)
    width = max(2, round(side / 250))
    font = ImageFont.load_default(size=max(11, round(side / 40)))
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    for i in order:
        x0, y0, x1, y1 = (float(v) * scale for v in boxes[i])
        colour = PALETTE[int(labels[i]) % len(PALETTE)]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text = f"{names[int(labels[i])]} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        tx = min(max(0.0, x0), max(0.0, canvas.width - text_w))
        ty = y0 - text_h if y0 - text_h >= 0 else y0
        draw.rectangle([tx, ty, tx + text_w, ty + text_h], fill=colour)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=_text_colour(colour), font=font)
    return canvas
