"""EZAD's student: a Faster R-CNN whose classifier is the frozen CLIP text embeddings of the class names.

"Efficient Feature Distillation for Zero-shot Annotation Object Detection" (EZAD;
Liu, Hu and Nevatia, WACV 2024; code: github.com/dragonlzm/EZAD, mmdetection 2.x)
trains a detector on base-category boxes only and still detects novel categories,
by (a) classifying regions in CLIP's embedding space, against the text embeddings
of any vocabulary, and (b) distilling the (domain-adapted) CLIP image embeddings of
selected regions into the detector's region embeddings. This module is the
detector side, built from torchvision's detection pieces (no mmcv):

* **Backbone**: a torchvision ResNet with an FPN (levels P2-P5 plus a max-pooled P6
  for the RPN), torchvision's RPN and ``MultiScaleRoIAlign`` (7 x 7).
* **Box head** (:class:`EmbeddingBoxHead`): mmdetection's ConvFC layout, shared convs
  and fcs, then a classification and a regression branch of their own; the default is
  the head EZAD's COCO / LVIS runs use (``hpc_script/two_stage_model/
  mask_rcnn_distillation_coco.sh``, "301212": 3 shared convs, no shared fc, 1 conv
  and 2 fcs (1,024) in each branch).
* **Cosine classifier** (:class:`EmbeddingPredictor`): the classification feature goes
  through one linear layer to the CLIP width ``D`` and is L2-normalised (the *region
  embedding*); the logit of class ``c`` is ``temperature * cos(embedding, text_c)``
  against the frozen, normalised class-text embeddings (a buffer, replaceable at any
  time with :meth:`EZADFasterRCNN.set_class_embeddings`: open vocabulary), and the
  background logit is ``temperature * <embedding, background>`` with a learnt
  background vector, not normalised (EZAD's ``fc_cls_bg``, ``normalize_bg_vec=False``);
  softmax cross-entropy over the ``C + 1`` logits. The temperature is learnt as a log
  scale, ``exp(log_temperature)``, started at ``log 100`` and not clamped (EZAD's
  ``learnable_temperature=True``: ``nn.Parameter(4.6052)``, used as ``.exp()``).
* **Semantic regression**: one class-agnostic regressor whose input is the regression
  feature concatenated with the text embedding of a class: in training the class the
  sampled proposal is assigned to (a zero vector for background proposals), at test
  the arg-max of the softmax over all ``C + 1`` logits (zeros when background wins),
  as in EZAD's ``reg_with_cls_embedding``. L1 loss on the encoded deltas (means 0,
  stds 0.1 / 0.1 / 0.2 / 0.2, i.e. torchvision's weights 10 / 10 / 5 / 5), weight 1,
  summed over positive proposals and divided by the number of sampled proposals
  (mmdetection's ``avg_factor``). ``semantic_regression=False`` is the ablation: the
  regressor reads the regression feature alone.
* **Distillation**: the student embeddings of the distillation boxes (ground-truth
  boxes and CLIP proposals, given per image in the original image's pixels with the
  teacher's embeddings and a weight each) are pulled to the teacher's by a weighted
  L1 loss: the teacher embeddings are re-normalised, each image's weights are
  rescaled to mean 1 (``K / sum(w)``), and ``loss_distill = factor * sum_k w_k
  |s_k - t_k|_1 / (K_total * D)``, the mean over all elements times ``factor``;
  EZAD's factor is ``clip_dim * distill_loss_factor`` = ``D`` for COCO (``distill_
  loss_factor=1``), ``D / 2`` for LVIS (0.5), so the default here is ``D``.
  The distillation boxes go through the same RoIAlign, box head and embedding layer
  as the proposals (EZAD's ``_bbox_forward``: ``self.bbox_head(gt_and_rand_bbox_feat)``).
  (EZAD's LVIS runs also double both box-regression losses, ``loss_weight=2.0``: a
  weighting of the returned losses, left to the training method.)
* **Inference**: softmax over ``C + 1``, the ``C`` class scores, boxes from the
  (semantic) regressor, clipped, per-class NMS at IoU 0.5 (``batched_nms``), score
  threshold 0 (EZAD's test ``score_thr=0.0``) and at most 100 detections per image.

Choices where the paper and code leave it open, or where this port differs:

* torchvision's RPN (smooth-L1 box loss, its anchor sampler and proposal counts:
  2,000 / 1,000 proposals after NMS in training / test) instead of mmdetection's
  (L1, 1,000 / 1,000): every setting EZAD shares with a plain Faster R-CNN keeps
  torchvision's default, so the detector is torchvision's Faster R-CNN but for the
  head; anchors are the same (32-512 on strides 4-64, ratios 0.5 / 1 / 2). RoIAlign uses torchvision's ``sampling_ratio=2``
  and pixel-corner convention (mmcv: adaptive sampling, ``aligned=True``); the
  level-assignment rule is the same (FPN's k0 = 4 at 224 px).
* Initialisation follows mmcv's as EZAD's head gets it: Xavier (normal) for every
  linear layer, the background vector and the regressor included (the head's
  ``init_cfg`` applies ``Xavier`` to ``layer='Linear'``), Kaiming (fan-out) for convs,
  biases zero.
* Weights of the distillation boxes are optional (all ones). When an image's weights
  sum to 0 its factor is left at 1 (EZAD divides by the sum; that branch of theirs
  cannot be 0 because ground-truth boxes weigh 1).
* At test the semantic regressor's class is the arg-max over ``C + 1`` (EZAD's code),
  so every class of a proposal shares one box, as with any class-agnostic regressor.
* ``detections_per_img`` defaults to 100 (COCO's AP reads the top 100 per image; EZAD's
  evaluation keeps 300, and 1,000 is what ``vlkd.eval.detection`` also reports):
  raise it for the 1,000-detection numbers.
* Labels are positions in the vocabulary, ``0 .. C - 1`` (as :class:`~vlkd.data.
  detection.DetectionDataset` gives them), in targets and in detections; the logits
  are ``[C classes, background]``, EZAD's layout. Crowd boxes (``ignore``) are not
  used (EZAD: ``ignore_iof_thr=-1``).
* ``trainable_layers`` and the backbone's norm follow torchvision's rule: with
  ImageNet weights, frozen batch norm and layers 2-4 trainable (EZAD: ``frozen_stages=1``,
  ``norm_eval``); from scratch (the offline world), batch norm and every layer
  trainable, since freezing randomly initialised layers leaves them random.
* The ViLD-style baseline (``region_targets``) distils the top ``distill_proposals``
  RPN proposals of each image after NMS (default 200, EZAD's number of distilled CLIP
  proposals per image, so both methods distil the same number of boxes), the teacher
  run on them inside the step (``torch.no_grad``).

Real scale: ``backbone="resnet50"`` with ImageNet ``weights`` (a torchvision name such
as ``"IMAGENET1K_V1"``, or a ResNet state-dict file), images 800 / 1,333. The offline
world (128 px images): :data:`SMALL_SETTINGS`, a ResNet-18 with a 64-channel FPN, images
resized to 256 and anchors 16-256.

Saved (:meth:`EZADFasterRCNN.save_pretrained`) as a folder: ``model.safetensors`` (every
weight and the class embeddings) and ``config.json`` (the settings, class names and
metadata under ``"vlkd_ezad"``); :meth:`EZADFasterRCNN.from_pretrained` rebuilds it
without Lightning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign, boxes as box_ops
from torchvision.ops import misc as misc_ops

from vlkd.errors import ConfigError, MissingFileError, WeightsNotFoundError

__all__ = ["SMALL_SETTINGS", "EZADFasterRCNN", "EmbeddingBoxHead", "EmbeddingPredictor", "EmbeddingRoIHeads"]

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
CONFIG_KEY = "vlkd_ezad"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
           "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
#: The RoI feature maps (FPN P2-P5); "pool" (P6) feeds the RPN only, as in FPN and EZAD.
ROI_LEVELS = ["0", "1", "2", "3"]

#: The offline world's detector (128 px SynthDetection images, objects 13-33 px across): images
#: upsampled to 256 so the smallest objects span a few P2 cells, anchors halved to 16-256 to match,
#: a light head (two 256-wide fcs, no convs) on a 64-channel FPN. Keyword arguments of EZADFasterRCNN.
SMALL_SETTINGS: dict = {
    "backbone": "resnet18", "fpn_channels": 64, "min_size": 256, "max_size": 256,
    "anchor_sizes": ((16,), (32,), (64,), (128,), (256,)),
    "shared_convs": 0, "shared_fcs": 2, "cls_convs": 0, "cls_fcs": 0, "reg_convs": 0, "reg_fcs": 0,
    "conv_channels": 64, "fc_channels": 256,
}


def _xavier(layer: nn.Linear) -> nn.Linear:
    # mmcv's XavierInit (distribution "normal", gain 1, bias 0), which EZAD's head applies to every nn.Linear.
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _ConvReLU(nn.Sequential):
    """mmcv's ConvModule without a norm: 3 x 3 conv (bias) + ReLU, Kaiming fan-out init."""

    def __init__(self, in_channels: int, out_channels: int):
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        super().__init__(conv, nn.ReLU(inplace=True))


class EmbeddingBoxHead(nn.Module):
    """RoI features (N, channels, 7, 7) -> (classification feature, regression feature).

    mmdetection's ConvFC bbox head, which EZAD's ``ConvFCEmbeddingBBoxHead`` is::

                                    /-> cls convs -> cls fcs -> classification feature
        shared convs -> shared fcs
                                    \\-> reg convs -> reg fcs -> regression feature

    Branch convs need ``shared_fcs == 0`` (a conv cannot follow a flattened fc). A branch
    with no layers passes the shared output on (flattened). ``shared_fcs=2`` and nothing
    else is torchvision's TwoMLPHead layout.
    """

    def __init__(self, in_channels: int, resolution: int = 7, shared_convs: int = 3, shared_fcs: int = 0,
                 cls_convs: int = 1, cls_fcs: int = 2, reg_convs: int = 1, reg_fcs: int = 2,
                 conv_channels: int = 256, fc_channels: int = 1024):
        super().__init__()
        counts = dict(shared_convs=shared_convs, shared_fcs=shared_fcs, cls_convs=cls_convs, cls_fcs=cls_fcs,
                      reg_convs=reg_convs, reg_fcs=reg_fcs, conv_channels=conv_channels, fc_channels=fc_channels)
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if "channels" in name else 0):
                raise ConfigError(f"box head {name} must be an integer >= {1 if 'channels' in name else 0}, "
                                  f"got {value!r}")
        if (cls_convs or reg_convs) and shared_fcs:
            raise ConfigError(f"box head: cls_convs={cls_convs} / reg_convs={reg_convs} need shared_fcs=0 "
                              f"(got {shared_fcs}): a conv cannot follow a flattened fc; "
                              "move the fcs into the branches")
        area = resolution * resolution
        self.shared_convs, channels = self._convs(shared_convs, in_channels, conv_channels)
        self.shared_fcs, width = self._fcs(shared_fcs, channels * area, fc_channels)
        spatial = shared_fcs == 0  # the shared output is still a (channels, 7, 7) map
        self.cls_convs, cls_channels = self._convs(cls_convs if spatial else 0, channels, conv_channels)
        self.reg_convs, reg_channels = self._convs(reg_convs if spatial else 0, channels, conv_channels)
        self.cls_fcs, self.cls_dim = self._fcs(cls_fcs, cls_channels * area if spatial else width, fc_channels)
        self.reg_fcs, self.reg_dim = self._fcs(reg_fcs, reg_channels * area if spatial else width, fc_channels)

    @staticmethod
    def _convs(count: int, in_channels: int, channels: int) -> tuple[nn.Sequential, int]:
        layers = [_ConvReLU(in_channels if i == 0 else channels, channels) for i in range(count)]
        return nn.Sequential(*layers), (channels if count else in_channels)

    @staticmethod
    def _fcs(count: int, in_features: int, width: int) -> tuple[nn.Sequential, int]:
        layers = []
        for i in range(count):
            layers += [_xavier(nn.Linear(in_features if i == 0 else width, width)), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers), (width if count else in_features)

    @staticmethod
    def _branch(x: Tensor, convs: nn.Sequential, fcs: nn.Sequential) -> Tensor:
        if x.dim() == 4:
            x = convs(x).flatten(1)
        return fcs(x)

    def forward(self, x: Tensor, regression: bool = True) -> tuple[Tensor, Tensor | None]:
        """``regression=False`` skips the regression branch (distillation boxes need no boxes)."""
        x = self.shared_convs(x)
        if len(self.shared_fcs):
            x = self.shared_fcs(x.flatten(1))
        x_cls = self._branch(x, self.cls_convs, self.cls_fcs)
        x_reg = self._branch(x, self.reg_convs, self.reg_fcs) if regression else None
        return x_cls, x_reg


class EmbeddingPredictor(nn.Module):
    """Region embeddings, cosine logits against class-text embeddings, and the (semantic) box regressor.

    Args:
        cls_dim, reg_dim: the widths of the box head's classification and regression features.
        embed_dim: ``D``, the CLIP embedding width.
        class_embeddings: ``(C, D)`` text embeddings (normalised here), or ``None`` for none yet.
        semantic_regression: the regressor also reads the text embedding of a class.
        temperature: the logit scale at the start.
        learnable_temperature: learn it (as a log scale, EZAD's runs) or keep it fixed.
    """

    def __init__(self, cls_dim: int, reg_dim: int, embed_dim: int, class_embeddings: Tensor | None = None,
                 semantic_regression: bool = True, temperature: float = 100.0, learnable_temperature: bool = True):
        super().__init__()
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ConfigError(f"embed_dim must be a positive integer (the CLIP width), got {embed_dim!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a number > 0, got {temperature!r}")
        self.embed_dim = embed_dim
        self.semantic_regression = bool(semantic_regression)
        self.map_to_clip = _xavier(nn.Linear(cls_dim, embed_dim))
        # EZAD's fc_cls_bg, Linear(D, 1, bias=False) under mmcv's Xavier: std sqrt(2 / (D + 1)).
        self.background = nn.Parameter(torch.randn(embed_dim) * math.sqrt(2.0 / (embed_dim + 1)))
        log_temperature = torch.tensor(math.log(float(temperature)))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)
        self.fc_reg = _xavier(nn.Linear(reg_dim + (embed_dim if self.semantic_regression else 0), 4))
        self.register_buffer("class_embeddings", torch.zeros(0, embed_dim))
        if class_embeddings is not None:
            self.set_class_embeddings(class_embeddings)

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def set_class_embeddings(self, embeddings: Tensor) -> None:
        """Use the ``(C, D)`` text embeddings ``embeddings`` (any ``C``; L2-normalised here) as the vocabulary."""
        embeddings = _check_embeddings(embeddings, self.embed_dim, "class embeddings")
        if embeddings.shape[0] == 0:
            raise ConfigError("class embeddings are empty: give at least one (D,) class-text embedding")
        if (embeddings.norm(dim=-1) == 0).any():
            raise ConfigError("a class embedding is all zeros: it has no direction to compare regions with")
        reference = self.map_to_clip.weight
        self.class_embeddings = F.normalize(embeddings.detach().to(reference.device, reference.dtype), dim=-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint carries its own vocabulary, of any size: take its shape, so loading never
        # fails only because this instance was built with a different number of classes.
        key = prefix + "class_embeddings"
        incoming = state_dict.get(key)
        if incoming is not None and incoming.dim() == 2 and incoming.shape[1] == self.embed_dim:
            self.class_embeddings = self.class_embeddings.new_empty(incoming.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, x_cls: Tensor) -> Tensor:
        """Classification features (N, cls_dim) -> L2-normalised region embeddings (N, D)."""
        return F.normalize(self.map_to_clip(x_cls), dim=-1)

    def logits(self, embeddings: Tensor) -> Tensor:
        """(N, D) normalised embeddings -> (N, C + 1): ``temperature * [cos with each class, <., background>]``."""
        if self.num_classes == 0:
            raise ConfigError("the detector has no class embeddings: call set_class_embeddings((C, D) text embeddings)")
        scores = torch.cat([embeddings @ self.class_embeddings.t(), (embeddings @ self.background)[:, None]], dim=1)
        return self.temperature * scores

    def regress(self, x_reg: Tensor, labels: Tensor | None = None) -> Tensor:
        """(N, reg_dim) regression features -> (N, 4) box deltas.

        ``labels`` (N,) in ``0 .. C`` (``C`` = background) choose the text embedding concatenated
        to each feature (zeros for background); required with semantic regression, ignored without.
        """
        if not self.semantic_regression:
            return self.fc_reg(x_reg)
        if labels is None:
            raise ValueError("semantic regression needs the class of every region")
        table = torch.cat([self.class_embeddings, self.class_embeddings.new_zeros(1, self.embed_dim)])
        return self.fc_reg(torch.cat([x_reg, table[labels]], dim=1))


def _check_embeddings(embeddings, width: int, what: str) -> Tensor:
    if not isinstance(embeddings, Tensor):
        raise ConfigError(f"{what} must be a tensor of shape (K, {width}), got {type(embeddings).__name__}")
    if embeddings.dim() != 2 or embeddings.shape[1] != width:
        raise ConfigError(f"{what} must have shape (K, {width}) (the detector's embedding width is {width}), "
                          f"got {tuple(embeddings.shape)}: use embeddings of the teacher the detector was built for")
    if not embeddings.is_floating_point() or not torch.isfinite(embeddings).all():
        raise ConfigError(f"{what} must be finite floating-point numbers")
    return embeddings


class EmbeddingRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with EZAD's embedding classifier, semantic regression and distillation loss.

    ``box_head`` is an :class:`EmbeddingBoxHead`, ``box_predictor`` an :class:`EmbeddingPredictor`;
    proposal matching and sampling are torchvision's (labels ``0`` = background, ``1 .. C``
    the classes, inside this class only). ``distill_factor`` ``None``: the embedding width.
    """

    def __init__(self, box_roi_pool: MultiScaleRoIAlign, box_head: EmbeddingBoxHead, box_predictor: EmbeddingPredictor,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.5, batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, bbox_reg_weights: tuple[float, ...] | None = None,
                 score_thresh: float = 0.0, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 distill_factor: float | None = None):
        super().__init__(box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img)
        self.distill_factor = float(box_predictor.embed_dim if distill_factor is None else distill_factor)

    def region_embeddings(self, features: Mapping[str, Tensor], boxes: list[Tensor],
                          image_shapes: list[tuple[int, int]]) -> Tensor:
        """Normalised student embeddings (sum K_i, D) of ``boxes`` (in the resized images' pixels)."""
        x_cls, _ = self.box_head(self.box_roi_pool(features, boxes, image_shapes), regression=False)
        return self.box_predictor.embed(x_cls)

    def predict(self, box_features: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        """RoI features -> ``embeddings``, ``logits`` (N, C + 1), ``deltas`` (N, 4) and ``regress_labels``.

        ``labels`` (N,) in ``0 .. C`` (``C`` = background) are the classes whose text embeddings the
        semantic regressor reads (training: the assigned ones); ``None``: the arg-max of the logits.
        """
        x_cls, x_reg = self.box_head(box_features)
        predictor = self.box_predictor
        embeddings = predictor.embed(x_cls)
        logits = predictor.logits(embeddings)
        if labels is None:
            labels = logits.argmax(dim=1)  # softmax's arg-max, background included (EZAD's test path)
        return {"embeddings": embeddings, "logits": logits, "deltas": predictor.regress(x_reg, labels),
                "regress_labels": labels}

    def distillation_loss(self, features: Mapping[str, Tensor], image_shapes: list[tuple[int, int]],
                          distill: list[dict[str, Tensor]]) -> Tensor:
        """``factor * sum_k w_k |student_k - teacher_k|_1 / (K * D)``, weights rescaled to mean 1 per image.

        ``distill``: per image ``boxes`` (K_i, 4) in the resized image's pixels, ``embeddings``
        (K_i, D) and ``weights`` (K_i,).
        """
        boxes = [item["boxes"] for item in distill]
        total = sum(len(b) for b in boxes)
        if total == 0:
            # Nothing to distil: a zero that still reaches the embedding layer (DDP expects every parameter used).
            return self.box_predictor.map_to_clip.weight.sum() * 0.0
        student = self.region_embeddings(features, boxes, image_shapes)
        teacher = F.normalize(torch.cat([item["embeddings"] for item in distill]).to(student), dim=-1)
        weights = []
        for item in distill:
            w = item["weights"].to(student)
            mass = float(w.sum())
            weights.append(w * (len(w) / mass) if mass > 0 else w)
        weights = torch.cat(weights)
        return self.distill_factor * (weights[:, None] * (student - teacher).abs()).sum() / student.numel()

    def forward(self, features: Mapping[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None, distill: list[dict[str, Tensor]] | None = None,
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ``([], losses)``; test: ``(detections in the resized images' pixels, {})``.

        ``targets``' labels are torchvision's (``1 .. C``); detections' labels are ``0 .. C - 1``.
        """
        classes = self.box_predictor.num_classes
        if classes == 0:
            raise ConfigError("the detector has no class embeddings: call set_class_embeddings((C, D) text embeddings)")
        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
            labels = torch.cat(labels)
            assigned = torch.where(labels > 0, labels - 1, torch.full_like(labels, classes))  # background -> C
            out = self.predict(self.box_roi_pool(features, proposals, image_shapes), assigned)
            positive = labels > 0
            regression_targets = torch.cat(regression_targets)
            box_loss = F.l1_loss(out["deltas"][positive], regression_targets[positive], reduction="sum")
            losses = {"loss_classifier": F.cross_entropy(out["logits"], assigned),
                      "loss_box_reg": box_loss / max(labels.numel(), 1)}
            if distill is not None:
                losses["loss_distill"] = self.distillation_loss(features, image_shapes, distill)
            return [], losses
        out = self.predict(self.box_roi_pool(features, proposals, image_shapes))
        scores = out["logits"].softmax(dim=1)[:, :classes]
        boxes = self.box_coder.decode(out["deltas"], proposals)[:, 0]  # (N, 4): one class-agnostic box each
        detections = []
        counts = [len(p) for p in proposals]
        for image_boxes, image_scores, shape in zip(boxes.split(counts), scores.split(counts), image_shapes):
            image_boxes = box_ops.clip_boxes_to_image(image_boxes, shape)
            image_boxes = image_boxes[:, None].expand(-1, classes, 4).reshape(-1, 4)
            labels = torch.arange(classes, device=scores.device).repeat(len(image_scores))
            image_scores = image_scores.reshape(-1)
            keep = torch.where(image_scores > self.score_thresh)[0]
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            keep = box_ops.remove_small_boxes(image_boxes, min_size=1e-2)
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            keep = box_ops.batched_nms(image_boxes, image_scores, labels, self.nms_thresh)[: self.detections_per_img]
            detections.append({"boxes": image_boxes[keep], "scores": image_scores[keep], "labels": labels[keep]})
        return detections, {}


def _resnet_fpn(name: str, weights: str | None, trainable_layers: int, norm: str, fpn_channels: int) -> BackboneWithFPN:
    """A torchvision ResNet (layers 1-4 returned) with an FPN of ``fpn_channels`` and a max-pooled extra level."""
    if name not in RESNETS:
        raise ConfigError(f"unknown backbone {name!r}: use one of {list(RESNETS)}")
    norm_layer = {"frozen": misc_ops.FrozenBatchNorm2d, "batch": nn.BatchNorm2d}[norm]
    path = Path(str(weights)).expanduser() if weights is not None else None
    if path is not None and (path.suffix in (".pth", ".pt", ".bin", ".safetensors") or path.exists()):
        if not path.is_file():
            raise MissingFileError(path, f"{name} weights file",
                                   "pass a torchvision ResNet state dict or a weights name")
        body = getattr(tv_resnet, name)(weights=None, norm_layer=norm_layer)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet classifier is not used
        missing, unexpected = body.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ConfigError(f"{path} is not a torchvision {name} state dict (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    else:
        try:
            body = getattr(tv_resnet, name)(weights=weights, norm_layer=norm_layer)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"{name} has no torchvision weights {weights!r} ({error}): use a name such as "
                              f"'IMAGENET1K_V1' or a path to a state dict") from None
        except (OSError, RuntimeError) as error:  # download failures (offline, no cache)
            raise WeightsNotFoundError(
                f"torchvision's {name} {weights!r} weights are not in the torch hub cache and could not be downloaded "
                f"({error.__class__.__name__}): download them elsewhere and pass weights=/path/to/state_dict.pth"
            ) from None
    # torchvision's rule (resnet_fpn_backbone): the last `trainable_layers` stages train, the rest are frozen.
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers.append("bn1")
    for parameter_name, parameter in body.named_parameters():
        if not any(parameter_name.startswith(layer) for layer in layers):
            parameter.requires_grad_(False)
    stage2 = body.inplanes // 8  # the last stage's width / 8: layer1's output width
    return BackboneWithFPN(body, {f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
                           [stage2 * 2 ** i for i in range(4)], fpn_channels)


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _fraction(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


class EZADFasterRCNN(GeneralizedRCNN):
    """EZAD's detector student (see the module docstring): a Faster R-CNN with an FPN and a CLIP-space classifier.

    Takes images as a list of (3, H, W) pixels in [0, 1]; normalises (ImageNet mean / std)
    and resizes them itself, and returns boxes in the given images' pixels.

    Args:
        class_embeddings: ``(C, D)`` class-text embeddings (normalised here); may be set later
            with :meth:`set_class_embeddings` if ``embed_dim`` is given instead.
        embed_dim: ``D``; only needed without ``class_embeddings``.
        backbone: a torchvision ResNet name (``"resnet50"``: EZAD's; ``"resnet18"``: offline).
        weights: ``None`` (random), a torchvision weights name (``"IMAGENET1K_V1"``) or a state-dict file.
        trainable_layers: ResNet stages that train (0-5); ``None``: 3 with ``weights``, 5 without.
        norm: ``"frozen"`` or ``"batch"`` norm in the ResNet; ``None``: frozen with ``weights``, batch without.
        fpn_channels: the FPN's width (256 as in FPN / EZAD; 64 offline).
        min_size, max_size: the resize (a tuple ``min_size`` draws one per training image).
        image_mean, image_std: the input normalisation.
        anchor_sizes: one tuple of sizes per FPN level (5: P2-P6); aspect_ratios: for every level.
        rpn_*: torchvision's RPN settings (its defaults).
        box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction: the
            proposal sampler (torchvision's defaults = EZAD's: 0.5 / 0.5 / 512 / 0.25).
        shared_convs, shared_fcs, cls_convs, cls_fcs, reg_convs, reg_fcs, conv_channels, fc_channels:
            the :class:`EmbeddingBoxHead` (default EZAD's 3 / 0 / 1 / 2 / 1 / 2, 256, 1,024).
        semantic_regression: the regressor reads the class's text embedding (EZAD); ``False``: the ablation.
        temperature, learnable_temperature: the logit scale (EZAD: 100, learnt as a log scale).
        distill_factor: the distillation loss's multiplier; ``None``: ``D`` (EZAD's COCO setting).
        distill_proposals: proposals per image handed to ``region_targets`` (the ViLD-style baseline).
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference (EZAD: 0, 0.5; 100 here).
    """

    def __init__(
        self,
        class_embeddings: Tensor | None = None,
        embed_dim: int | None = None,
        *,
        backbone: str = "resnet50",
        weights: str | None = None,
        trainable_layers: int | None = None,
        norm: str | None = None,
        fpn_channels: int = 256,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        anchor_sizes: Sequence[Sequence[int]] = ((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        shared_convs: int = 3,
        shared_fcs: int = 0,
        cls_convs: int = 1,
        cls_fcs: int = 2,
        reg_convs: int = 1,
        reg_fcs: int = 2,
        conv_channels: int = 256,
        fc_channels: int = 1024,
        semantic_regression: bool = True,
        temperature: float = 100.0,
        learnable_temperature: bool = True,
        distill_factor: float | None = None,
        distill_proposals: int = 200,
        box_score_thresh: float = 0.0,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
    ):
        if class_embeddings is None and embed_dim is None:
            raise ConfigError("EZADFasterRCNN needs class_embeddings (C, D) or embed_dim D (set the vocabulary later)")
        if class_embeddings is not None:
            if not isinstance(class_embeddings, Tensor) or class_embeddings.dim() != 2:
                got = tuple(class_embeddings.shape) if isinstance(class_embeddings, Tensor) else class_embeddings
                raise ConfigError(f"class_embeddings must be a (C, D) tensor of class-text embeddings, got {got!r}")
            if embed_dim is not None and embed_dim != class_embeddings.shape[1]:
                raise ConfigError(f"embed_dim={embed_dim} but the class embeddings are "
                                  f"{class_embeddings.shape[1]} wide")
            embed_dim = int(class_embeddings.shape[1])
        pretrained = weights is not None
        trainable_layers = (3 if pretrained else 5) if trainable_layers is None else trainable_layers
        if (isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int)
                or not 0 <= trainable_layers <= 5):
            raise ConfigError(f"trainable_layers must be an integer in [0, 5], got {trainable_layers!r}")
        norm = ("frozen" if pretrained else "batch") if norm is None else norm
        if norm not in ("frozen", "batch"):
            raise ConfigError(f"norm must be 'frozen' or 'batch', got {norm!r}")
        min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        for size in (*min_sizes, max_size):
            _positive_int("min_size / max_size", size, 16)
        anchor_sizes = tuple(tuple(int(s) for s in level) for level in anchor_sizes)
        if len(anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs one tuple per FPN level, 5 (P2-P6); got {len(anchor_sizes)}")
        aspect_ratios = tuple(float(r) for r in aspect_ratios)
        for name, value in dict(rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
                                rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                                rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
                                rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
                                rpn_batch_size_per_image=rpn_batch_size_per_image,
                                box_batch_size_per_image=box_batch_size_per_image,
                                distill_proposals=distill_proposals,
                                box_detections_per_img=box_detections_per_img).items():
            _positive_int(name, value)
        for name, value in dict(rpn_nms_thresh=rpn_nms_thresh, rpn_fg_iou_thresh=rpn_fg_iou_thresh,
                                rpn_bg_iou_thresh=rpn_bg_iou_thresh, rpn_positive_fraction=rpn_positive_fraction,
                                box_fg_iou_thresh=box_fg_iou_thresh, box_bg_iou_thresh=box_bg_iou_thresh,
                                box_positive_fraction=box_positive_fraction, box_score_thresh=box_score_thresh,
                                box_nms_thresh=box_nms_thresh).items():
            _fraction(name, value)
        if distill_factor is not None and not (isinstance(distill_factor, (int, float)) and distill_factor >= 0):
            raise ConfigError(f"distill_factor must be a number >= 0 or None (the embedding width), "
                              f"got {distill_factor!r}")
        _positive_int("fpn_channels", fpn_channels)

        body = _resnet_fpn(backbone, weights, trainable_layers, norm, fpn_channels)
        anchors = AnchorGenerator(anchor_sizes, (aspect_ratios,) * len(anchor_sizes))
        rpn = RegionProposalNetwork(
            anchors, RPNHead(fpn_channels, anchors.num_anchors_per_location()[0]), rpn_fg_iou_thresh,
            rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
            dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test), rpn_nms_thresh)
        pool = MultiScaleRoIAlign(featmap_names=ROI_LEVELS, output_size=7, sampling_ratio=2)
        head = EmbeddingBoxHead(fpn_channels, 7, shared_convs, shared_fcs, cls_convs, cls_fcs, reg_convs, reg_fcs,
                                conv_channels, fc_channels)
        predictor = EmbeddingPredictor(head.cls_dim, head.reg_dim, embed_dim, class_embeddings,
                                       semantic_regression, temperature, learnable_temperature)
        roi_heads = EmbeddingRoIHeads(pool, head, predictor, box_fg_iou_thresh, box_bg_iou_thresh,
                                      box_batch_size_per_image, box_positive_fraction, None, box_score_thresh,
                                      box_nms_thresh, box_detections_per_img, distill_factor)
        transform = GeneralizedRCNNTransform(min_sizes, max_size, list(image_mean), list(image_std))
        super().__init__(body, rpn, roi_heads, transform)
        self.distill_proposals = distill_proposals
        self.class_names: list[str] = []  # set by from_pretrained (the saved vocabulary's names)
        self.metadata: dict = {}  # what save_pretrained was given, set by from_pretrained
        # Everything needed to rebuild this detector (save_pretrained); the weights come from the folder.
        self.settings = dict(
            embed_dim=embed_dim, backbone=backbone, trainable_layers=trainable_layers, norm=norm,
            fpn_channels=fpn_channels, min_size=list(min_sizes), max_size=max_size, image_mean=list(image_mean),
            image_std=list(image_std), anchor_sizes=[list(a) for a in anchor_sizes], aspect_ratios=list(aspect_ratios),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            rpn_nms_thresh=rpn_nms_thresh, rpn_fg_iou_thresh=rpn_fg_iou_thresh, rpn_bg_iou_thresh=rpn_bg_iou_thresh,
            rpn_batch_size_per_image=rpn_batch_size_per_image, rpn_positive_fraction=rpn_positive_fraction,
            box_fg_iou_thresh=box_fg_iou_thresh, box_bg_iou_thresh=box_bg_iou_thresh,
            box_batch_size_per_image=box_batch_size_per_image, box_positive_fraction=box_positive_fraction,
            shared_convs=shared_convs, shared_fcs=shared_fcs, cls_convs=cls_convs, cls_fcs=cls_fcs,
            reg_convs=reg_convs, reg_fcs=reg_fcs, conv_channels=conv_channels, fc_channels=fc_channels,
            semantic_regression=bool(semantic_regression), temperature=float(temperature),
            learnable_temperature=bool(learnable_temperature), distill_factor=distill_factor,
            distill_proposals=distill_proposals, box_score_thresh=box_score_thresh, box_nms_thresh=box_nms_thresh,
            box_detections_per_img=box_detections_per_img)

    # -- vocabulary -------------------------------------------------------------------
    @property
    def predictor(self) -> EmbeddingPredictor:
        return self.roi_heads.box_predictor

    @property
    def embed_dim(self) -> int:
        return self.predictor.embed_dim

    @property
    def num_classes(self) -> int:
        return self.predictor.num_classes

    @property
    def class_embeddings(self) -> Tensor:
        """The current vocabulary's (C, D) normalised text embeddings."""
        return self.predictor.class_embeddings

    def set_class_embeddings(self, embeddings: Tensor, class_names: Sequence[str] | None = None) -> None:
        """Detect the classes of these ``(C, D)`` text embeddings from now on (``class_names``: their names)."""
        if class_names is not None and len(class_names) != len(embeddings):
            raise ConfigError(f"{len(class_names)} class names for {len(embeddings)} class embeddings")
        self.predictor.set_class_embeddings(embeddings)
        self.class_names = list(class_names) if class_names is not None else []

    # -- input checks -----------------------------------------------------------------
    def _check_images(self, images) -> list[Tensor]:
        if isinstance(images, Tensor):
            images = [images] if images.dim() == 3 else list(images)
        images = list(images)
        if not images:
            raise ConfigError("no images: give a list of (3, H, W) tensors in [0, 1]")
        for image in images:
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ConfigError(f"images must be (3, H, W) RGB tensors in [0, 1], got {shape}")
            if not image.is_floating_point():
                raise ConfigError(f"images must be floating point in [0, 1], got {image.dtype} (divide by 255)")
        return images

    @staticmethod
    def _check_boxes(boxes, what: str) -> Tensor:
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ConfigError(f"{what} must be a (K, 4) tensor of [x0, y0, x1, y1] pixels, got {shape}")
        if not boxes.is_floating_point() or not torch.isfinite(boxes).all():
            raise ConfigError(f"{what} must be finite floating-point [x0, y0, x1, y1] pixels")
        return boxes

    def _check_targets(self, targets, count: int) -> list[dict[str, Tensor]]:
        if targets is None:
            raise ConfigError("training needs targets: one {'boxes': (N, 4), 'labels': (N,)} dict per image")
        if len(targets) != count:
            raise ConfigError(f"{len(targets)} targets for {count} images: give one dict per image")
        shifted = []
        for i, target in enumerate(targets):
            if "boxes" not in target or "labels" not in target:
                raise ConfigError(f"target {i} needs 'boxes' (N, 4) and 'labels' (N,), has {sorted(target)}")
            boxes = self._check_boxes(target["boxes"], f"target {i} boxes")
            labels = target["labels"]
            if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (len(boxes),):
                raise ConfigError(f"target {i} labels must be an int64 tensor of shape ({len(boxes)},) "
                                  f"(positions in the vocabulary)")
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ConfigError(f"target {i} labels must be in [0, {self.num_classes}) (the vocabulary's "
                                  f"positions), got {labels.min().item()}..{labels.max().item()}")
            if (boxes[:, 2:] <= boxes[:, :2]).any():
                raise ConfigError(f"target {i} has a box with no width or height: every box needs x1 > x0, y1 > y0")
            # torchvision's sampler reserves label 0 for background: the classes are 1 .. C inside.
            shifted.append({"boxes": boxes, "labels": labels + 1})
        return shifted

    def _check_distill(self, distill, count: int) -> list[dict[str, Tensor]]:
        if not isinstance(distill, Sequence) or len(distill) != count:
            raise ConfigError(f"distill must be a list with one dict per image ({count}), got "
                              f"{len(distill) if isinstance(distill, Sequence) else type(distill).__name__}")
        checked = []
        for i, item in enumerate(distill):
            if not isinstance(item, Mapping) or "boxes" not in item or "embeddings" not in item:
                raise ConfigError(f"distill[{i}] needs 'boxes' (K, 4) and 'embeddings' (K, D) (and optional 'weights')")
            boxes = self._check_boxes(item["boxes"], f"distill[{i}] boxes")
            embeddings = _check_embeddings(item["embeddings"], self.embed_dim, f"distill[{i}] embeddings")
            if len(embeddings) != len(boxes):
                raise ConfigError(f"distill[{i}] has {len(boxes)} boxes but {len(embeddings)} embeddings")
            weights = item.get("weights")
            if weights is None:
                weights = boxes.new_ones(len(boxes))
            elif not isinstance(weights, Tensor) or weights.shape != (len(boxes),) or (weights < 0).any():
                raise ConfigError(f"distill[{i}] weights must be a ({len(boxes)},) tensor of numbers >= 0")
            checked.append({"boxes": boxes, "embeddings": embeddings, "weights": weights})
        return checked

    # -- use ----------------------------------------------------------------------------
    def _encode(self, images: list[Tensor], targets=None):
        """Normalise, resize and batch the images, run the backbone; returns (ImageList, targets, features)."""
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        return image_list, targets, features

    def forward(self, images, targets: list[dict[str, Tensor]] | None = None,
                distill: list[dict[str, Tensor]] | None = None,
                region_targets: Callable[[list[Tensor]], list[dict[str, Tensor]]] | None = None):
        """Training: a dict of losses; evaluation: one ``{"boxes", "scores", "labels"}`` dict per image.

        Args:
            images: (3, H, W) pixels in [0, 1] (a list; sizes may differ).
            targets: training only, per image ``boxes`` (N, 4) ``[x0, y0, x1, y1]`` pixels and ``labels``
                (N,) int64 positions in the vocabulary.
            distill: training only, per image ``boxes`` (K, 4) in the given image's pixels (as the targets;
                flipped with it), ``embeddings`` (K, D) teacher region embeddings, ``weights`` (K,) (optional).
            region_targets: training only, instead of ``distill``: called (without gradients) with the top
                ``distill_proposals`` RPN proposals of each image, (P_i, 4) in the given images' pixels, it
                returns the ``distill`` list for them (the ViLD-style baseline, a teacher in the step).

        Losses: ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg`` and,
        with distillation targets, ``loss_distill``.
        """
        images = self._check_images(images)
        if not self.training and (targets is not None or distill is not None or region_targets is not None):
            raise ConfigError("targets, distill and region_targets are for training: call model.train() first, "
                              "or pass images alone for detections")
        if distill is not None and region_targets is not None:
            raise ConfigError("pass distill (precomputed teacher targets) or region_targets (a teacher in the step), "
                              "not both")
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        if self.training:
            targets = self._check_targets(targets, len(images))
            if distill is not None:
                distill = self._check_distill(distill, len(images))
        image_list, targets, features = self._encode(images, targets)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        if self.training and region_targets is not None:
            top = [resize_boxes(p[: self.distill_proposals], resized, original)
                   for p, resized, original in zip(proposals, image_list.image_sizes, sizes)]
            with torch.no_grad():
                distill = self._check_distill(region_targets(top), len(images))
        if distill is not None:
            distill = [dict(item, boxes=resize_boxes(item["boxes"].to(image_list.tensors), original, resized))
                       for item, original, resized in zip(distill, sizes, image_list.image_sizes)]
        detections, losses = self.roi_heads(features, proposals, image_list.image_sizes, targets, distill)
        if self.training:
            return {**rpn_losses, **losses}
        return self.transform.postprocess(detections, image_list.image_sizes, sizes)

    def region_embeddings(self, images, boxes: Sequence[Tensor]) -> list[Tensor]:
        """The student's normalised embeddings (K_i, D) of ``boxes`` (K_i, 4) given in each image's pixels."""
        images = self._check_images(images)
        if len(boxes) != len(images):
            raise ConfigError(f"{len(boxes)} box tensors for {len(images)} images: give one (K, 4) tensor per image")
        boxes = [self._check_boxes(b, f"boxes[{i}]") for i, b in enumerate(boxes)]
        image_list, _, features = self._encode(images)
        mapped = [resize_boxes(b.to(image_list.tensors), (int(image.shape[-2]), int(image.shape[-1])), resized)
                  for b, image, resized in zip(boxes, images, image_list.image_sizes)]
        embeddings = self.roi_heads.region_embeddings(features, mapped, image_list.image_sizes)
        return list(embeddings.split([len(b) for b in boxes]))

    @torch.no_grad()
    def detect(self, images, class_embeddings: Tensor | None = None) -> list[dict[str, Tensor]]:
        """Detections (boxes in each image's pixels, scores, labels 0 .. C - 1) for (3, H, W) images in [0, 1].

        ``class_embeddings`` (C, D): this call's vocabulary instead of the stored one (which is kept).
        The model is in eval mode for the call and returned to its previous mode afterwards.
        """
        was_training, stored = self.training, self.predictor.class_embeddings
        try:
            self.eval()
            if class_embeddings is not None:
                self.predictor.set_class_embeddings(class_embeddings)
            return self(self._check_images(images))
        finally:
            self.predictor.class_embeddings = stored
            self.train(was_training)

    # -- export -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, class_names: Sequence[str], metadata: dict | None = None) -> Path:
        """Write ``model.safetensors`` (weights and class embeddings) and ``config.json`` to ``folder``."""
        from safetensors.torch import save_file

        if len(class_names) != self.num_classes:
            raise ConfigError(f"{len(class_names)} class names for a detector with {self.num_classes} class embeddings")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        settings = {**self.settings, "class_names": list(class_names), "metadata": dict(metadata or {})}
        (folder / CONFIG_FILE).write_text(json.dumps({CONFIG_KEY: settings}, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> EZADFasterRCNN:
        """The detector :meth:`save_pretrained` wrote, in eval mode, ``class_names`` and ``metadata`` attached."""
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_file.is_file():
            raise MissingFileError(config_file, "EZAD detector config", "pass the folder save_pretrained wrote")
        if not weights_file.is_file():
            raise MissingFileError(weights_file, "EZAD detector weights", "pass the folder save_pretrained wrote")
        settings = json.loads(config_file.read_text()).get(CONFIG_KEY)
        if settings is None:
            raise ConfigError(f"{config_file} has no {CONFIG_KEY!r} entry: not an EZAD detector save_pretrained wrote")
        settings = dict(settings)
        class_names, metadata = settings.pop("class_names"), settings.pop("metadata", {})
        state = load_file(str(weights_file))
        model = cls(state["roi_heads.box_predictor.class_embeddings"], **settings)
        model.load_state_dict(state)
        model.class_names = list(class_names)
        model.metadata = metadata
        return model.to(device).eval()
