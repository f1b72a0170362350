"""The frozen CLIP teacher every distillation method shares.

:class:`FrozenCLIP` takes pixels in [0, 1] and class names, applies the
normalisation its weights expect, and returns L2-normalised embeddings. It is
frozen by construction: no parameter requires a gradient, ``.train()`` leaves it
in eval mode, and by default its weights are left out of its parent's
``state_dict`` so student checkpoints do not carry a copy of CLIP.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.data.transforms import eval_transform
from vlkd.teacher.backends import CLIPAdapter, PreprocessConfig
from vlkd.teacher.prompts import resolve_templates
from vlkd.teacher.protocol import TeacherIdentity, TeacherMixin, weights_sha256
from vlkd.teacher.regions import RegionCrop, crop_regions

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FrozenCLIP(TeacherMixin, nn.Module):
    """A frozen CLIP model with prompt-ensembled, cached text embeddings: the in-process
    :class:`~vlkd.teacher.protocol.Teacher`.

    Args:
        adapter: the wrapped model (open_clip or Hugging Face).
        name: an identifier of model and weights, part of the text-cache key.
        model: the architecture name or folder it was built from (for :attr:`identity`).
        pretrained: the pretrained tag or checkpoint it was built from (for :attr:`identity`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``; lower precisions run the
            towers under autocast and return float32 embeddings.
        frame_chunk: at most this many images go through the image tower at once,
            which bounds memory when encoding long frame sequences.
        save_weights: include the teacher's weights in its parent's ``state_dict``.
        text_cache_size: how many (class list, template list) embeddings to keep.
    """

    def __init__(
        self,
        adapter: CLIPAdapter,
        name: str,
        precision: str = "fp32",
        frame_chunk: int = 256,
        save_weights: bool = False,
        text_cache_size: int = 32,
        model: str | None = None,
        pretrained: str | None = None,
    ):
        super().__init__()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
        self.adapter = adapter
        self.name = name
        self.precision = precision
        self.frame_chunk = frame_chunk
        self.save_weights = save_weights
        self.text_cache_size = text_cache_size
        self.model_name = model or name
        self.pretrained = pretrained
        self._identity: TeacherIdentity | None = None
        self._text_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.text_cache_hits = 0
        self.text_cache_misses = 0

        cfg = adapter.preprocess
        self.register_buffer("pixel_mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

        self.requires_grad_(False)
        super().train(False)
        self._register_state_dict_hook(_drop_teacher_weights)
        self._register_load_state_dict_pre_hook(_keep_own_weights_when_absent, with_module=True)

    # -- frozen by construction -------------------------------------------------
    def train(self, mode: bool = True) -> FrozenCLIP:
        """Stay in eval mode whatever the parent asks: dropout and norm statistics stay frozen."""
        return super().train(False)

    # -- properties ---------------------------------------------------------------
    @property
    def preprocess(self) -> PreprocessConfig:
        """Image size, mean and std the weights expect."""
        return self.adapter.preprocess

    @property
    def image_size(self) -> int:
        return self.adapter.preprocess.image_size

    @property
    def embed_dim(self) -> int:
        return self.adapter.embed_dim

    @property
    def logit_scale(self) -> float:
        """The learned temperature (``exp`` already applied), e.g. 100.0 for OpenAI's weights."""
        return float(self.adapter.logit_scale())

    @property
    def identity(self) -> TeacherIdentity:
        """Which weights this teacher runs (their hash is computed once, on first use)."""
        if self._identity is None:
            cfg = self.preprocess
            self._identity = TeacherIdentity(
                model=self.model_name, pretrained=self.pretrained, weights_sha256=weights_sha256(self.adapter),
                embed_dim=self.embed_dim, image_size=self.image_size, mean=tuple(cfg.mean), std=tuple(cfg.std),
                interpolation=cfg.interpolation, logit_scale=self.logit_scale,
            )
        return self._identity

    def _autocast(self, device: torch.device):
        dtype = _PRECISIONS[self.precision]
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    # -- images -----------------------------------------------------------------
    def normalize_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> resized to the model's size and normalised with its mean/std.

        Images of another size are resized on the shorter side and centre-cropped,
        as CLIP's own preprocessing does; images already at the size pass unchanged.
        """
        images = eval_transform(images, self.image_size, mode=self.preprocess.interpolation)
        images = images.to(self.pixel_mean.dtype)
        return (images - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels in [0, 1] -> (B, D) L2-normalised embeddings (float32)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images expects (B, 3, H, W) pixels in [0, 1], got shape {tuple(images.shape)}")
        return torch.cat([self.embed_normalized(self.normalize_pixels(chunk)) for chunk in images.split(self.frame_chunk)])

    @torch.no_grad()
    def embed_normalized(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels already through :meth:`normalize_pixels` -> (B, D) L2-normalised embeddings.

        The server normalises each request on its own and batches the results through this.
        """
        outputs = []
        for chunk in pixels.split(self.frame_chunk):
            with self._autocast(chunk.device):
                features = self.adapter.image_features(chunk)
            outputs.append(F.normalize(features.float(), dim=-1))
        return torch.cat(outputs)

    def region_pixels(self, images, boxes: torch.Tensor, crop: RegionCrop | None = None) -> torch.Tensor:
        """(M, 3, S, S) the crops of ``boxes`` (see :meth:`encode_regions`) at the model's size, in [0, 1]."""
        crops = crop_regions(images, boxes, crop)
        mode = self.preprocess.interpolation
        # Dense boxes (anchors, proposals) share a few crop shapes: resizing each shape's crops as one batch
        # gives the same pixels as one call per crop, many times faster.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, region in enumerate(crops):
            by_shape.setdefault(tuple(region.shape), []).append(index)
        out = crops[0].new_empty((len(crops), 3, self.image_size, self.image_size))
        for indices in by_shape.values():
            out[indices] = eval_transform(torch.stack([crops[i] for i in indices]), self.image_size, mode=mode)
        return out

    @torch.no_grad()
    def encode_regions(self, images, boxes: torch.Tensor, crop: RegionCrop | None = None) -> torch.Tensor:
        """Embeddings of image regions: (M, D) for (M, 5) ``boxes`` rows ``[image, x0, y0, x1, y1]``.

        ``images`` is (B, 3, H, W) in [0, 1] or a list of (3, H_i, W_i); each box is cut out by
        ``crop``'s rule (:class:`~vlkd.teacher.regions.RegionCrop`: enlarging, minimum size,
        square padding), resized as CLIP's preprocessing does, and embedded.
        """
        return self.encode_images(self.region_pixels(images, boxes, crop))

    # -- text -------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N,) literal sentences -> (N, D) L2-normalised embeddings, not cached."""
        device = self.pixel_mean.device
        outputs = []
        for start in range(0, len(prompts), batch_size):
            tokens = self.adapter.tokenize(prompts[start : start + batch_size]).to(device)
            with self._autocast(device):
                features = self.adapter.text_features(tokens)
            outputs.append(F.normalize(features.float(), dim=-1))
        return torch.cat(outputs)

    @torch.no_grad()
    def encode_text(self, class_names: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """(N,) class names -> (N, D) prompt-ensembled, L2-normalised class embeddings.

        Each class name fills every template; the normalised template embeddings
        are averaged and the mean normalised again. Results are cached by
        (teacher name, class names, templates), so repeated evaluation on the same
        class list costs nothing.
        """
        class_names = tuple(class_names)
        if not class_names:
            raise ValueError("encode_text needs at least one class name")
        templates = resolve_templates(templates)
        key = (self.name, class_names, templates, str(self.pixel_mean.device))
        cached = self._text_cache.get(key)
        if cached is not None:
            self.text_cache_hits += 1
            self._text_cache.move_to_end(key)
            return cached
        self.text_cache_misses += 1
        prompts = [template.format(name) for name in class_names for template in templates]
        per_prompt = self.encode_prompts(prompts).view(len(class_names), len(templates), -1)
        embeddings = F.normalize(per_prompt.mean(dim=1), dim=-1)
        self._text_cache[key] = embeddings
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return embeddings

    def _apply(self, fn, recurse=True):
        # Moving or casting the module invalidates cached embeddings on the old device.
        self._text_cache.clear()
        return super()._apply(fn, recurse)


def _drop_teacher_weights(module: FrozenCLIP, state_dict, prefix, local_metadata):
    if module.save_weights:
        return state_dict
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]
    return state_dict


def _keep_own_weights_when_absent(module: FrozenCLIP, state_dict, prefix, *args):
    # A student checkpoint saved without the teacher must load strictly into a model
    # that has one: the teacher's weights come from their own source, so absent
    # entries are filled with the tensors the teacher already holds.
    for key, value in _full_state(module, prefix).items():
        state_dict.setdefault(key, value)


def _full_state(module: FrozenCLIP, prefix: str) -> dict:
    """The teacher's entries as they would be saved with ``save_weights=True``."""
    saved, module.save_weights = module.save_weights, True
    try:
        return module.state_dict(prefix=prefix, keep_vars=True)
    finally:
        module.save_weights = saved
