"""CLIP proposals (EZAD): boxes where the teacher is confident that *some* named object is, base or novel.

EZAD ("Efficient Feature Distillation for Zero-shot Annotation Object Detection",
Liu, Hu and Nevatia, WACV 2024) distils the teacher's region embeddings into a
detector not only on the annotated base boxes but also on regions that probably
hold objects of the unannotated (novel) categories. It finds them without any
detector:

1. dense anchors on the image resized as the detector sees it (COCO: shorter side
   800, longer at most 1,333; stride 32, sides 32 to 512, aspect ratios 0.5 / 1 / 2),
   clipped to the image;
2. every anchor's crop is classified by the (re-normalised) teacher among all the
   names, base and novel ("a photo of a {}"), and scored ``log C - entropy`` of that
   softmax: high where the teacher is sure of one name, whichever it is;
3. one class-agnostic NMS at IoU 0.7, top 1,000;
4. the proposals that overlap a base box (IoU >= 0.3), and those whose top class is
   a base class, are dropped: base objects are distilled through their own boxes,
   and what remains is likely a novel object; the best 300 are kept, each with the
   teacher's top softmax probability as its confidence (its distillation weight).

The boxes (in the original image's pixels), their scores, top class, confidence and
the embedding of their distillation crop (:class:`~vlkd.teacher.regions.RegionCrop`
1.2x, at least 10 px, square) are computed once per training image by ``vlkd cache``
(:mod:`vlkd.teacher.detection_cache`), not in every step.

The facts above are the authors' (their proposal generator's config and scripts:
anchor scales 1-16 on stride 32, ``min_entropy``, ``nms_on_all_anchors``, NMS 0.7).
Choices of ours: anchors are scored on crops by ``score_crop`` (the authors: the
anchor as it is, :class:`RegionCrop` ``()``); when it equals ``embed_crop`` the
scoring embeddings are kept and no second teacher pass is made (the offline
config's choice, which halves the cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torchvision.ops import box_iou, nms

from vlkd.errors import ConfigError
from vlkd.teacher.regions import RegionCrop

__all__ = ["ProposalSettings", "Proposals", "dense_anchors", "embed_boxes", "entropy_score", "generate_proposals",
           "resized_size"]


def _crop_rule(value) -> RegionCrop:
    if isinstance(value, RegionCrop):
        return value
    if isinstance(value, dict):
        return RegionCrop(**value)
    raise ConfigError(f"a crop rule must be a mapping like {{enlarge: 1.2, min_size: 10, square: true}}, got {value!r}")


@dataclass
class ProposalSettings:
    """How CLIP proposals are made (defaults: EZAD on COCO; see the module docstring).

    Args:
        stride: anchor grid step in pixels of the resized image.
        sizes: anchor sides (square root of the area) in pixels of the resized image.
        ratios: anchor aspect ratios height / width.
        min_size, max_size: the image is resized so its shorter side is ``min_size`` and its longer
            at most ``max_size`` before the anchors are laid (``None``: the image as it is).
        score_crop: the crop rule of the crops the anchors are scored on.
        embed_crop: the crop rule of the distillation embeddings of the kept proposals.
        nms_iou: IoU of the class-agnostic NMS.
        pre_filter: proposals kept after NMS, before the base filter.
        base_iou: proposals with at least this IoU to a base box are dropped.
        keep: proposals kept per image after filtering.
        drop_base_class: drop the proposals whose top class is a base class.
        templates: the prompt templates of the class names.
        batch_size: crops per teacher forward pass.
    """

    stride: int = 32
    sizes: Sequence[float] = (32, 64, 128, 256, 512)
    ratios: Sequence[float] = (0.5, 1.0, 2.0)
    min_size: int | None = 800
    max_size: int | None = 1333
    score_crop: RegionCrop = field(default_factory=RegionCrop)
    embed_crop: RegionCrop = field(default_factory=lambda: RegionCrop(enlarge=1.2, min_size=10, square=True))
    nms_iou: float = 0.7
    pre_filter: int = 1000
    base_iou: float = 0.3
    keep: int = 300
    drop_base_class: bool = True
    templates: str | Sequence[str] = ("a photo of a {}",)
    batch_size: int = 512

    def __post_init__(self) -> None:
        self.score_crop, self.embed_crop = _crop_rule(self.score_crop), _crop_rule(self.embed_crop)
        self.sizes, self.ratios = tuple(float(v) for v in self.sizes), tuple(float(v) for v in self.ratios)
        if isinstance(self.templates, str):
            self.templates = (self.templates,)
        self.templates = tuple(self.templates)
        if not (isinstance(self.stride, int) and self.stride >= 1):
            raise ConfigError(f"proposal stride must be an integer >= 1 pixel, got {self.stride!r}")
        if not self.sizes or min(self.sizes) <= 0 or not self.ratios or min(self.ratios) <= 0:
            raise ConfigError(f"proposal sizes and ratios must be positive, got {self.sizes} and {self.ratios}")
        if not 0 < self.nms_iou <= 1 or not 0 < self.base_iou <= 1:
            raise ConfigError(f"nms_iou and base_iou must be in (0, 1], got {self.nms_iou} and {self.base_iou}")
        if self.keep < 1 or self.pre_filter < self.keep:
            raise ConfigError(f"need 1 <= keep <= pre_filter, got keep {self.keep} and pre_filter {self.pre_filter}")
        if (self.min_size is None) != (self.max_size is None):
            raise ConfigError("give both min_size and max_size (the detector's resize), or neither")

    def to_dict(self) -> dict:
        values = asdict(self)
        values["score_crop"], values["embed_crop"] = asdict(self.score_crop), asdict(self.embed_crop)
        values["sizes"], values["ratios"], values["templates"] = list(self.sizes), list(self.ratios), list(self.templates)
        return values

    @property
    def reuses_scoring_embeddings(self) -> bool:
        return self.score_crop == self.embed_crop


def resized_size(height: int, width: int, min_size: int | None, max_size: int | None) -> tuple[float, float]:
    """The (height, width) torchvision's ``GeneralizedRCNNTransform`` (and mmdetection's keep-ratio resize)
    gives an image: shorter side ``min_size`` unless the longer would pass ``max_size``."""
    if min_size is None:
        return float(height), float(width)
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return height * scale, width * scale


def dense_anchors(height: float, width: float, stride: int, sizes: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """(A, 4) ``x0 y0 x1 y1`` anchors centred on the grid ``(i + 0.5) * stride`` covering the image, every
    size and ratio at every point, clipped to the image; degenerate ones (under a pixel a side) dropped."""
    ys = (torch.arange(math.ceil(height / stride), dtype=torch.float64) + 0.5) * stride
    xs = (torch.arange(math.ceil(width / stride), dtype=torch.float64) + 0.5) * stride
    shapes = torch.tensor([[size / math.sqrt(ratio), size * math.sqrt(ratio)] for size in sizes for ratio in ratios],
                          dtype=torch.float64)  # (S, 2) width, height: ratio = height / width
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], dim=1)[:, None, :]  # (P, 1, 2)
    half = shapes[None] / 2
    anchors = torch.cat([centres - half, centres + half], dim=-1).reshape(-1, 4)
    anchors[:, 0::2] = anchors[:, 0::2].clamp(0, width)
    anchors[:, 1::2] = anchors[:, 1::2].clamp(0, height)
    keep = ((anchors[:, 2] - anchors[:, 0]) >= 1) & ((anchors[:, 3] - anchors[:, 1]) >= 1)
    return anchors[keep].float()


def entropy_score(probabilities: torch.Tensor) -> torch.Tensor:
    """(A, C) softmax rows -> (A,) ``log C - entropy``: 0 for a uniform row, ``log C`` for a one-hot one."""
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1)
    return math.log(probabilities.shape[-1]) - entropy


@dataclass
class Proposals:
    """The CLIP proposals of one image, best first; boxes in the original image's pixels."""

    boxes: torch.Tensor  # (K, 4) x0 y0 x1 y1
    scores: torch.Tensor  # (K,) log C - entropy
    confidence: torch.Tensor  # (K,) the teacher's top softmax probability
    labels: torch.Tensor  # (K,) the top class (position in the names)
    embeddings: torch.Tensor  # (K, D) normalised teacher embeddings of the embed_crop crops
    anchors: int  # anchors scored

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@torch.no_grad()
def generate_proposals(teacher, image: torch.Tensor, text_embeddings: torch.Tensor, base_boxes: torch.Tensor,
                       base_classes: torch.Tensor, settings: ProposalSettings | None = None) -> Proposals:
    """The CLIP proposals of one (3, H, W) image in [0, 1] (module docstring).

    Args:
        teacher: a teacher (``encode_regions``, ``logit_scale``).
        image: the pixels.
        text_embeddings: (C, D) normalised embeddings of all names, base and novel.
        base_boxes: (N, 4) ``x0 y0 x1 y1`` annotated base boxes of the image (pixels).
        base_classes: (C,) bool, which names are base classes.
        settings: see :class:`ProposalSettings`.
    """
    settings = settings or ProposalSettings()
    if image.ndim != 3 or image.shape[0] != 3:
        raise ConfigError(f"generate_proposals takes one (3, H, W) image, got {tuple(image.shape)}")
    if base_classes.shape != (text_embeddings.shape[0],):
        raise ConfigError(f"base_classes has {tuple(base_classes.shape)} entries for {text_embeddings.shape[0]} names")
    height, width = image.shape[-2:]
    new_h, new_w = resized_size(height, width, settings.min_size, settings.max_size)
    anchors = dense_anchors(new_h, new_w, settings.stride, settings.sizes, settings.ratios)
    anchors = anchors * torch.tensor([width / new_w, height / new_h] * 2)  # to the original pixels
    anchors = anchors[((anchors[:, 2] - anchors[:, 0]) >= 1) & ((anchors[:, 3] - anchors[:, 1]) >= 1)]
    # Scoring, NMS and filtering run where the teacher's embeddings are (a GPU at real scale); results come back
    # to the CPU.
    embeddings = embed_boxes(teacher, image, anchors, settings.score_crop, settings.batch_size)
    probabilities = (teacher.logit_scale * embeddings @ text_embeddings.float().cpu().T).softmax(dim=-1)
    scores = entropy_score(probabilities)
    confidence, labels = probabilities.max(dim=-1)
    order = nms(anchors, scores, settings.nms_iou)[: settings.pre_filter]
    keep = torch.ones(len(order), dtype=torch.bool)
    if len(base_boxes):
        keep &= box_iou(anchors[order], base_boxes.float().cpu()).max(dim=1).values < settings.base_iou
    if settings.drop_base_class:
        keep &= ~base_classes.cpu()[labels[order]]
    order = order[keep][: settings.keep]
    boxes = anchors[order]
    if settings.reuses_scoring_embeddings:
        kept_embeddings = embeddings[order]
    else:
        kept_embeddings = embed_boxes(teacher, image, boxes, settings.embed_crop, settings.batch_size)
    return Proposals(boxes, scores[order], confidence[order], labels[order], kept_embeddings, len(anchors))


def embed_boxes(teacher, image: torch.Tensor, boxes: torch.Tensor, crop: RegionCrop, batch_size: int = 256) -> torch.Tensor:
    """The teacher's embeddings (float32, on the CPU) of ``boxes`` ``(K, 4)`` (xyxy pixels) of one ``(3, H, W)`` image,
    cut by ``crop``, ``batch_size`` crops at a time."""
    if len(boxes) == 0:
        return torch.zeros(0, teacher.embed_dim)
    rows = torch.cat([torch.zeros(len(boxes), 1), boxes.float().cpu()], dim=1)
    image = image.to(teacher.pixel_mean.device)  # cropped and embedded on the teacher's device
    return torch.cat([teacher.encode_regions([image], chunk, crop).float().cpu() for chunk in rows.split(batch_size)])
