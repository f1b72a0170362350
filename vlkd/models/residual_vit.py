"""ResidualViT: per-frame CLIP features for long videos at a fraction of the full ViT's cost.

From "ResidualViT for Efficient Temporally Dense Video Encoding" (Soldan et al.,
ICCV 2025). Consecutive video frames are nearly the same picture, so most of a
frame's CLIP embedding can be carried over from a neighbour. Frames are taken in
groups of ``N`` (``group_size``): the first frame of a group (the *I-frame*, as in
video compression) goes through the full, frozen CLIP image tower; the other
``N - 1`` (*P-frames*) go through the very same frozen weights but see only a few
of their own patches, plus one extra *residual token* computed from the group's
I-frame embedding. The residual tokenizer is the only trained part (see
:mod:`vlkd.methods.residualvit` for the distillation that trains it).

What this module computes (``P`` patches per frame, ``K`` kept, ``W`` the ViT width,
``D`` the embedding width)
-----------------------------------------------------------------------------------
* I-frame ``t`` (``t mod N = 0``, counted from the first frame of the video):
  ``f_t = norm(E_V(x_t))``, exactly the teacher's embedding.
* P-frame ``t + k`` (``0 < k < N``): ``f_{t+k} = norm(E_S(f_t, x_{t+k}))`` where ``E_S`` is
  ``E_V`` with two changes to its input sequence, made after patch embedding and
  positional embedding and before the pre-norm ``ln_pre``:

  - token reduction: keep the class token and ``K = round((1 - p) * P)`` patch tokens
    (``p`` = ``drop_ratio``, 0.85 by default), chosen by one of :data:`SELECTIONS`;
  - residual token: ``r = A(f_t)`` with ``A: R^D -> R^W`` (a linear layer, or a
    two-layer MLP), inserted right after the class token, with no positional
    embedding. The sequence is ``[cls, r, kept patches]`` (``K + 2`` tokens).

  The class token is pooled and projected exactly as in the full ViT.

Token selection modes
    ``random``: ``K`` patches uniformly at random per frame (used in training).
    ``uniform``: ``K`` patches evenly spaced in raster order.
    ``centre``: the ``K`` patches whose centres are nearest the image centre.
    ``motion``: the ``K`` patches whose pixels changed most since the previous frame
    (mean absolute difference of the decoded pixels at the model's resolution,
    over the patch and the colour channels); ties (e.g. a still frame) fall back
    to the patches nearest the centre.

Where the paper is vague, this implementation chooses
------------------------------------------------------
* The group size ``N`` counts the I-frame: ``N = 4`` is one full frame and three
  reduced ones (the paper's "N" counts only the P-frames between two I-frames).
* The tokenizer reads the *L2-normalised* I-frame embedding, and its output is a
  plain input token (``ln_pre`` normalises it like every other token).
* ``round`` rounds halves up (``K = floor((1 - p) P + 1/2)``); a ``p`` close to 1 may
  keep no patch at all, leaving the class and residual tokens.
* Patches that are dropped are never embedded: the kept patches are cut from the
  pixels and multiplied by the patch-embedding kernel, so a P-frame's patch
  embedding costs ``K / P`` of the full one.
* Motion is measured against the previous frame of the sequence (for the first
  P-frame, the I-frame), which a streaming caller passes on across chunks
  (:class:`StreamState`).

With ``drop_ratio = 0`` and the residual token disabled every frame equals the
teacher's embedding (tested). The teacher's weights are shared, not copied, and
are left out of this module's ``state_dict`` (a :class:`~vlkd.teacher.FrozenCLIP`
drops them), so a checkpoint holds only the tokenizer.

Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vlkd.data.transforms import eval_transform
from vlkd.errors import ConfigError, MissingFileError

SELECTIONS = ("random", "uniform", "centre", "motion")
TOKENIZERS = ("linear", "mlp")

# Frames whose pixel differences are taken at once when scoring motion.
_MOTION_CHUNK = 16

#: File name the training method exports the tokenizer under, beside its logs.
TOKENIZER_FILE = "residual_tokenizer.safetensors"


def num_kept_patches(num_patches: int, drop_ratio: float) -> int:
    """``round((1 - p) * P)`` with halves rounded up: the patch tokens a P-frame keeps."""
    return int(math.floor((1.0 - drop_ratio) * num_patches + 0.5))


def patch_motion(frames: torch.Tensor, previous: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(n, C, H, W) frames and their previous frames in [0, 1] -> (n, P) mean absolute change per patch."""
    change = (frames.float() - previous.float()).abs_().mean(dim=1, keepdim=True)  # (n, 1, H, W)
    return F.avg_pool2d(change, patch_size).flatten(1)


def centre_order(grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(P,) patch indices (raster order) sorted by the distance of their centre to the image centre."""
    rows, cols = grid
    y = torch.arange(rows, device=device, dtype=torch.float64) - (rows - 1) / 2
    x = torch.arange(cols, device=device, dtype=torch.float64) - (cols - 1) / 2
    distance = (y[:, None] ** 2 + x[None, :] ** 2).flatten()
    return torch.sort(distance, stable=True).indices  # ties keep raster order


def select_patches(
    mode: str,
    count: int,
    keep: int,
    grid: tuple[int, int],
    motion: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(count, keep) sorted indices of the patches each of ``count`` frames keeps.

    Args:
        mode: one of :data:`SELECTIONS` (module docstring).
        count: number of frames.
        keep: patches kept per frame.
        grid: (rows, cols) of the patch grid; ``P = rows * cols``.
        motion: (count, P) change scores, needed by ``"motion"`` (:func:`patch_motion`).
        generator: random generator of ``"random"`` (``None``: torch's global one).
    """
    num_patches = grid[0] * grid[1]
    if mode not in SELECTIONS:
        raise ConfigError(f"token selection must be one of {SELECTIONS}, got {mode!r}")
    if not 0 <= keep <= num_patches:
        raise ValueError(f"cannot keep {keep} of {num_patches} patches")
    if mode == "random":
        scores = torch.rand(count, num_patches, generator=generator, device=device)
        chosen = scores.argsort(dim=1)[:, :keep]
    elif mode == "uniform":
        positions = [int(math.floor((k + 0.5) * num_patches / keep)) for k in range(keep)]
        chosen = torch.tensor(positions, device=device, dtype=torch.long).expand(count, keep)
    elif mode == "centre":
        chosen = centre_order(grid, device)[:keep].expand(count, keep)
    else:
        if motion is None:
            raise ValueError("motion selection needs the motion scores of every frame")
        order = centre_order(grid, motion.device)
        # Sort by motion, largest first; a stable sort over centre-ordered patches breaks ties towards the centre.
        ranked = torch.sort(motion[:, order], dim=1, descending=True, stable=True).indices
        chosen = order[ranked[:, :keep]]
    return chosen.sort(dim=1).values


@dataclass
class StreamState:
    """What encoding one chunk of a video hands to the next, so that groups continue across chunks.

    Attributes:
        position: frames of the video encoded so far (the next frame's index in the sequence).
        i_features: (B, D) the last I-frame's normalised embedding.
        previous: (B, C, S, S) the last frame, in [0, 1] at the model's size (motion selection).
    """

    position: int = 0
    i_features: torch.Tensor | None = None
    previous: torch.Tensor | None = None


class ResidualTokenizer(nn.Module):
    """``A``: (n, D) normalised I-frame embeddings -> (n, W) residual tokens (linear or a 2-layer MLP)."""

    def __init__(self, embed_dim: int, width: int, kind: str = "linear", hidden: int | None = None):
        super().__init__()
        if kind not in TOKENIZERS:
            raise ConfigError(f"residual tokenizer must be one of {TOKENIZERS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(embed_dim, width)
        else:
            hidden = hidden or width
            self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class ResidualViT(nn.Module):
    """A frozen CLIP ViT that encodes ``(B, T, C, H, W)`` frames in I/P groups (module docstring).

    Args:
        teacher: the frozen CLIP (:class:`~vlkd.teacher.FrozenCLIP` with an open_clip ViT);
            used as is, its weights shared and never trained.
        group_size: ``N``, frames per group (one I-frame, ``N - 1`` P-frames). 1 encodes
            every frame with the full ViT.
        drop_ratio: ``p``, the share of patch tokens a P-frame drops, in [0, 1).
        selection: default token selection (:data:`SELECTIONS`); callers may override it per call.
        residual_token: insert the residual token (False: token reduction alone, no trained part).
        tokenizer: ``"linear"`` or ``"mlp"``.
        tokenizer_hidden: hidden width of the ``"mlp"`` tokenizer (default: the ViT width).
    """

    def __init__(
        self,
        teacher,
        group_size: int = 4,
        drop_ratio: float = 0.85,
        selection: str = "motion",
        residual_token: bool = True,
        tokenizer: str = "linear",
        tokenizer_hidden: int | None = None,
    ):
        super().__init__()
        _check_open_clip_vit(teacher)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ConfigError(f"group_size must be an integer >= 1, got {group_size!r}")
        if not 0.0 <= float(drop_ratio) < 1.0:
            raise ConfigError(f"drop_ratio must be in [0, 1), got {drop_ratio!r}")
        if selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.teacher = teacher
        self.group_size = group_size
        self.drop_ratio = float(drop_ratio)
        self.selection = selection
        visual = teacher.adapter.model.visual
        self.width = int(visual.transformer.width)
        self.tokenizer = (
            ResidualTokenizer(teacher.embed_dim, self.width, tokenizer, tokenizer_hidden) if residual_token else None
        )
        self.tokenizer_kind = tokenizer

    # -- geometry -----------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.teacher.adapter.model.visual

    @property
    def image_size(self) -> int:
        return self.teacher.image_size

    @property
    def embed_dim(self) -> int:
        return self.teacher.embed_dim

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def grid(self) -> tuple[int, int]:
        rows, cols = self.visual.grid_size
        return int(rows), int(cols)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_kept(self) -> int:
        """Patch tokens a P-frame keeps."""
        return num_kept_patches(self.num_patches, self.drop_ratio)

    @property
    def residual_token(self) -> bool:
        return self.tokenizer is not None

    def i_frame_mask(self, frames: int, start: int = 0) -> torch.Tensor:
        """(frames,) bool: which frames of a sequence starting at position ``start`` are I-frames."""
        return (torch.arange(start, start + frames) % self.group_size) == 0

    # -- pixels ---------------------------------------------------------------------------
    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) in [0, 1] -> (..., C, S, S): shorter side to the model's size, centre crop (the teacher's)."""
        return eval_transform(images, self.image_size, mode=self.teacher.preprocess.interpolation)

    # -- encoders -------------------------------------------------------------------------
    def encode_full(self, images: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) in [0, 1] -> (n, D): the full ViT, i.e. the teacher's normalised embeddings."""
        return self.teacher.encode_images(images)

    def encode_reduced(
        self,
        images: torch.Tensor,
        i_features: torch.Tensor | None,
        previous: torch.Tensor | None = None,
        selection: str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """P-frames: (n, C, S, S) pixels in [0, 1] at the model's size -> (n, D) normalised embeddings.

        Args:
            images: the P-frames.
            i_features: (n, D) the normalised embedding of each frame's I-frame (ignored
                without a residual token; required with one).
            previous: (n, C, S, S) each frame's previous frame (``"motion"`` selection only).
            selection: token selection (default: ``self.selection``).
            generator: random generator of ``"random"`` selection.
        """
        count = images.shape[0]
        if count == 0:
            return images.new_zeros(0, self.embed_dim, dtype=torch.float32)
        keep = self.select_tokens(images, previous, selection, generator)
        return self._reduced(images, torch.arange(count, device=images.device), keep, i_features)

    def select_tokens(
        self,
        images: torch.Tensor,
        previous: torch.Tensor | None = None,
        selection: str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(n, C, S, S) P-frames in [0, 1] -> (n, K) sorted indices of the patches they keep.

        ``previous`` (n, C, S, S) are the frames before them, needed by ``"motion"`` selection.
        """
        selection = selection or self.selection
        motion = None
        if selection == "motion" and self.num_kept < self.num_patches:
            if previous is None:
                raise ValueError("motion selection needs each P-frame's previous frame")
            motion = patch_motion(images, previous, self.patch_size)
        return self._select(selection, images.shape[0], motion, generator, images.device)

    def _select(self, selection, count, motion, generator, device) -> torch.Tensor:
        if selection == "motion" and motion is None:
            selection = "uniform"  # every patch is kept: no scores needed, the same set
        return select_patches(selection, count, self.num_kept, self.grid, motion, generator, device)

    def _reduced(
        self, pixels: torch.Tensor, frames: torch.Tensor, keep: torch.Tensor, i_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Frames ``frames`` (n,) of ``pixels`` (F, C, S, S) with patches ``keep`` (n, K) -> (n, D), in chunks."""
        if self.tokenizer is not None and i_features is None:
            raise ValueError("the residual token needs the I-frame embedding of every P-frame")
        outputs = []
        step = self.teacher.frame_chunk
        for start in range(0, len(frames), step):
            part = slice(start, start + step)
            residual = i_features[part] if self.tokenizer is not None else None
            outputs.append(self._reduced_forward(pixels, frames[part], keep[part], residual))
        return torch.cat(outputs)

    def _reduced_forward(
        self, pixels: torch.Tensor, frames: torch.Tensor, keep: torch.Tensor, i_features: torch.Tensor | None
    ) -> torch.Tensor:
        visual = self.visual
        teacher = self.teacher
        with teacher._autocast(pixels.device):
            # Cut the kept patches out of the pixels (no copy of the dropped ones), then normalise them.
            patches = _gather_patches(pixels, frames, keep, self.patch_size)  # (n, K, C, ps, ps)
            mean, std = teacher.pixel_mean.view(1, 1, -1, 1, 1), teacher.pixel_std.view(1, 1, -1, 1, 1)
            patches = ((patches.to(mean.dtype) - mean) / std).flatten(2)  # (n, K, C*ps*ps)
            # The patch embedding (a stride-ps convolution) applied to the kept patches only.
            kernel = visual.conv1.weight.flatten(1)  # (W, C*ps*ps), the same channel-row-column order
            x = F.linear(patches, kernel, visual.conv1.bias)  # (n, K, W)
            positions = visual.positional_embedding.to(x.dtype)
            x = x + positions[1:][keep]
            cls = (visual.class_embedding.to(x.dtype) + positions[0]).expand(x.shape[0], 1, -1)
            tokens = [cls]
            if i_features is not None:
                tokens.append(self.tokenizer(i_features.to(kernel.dtype)).to(x.dtype).unsqueeze(1))
            x = torch.cat([*tokens, x], dim=1)
            x = visual.ln_pre(x)
            x = visual.transformer(x)
            pooled, _ = visual._pool(x)
            if visual.proj is not None:
                pooled = pooled @ visual.proj
        return F.normalize(pooled.float(), dim=-1)

    def encode_video(
        self,
        video: torch.Tensor,
        state: StreamState | None = None,
        selection: str | None = None,
        full_features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_state: bool = False,
    ):
        """(B, T, C, H, W) frames in [0, 1] -> (B, T, D) L2-normalised per-frame embeddings.

        Args:
            video: the frames, any size (resized and centre-cropped as the teacher does).
            state: where a previous chunk of the same videos left off (:class:`StreamState`);
                ``None`` starts a video (its first frame is an I-frame).
            selection: token selection of the P-frames (default: ``self.selection``).
            full_features: (B, T, D) the teacher's embeddings of these frames if the caller
                already has them (training does): I-frames take them instead of being encoded again.
            generator: random generator of ``"random"`` selection.
            return_state: also return the :class:`StreamState` for the next chunk.
        """
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"encode_video expects (B, T, 3, H, W) frames in [0, 1], got {tuple(video.shape)}")
        state = state or StreamState()
        selection = selection or self.selection
        batch, frames = video.shape[:2]
        size = self.image_size
        pixels = self.resize(video.flatten(0, 1)).view(batch, frames, 3, size, size)
        if state.position % self.group_size != 0 and state.i_features is None:
            raise ValueError("a chunk that starts inside a group needs the state of the previous chunk")
        is_i = self.i_frame_mask(frames, state.position).tolist()
        i_index = [t for t in range(frames) if is_i[t]]
        p_index = [t for t in range(frames) if not is_i[t]]

        features = pixels.new_zeros(batch, frames, self.embed_dim, dtype=torch.float32)
        if i_index and full_features is not None:
            features[:, i_index] = full_features[:, i_index].float()
        elif i_index:
            features[:, i_index] = self.encode_full(pixels[:, i_index].flatten(0, 1)).view(batch, -1, self.embed_dim)

        if p_index:
            # Every P-frame's I-frame: the last I-frame at or before it, in this chunk or (stream) before it.
            i_seq = []
            for t in p_index:
                source = max((i for i in i_index if i <= t), default=None)
                i_seq.append(features[:, source] if source is not None else state.i_features.float())
            i_seq = torch.stack(i_seq, dim=1).flatten(0, 1)  # (B * P-frames, D), batch-major
            motion = None
            if selection == "motion" and self.num_kept < self.num_patches:
                motion = self._motion(pixels, state.previous)[:, p_index].flatten(0, 1)
            frame_ids = (torch.arange(batch, device=video.device)[:, None] * frames
                         + torch.tensor(p_index, device=video.device)).flatten()
            keep = self._select(selection, len(frame_ids), motion, generator, video.device)
            reduced = self._reduced(pixels.flatten(0, 1), frame_ids, keep, i_seq)
            features = _place(features, p_index, reduced.view(batch, len(p_index), self.embed_dim))
        if not return_state:
            return features
        i_features = features[:, i_index[-1]].detach() if i_index else state.i_features
        return features, StreamState(state.position + frames, i_features, pixels[:, -1].detach().clone())

    def _motion(self, pixels: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """(B, T, C, S, S) frames (and the frame before the first) -> (B, T, P) change since the previous frame.

        Frame 0 without a previous frame scores 0 everywhere (it is an I-frame then).
        """
        batch, frames = pixels.shape[:2]
        scores = pixels.new_zeros(batch, frames, self.num_patches, dtype=torch.float32)
        for start in range(1, frames, _MOTION_CHUNK):  # bounded temporaries for long chunks
            stop = min(frames, start + _MOTION_CHUNK)
            scores[:, start:stop] = patch_motion(
                pixels[:, start:stop].flatten(0, 1), pixels[:, start - 1 : stop - 1].flatten(0, 1), self.patch_size
            ).view(batch, stop - start, -1)
        if previous is not None:
            scores[:, 0] = patch_motion(pixels[:, 0], previous, self.patch_size)
        return scores

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) in [0, 1] -> (B, T, D): :meth:`encode_video` from the start of each video."""
        return self.encode_video(video)

    # -- the trained part -----------------------------------------------------------------
    def tokenizer_metadata(self) -> dict[str, str]:
        """What a saved tokenizer needs to be rebuilt and checked against a teacher."""
        return {
            "format": "vlkd.residual_vit.v1",
            "tokenizer": self.tokenizer_kind,
            "embed_dim": str(self.embed_dim),
            "width": str(self.width),
            "group_size": str(self.group_size),
            "drop_ratio": repr(self.drop_ratio),
            "teacher": str(self.teacher.name),
        }

    def save_tokenizer(self, path: str | Path) -> Path:
        """Write the residual tokenizer's weights and settings to a ``.safetensors`` file."""
        from safetensors.torch import save_file

        if self.tokenizer is None:
            raise ConfigError("this ResidualViT has no residual token: there is no tokenizer to save")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tokenizer.state_dict().items()}
        save_file(tensors, str(path), metadata=self.tokenizer_metadata())
        return path


def _place(features: torch.Tensor, frames: list[int], values: torch.Tensor) -> torch.Tensor:
    """``features`` (B, T, D) with frames ``frames`` replaced by ``values`` (B, len(frames), D).

    Out of place, so that gradients reach ``values`` when training.
    """
    index = torch.full((features.shape[1],), -1, dtype=torch.long, device=features.device)
    index[frames] = torch.arange(len(frames), device=features.device)
    gathered = values[:, index.clamp(min=0)]
    return torch.where((index >= 0).view(1, -1, 1), gathered, features)


def _gather_patches(pixels: torch.Tensor, frames: torch.Tensor, keep: torch.Tensor, patch: int) -> torch.Tensor:
    """Patches ``keep`` (n, K) (raster order) of frames ``frames`` (n,) of ``pixels`` (F, C, H, W) -> (n, K, C, ps, ps).

    Only the kept patches are copied; the flattening order of each patch (channel, row,
    column) matches the kernel of a stride-``patch`` convolution.
    """
    count, channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    grid = pixels[:, :, : rows * patch, : cols * patch].reshape(count, channels, rows, patch, cols, patch)
    # Advanced indices separated by slices put the indexed dimensions first: (n, K, C, ps, ps).
    return grid[frames[:, None], :, keep // cols, :, keep % cols, :]


def load_tokenizer_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(weights, metadata) of a residual tokenizer saved by :meth:`ResidualViT.save_tokenizer`,
    or taken from a Lightning checkpoint of :class:`vlkd.methods.ResidualViTDistillation`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(path, "residual tokenizer checkpoint", f"pass the {TOKENIZER_FILE} a training run wrote")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            weights = {key: handle.get_tensor(key) for key in handle.keys()}
        return weights, metadata
    from vlkd.teacher import TeacherSpec

    try:
        # A checkpoint of a run built in Python keeps the TeacherSpec in its hyper-parameters.
        with torch.serialization.safe_globals([TeacherSpec]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"{path}: not a readable residual tokenizer checkpoint ({type(error).__name__}); "
            f"pass the {TOKENIZER_FILE} a training run wrote"
        ) from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    prefix = "student.tokenizer."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ConfigError(f"{path}: holds no residual tokenizer weights (no '{prefix}*' entries)")
    metadata = {"tokenizer": "mlp" if any(k.startswith("net.2.") for k in weights) else "linear"}
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    for key in ("group_size", "drop_ratio"):
        if isinstance(hparams, dict) and isinstance(hparams.get(key), (int, float)):
            metadata[key] = str(hparams[key])
    return weights, metadata


def residual_vit_from_checkpoint(teacher, path: str | Path, **overrides) -> ResidualViT:
    """A :class:`ResidualViT` on ``teacher`` with the tokenizer saved in ``path``.

    The group size and drop ratio the tokenizer was trained with are used unless
    ``overrides`` sets them (any :class:`ResidualViT` argument may be overridden).
    """
    weights, metadata = load_tokenizer_file(path)
    settings = {"tokenizer": metadata.get("tokenizer", "linear")}
    if "group_size" in metadata:
        settings["group_size"] = int(metadata["group_size"])
    if "drop_ratio" in metadata:
        settings["drop_ratio"] = float(metadata["drop_ratio"])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings["tokenizer"] == "mlp" and "net.0.weight" in weights:
        settings.setdefault("tokenizer_hidden", int(weights["net.0.weight"].shape[0]))
    model = ResidualViT(teacher, residual_token=True, **settings)
    expected = {k: tuple(v.shape) for k, v in model.tokenizer.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    if expected != found:
        trained_for = metadata.get("teacher", "another teacher")
        raise ConfigError(
            f"{path}: the residual tokenizer does not fit teacher {teacher.name} (shapes {found}, this teacher "
            f"needs {expected}); it was trained for {trained_for}: pass that teacher with --teacher/--pretrained"
        )
    model.tokenizer.load_state_dict(weights)
    return model.to(teacher.pixel_mean.device)


def _check_open_clip_vit(teacher) -> None:
    """Fail at construction, with a reason, on teachers whose image tower this module cannot run."""
    model = getattr(getattr(teacher, "adapter", None), "model", None)
    visual = getattr(model, "visual", None)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "_pool", "proj", "grid_size")
    if visual is None or not all(hasattr(visual, name) for name in needed):
        raise ConfigError(
            "ResidualViT needs an open_clip teacher with a VisionTransformer image tower (an architecture name "
            "such as ViT-B-16, or an open_clip weights folder); Hugging Face CLIP folders are not supported"
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ConfigError("ResidualViT needs a ViT that pools its class token (pool_type 'tok', no attention pooling)")
    if not getattr(visual.transformer, "batch_first", True):
        raise ConfigError("ResidualViT needs open_clip's batch-first vision transformer")
