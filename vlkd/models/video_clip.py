"""A CLIP model that encodes videos frame by frame, optionally letting neighbouring frames talk.

:class:`VideoCLIP` is the student backbone of the video methods (FROSTER, the
ViFi-CLIP fine-tuning baseline). It owns a full open_clip ``CLIP`` model, usually a
deep copy of the teacher's, so the student starts with exactly the teacher's
architecture and weights, and both towers can be fine-tuned.

Temporal modelling is parameter-free ``"neighbour"`` attention: in every attention
block of the image transformer, the queries of frame ``t`` attend to the keys and
values of frames ``t-1``, ``t`` and ``t+1`` (all tokens of each). The block's own
``in_proj``/``out_proj`` weights are reused, so the state dict is the open_clip
model's, key for key, and a checkpoint exports to plain open_clip. The missing
neighbour at either end of the clip is zero-padded and masked out of the softmax,
so a one-frame clip gets exactly CLIP's image embedding. ``"neighbour_zeros"`` is
the FROSTER / Open-VCLIP authors' code instead: the missing neighbour's keys and
values are zeros that stay in the softmax (each takes weight ``exp(0)``), so the
first and last frames give part of their attention to nothing; use it to match
their released training. ``"none"`` encodes the frames independently, exactly as
``CLIP.encode_image`` does.

Nothing here imports Lightning: the module is usable for export and inference alone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from safetensors.torch import save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlkd.data.transforms import eval_transform
from vlkd.errors import ConfigError, MissingFileError
from vlkd.teacher.backends import PreprocessConfig
from vlkd.teacher.prompts import class_prompts

TEMPORAL_MODES = ("neighbour", "neighbour_zeros", "none")
NEIGHBOUR_MODES = ("neighbour", "neighbour_zeros")
#: The file names of open_clip's folder layout, which :meth:`VideoCLIP.save_pretrained` writes.
WEIGHTS_FILE, CONFIG_FILE = "open_clip_model.safetensors", "open_clip_config.json"


def neighbour_attention(
    attn: nn.MultiheadAttention, x: torch.Tensor, frames: int, mask_ends: bool = True
) -> torch.Tensor:
    """Self-attention over a frame's own tokens and those of the previous and next frame.

    Args:
        attn: the block's attention module; its ``in_proj``/``out_proj`` weights are used as-is.
        x: ``(B*T, N, D)`` normalised tokens, frames of one clip consecutive.
        frames: ``T``.
        mask_ends: mask the zero padding that stands for the missing neighbour of the
            first and last frame out of the softmax; ``False`` keeps it in, as the
            authors' code does (``"neighbour_zeros"``).

    Returns:
        ``(B*T, N, D)``: the attention output before the residual connection.
    """
    bt, tokens, width = x.shape
    batch, heads = bt // frames, attn.num_heads
    head_dim = width // heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def split_heads(t: torch.Tensor) -> torch.Tensor:  # (B*T, N, D) -> (B*T, H, N, D/H)
        return t.view(bt, tokens, heads, head_dim).transpose(1, 2)

    def with_neighbours(t: torch.Tensor) -> torch.Tensor:  # (B*T, H, N, d) -> (B*T, H, 3N, d)
        clips = t.view(batch, frames, heads, tokens, head_dim)
        padded = F.pad(clips, (0, 0, 0, 0, 0, 0, 1, 1))  # a zero frame before the first and after the last
        context = torch.cat([padded[:, :-2], clips, padded[:, 2:]], dim=3)  # [previous, own, next] frame
        return context.view(bt, heads, 3 * tokens, head_dim)

    mask = None
    if mask_ends:
        # True = may attend. The zero-padded frames are masked, so a frame at either end
        # attends over its real tokens only and T=1 reduces to plain attention.
        index = torch.arange(frames, device=x.device)
        mask = torch.stack([index > 0, torch.ones_like(index, dtype=torch.bool), index < frames - 1], dim=1)  # (T, 3)
        mask = mask.repeat_interleave(tokens, dim=1).repeat(batch, 1).view(bt, 1, 1, 3 * tokens)

    # 4-D inputs keep PyTorch's fused (memory-efficient) attention kernels available.
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(
        split_heads(q), with_neighbours(split_heads(k)), with_neighbours(split_heads(v)),
        attn_mask=mask, dropout_p=dropout,
    )
    return F.linear(out.transpose(1, 2).reshape(bt, tokens, width), attn.out_proj.weight, attn.out_proj.bias)


def neighbour_block_forward(
    block: ResidualAttentionBlock, x: torch.Tensor, frames: int, mask_ends: bool = True
) -> torch.Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` with :func:`neighbour_attention` in place of self-attention.

    ``x`` is ``(B*T, N, D)``, the output has the same shape.
    """
    x = x + block.ls_1(neighbour_attention(block.attn, block.ln_1(x), frames, mask_ends))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class VideoCLIP(nn.Module):
    """An open_clip CLIP model encoding ``(B, T, C, H, W)`` clips frame by frame.

    Args:
        model: an ``open_clip.CLIP`` with a ViT image tower; used as given (not copied),
            see :meth:`from_teacher` to start from a teacher's weights.
        preprocess: the pixel statistics and size the weights expect (the teacher's).
        tokenizer: open_clip tokenizer (``texts -> (N, L)`` ids) for :meth:`tokenize`.
        temporal: ``"neighbour"`` (attend to the previous and next frame in every
            block), ``"neighbour_zeros"`` (the same with the authors' unmasked zero
            padding at the clip's ends, see the module docstring) or ``"none"``
            (independent frames).
        grad_checkpointing: recompute each block in the backward pass to save memory.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: PreprocessConfig,
        tokenizer=None,
        temporal: str = "neighbour",
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if temporal not in TEMPORAL_MODES:
            raise ConfigError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
        _check_open_clip_vit(model, temporal)
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.temporal = temporal
        if grad_checkpointing:  # both towers; the neighbour path below honours the same flag
            model.set_grad_checkpointing(True)
        self.register_buffer("pixel_mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(preprocess.std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_teacher(cls, teacher, temporal: str = "neighbour", grad_checkpointing: bool = False) -> VideoCLIP:
        """A trainable deep copy of a :class:`~vlkd.teacher.FrozenCLIP`'s open_clip model.

        The teacher is left untouched (and frozen); every parameter of the copy
        requires a gradient.
        """
        adapter = teacher.adapter
        if not hasattr(adapter.model, "encode_image") or not hasattr(adapter.model, "visual"):
            raise ConfigError(
                "the video student needs an open_clip teacher (an architecture name such as ViT-B-16, or an "
                "open_clip weights folder); Hugging Face CLIP folders are not supported as students"
            )
        model = copy.deepcopy(adapter.model).requires_grad_(True).train()
        return cls(model, teacher.preprocess, adapter.tokenizer, temporal, grad_checkpointing)

    # -- export -----------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, model_cfg: dict, metadata: dict | None = None) -> Path:
        """Write this student as an open_clip weights folder; returns the folder.

        ``open_clip_model.safetensors`` holds the CLIP model's state dict (the neighbour
        attention has no parameters of its own) and ``open_clip_config.json`` holds
        ``model_cfg`` (open_clip's architecture config, see
        :func:`vlkd.teacher.factory.open_clip_model_config`), the pixel pipeline, and under
        ``"vlkd"`` the temporal mode plus ``metadata``. open_clip reads the folder as
        ``local-dir:<folder>``; :meth:`from_pretrained` restores the video student.
        """
        if (model_cfg.get("text_cfg") or {}).get("hf_tokenizer_name"):
            raise ConfigError(
                "this student's text tower uses a Hugging Face tokenizer, which the open_clip folder "
                "layout would need beside the weights: exporting it is not supported"
            )
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu().contiguous() for key, value in self.model.state_dict().items()}
        save_file(state, folder / WEIGHTS_FILE)
        config = {
            "model_cfg": model_cfg,
            "preprocess_cfg": {
                "size": self.preprocess.image_size,
                "mean": list(self.preprocess.mean),
                "std": list(self.preprocess.std),
                "interpolation": self.preprocess.interpolation,
                "resize_mode": "shortest",
            },
            "vlkd": {"student": "video_clip", "temporal": self.temporal, **(metadata or {})},
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, temporal: str | None = None,
                        device: str | torch.device = "cpu") -> VideoCLIP:
        """The student :meth:`save_pretrained` wrote (or any open_clip ViT folder), in eval mode.

        ``temporal`` defaults to the mode saved with the weights (``"none"`` for a plain
        open_clip folder).
        """
        from vlkd.teacher import create_teacher

        folder = Path(folder)
        config_file = folder / CONFIG_FILE
        if not config_file.is_file():
            raise MissingFileError(config_file, "exported student config", "pass the folder `vlkd export` wrote")
        saved = json.loads(config_file.read_text()).get("vlkd", {})
        temporal = temporal or saved.get("temporal", "none")
        return cls.from_teacher(create_teacher(str(folder)), temporal=temporal).to(device).eval()

    # -- properties -------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, exponentiated (a 0-d tensor)."""
        return self.model.logit_scale.exp()

    # -- video ------------------------------------------------------------------------
    def normalize_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> resized, centre-cropped and normalised exactly as the teacher does."""
        images = eval_transform(images, self.image_size, mode=self.preprocess.interpolation)
        return (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std

    def encode_video(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, T, C, H, W) frames in [0, 1] -> (B, T, D) per-frame embeddings.

        Unnormalised by default (like ``CLIP.encode_image``); ``normalize=True``
        returns them L2-normalised.
        """
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"encode_video expects (B, T, 3, H, W) frames in [0, 1], got {tuple(video.shape)}")
        batch, frames = video.shape[:2]
        visual = self.model.visual
        pixels = self.normalize_pixels(video.flatten(0, 1))
        x = visual._embeds(pixels)  # (B*T, N, D): patch + class tokens, positions, ln_pre
        if self.temporal in NEIGHBOUR_MODES:
            for block in visual.transformer.resblocks:
                x = self._neighbour_block(block, x, frames)
        else:
            x = visual.transformer(x)  # open_clip's own path: frames are independent images
        pooled, _ = visual._pool(x)  # (B*T, D'): ln_post and class-token pooling
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        features = pooled.view(batch, frames, -1)
        return F.normalize(features, dim=-1) if normalize else features

    def _neighbour_block(self, block: nn.Module, x: torch.Tensor, frames: int) -> torch.Tensor:
        mask_ends = self.temporal == "neighbour"
        if self.model.visual.transformer.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(neighbour_block_forward, block, x, frames, mask_ends, use_reentrant=False)
        return neighbour_block_forward(block, x, frames, mask_ends)

    # -- text -------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) sentences -> (N, L) token ids on this module's device."""
        if self.tokenizer is None:
            raise RuntimeError("this VideoCLIP has no tokenizer: pass one to the constructor")
        return self.tokenizer(list(texts)).to(self.pixel_mean.device)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(N, L) token ids -> (N, D) text embeddings (unnormalised unless ``normalize``)."""
        return self.model.encode_text(tokens, normalize=normalize)

    def class_embeddings(self, class_names: Sequence[str], templates: Sequence[str],
                         descriptions: Mapping[str, str] | None = None) -> torch.Tensor:
        """(K,) class names -> (K, D) prompt-ensembled class embeddings, L2-normalised.

        Every template is filled with each name (and the name's description, if any); the
        normalised embeddings are averaged over templates and normalised again.
        """
        per_template = torch.stack([
            self.encode_text(self.tokenize(class_prompts(class_names, template, descriptions)), normalize=True)
            for template in templates
        ])  # (P, K, D)
        return F.normalize(per_template.mean(dim=0), dim=-1)


def is_exported_student(folder: str | Path) -> bool:
    """Whether ``folder`` holds a student :meth:`VideoCLIP.save_pretrained` wrote (``vlkd export``)."""
    config_file = Path(folder) / CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        return "vlkd" in json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _check_open_clip_vit(model: nn.Module, temporal: str) -> None:
    """Fail at construction, with a reason, on models :meth:`VideoCLIP.encode_video` cannot run."""
    visual = getattr(model, "visual", None)
    transformer = getattr(visual, "transformer", None)
    if transformer is None or not all(hasattr(visual, name) for name in ("_embeds", "_pool", "proj")):
        raise ConfigError("VideoCLIP needs an open_clip CLIP model with a VisionTransformer image tower")
    if temporal in NEIGHBOUR_MODES:
        for block in transformer.resblocks:
            plain = type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv")
            if not plain or not block.attn._qkv_same_embed_dim or not transformer.batch_first:
                raise ConfigError(
                    "neighbour-frame attention needs open_clip's default batch-first ResidualAttentionBlock; "
                    f"this model has {type(block).__name__}: use temporal='none'"
                )
