"""Build a :class:`~vlkd.teacher.clip.FrozenCLIP` from any of the places CLIP weights live.

``create_teacher`` accepts:

* an open_clip architecture name with a pretrained tag, e.g. ``("ViT-B-16", "openai")``;
  the weights are taken from the local cache (Hugging Face hub cache or open_clip's
  URL cache) and downloaded only where a network exists;
* an open_clip architecture name with a local checkpoint file
  (``.safetensors``, or a ``.pt``/``.bin`` read with ``torch.load(weights_only=True)``);
* an open_clip architecture name alone: random weights (tests, tiny configs);
* ``("vlkd-synth-vit", "synthactions")``: the tiny teacher shipped in ``data/teachers``,
  pretrained on SynthActions still frames (the offline default);
* a folder saved by Hugging Face ``transformers`` (``CLIPModel.save_pretrained``);
* a folder in open_clip's hub layout (``open_clip_config.json`` + weights).

The tiny architectures used by tests and the offline world are open_clip JSON
configs in ``vlkd/teacher/model_configs`` and are registered with open_clip
when this module is imported, so they load through exactly the code path a
ViT-B/16 does.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.transformer import QuickGELU

from vlkd.errors import ConfigError, MissingFileError, WeightsNotFoundError
from vlkd.paths import asset_path
from vlkd.teacher.backends import HFCLIPAdapter, OpenCLIPAdapter, PreprocessConfig
from vlkd.teacher.clip import FrozenCLIP

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

#: Weights shipped inside vlkd's data folder: (architecture, tag) -> file under vlkd.paths.asset_dir().
SHIPPED_WEIGHTS = {
    ("vlkd-synth-vit", "synthactions"): ("teachers", "synth-vit", "open_clip_model.safetensors"),
}


def list_tiny_configs() -> list[str]:
    """Names of the architectures shipped with vlkd (registered with open_clip)."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def _offline_from_env() -> bool:
    return any(os.environ.get(var, "").lower() in {"1", "true", "yes"} for var in ("VLKD_OFFLINE", "HF_HUB_OFFLINE"))


def create_teacher(
    name: str = "ViT-B-16",
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    offline: bool | None = None,
    frame_chunk: int = 256,
    save_weights: bool = False,
) -> FrozenCLIP:
    """Build a frozen CLIP teacher.

    Args:
        name: open_clip architecture name (``"ViT-B-16"``, ``"vlkd-tiny-vit"``), or a
            folder holding Hugging Face or open_clip-hub weights.
        pretrained: with an architecture name: a pretrained tag (``"openai"``), a
            checkpoint file, or ``None`` for random weights. Ignored for folders.
        device: where the teacher lives.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast in the towers).
        cache_dir: where downloaded weights are looked up and stored.
        offline: never touch the network; ``None`` follows ``VLKD_OFFLINE`` /
            ``HF_HUB_OFFLINE``.
        frame_chunk: maximum images per forward pass of the image tower.
        save_weights: keep the teacher's weights in its parent's checkpoints.

    Raises:
        WeightsNotFoundError: the weights are not on disk and cannot be downloaded.
        ConfigError: unknown architecture or pretrained tag.
        MissingFileError: a checkpoint path that does not exist.
    """
    offline = _offline_from_env() if offline is None else offline
    path = Path(name).expanduser()
    if path.is_dir():
        adapter = _load_folder(path)
        identity = str(path.resolve())
    elif path.suffix in _WEIGHT_SUFFIXES or path.is_file():
        raise ConfigError(
            f"teacher name {name!r} is a weights file: pass the architecture as the name and the file "
            f"as pretrained, e.g. create_teacher('ViT-B-16', pretrained={name!r})"
        )
    else:
        adapter = _load_open_clip(name, pretrained, cache_dir, offline)
        identity = f"{name}:{pretrained}"
    teacher = FrozenCLIP(adapter, identity, precision=precision, frame_chunk=frame_chunk, save_weights=save_weights,
                         model=name, pretrained=None if path.is_dir() else pretrained)
    return teacher.to(device)


# -- open_clip ----------------------------------------------------------------------


def _check_architecture(name: str) -> None:
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.6)
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"unknown CLIP architecture {name!r}: use an open_clip model name (open_clip.list_models()) "
            f"or a local weights folder{hint}"
        )


def _load_open_clip(name: str, pretrained: str | None, cache_dir: str | None, offline: bool) -> OpenCLIPAdapter:
    _check_architecture(name)
    checkpoint = None
    quick_gelu = False
    if (name, pretrained) in SHIPPED_WEIGHTS:
        checkpoint = str(asset_path(*SHIPPED_WEIGHTS[name, pretrained]))
    elif pretrained is not None:
        candidate = Path(pretrained).expanduser()
        if candidate.suffix in _WEIGHT_SUFFIXES or os.sep in pretrained:
            if not candidate.is_file():
                raise MissingFileError(candidate, "teacher checkpoint", "check the path given as pretrained")
            checkpoint = str(candidate)
        else:
            checkpoint, quick_gelu = _find_pretrained(name, pretrained, cache_dir, offline)
    # OpenAI's own files (ViT-B-16.pt from their URL) are TorchScript archives of models
    # trained with QuickGELU; open_clip's plain architecture names use GELU.
    torchscript = checkpoint is not None and is_torchscript_archive(checkpoint)
    with _no_random_init_warning(enabled=checkpoint is not None):
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu or torchscript)
    if torchscript:
        _load_torchscript_weights(model, checkpoint)
    elif checkpoint is not None:
        # open_clip's loader reads safetensors, or torch.load with weights_only=True.
        open_clip.load_checkpoint(model, checkpoint, weights_only=True)
    else:
        log.warning("teacher %s has random weights (no pretrained given)", name)
    tokenizer = open_clip.get_tokenizer(name)
    return OpenCLIPAdapter(model, tokenizer, open_clip_preprocess(model))


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), as OpenAI's CLIP files are.

    Such an archive holds ``code/`` and ``constants.pkl``, which a ``torch.save`` checkpoint never does.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(member.endswith("/constants.pkl") for member in archive.namelist())


def _load_torchscript_weights(model: torch.nn.Module, path: str) -> None:
    """Load the weights of an OpenAI TorchScript CLIP file into the open_clip ``model``.

    ``torch.load(weights_only=True)`` refuses TorchScript, so the archive is opened with
    ``torch.jit.load`` (which runs no Python pickle code) and only its tensors are kept.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # jit.load's deprecation: the format is OpenAI's
        archive = torch.jit.load(path, map_location="cpu")
    load_openai_state_dict(model, archive.state_dict(), path)


def clip_from_openai_state_dict(name: str, state_dict: dict, source: str | Path) -> torch.nn.Module:
    """The open_clip architecture ``name``, with QuickGELU as OpenAI's weights need, holding ``state_dict``
    (OpenAI's key layout, e.g. from a checkpoint of a model fine-tuned from them)."""
    _check_architecture(name)
    with _no_random_init_warning(enabled=True):
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=True)
    load_openai_state_dict(model, state_dict, source)
    return model


def load_openai_state_dict(model: torch.nn.Module, state_dict: dict, source: str | Path) -> None:
    """Load a state dict in OpenAI's CLIP key layout (which open_clip's ``CLIP`` shares) into ``model``, strictly.

    OpenAI's files also hold three ints (``input_resolution``, ``context_length``,
    ``vocab_size``), and a traced open_clip model the buffers open_clip keeps out of its
    state dict (the text attention mask): those are skipped. ``source`` names the file in
    the error raised when the weights do not fit the architecture.
    """
    non_persistent = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    skip = {"input_resolution", "context_length", "vocab_size", *non_persistent}
    try:
        model.load_state_dict({key: value for key, value in state_dict.items() if key not in skip}, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"{source} does not hold the weights of this architecture ({' '.join(str(error).split())[:300]}): "
            "name the architecture the file was saved from, e.g. ViT-B-16 for OpenAI's ViT-B-16.pt"
        ) from None


@contextlib.contextmanager
def _no_random_init_warning(enabled: bool):
    """Silence open_clip's "initialized randomly" warning when weights are loaded right after."""

    def drop(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    if enabled:
        root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def open_clip_preprocess(model) -> PreprocessConfig:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    kwargs = {k: tuple(cfg[k]) for k in ("mean", "std") if k in cfg}
    return PreprocessConfig(image_size=int(size), interpolation=cfg.get("interpolation", "bicubic"), **kwargs)


def _find_pretrained(name: str, tag: str, cache_dir: str | None, offline: bool) -> tuple[str, bool]:
    """Local path of the weights for ``name`` + ``tag``, downloading only when allowed."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(
            f"unknown pretrained tag {tag!r} for {name}: use one of {tags} or a path to a weights file"
        )
    quick_gelu = bool(cfg.get("quick_gelu", False))
    hub = cfg.get("hf_hub", "")
    where = f"Hugging Face hub {hub!r}" if hub else f"URL {cfg.get('url', '?')}"
    cached = _hub_cache_lookup(hub, cache_dir) if hub else None
    if cached:
        return cached, quick_gelu
    if offline:
        raise WeightsNotFoundError(
            f"{name} '{tag}' weights are not on disk and vlkd is offline: download them from the {where} "
            f"on a machine with network (or copy the file here) and pass pretrained=/path/to/weights"
        )
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir), quick_gelu
    except Exception as error:  # network errors come in many types; all mean the same to the user
        raise WeightsNotFoundError(
            f"{name} '{tag}' weights are not on disk and could not be downloaded ({error.__class__.__name__}): "
            f"fetch them from the {where} and pass pretrained=/path/to/weights"
        ) from None


def _hub_cache_lookup(hub: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import hf_hub_download

    # open_clip writes "org/model/" for the default file names and "org/model/file" otherwise.
    repo_id, filename = os.path.split(hub)
    filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for candidate in filenames:
        try:
            return hf_hub_download(repo_id, candidate, cache_dir=cache_dir, local_files_only=True)
        except Exception:
            continue
    return None


def open_clip_model_config(name: str, model: torch.nn.Module) -> dict:
    """The open_clip ``model_cfg`` that rebuilds ``model``, which ``create_teacher(name, ...)`` built.

    For a folder, the config it was read from; for an architecture name, open_clip's config
    for it with ``quick_gelu`` set as ``model`` has it (OpenAI weights use QuickGELU, which
    the plain name does not say).

    Raises:
        ConfigError: ``name`` is a Hugging Face folder, or an architecture open_clip does not know.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "open_clip_config.json"
        if not config_file.is_file():
            raise ConfigError(f"{path} is not an open_clip weights folder (no open_clip_config.json)")
        config = json.loads(config_file.read_text())
        return dict(config.get("model_cfg", config))
    _check_architecture(name)
    config = open_clip.get_model_config(name)
    config["quick_gelu"] = any(isinstance(module, QuickGELU) for module in model.modules())
    return config


# -- folders ------------------------------------------------------------------------


def _load_folder(folder: Path) -> OpenCLIPAdapter | HFCLIPAdapter:
    if (folder / "open_clip_config.json").is_file():
        return _load_open_clip_folder(folder)
    if (folder / "config.json").is_file():
        return _load_hf_folder(folder)
    raise MissingFileError(
        folder / "config.json",
        "CLIP weights folder config",
        "a teacher folder needs a Hugging Face CLIP config.json or an open_clip_config.json",
    )


def _load_open_clip_folder(folder: Path) -> OpenCLIPAdapter:
    # open_clip's own "local-dir:" schema reads open_clip_config.json and the weights
    # file next to it (safetensors preferred, else torch.load with weights_only).
    arch = f"local-dir:{folder.resolve()}"
    model = open_clip.create_model(arch, weights_only=True)
    return OpenCLIPAdapter(model, open_clip.get_tokenizer(arch), open_clip_preprocess(model))


def _load_hf_folder(folder: Path) -> HFCLIPAdapter:
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "clip":
        raise ConfigError(
            f"{folder}/config.json describes a {config.get('model_type')!r} model: vlkd teachers need model_type 'clip'"
        )
    model = CLIPModel.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    vision = CLIPConfig.from_pretrained(folder).vision_config
    preprocess = PreprocessConfig(image_size=int(vision.image_size))
    processor_file = folder / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        preprocess = PreprocessConfig(
            image_size=int(vision.image_size),
            mean=tuple(processor.get("image_mean", preprocess.mean)),
            std=tuple(processor.get("image_std", preprocess.std)),
        )
    return HFCLIPAdapter(model, tokenizer, preprocess)


@dataclass
class TeacherSpec:
    """What a config says about the teacher; :meth:`build` turns it into a :class:`FrozenCLIP`.

    Args:
        name: open_clip architecture name or a local weights folder.
        pretrained: pretrained tag, checkpoint file, or ``None`` for random weights.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        cache_dir: where downloaded weights are looked up.
        offline: never use the network (``None``: follow ``VLKD_OFFLINE`` / ``HF_HUB_OFFLINE``).
    """

    name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    precision: str = "fp32"
    cache_dir: str | None = None
    offline: bool | None = None

    def __post_init__(self) -> None:
        # On the command line `--...teacher.pretrained null` reaches a dataclass field as a
        # string; random weights are meant.
        if isinstance(self.pretrained, str) and self.pretrained.strip().lower() in ("", "none", "null"):
            self.pretrained = None

    def build(self, **kwargs) -> FrozenCLIP:
        return create_teacher(
            self.name, self.pretrained, precision=self.precision, cache_dir=self.cache_dir, offline=self.offline, **kwargs
        )
