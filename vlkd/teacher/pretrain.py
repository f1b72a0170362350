"""Pretrain a small CLIP teacher on captioned SynthActions stills (the offline world's "web data").

No pretrained CLIP weights can be downloaded offline, so the teacher of the
SynthActions world is trained here, from scratch, the way CLIP was: a ViT
image tower and a text transformer learn a joint embedding from image-caption
pairs with a symmetric contrastive loss.  The pairs are still frames from
:func:`~vlkd.data.synthetic.render.render_still`; the teacher never sees a
clip, so, like CLIP, it can name what one frame shows (colour, shape, ground,
the *axis* of a motion from its blur) but not the order of frames, and it
cannot tell temporal twins apart (see :mod:`vlkd.data.synthetic.render`).

Data
----
Still ``i`` of a seed has its own generator, ``numpy.random.default_rng((seed,
key, i))``, so a still does not depend on how many processes render or in
which order.  Its concepts are, with probability ``world_fraction``, a class of
either style's world (uniform over the 96 (style, class) pairs of the "flat"
and "textured" worlds, base and novel alike: the web covers benchmark classes
too) and otherwise :func:`~vlkd.data.synthetic.world.random_concepts` drawn
in a random style, which covers every word in far more compositions.

Rendering costs about 1 ms per still, a training step about 1000 times that
for a batch of 256, so training does not render on the fly: it first renders a
fixed pool of stills (:func:`render_pool`, two processes), keeps it as one
uint8 array, and then samples batches from it, epoch by epoch.  Each time a
still is drawn it gets a fresh caption variant and may be mirrored:

* **captions** (:func:`augment_caption`): the renderer's caption, with
  probability 1/2 rewritten into a prompt template (``"a video of a {}."``,
  ``"a photo of a {}."``, ... :data:`CAPTION_TEMPLATES`, which include every
  template of :mod:`vlkd.teacher.prompts`), so that zero-shot prompts look like
  training captions whatever template set is used; the optional size and
  position words are sometimes dropped;
* **mirroring** (:func:`mirror_caption`): a horizontally flipped still is a
  valid still of the mirrored caption ("left" and "right", "clockwise" and
  "counterclockwise" swapped).

Training
--------
Symmetric InfoNCE (image-to-text and text-to-image cross-entropy over the
batch) with CLIP's learnable temperature (initialised at 1/0.07, clamped at
100).  AdamW (betas 0.9/0.98, eps 1e-6, weight decay on
matrices only), linear warm-up then cosine decay to zero, gradient clipping
at norm 1.  Text is encoded trimmed to the batch's longest caption, which is
exact for CLIP's causal text tower and saves most of its cost.

Determinism
-----------
The pool, the batch order, the augmentations and the initial weights all
follow from ``seed``; training uses ``torch.set_num_threads(threads)`` (2 by
default; the previous setting is restored afterwards).  Two runs with the same
settings on the same machine give bit-identical weights; another CPU or
thread count may round differently, which moves zero-shot accuracy by far less
than a point.

Output
------
:func:`pretrain_teacher` writes a folder in open_clip's hub layout, which
:func:`vlkd.create_teacher` loads through open_clip's ``local-dir:`` schema::

    out_dir/open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": {mean, std, ...}}
    out_dir/open_clip_model.safetensors  the weights, stored as float16
    out_dir/training.json                settings, losses, timings, still-frame zero-shot accuracy

The weights are rounded to float16 *before* the final evaluation, so the
folder reproduces the trained model exactly.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import platform
import re
import time
import zlib
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vlkd.data.synthetic.render import render_still
from vlkd.data.synthetic.world import (
    STYLES,
    Concepts,
    build_world,
    random_concepts,
)
from vlkd.data.transforms import eval_transform
from vlkd.errors import ConfigError
from vlkd.teacher.backends import OPENAI_MEAN, OPENAI_STD, OpenCLIPAdapter, PreprocessConfig
from vlkd.teacher.clip import FrozenCLIP
from vlkd.teacher.factory import MODEL_CONFIG_DIR  # noqa: F401  (importing registers the shipped configs)
from vlkd.teacher.prompts import TEMPLATE_SETS

__all__ = [
    "CAPTION_TEMPLATES",
    "DEFAULT_MODEL",
    "SYNTH_TEMPLATES",
    "StillPool",
    "SynthStills",
    "as_teacher",
    "augment_caption",
    "batch_loss",
    "build_clip",
    "caption_words",
    "clip_loss",
    "encode_text_trimmed",
    "evaluate_stills",
    "mirror_caption",
    "pretrain_teacher",
    "render_pool",
    "round_to_half",
    "save_teacher",
    "still_sources",
    "train_clip",
]

#: The architecture of the shipped SynthActions teacher (``model_configs/vlkd-synth-vit.json``).
DEFAULT_MODEL = "vlkd-synth-vit"

#: Prompt templates suited to the SynthActions world: class names are object descriptions
#: ("red ball moving left"), so the templates describe a video or picture *of* one.
SYNTH_TEMPLATES: tuple[str, ...] = (
    "a video of a {}.",
    "a clip of a {}.",
    "a photo of a {}.",
    "a picture of a {}.",
    "a frame of a {}.",
    "footage of a {}.",
    "a {}.",
)

#: Templates a caption may be rewritten into: the SynthActions ones plus every template vlkd ships.
CAPTION_TEMPLATES: tuple[str, ...] = tuple(
    dict.fromkeys([*SYNTH_TEMPLATES, *(t for templates in TEMPLATE_SETS.values() for t in templates)])
)

_STREAM_KEY = zlib.crc32(b"vlkd-synth-stills")
_EVAL_KEY = zlib.crc32(b"vlkd-synth-stills-eval")
_DEFAULT_WORLD_FRACTION = 0.5
_TEMPLATE_PROBABILITY = 0.5
_DROP_MODIFIER_PROBABILITY = 0.25
_MIRROR_PROBABILITY = 0.5

# Word swaps that keep a caption true of a horizontally mirrored still.
_MIRROR_WORDS = {"left": "right", "right": "left", "clockwise": "counterclockwise", "counterclockwise": "clockwise"}
_MIRROR_PATTERN = re.compile(r"\b(" + "|".join(_MIRROR_WORDS) + r")\b")


# --------------------------------------------------------------------------- stills


def still_sources() -> list[tuple[str, Concepts]]:
    """Every (style, concepts) of both styles' worlds, base and novel: what world stills are drawn from."""
    return [(style, action.concepts) for style in STYLES for action in build_world(style).classes]


def _still_rng(seed: int, index: int, key: int = _STREAM_KEY) -> np.random.Generator:
    return np.random.default_rng((seed, key, index))


def _render_indexed(seed: int, index: int, size: int, world_fraction: float) -> tuple[np.ndarray, str, str, str]:
    """Still ``index`` of ``seed``: ``(image, caption, style, concepts name)``."""
    rng = _still_rng(seed, index)
    styles = list(STYLES)
    if rng.random() < world_fraction:
        sources = _SOURCES
        style, concepts = sources[rng.integers(len(sources))]
    else:
        style = styles[rng.integers(len(styles))]
        concepts = random_concepts(rng)
    image, caption = render_still(rng, concepts, style, size)
    return image, caption, style, concepts.name


_SOURCES = still_sources()


class SynthStills(torch.utils.data.IterableDataset):
    """An endless stream of captioned stills ``(image (3, H, W) float in [0, 1], caption)``.

    Still ``i`` is the same whatever the number of DataLoader workers (worker
    ``w`` of ``W`` yields stills ``w, w + W, ...``; the loader interleaves them
    back into index order).  ``augment=True`` applies the caption rewriting and
    mirroring used in training, drawn from the still's own generator.

    Args:
        seed: seed of every still.
        size: frame side in pixels.
        world_fraction: share of stills showing a class of either world (the rest: random compositions).
        augment: rewrite captions into templates and mirror images at random.
        start: index of the first still.
    """

    def __init__(self, seed: int = 0, size: int = 64, world_fraction: float = _DEFAULT_WORLD_FRACTION,
                 augment: bool = False, start: int = 0):
        super().__init__()
        _check_fraction(world_fraction)
        self.seed, self.size, self.world_fraction, self.augment, self.start = seed, size, world_fraction, augment, start

    def render(self, index: int) -> tuple[torch.Tensor, str]:
        image, caption, _, _ = _render_indexed(self.seed, index, self.size, self.world_fraction)
        if self.augment:
            rng = _still_rng(self.seed, index, key=_STREAM_KEY + 1)
            if rng.random() < _MIRROR_PROBABILITY:
                image, caption = image[:, ::-1], mirror_caption(caption)
            caption = augment_caption(caption, rng)
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0, caption

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        index = self.start + worker
        while True:
            yield self.render(index)
            index += workers


@dataclass
class StillPool:
    """Pre-rendered stills: ``images`` uint8 ``(N, H, W, 3)`` and, per still, caption, style and concepts name."""

    images: np.ndarray
    captions: list[str]
    styles: list[str]
    names: list[str]
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.captions)


def _render_chunk(task: tuple[int, int, int, int, float]) -> tuple[int, np.ndarray, list, list, list]:
    seed, start, stop, size, world_fraction = task
    images = np.empty((stop - start, size, size, 3), dtype=np.uint8)
    captions, styles, names = [], [], []
    for offset, index in enumerate(range(start, stop)):
        images[offset], caption, style, name = _render_indexed(seed, index, size, world_fraction)
        captions.append(caption)
        styles.append(style)
        names.append(name)
    return start, images, captions, styles, names


def render_pool(
    count: int,
    seed: int = 0,
    size: int = 64,
    world_fraction: float = _DEFAULT_WORLD_FRACTION,
    workers: int = 2,
    progress: bool = True,
) -> StillPool:
    """Render stills ``0 .. count - 1`` of ``seed`` with ``workers`` processes (identical for any ``workers``)."""
    if count < 1:
        raise ConfigError(f"the still pool needs at least one still, got {count}")
    _check_fraction(world_fraction)
    started = time.perf_counter()
    chunk = 500
    tasks = [(seed, start, min(start + chunk, count), size, world_fraction) for start in range(0, count, chunk)]
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions: list[str] = [""] * count
    styles: list[str] = [""] * count
    names: list[str] = [""] * count
    bar = tqdm(total=count, desc="rendering stills", unit="still", disable=not progress)

    def store(result) -> None:
        start, chunk_images, chunk_captions, chunk_styles, chunk_names = result
        stop = start + len(chunk_captions)
        images[start:stop] = chunk_images
        captions[start:stop], styles[start:stop], names[start:stop] = chunk_captions, chunk_styles, chunk_names
        bar.update(stop - start)

    with bar:
        if workers <= 1 or len(tasks) < 2:
            for task in tasks:
                store(_render_chunk(task))
        else:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            with context.Pool(workers) as pool:
                for result in pool.imap_unordered(_render_chunk, tasks):
                    store(result)
    return StillPool(images, captions, styles, names, time.perf_counter() - started)


# --------------------------------------------------------------------------- captions


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally mirrored still: left/right and the rotation senses swapped."""
    return _MIRROR_PATTERN.sub(lambda match: _MIRROR_WORDS[match.group(1)], caption)


def augment_caption(caption: str, rng: np.random.Generator) -> str:
    """A random variant of a renderer caption that stays true of its still.

    The renderer writes ``[a photo of ]a[n] [size ]<colour> <shape> <phrase>[, seen <place>]``.
    The size and position words are each dropped with probability 1/4; with
    probability 1/2 the description is then put into a random template of
    :data:`CAPTION_TEMPLATES` (``"a video of a red ball moving left."``),
    otherwise the caption keeps the renderer's form.
    """
    core = caption.removeprefix("a photo of ")
    description = core.split(" ", 1)[1] if core.startswith(("a ", "an ")) else core
    if ", seen " in description and rng.random() < _DROP_MODIFIER_PROBABILITY:
        description = description.split(", seen ", 1)[0]
    if description.startswith(("big ", "small ")) and rng.random() < _DROP_MODIFIER_PROBABILITY:
        description = description.split(" ", 1)[1]
    if rng.random() < _TEMPLATE_PROBABILITY:
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        return template.format(description)
    article = "an" if description[0] in "aeiou" else "a"
    prefix = "a photo of " if caption.startswith("a photo of ") else ""
    return f"{prefix}{article} {description}"


# --------------------------------------------------------------------------- model and loss


def _model_config(model: str | dict) -> dict:
    if isinstance(model, dict):
        return deepcopy(model)
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ConfigError(f"unknown CLIP architecture {model!r}: give a config name (open_clip.list_models()) or dict")
    return cfg


def build_clip(model: str | dict = DEFAULT_MODEL, seed: int = 0) -> open_clip.CLIP:
    """A freshly initialised ``open_clip.CLIP`` of architecture ``model`` (name or config dict), seeded."""
    cfg = _model_config(model)
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ConfigError("pretraining supports open_clip's own ViT and text transformer only")
    torch.manual_seed(seed)
    return open_clip.CLIP(**cfg)


def encode_text_trimmed(model: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the tokens up to the longest end-of-text token only.

    CLIP's text tower is causal and pools at the end-of-text token (the largest
    id), so the padding after it never reaches the output: trimming it changes
    nothing but the cost.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of L2-normalised features; ``logit_scale`` is the exponentiated temperature.

    Captions repeated within a batch need no special care: for identical text
    features the one-hot targets give exactly the gradients a uniform target
    over the repeats would.
    """
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def batch_loss(model: open_clip.CLIP, tokenizer, images: torch.Tensor, captions: Sequence[str],
               interpolation: str = "bicubic") -> torch.Tensor:
    """The contrastive loss of ``model`` on uint8 images ``(B, H, W, 3)`` and their captions."""
    size = model.visual.image_size
    pixels = _normalize_pixels(images, int(size[0] if isinstance(size, (tuple, list)) else size), interpolation)
    image_features = F.normalize(model.encode_image(pixels), dim=-1)
    text_features = F.normalize(encode_text_trimmed(model, tokenizer(list(captions))), dim=-1)
    return clip_loss(image_features, text_features, model.logit_scale.exp())


def _normalize_pixels(images: torch.Tensor, image_size: int, interpolation: str) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised (B, 3, S, S), exactly as :class:`FrozenCLIP` prepares pixels."""
    pixels = eval_transform(images.permute(0, 3, 1, 2).float() / 255.0, image_size, mode=interpolation)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on biases, norms, embeddings or the temperature."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        embedding = "embedding" in name or name.endswith("class_embedding")
        (decay if parameter.ndim >= 2 and not embedding else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class _PoolBatches:
    """Batches from a pool: a fresh permutation per epoch, a fresh caption variant and mirror per draw.

    With ``shape_groups > 0``, that share of each batch is made of *shape
    groups*: a still from the permutation plus stills of every other shape with
    the same style, colour and phrase ("red ball on grass" with "red square on
    grass", "red star on grass" ...).  Shape is the hardest concept to see at
    64 pixels, and a random batch rarely holds two stills that differ only in
    shape; the groups make such hard negatives common.
    """

    def __init__(self, pool: StillPool, batch_size: int, seed: int, augment: bool = True, shape_groups: float = 0.0):
        self.pool, self.batch_size, self.augment = pool, batch_size, augment
        self.rng = np.random.default_rng((seed, zlib.crc32(b"batches")))
        self.order = np.empty(0, dtype=np.int64)
        self.group_budget = int(round(shape_groups * batch_size))
        self.siblings: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        if self.group_budget:
            by_key: dict[tuple[str, str, str], dict[str, list[int]]] = {}
            for index, (style, name) in enumerate(zip(pool.styles, pool.names)):
                colour, shape, phrase = name.split(" ", 2)
                by_key.setdefault((style, colour, phrase), {}).setdefault(shape, []).append(index)
            self.siblings = {key: {shape: np.asarray(ids) for shape, ids in shapes.items()}
                             for key, shapes in by_key.items()}

    def _take(self, count: int) -> np.ndarray:
        while len(self.order) < count:
            self.order = np.concatenate([self.order, self.rng.permutation(len(self.pool))])
        taken, self.order = self.order[:count], self.order[count:]
        return taken

    def _group(self, anchor: int) -> list[int]:
        colour, shape, phrase = self.pool.names[anchor].split(" ", 2)
        shapes = self.siblings[(self.pool.styles[anchor], colour, phrase)]
        return [anchor, *(int(ids[self.rng.integers(len(ids))]) for other, ids in sorted(shapes.items())
                          if other != shape)]

    def next(self) -> tuple[torch.Tensor, list[str]]:
        indices: list[int] = []
        while len(indices) < self.group_budget:
            indices.extend(self._group(int(self._take(1)[0])))
        indices = indices[: self.group_budget]
        indices.extend(self._take(self.batch_size - len(indices)).tolist())
        images = self.pool.images[indices]
        captions = [self.pool.captions[i] for i in indices]
        if self.augment:
            mirror = self.rng.random(len(captions)) < _MIRROR_PROBABILITY
            images[mirror] = images[mirror, :, ::-1]
            captions = [augment_caption(mirror_caption(c) if m else c, self.rng) for c, m in zip(captions, mirror)]
        return torch.from_numpy(images), captions


def train_clip(
    model: open_clip.CLIP,
    tokenizer,
    batches,
    steps: int,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.1,
    grad_clip: float = 1.0,
    interpolation: str = "bicubic",
    progress: bool = True,
    log_every: int = 25,
) -> list[dict]:
    """Train ``model`` contrastively for ``steps`` batches; returns the logged history.

    ``batches.next()`` gives ``(uint8 images (B, H, W, 3), captions)``.  Uses
    AdamW, a linear warm-up over ``warmup`` steps (default 5 %) and cosine decay
    to zero, gradient clipping at ``grad_clip`` and a temperature clamped at 100.
    """
    warmup = max(1, round(0.05 * steps)) if warmup is None else max(1, warmup)
    optimiser = torch.optim.AdamW(_parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    model.train()
    history: list[dict] = []
    window: list[float] = []
    bar = tqdm(range(steps), desc="pretraining teacher", unit="step", disable=not progress)
    for step in bar:
        images, captions = batches.next()
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(step, steps, warmup, lr)
        loss = batch_loss(model, tokenizer, images, captions, interpolation)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimiser.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        window.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": float(np.mean(window)), "lr": optimiser.param_groups[0]["lr"],
                            "logit_scale": model.logit_scale.detach().exp().item()})
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", scale=f"{history[-1]['logit_scale']:.1f}")
            window = []
    model.eval()
    return history


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_stills(
    teacher,
    style: str = "flat",
    seed: int = 0,
    n_per_class: int = 20,
    templates: str | Sequence[str] | None = SYNTH_TEMPLATES,
    size: int | None = None,
) -> dict:
    """Zero-shot accuracy of ``teacher`` on held-out stills of ``style``'s world, per half and group.

    ``n_per_class`` stills of every class are rendered from a stream no training
    pool uses and classified as the protocol does: base stills among the base
    names, novel stills among the novel names, and every still among all names.
    Returns accuracies in percent::

        {"base": {"all", "static", "temporal", "temporal_pair"}, "novel": {...}, "all": {...},
         "hm": harmonic mean of base and novel "all", "chance": {"base", "novel", "all"}, ...}

    ``temporal_pair`` counts a temporal still as right when the prediction is its
    class or its twin: a still-image model can reach 100 % there but only about
    50 % on ``temporal``, since twins' frames are identically distributed.
    """
    world = build_world(style)
    size = size or teacher.image_size
    images, labels = [], []
    for class_index, action in enumerate(world.classes):
        for i in range(n_per_class):
            rng = np.random.default_rng((seed, _EVAL_KEY, zlib.crc32(world.style.encode()), class_index, i))
            images.append(render_still(rng, action.concepts, world.style, size)[0])
            labels.append(class_index)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    device = teacher.pixel_mean.device
    features = teacher.encode_images(pixels.to(device)).cpu()
    labels_t = torch.tensor(labels)
    results: dict = {"style": world.style, "seed": seed, "n_per_class": n_per_class,
                     "templates": list(templates) if not isinstance(templates, str) and templates else templates}
    chance = {}
    for half, classes in (("base", world.base_classes), ("novel", world.novel_classes), ("all", list(world.classes))):
        names = [action.name for action in classes]
        text = teacher.encode_text(names, templates).cpu()
        member = torch.tensor([world.classes[label].name in names for label in labels])
        logits = features[member] @ text.T
        predicted = [names[i] for i in logits.argmax(dim=1).tolist()]
        truth = [world.classes[label] for label in labels_t[member].tolist()]
        correct = np.array([p == t.name for p, t in zip(predicted, truth)])
        pair = np.array([p in (t.name, t.twin) for p, t in zip(predicted, truth)])
        static = np.array([t.group == "static" for t in truth])
        results[half] = {
            "all": float(100.0 * correct.mean()),
            "static": float(100.0 * correct[static].mean()),
            "temporal": float(100.0 * correct[~static].mean()),
            "temporal_pair": float(100.0 * pair[~static].mean()),
        }
        chance[half] = 100.0 / len(names)
    base, novel = results["base"]["all"], results["novel"]["all"]
    results["hm"] = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
    results["chance"] = chance
    return results


# --------------------------------------------------------------------------- the whole recipe


def pretrain_teacher(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = 1500,
    batch_size: int = 256,
    size: int = 64,
    workers: int = 2,
    progress: bool = True,
    *,
    model: str | dict = DEFAULT_MODEL,
    pool_size: int = 100_000,
    world_fraction: float = _DEFAULT_WORLD_FRACTION,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup: int | None = None,
    shape_groups: float = 0.0,
    threads: int = 2,
    eval_per_class: int = 20,
) -> Path:
    """Pretrain a CLIP teacher on SynthActions stills and write it to ``out_dir``; returns ``out_dir``.

    The defaults reproduce the teacher shipped in ``data/teachers/synth-vit``
    (``vlkd synth teacher --out PATH --seed S`` calls this with them).

    Args:
        out_dir: folder to write (created; existing files in it are replaced).
        seed: seed of the pool, the batch order, the augmentations and the initial weights.
        steps: optimiser steps.
        batch_size: image-caption pairs per step.
        size: side of the rendered stills (resized to the model's input size if different).
        workers: processes rendering the still pool.
        progress: show progress bars.
        model: open_clip architecture name or config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        pool_size: stills rendered once and sampled from (each drawn ``steps * batch_size / pool_size`` times).
        world_fraction: share of stills showing a world class (the rest: random compositions).
        lr: peak learning rate.
        weight_decay: AdamW weight decay on weight matrices.
        warmup: warm-up steps (default 5 % of ``steps``).
        shape_groups: share of each batch made of stills that differ only in shape (hard negatives).
        threads: torch intra-op threads while training (restored afterwards).
        eval_per_class: held-out stills per class for the zero-shot numbers in ``training.json`` (0: skip).
    """
    for key, value in {"steps": steps, "batch_size": batch_size, "size": size, "pool_size": pool_size,
                       "threads": threads}.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    _check_fraction(world_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _model_config(model)
    settings = {
        "seed": seed, "steps": steps, "batch_size": batch_size, "size": size, "model": model,
        "pool_size": pool_size, "world_fraction": world_fraction, "lr": lr, "weight_decay": weight_decay,
        "warmup": warmup, "shape_groups": shape_groups, "threads": threads, "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6)",
        "schedule": "linear warm-up, cosine to 0", "grad_clip": 1.0, "loss": "symmetric InfoNCE",
    }
    started = time.perf_counter()
    pool = render_pool(pool_size, seed=seed, size=size, world_fraction=world_fraction, workers=workers,
                       progress=progress)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clip = build_clip(cfg, seed)
        tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
        train_started = time.perf_counter()
        history = train_clip(clip, tokenizer, _PoolBatches(pool, batch_size, seed, shape_groups=shape_groups), steps, lr=lr, warmup=warmup,
                             weight_decay=weight_decay, progress=progress)
        train_seconds = time.perf_counter() - train_started
        round_to_half(clip)
        save_teacher(clip, cfg, out)
        teacher = as_teacher(clip, cfg)
        evaluation = {style: evaluate_stills(teacher, style, seed=seed, n_per_class=eval_per_class)
                      for style in STYLES} if eval_per_class > 0 else {}
    finally:
        torch.set_num_threads(previous_threads)

    record = {
        "settings": settings,
        "model_cfg": cfg,
        "parameters": sum(p.numel() for p in clip.parameters()),
        "final_loss": history[-1]["loss"],
        "final_logit_scale": history[-1]["logit_scale"],
        "history": history,
        "seconds": {"render_pool": pool.seconds, "train": train_seconds, "total": time.perf_counter() - started},
        "still_zero_shot": evaluation,
        "environment": {"torch": torch.__version__, "open_clip": open_clip.__version__,
                        "python": platform.python_version(), "machine": platform.machine()},
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return out


def round_to_half(model: nn.Module) -> None:
    """Round every parameter to a float16 value (kept as float32): what the stored weights hold exactly."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def _preprocess_cfg(cfg: dict) -> dict:
    return {"size": cfg["vision_cfg"]["image_size"], "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def as_teacher(model: open_clip.CLIP, model_cfg: str | dict = DEFAULT_MODEL, name: str = "in-memory") -> FrozenCLIP:
    """Wrap a trained model as a :class:`FrozenCLIP` (frozen in place), as loading its saved folder would."""
    cfg = _model_config(model_cfg)
    preprocess = _preprocess_cfg(cfg)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    config = PreprocessConfig(image_size=int(preprocess["size"]), mean=tuple(preprocess["mean"]),
                              std=tuple(preprocess["std"]), interpolation=preprocess["interpolation"])
    return FrozenCLIP(OpenCLIPAdapter(model, tokenizer, config), name)


def save_teacher(model: open_clip.CLIP, model_cfg: str | dict, out_dir: str | Path) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` (float16) for ``create_teacher(out_dir)``.

    Call :func:`round_to_half` first (as :func:`pretrain_teacher` does) for the
    folder to reproduce the model exactly; otherwise it holds the model rounded to float16.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _model_config(model_cfg)
    config = {"model_cfg": cfg, "preprocess_cfg": _preprocess_cfg(cfg)}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    state = {key: value.detach().half().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"), metadata={"format": "pt"})
    return out


def _check_fraction(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"world_fraction must be in [0, 1], got {value!r}")


def caption_words(captions: Sequence[str]) -> set[str]:
    """The words of captions (punctuation stripped), e.g. to check that stills cover :func:`vocabulary`."""
    return {word for caption in captions for word in re.findall(r"[a-z]+", caption.lower())}

