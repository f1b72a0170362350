"""`vlkd export`: a trained video student written as an open_clip folder, and loaded back three ways."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vlkd import create_teacher
from vlkd.cli import main
from vlkd.errors import MissingFileError
from vlkd.methods import FROSTER, FineTuneCLIP
from vlkd.models import VideoCLIP
from vlkd.teacher import TeacherSpec
from vlkd.teacher.factory import open_clip_model_config

from .conftest import TINY, save_checkpoint, write_openai_style_archive


def _trained_froster(teacher: TeacherSpec, **kwargs) -> FROSTER:
    """A FROSTER whose student differs from its teacher, as after training."""
    torch.manual_seed(0)
    method = FROSTER(teacher=teacher, **kwargs)
    with torch.no_grad():
        for parameter in method.student.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    return method.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    method = _trained_froster(TeacherSpec(TINY, None), class_descriptions=None)
    checkpoint = save_checkpoint(method, folder / "averaged.ckpt", class_path="vlkd.methods.FROSTER")
    assert main(["export", str(checkpoint), "--out", str(folder / "student")]) == 0
    return method, folder / "student"


def test_the_exported_video_student_is_the_trained_one(exported):
    method, folder = exported
    student = VideoCLIP.from_pretrained(folder)
    assert student.temporal == "neighbour" and not student.training
    video = torch.rand(2, 4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(student.encode_video(video), method.student.encode_video(video), rtol=0, atol=0)
        tokens = student.tokenize(["a red ball rolling left"])
        torch.testing.assert_close(student.encode_text(tokens), method.student.encode_text(tokens), rtol=0, atol=0)
        # ...and not the teacher it started from.
        assert not torch.allclose(student.encode_text(tokens), method.teacher.adapter.model.encode_text(tokens))


def test_the_folder_loads_frame_by_frame_as_a_teacher_and_in_plain_open_clip(exported):
    method, folder = exported
    pixels = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected = F.normalize(method.student.model.encode_image(method.student.normalize_pixels(pixels)), dim=-1)
        torch.testing.assert_close(create_teacher(str(folder)).encode_images(pixels), expected)
        model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        torch.testing.assert_close(F.normalize(model.encode_image(method.student.normalize_pixels(pixels)), dim=-1),
                                   expected)


def test_the_config_records_how_the_student_classifies(exported):
    method, folder = exported
    config = json.loads((folder / "open_clip_config.json").read_text())
    saved = config["vlkd"]
    assert saved["method"] == "FROSTER" and saved["temporal"] == "neighbour" and saved["pooling"] == "logits"
    assert saved["templates"] == list(method.templates) and saved["initial_weights"] == {"name": TINY, "pretrained": None}
    assert saved["logit_scale"] == pytest.approx(float(method.logit_scale))
    assert config["model_cfg"]["quick_gelu"] is True  # the tiny config's activation, kept
    assert config["preprocess_cfg"]["size"] == 64


def test_a_fine_tuned_student_exports_with_its_own_temporal_mode_and_pooling(tmp_path):
    method = FineTuneCLIP(clip=TeacherSpec(TINY, None))
    checkpoint = save_checkpoint(method, tmp_path / "ft.ckpt", class_path="vlkd.methods.FineTuneCLIP")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())["vlkd"]
    assert (saved["method"], saved["temporal"], saved["pooling"]) == ("FineTuneCLIP", "none", "features")
    assert VideoCLIP.from_pretrained(tmp_path / "out").temporal == "none"


def test_openai_weights_keep_quick_gelu_in_the_exported_config(tmp_path):
    # A GELU architecture loaded from an OpenAI TorchScript file runs QuickGELU; the export must say so,
    # or the folder would rebuild the model with the wrong activation.
    arch = "vlkd-synth-vit"
    write_openai_style_archive(arch, tmp_path / "openai.pt")
    method = _trained_froster(TeacherSpec(arch, str(tmp_path / "openai.pt")), temporal="none")
    assert open_clip_model_config(arch, method.student.model)["quick_gelu"] is True
    assert open_clip_model_config(arch, open_clip.create_model(arch))["quick_gelu"] is False
    checkpoint = save_checkpoint(method, tmp_path / "averaged.ckpt", class_path="vlkd.methods.FROSTER")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    video = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(VideoCLIP.from_pretrained(tmp_path / "out").encode_video(video),
                                   method.student.encode_video(video), rtol=0, atol=0)


def test_export_refuses_to_overwrite_and_names_bad_input(exported, tmp_path, capsys):
    _, folder = exported
    checkpoint = folder.parent / "averaged.ckpt"
    assert main(["export", str(checkpoint), "--out", str(folder)]) == 2
    assert "already holds an exported model: pass --overwrite" in capsys.readouterr().err
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    assert main(["export", str(tmp_path / "notes.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "notes.ckpt is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "notes.ckpt")]) == 2
    assert "is a file: the export is a folder" in capsys.readouterr().err
    with pytest.raises(MissingFileError, match="exported student config not found"):
        VideoCLIP.from_pretrained(tmp_path)


def _authors_checkpoint(path, model: torch.nn.Module) -> None:
    """A file in the layout of the FROSTER / Open-VCLIP releases: PySlowFast's {"model_state": ...},
    the CLIP weights under "model." in OpenAI's keys, training-only projectors beside them."""
    state = {f"model.{key}": value.clone() for key, value in model.state_dict().items()}
    state["projector_v.0.weight"] = torch.zeros(4, 4)
    state["raw_model.visual.proj"] = torch.zeros(4, 4)
    torch.save({"model_state": state, "epoch": 22}, path)


def test_an_authors_checkpoint_exports_as_their_video_student(tmp_path):
    torch.manual_seed(0)
    arch = "vlkd-synth-vit"  # a small architecture whose open_clip config uses GELU
    source = open_clip.create_model(arch, pretrained=None)
    assert not any(isinstance(module, open_clip.transformer.QuickGELU) for module in source.modules())
    with torch.no_grad():  # weights no random init would give, so a silent fallback to one shows
        for parameter in source.parameters():
            parameter.add_(0.05)
    _authors_checkpoint(tmp_path / "swa_2_22.pth", source)
    assert main(["export", str(tmp_path / "swa_2_22.pth"), "--arch", arch, "--out", str(tmp_path / "authors")]) == 0
    student = VideoCLIP.from_pretrained(tmp_path / "authors")
    assert student.temporal == "neighbour_zeros"  # the authors' unmasked end padding
    for key, value in source.state_dict().items():
        torch.testing.assert_close(student.model.state_dict()[key], value, rtol=0, atol=0)
    # OpenAI's weights, and so the authors', need QuickGELU.
    assert any(isinstance(module, open_clip.transformer.QuickGELU) for module in student.model.modules())
    saved = json.loads((tmp_path / "authors" / "open_clip_config.json").read_text())["vlkd"]
    assert saved["left_out"] == ["projector_v", "raw_model"] and saved["templates"][0].startswith("a video")
    with torch.no_grad():
        assert student.encode_video(torch.rand(1, 3, 3, 64, 64)).shape == (1, 3, source.visual.output_dim)
    # `vlkd test --config configs/froster_*.yaml --model.init_args.teacher.name <folder>` scores these weights:
    method = FROSTER(teacher=TeacherSpec(str(tmp_path / "authors"), None), temporal="neighbour_zeros")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(method.student.model.state_dict()[key], value, rtol=0, atol=0)


def test_an_authors_checkpoint_of_another_architecture_is_refused_by_name(tmp_path, capsys):
    _authors_checkpoint(tmp_path / "swa.pth", open_clip.create_model(TINY, pretrained=None))
    assert main(["export", str(tmp_path / "swa.pth"), "--arch", "ViT-B-16", "--out", str(tmp_path / "out")]) == 2
    assert "does not hold the weights of this architecture" in capsys.readouterr().err
    torch.save({"model_state": {"head.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    assert main(["export", str(tmp_path / "other.pth"), "--out", str(tmp_path / "out")]) == 2
    assert "holds no 'model.' weights" in capsys.readouterr().err
