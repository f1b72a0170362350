"""What the demo computes, without any UI: a video file and free-text action names -> scores.

:func:`score_video` decodes frames at a fixed rate (:func:`vlkd.data.sampling.fps_indices`),
capped at ``max_frames`` spread over the whole video for long videos, embeds them
with a :class:`Scorer` (the frozen teacher or a trained video student), embeds the
action names with the model's prompt ensemble, and returns

* the video-level probabilities: a softmax over the names of the per-frame
  logits averaged over time (how :class:`~vlkd.methods.ZeroShotCLIP` and the
  video students classify a clip), sorted, best first;
* per frame and name the cosine similarity and the softmax over names, so a
  plot over time shows *when* an action is on screen.

:func:`detect_objects` is the detection tab's: an image file and free-text object names ->
the boxes a trained EZAD detector finds (:mod:`vlkd.methods.ezad_inference`, the names embedded by
the run's teacher), drawn on the image and listed as rows.

Bad input raises :class:`DemoInputError` with a message meant for the page.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from vlkd.data.sampling import fps_indices
from vlkd.data.transforms import resize_short_side
from vlkd.errors import VideoReadError, VlkdError

#: At most this many action names per query: each is prompt-ensembled (16 templates).
MAX_CLASSES = 20
#: Longest accepted action name, in characters (CLIP's text tower reads ~77 tokens at most).
MAX_NAME_LENGTH = 100
#: Frames are sampled at this rate (frames per second of video)...
DEFAULT_FPS = 8.0
#: ...but never more than this many per video: longer videos are sampled sparser.
DEFAULT_MAX_FRAMES = 64
# Frames are decoded and shrunk this many at a time, so a long high-resolution
# video never sits in memory at full size.
_DECODE_CHUNK = 4


#: Detection: the page's score threshold starts here...
DEFAULT_SCORE_THRESHOLD = 0.3
#: ...and at most this many boxes are kept per image.
MAX_DETECTIONS = 100
#: What the detection tab says when ``vlkd demo`` was started without ``--detector``.
NO_DETECTOR_HELP = """**No detector is loaded.** This tab finds objects named in free text with a trained EZAD detector.
Train one on the offline SynthDetection world and start the demo with it:

```bash
vlkd fit --config configs/ezad_synth.yaml
vlkd demo --detector runs/ezad_synth/lightning_logs/version_0/checkpoints/last.ckpt
```

`--detector` also takes a folder written by `vlkd export` from such a checkpoint."""


class DemoInputError(VlkdError, ValueError):
    """Input the demo cannot score (no video, an unreadable file, bad action names); the message is for the user."""


@dataclass
class Scores:
    """The answer to one query.

    Attributes:
        names: the action names, in the order they were typed (``K``).
        probabilities: name -> video-level probability, sorted best first; sums to 1.
        frame_times: the time of every scored frame in seconds (``T``).
        frame_similarity: ``(T, K)`` cosine similarity of each frame to each name.
        frame_probabilities: ``(T, K)`` softmax over the names, frame by frame.
        video_frames: frames in the file.
        video_seconds: the video's duration.
        fps: the video's frame rate.
        model: the model that scored it.
        seconds: time spent on the request (decoding and both towers).
        notes: things the user should know (e.g. that a long video was sampled sparsely).
    """

    names: list[str]
    probabilities: dict[str, float]
    frame_times: list[float]
    frame_similarity: torch.Tensor
    frame_probabilities: torch.Tensor
    video_frames: int
    video_seconds: float
    fps: float
    model: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def top_k(self, k: int) -> list[tuple[str, float]]:
        """The ``k`` most probable names with their probabilities, best first."""
        return list(self.probabilities.items())[:k]


class Scorer:
    """A model the demo can query: per-frame and text embeddings on one scale.

    Subclasses implement :meth:`encode_frames` and :meth:`encode_text`; both return
    L2-normalised embeddings, and ``logit_scale`` turns cosines into logits.
    """

    label: str
    image_size: int
    logit_scale: float
    templates: tuple[str, ...] = ()
    device: torch.device = torch.device("cpu")

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """(1, T, 3, H, W) frames in [0, 1] -> (T, D) normalised embeddings."""
        raise NotImplementedError

    def encode_text(self, names: Sequence[str]) -> torch.Tensor:
        """(K,) action names -> (K, D) normalised, prompt-ensembled embeddings."""
        raise NotImplementedError


class TeacherScorer(Scorer):
    """The frozen CLIP teacher: frames embedded one by one, names with its ``video`` prompt ensemble."""

    def __init__(self, teacher, label: str | None = None, templates: str = "video"):
        from vlkd.teacher.prompts import resolve_templates

        self.teacher = teacher
        self.templates = resolve_templates(templates)
        self.label = label or f"frozen teacher ({teacher.name})"
        self.image_size = teacher.image_size
        self.logit_scale = float(teacher.logit_scale)
        self.device = teacher.pixel_mean.device

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        return self.teacher.encode_frames(video)[0]

    def encode_text(self, names: Sequence[str]) -> torch.Tensor:
        return self.teacher.encode_text(list(names), self.templates)


class StudentScorer(Scorer):
    """A trained video CLIP student (e.g. FROSTER's): frames embedded together, neighbours attending.

    ``method`` is a :class:`~vlkd.methods.finetune.VideoCLIPMethod` (FROSTER, FineTuneCLIP):
    its ``student`` embeds the frames and its ``class_embeddings`` the names, with
    the method's own templates and fixed ``logit_scale``.
    """

    def __init__(self, method, label: str):
        self.method = method.eval()
        self.label = label
        self.templates = tuple(method.templates)
        self.image_size = method.student.image_size
        self.logit_scale = float(method.logit_scale)
        self.device = method.student.pixel_mean.device

    @torch.no_grad()
    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        return self.method.student.encode_video(video, normalize=True)[0]

    @torch.no_grad()
    def encode_text(self, names: Sequence[str]) -> torch.Tensor:
        return self.method.class_embeddings(list(names))


class ExportedStudentScorer(Scorer):
    """A video student exported with ``vlkd export``: the :class:`~vlkd.models.VideoCLIP` in the
    folder, with the prompt templates, class descriptions and logit scale its config records."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        from vlkd.models import VideoCLIP
        from vlkd.models.video_clip import CONFIG_FILE

        folder = Path(folder)
        self.student = VideoCLIP.from_pretrained(folder, device=device)
        saved = json.loads((folder / CONFIG_FILE).read_text())["vlkd"]
        self.templates = tuple(saved["templates"])
        self.descriptions = dict(saved.get("class_descriptions") or {})
        self.label = f"{saved.get('method', 'exported')} student: {folder.name}"
        self.image_size = self.student.image_size
        self.logit_scale = float(saved["logit_scale"])
        self.device = self.student.pixel_mean.device

    @torch.no_grad()
    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        return self.student.encode_video(video, normalize=True)[0]

    @torch.no_grad()
    def encode_text(self, names: Sequence[str]) -> torch.Tensor:
        return self.student.class_embeddings(list(names), self.templates, self.descriptions)


def parse_names(text: str | None, max_classes: int | None = MAX_CLASSES, what: str = "action") -> list[str]:
    """Comma-separated names -> a list, whitespace tidied; rejects empty, duplicate or too many names.

    ``what`` names them in the messages (``action``, ``object``); ``max_classes`` ``None``: no limit.
    """
    if text is None or not text.strip():
        raise DemoInputError(f"type at least one {what} name (several are separated by commas)")
    names = [re.sub(r"\s+", " ", part).strip() for part in text.split(",")]
    if any(not name for name in names):
        raise DemoInputError(f"an {what} name is empty: remove the extra comma" if what[0] in "aeiou"
                             else f"a {what} name is empty: remove the extra comma")
    seen: dict[str, str] = {}
    for name in names:
        key = name.casefold()
        if key in seen:
            raise DemoInputError(f"the {what} name {name!r} is given twice: each name may appear once")
        seen[key] = name
    if max_classes is not None and len(names) > max_classes:
        raise DemoInputError(f"{len(names)} {what} names given: at most {max_classes} per query")
    too_long = [name for name in names if len(name) > MAX_NAME_LENGTH]
    if too_long:
        raise DemoInputError(f"the {what} name {too_long[0][:40]!r}... is longer than {MAX_NAME_LENGTH} characters")
    return names


def read_video(
    path: str | Path | None, size: int, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES
) -> tuple[torch.Tensor, list[float], dict]:
    """Frames of ``path`` sampled at ``fps`` (at most ``max_frames``), shorter side resized to ``size``.

    Returns ``(video (1, T, 3, H, W) float in [0, 1], frame times in seconds, info)``
    where ``info`` holds the file's frame count, frame rate and duration and any notes.
    """
    from vlkd.data.video import VideoBackendError, open_video

    if path is None or not str(path).strip():
        raise DemoInputError("upload a video or pick one of the samples")
    path = Path(path)
    notes = []
    try:
        with open_video(path) as reader:
            info = reader.info
            if info.num_frames < 1:
                raise VideoReadError(path, "no frame decodes")
            source_fps = info.fps if info.fps > 0 else fps
            every, _ = fps_indices(info.num_frames, source_fps, fps)
            indices, times = fps_indices(info.num_frames, source_fps, fps, max_frames=max_frames)
            chunks = [resize_short_side(frames.float().div_(255), size)
                      for frames in reader.read_chunks(indices, _DECODE_CHUNK)]
    except VideoReadError as error:
        reason = error.reason.replace(str(path), path.name)  # the server's upload folder means nothing to the user
        raise DemoInputError(f"cannot read {path.name} as a video ({reason}); upload an MP4, WebM, AVI or MKV file"
                             ) from None
    except VideoBackendError as error:
        raise DemoInputError(f"no video decoder works on this machine: {error}") from None
    duration = info.num_frames / source_fps
    if len(every) > len(indices):
        step = times[1] - times[0] if len(times) > 1 else duration
        notes.append(
            f"The video is {duration:.1f} s long: at {fps:g} frames per second it would need {len(every)} frames, "
            f"more than the limit of {max_frames}, so {len(indices)} frames spread over all of it were scored "
            f"(about one every {step:.2f} s)."
        )
    return torch.cat(chunks).unsqueeze(0), times, {
        "frames": info.num_frames, "fps": source_fps, "seconds": duration, "notes": notes,
    }


@torch.no_grad()
def score_video(
    path: str | Path | None,
    names: str | Sequence[str],
    scorer: Scorer,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_classes: int = MAX_CLASSES,
) -> Scores:
    """Score the video at ``path`` against action ``names`` (a comma-separated string or a list).

    Raises:
        DemoInputError: no or unreadable video, empty, duplicate or too many names.
    """
    started = time.perf_counter()
    names = parse_names(names if isinstance(names, str) else ",".join(names), max_classes)
    video, times, info = read_video(path, scorer.image_size, fps, max_frames)
    frames = scorer.encode_frames(video.to(scorer.device))  # (T, D)
    text = scorer.encode_text(names)  # (K, D)
    similarity = (frames @ text.T).float().cpu()  # (T, K)
    logits = scorer.logit_scale * similarity
    video_probabilities = logits.mean(dim=0).softmax(dim=-1)
    order = video_probabilities.argsort(descending=True).tolist()
    return Scores(
        names=names,
        probabilities={names[i]: float(video_probabilities[i]) for i in order},
        frame_times=times,
        frame_similarity=similarity,
        frame_probabilities=F.softmax(logits, dim=-1),
        video_frames=info["frames"],
        video_seconds=info["seconds"],
        fps=info["fps"],
        model=scorer.label,
        seconds=time.perf_counter() - started,
        notes=info["notes"],
    )


def load_teacher_scorer(name: str, pretrained: str | None, device: str | torch.device = "cpu") -> TeacherScorer:
    """The frozen teacher ``create_teacher(name, pretrained)`` as a :class:`Scorer`."""
    from vlkd.teacher import create_teacher

    teacher = create_teacher(name, pretrained, device=device)
    return TeacherScorer(teacher, f"frozen teacher: {name}" + (f" ({pretrained})" if pretrained else ""))


def load_student_scorer(checkpoint: str | Path, device: str | torch.device = "cpu") -> Scorer:
    """A trained FROSTER (or fine-tuned CLIP) student, as a :class:`Scorer`: from a Lightning
    checkpoint, or from the folder ``vlkd export`` wrote.

    See :func:`vlkd.methods.checkpoints.load_video_method` for what is checked and raised.
    """
    from vlkd.methods.checkpoints import load_video_method
    from vlkd.models.video_clip import is_exported_student

    if is_exported_student(checkpoint):
        return ExportedStudentScorer(checkpoint, device)

    method = load_video_method(checkpoint, device)
    return StudentScorer(method, f"{type(method).__name__} student: {Path(checkpoint).name}")


# --------------------------------------------------------------------------- detection

@dataclass
class Detections:
    """The answer to one detection query.

    Attributes:
        names: the object names, in the order they were typed (``K``).
        objects: the detections, best first: ``{"object": name, "score": probability, "box": [x0, y0, x1, y1]}``
            with the box in the image's pixels.
        image: the image (``PIL.Image``) with the boxes and their labels drawn.
        width, height: the image's size in pixels.
        score_threshold: boxes scoring at most this were left out.
        model: the detector that answered.
        seconds: time spent on the request (decoding, the text tower and the detector).
    """

    names: list[str]
    objects: list[dict]
    image: object
    width: int
    height: int
    score_threshold: float
    model: str
    seconds: float

    def rows(self) -> list[dict]:
        """One row per detection: object, score and the COCO box ``x, y, width, height`` (pixels, rounded)."""
        rows = []
        for item in self.objects:
            x0, y0, x1, y1 = item["box"]
            rows.append({"object": item["object"], "score": round(item["score"], 3), "x": round(x0, 1),
                         "y": round(y0, 1), "width": round(x1 - x0, 1), "height": round(y1 - y0, 1)})
        return rows

    def counts(self) -> dict[str, int]:
        """Detections per name, in the order of ``names`` (names without a detection included, as 0)."""
        counts = dict.fromkeys(self.names, 0)
        for item in self.objects:
            counts[item["object"]] += 1
        return counts


def read_image_file(path: str | Path | None):
    """The image at ``path`` as an RGB ``PIL.Image``; :class:`DemoInputError` naming the file if it cannot be read."""
    from vlkd.methods.ezad_inference import load_image
    from vlkd.errors import ImageReadError

    if path is None or not str(path).strip():
        raise DemoInputError("upload an image")
    path = Path(path)
    try:
        return load_image(path)
    except ImageReadError as error:
        reason = error.reason.replace(str(path), path.name)  # the server's upload folder means nothing to the user
        raise DemoInputError(f"cannot read {path.name} as an image ({reason}); upload a PNG, JPEG or WebP file"
                             ) from None


@torch.no_grad()
def detect_objects(
    path: str | Path | None,
    names: str | Sequence[str],
    detector,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    max_classes: int = MAX_CLASSES,
) -> Detections:
    """Find the objects ``names`` (a comma-separated string or a list) on the image at ``path`` with ``detector``
    (an :class:`~vlkd.methods.ezad_inference.OpenVocabularyDetector`, see :func:`load_detector`).

    Raises:
        DemoInputError: no or unreadable image, empty, duplicate or too many names, a threshold outside [0, 1].
    """
    from vlkd.methods.ezad_inference import draw_detections, image_tensor

    started = time.perf_counter()
    names = parse_names(names if isinstance(names, str) else ",".join(names), max_classes, what="object")
    try:
        score_threshold = float(score_threshold)
    except (TypeError, ValueError):
        raise DemoInputError(f"the score threshold must be a number in [0, 1], got {score_threshold!r}") from None
    if not 0.0 <= score_threshold <= 1.0:
        raise DemoInputError(f"the score threshold must be in [0, 1], got {score_threshold:g}")
    image = read_image_file(path)
    (output,) = detector.detect([image_tensor(image)], detector.embed(names), score_threshold, max_detections)
    boxes, scores, labels = output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()
    objects = [{"object": names[label], "score": float(score), "box": [float(v) for v in box]}
               for box, score, label in zip(boxes, scores, labels)]
    return Detections(
        names=names,
        objects=objects,
        image=draw_detections(image, boxes, labels, scores, names),
        width=image.width,
        height=image.height,
        score_threshold=score_threshold,
        model=detector.label,
        seconds=time.perf_counter() - started,
    )


def load_detector(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """A trained EZAD detector with its teacher, from a ``vlkd fit`` checkpoint or a folder ``vlkd export`` wrote
    (:func:`vlkd.methods.ezad_inference.load_detector`)."""
    from vlkd.methods.ezad_inference import load_detector as load

    return load(checkpoint, device)
