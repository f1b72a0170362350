"""``vlkd export``: a trained student as a weights folder (open_clip's layout for video students, timm's for DHO).

A DHO checkpoint (``best`` or ``last.ckpt`` of a ``vlkd fit`` run of ``vlkd.methods.DHO``)
becomes a folder timm reads as it is (``model.safetensors`` and ``config.json``): the
timm model with the CE and KD heads stacked as one ``2C``-way classifier, with alpha,
beta and the class names in the config (:mod:`vlkd.models.dual_head`), loaded by
``DualHeadClassifier.from_pretrained(folder)``, ``create_student("dual_head", folder=folder)``
or ``timm.create_model("local-dir:" + folder, pretrained=True)``.

    vlkd export runs/dho_synth/lightning_logs/version_0/checkpoints/last.ckpt --out students/dho_synth

An EZAD checkpoint (``last.ckpt`` of a ``vlkd fit`` run of ``vlkd.methods.EZAD``) becomes the
detector's folder (``model.safetensors`` and ``config.json``, :meth:`EZADFasterRCNN.save_pretrained`)
with the run's class names embedded as its vocabulary, and in the config's metadata the
teacher that embeds new names (the run's re-normalised teacher folder, or the config's
teacher by name) and the prompt templates, so ``vlkd detect --checkpoint FOLDER`` and
``vlkd demo --detector FOLDER`` take any names. ``--include-teacher`` copies the
re-normalised teacher folder into the export (``teacher/``), which then stands alone.

    vlkd export runs/ezad_synth/lightning_logs/version_0/checkpoints/last.ckpt --out detectors/ezad_synth


Takes the checkpoint a FROSTER or fine-tuning run wrote (``averaged.ckpt``: the
epoch-averaged weights the final evaluation used) and writes the student's CLIP
model in open_clip's folder layout, with the student's temporal mode, prompt
templates and class descriptions in the config. The folder then loads three ways:

* ``VideoCLIP.from_pretrained(folder)``: the video student, neighbour-frame attention included;
* ``create_teacher(folder)``: a frozen, frame-by-frame CLIP (e.g. as a teacher, or for
  ``vlkd zeroshot --teacher folder``);
* ``open_clip.create_model_and_transforms("local-dir:" + folder)``: plain open_clip.

    vlkd export runs/froster_synth/lightning_logs/version_0/checkpoints/averaged.ckpt --out students/froster_synth

It also converts the checkpoints the FROSTER (and Open-VCLIP) authors release, PySlowFast
files such as ``swa_2_22.pth`` holding ``{"model_state": {"model.<OpenAI CLIP key>": ...}}``:
the CLIP weights are kept (the training-only projectors are left out) and the student gets
the authors' attention, ``temporal="neighbour_zeros"``, and the video prompt templates.

    vlkd export swa_2_22.pth --arch ViT-B-16 --out students/froster_authors_k400
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vlkd.errors import ConfigError, MissingFileError
from vlkd.models.video_clip import CONFIG_FILE, WEIGHTS_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkd export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the .ckpt file of a FROSTER or FineTuneCLIP run (e.g. averaged.ckpt) "
                        "or of a DHO or EZAD run (last.ckpt), or a .pth / .pyth checkpoint released by the FROSTER or "
                        "Open-VCLIP authors")
    parser.add_argument("--out", required=True, help="folder to write the student to (created if missing)")
    parser.add_argument("--arch", default="ViT-B-16",
                        help="open_clip architecture of an authors' checkpoint (default ViT-B-16; unused for .ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace a student already exported to --out")
    parser.add_argument("--include-teacher", action="store_true",
                        help="EZAD: copy the run's re-normalised teacher folder into the export (teacher/), so the "
                             "folder embeds new class names on its own (a teacher named by the config is recorded "
                             "by name either way)")
    return parser


AUTHORS_SUFFIXES = (".pth", ".pyth")


def _check_out(out: str | Path, overwrite: bool, files: Sequence[str] = (WEIGHTS_FILE, CONFIG_FILE)) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: the export is a folder, pass a folder path")
    if not overwrite and any((out / name).exists() for name in files):
        raise ConfigError(f"{out} already holds an exported model: pass --overwrite to replace it, or another --out")
    return out


def export_student(checkpoint: str | Path, out: str | Path, overwrite: bool = False, arch: str = "ViT-B-16",
                   include_teacher: bool = False) -> Path:
    """Write the student of ``checkpoint`` to the folder ``out``; returns the folder.

    A ``.pth`` / ``.pyth`` file is read as an authors' checkpoint of architecture ``arch``
    (:func:`export_authors_checkpoint`), anything else as a vlkd run's checkpoint.
    ``include_teacher``: an EZAD export carries its re-normalised teacher (:func:`export_ezad_detector`).
    """
    from vlkd.methods.checkpoints import load_video_method
    from vlkd.teacher.factory import open_clip_model_config

    checkpoint = Path(checkpoint).expanduser()
    if checkpoint.suffix in AUTHORS_SUFFIXES:
        return export_authors_checkpoint(checkpoint, out, arch, overwrite)
    if _names_method(checkpoint, "DHO"):
        return export_dual_head_student(checkpoint, out, overwrite)
    if _names_method(checkpoint, "EZAD"):
        return export_ezad_detector(checkpoint, out, overwrite, include_teacher)
    out = _check_out(out, overwrite)
    method = load_video_method(checkpoint)
    weights = method.initial_weights
    metadata = {
        "method": type(method).__name__,
        "source_checkpoint": checkpoint.name,
        "initial_weights": {"name": weights.name, "pretrained": weights.pretrained},
        "pooling": method.pooling,
        "logit_scale": float(method.logit_scale),
        "templates": list(method.templates),
        "class_descriptions": dict(method.descriptions),
    }
    model_cfg = open_clip_model_config(weights.name, method.student.model)
    return method.student.save_pretrained(out, model_cfg, metadata)


def _names_method(checkpoint: Path, name: str) -> bool:
    """Whether ``checkpoint`` is a readable Lightning checkpoint of the method class ``name``."""
    from vlkd.methods.checkpoints import checkpoint_class_path

    try:
        return checkpoint.is_file() and checkpoint_class_path(checkpoint).rsplit(".", 1)[-1] == name
    except Exception:  # noqa: BLE001 - not such a checkpoint: the video loader gives the precise error
        return False


def export_dual_head_student(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the DHO student of ``checkpoint`` to ``out`` (see :meth:`DualHeadClassifier.save_pretrained`)."""
    from vlkd.methods.checkpoints import load_method
    from vlkd.methods.dho import DHO
    from vlkd.models.dual_head import CONFIG_FILE as DHO_CONFIG
    from vlkd.models.dual_head import WEIGHTS_FILE as DHO_WEIGHTS

    checkpoint = Path(checkpoint).expanduser()
    out = _check_out(out, overwrite, (DHO_WEIGHTS, DHO_CONFIG))
    method = load_method(checkpoint, {"DHO": DHO}, "a DHO student")
    metadata = {"method": "DHO", "variant": method.variant, "source_checkpoint": checkpoint.name,
                "student": method.student_name, "teacher": method.teacher.identity.model,
                "templates": method.templates if isinstance(method.templates, str) else list(method.templates)}
    return method.student.save_pretrained(out, method.class_names, metadata)


def export_ezad_detector(checkpoint: str | Path, out: str | Path, overwrite: bool = False,
                         include_teacher: bool = False) -> Path:
    """Write the detector of an EZAD ``checkpoint`` to ``out`` (see :meth:`EZADFasterRCNN.save_pretrained`).

    The vocabulary saved with it is the run's class names (base and novel) embedded by the run's
    teacher; the metadata records that teacher (``{"folder": ...}`` for a re-normalised one,
    ``{"name", "pretrained"}`` otherwise) and the templates, which embed any other names later.
    ``include_teacher``: the re-normalised teacher folder is copied to ``out/teacher`` and recorded
    relative to the export.
    """
    import shutil

    from vlkd.methods.ezad_inference import (
        build_teacher,
        load_ezad_method,
        run_teacher_record,
        stored_class_names,
        teacher_spec_of,
    )
    from vlkd.models.ezad_detector import CONFIG_FILE as EZAD_CONFIG
    from vlkd.models.ezad_detector import WEIGHTS_FILE as EZAD_WEIGHTS

    checkpoint = Path(checkpoint).expanduser()
    out = _check_out(out, overwrite, (EZAD_WEIGHTS, EZAD_CONFIG))
    method = load_ezad_method(checkpoint)
    names = stored_class_names(checkpoint)
    if not names:
        raise ConfigError(f"{checkpoint} records no class names (it was not written by a `vlkd fit` run with a "
                          "detection data module): pass the last.ckpt such a run wrote")
    record = run_teacher_record(method, checkpoint)
    teacher = build_teacher(record)
    detector = method.detector
    detector.set_class_embeddings(teacher.encode_text(list(names), method.templates).float(), list(names))
    if include_teacher and record.get("folder"):
        shutil.copytree(record["folder"], out / "teacher", dirs_exist_ok=True)
        record = {**record, "folder": "teacher"}
    spec = teacher_spec_of(method)
    metadata = {"method": "EZAD", "variant": method.variant, "source_checkpoint": checkpoint.name,
                "teacher": record, "templates": list(method.templates),
                "initial_teacher": {"name": spec.name, "pretrained": spec.pretrained}}
    return detector.save_pretrained(out, list(names), metadata)


def export_authors_checkpoint(checkpoint: str | Path, out: str | Path, arch: str = "ViT-B-16",
                              overwrite: bool = False) -> Path:
    """Write the video student held by a FROSTER / Open-VCLIP authors' checkpoint to ``out``.

    The file is a PySlowFast checkpoint (``{"model_state": state_dict}``) whose CLIP
    weights sit under ``model.`` in OpenAI's key layout; other entries (the residual
    projectors, a kept copy of the original CLIP) are training-only and left out. The
    student gets ``temporal="neighbour_zeros"``, the authors' neighbour attention.
    """
    import open_clip
    import torch

    from vlkd.models.video_clip import VideoCLIP
    from vlkd.teacher.factory import clip_from_openai_state_dict, open_clip_model_config, open_clip_preprocess
    from vlkd.teacher.prompts import VIDEO_TEMPLATES

    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise MissingFileError(checkpoint, "authors' checkpoint", "pass the .pth file they released, e.g. swa_2_22.pth")
    out = _check_out(out, overwrite)
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line reason
        raise ConfigError(f"{checkpoint}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    state = saved.get("model_state", saved) if isinstance(saved, dict) else {}
    clip_state = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
    if not clip_state:
        raise ConfigError(
            f"{checkpoint} holds no 'model.' weights: expected a FROSTER / Open-VCLIP checkpoint "
            "({'model_state': {'model.visual.conv1.weight': ...}}), or pass a vlkd run's .ckpt"
        )
    model = clip_from_openai_state_dict(arch, clip_state, checkpoint)
    student = VideoCLIP(model, open_clip_preprocess(model), open_clip.get_tokenizer(arch), temporal="neighbour_zeros")
    left_out = sorted({key.split(".")[0] for key in state if not key.startswith("model.")})
    metadata = {
        "method": "FROSTER",
        "source_checkpoint": checkpoint.name,
        "source_format": "authors' PySlowFast checkpoint",
        "left_out": left_out,
        "initial_weights": {"name": arch, "pretrained": "openai"},
        "pooling": "logits",
        "logit_scale": float(model.logit_scale.detach().exp()),
        "templates": list(VIDEO_TEMPLATES),
        "class_descriptions": {},
    }
    return student.save_pretrained(out, open_clip_model_config(arch, model), metadata)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    folder = export_student(args.checkpoint, args.out, args.overwrite, args.arch, args.include_teacher)
    from vlkd.methods.ezad_inference import is_exported_detector
    from vlkd.models.dual_head import CONFIG_KEY

    if is_exported_detector(folder):
        print(f"wrote {folder / 'model.safetensors'} and {folder / 'config.json'}\n"
              f"detect any names with it: vlkd detect IMAGE --checkpoint {folder} --classes \"a, b\" --out DIR "
              f"(or vlkd demo --detector {folder}); in Python: "
              f"vlkd.models.EZADFasterRCNN.from_pretrained({str(folder)!r})")
        return 0

    dual_head_config = folder / "config.json"
    if dual_head_config.is_file() and CONFIG_KEY in dual_head_config.read_text():
        print(f"wrote {folder / 'model.safetensors'} and {dual_head_config}\n"
              f"load it with vlkd.models.DualHeadClassifier.from_pretrained({str(folder)!r}) (combined heads) "
              f"or timm.create_model({('local-dir:' + str(folder))!r}, pretrained=True) (both heads' logits)")
        return 0
    print(f"wrote {folder / WEIGHTS_FILE} and {folder / CONFIG_FILE}\n"
          f"load it with vlkd.models.VideoCLIP.from_pretrained({str(folder)!r}) (video student) "
          f"or vlkd.create_teacher({str(folder)!r}) (frame by frame)")
    return 0
