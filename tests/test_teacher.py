"""The frozen teacher: parity with open_clip / transformers, freezing, caching, loading errors."""

from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from vlkd import create_teacher
from vlkd.errors import ConfigError, MissingFileError, WeightsNotFoundError
from vlkd.methods import trainable_parameters
from vlkd.teacher.factory import is_torchscript_archive
from vlkd.teacher import VIDEO_TEMPLATES

from .conftest import TINY, write_openai_style_archive


def _reference_open_clip(teacher):
    """The wrapped open_clip model, used directly as the reference implementation."""
    return teacher.adapter.model


def test_image_parity_with_open_clip(tiny_teacher):
    model = _reference_open_clip(tiny_teacher)
    pixels = torch.rand(3, 3, 64, 64)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    expected = F.normalize(model.encode_image((pixels - mean) / std), dim=-1)
    torch.testing.assert_close(tiny_teacher.encode_images(pixels), expected, atol=1e-6, rtol=1e-5)


def test_text_parity_with_open_clip_and_prompt_ensembling(tiny_teacher):
    model = _reference_open_clip(tiny_teacher)
    tokenizer = open_clip.get_tokenizer(TINY)
    names = ["riding a bike", "juggling balls"]
    templates = ["a video of a person {}.", "a clip of someone {}."]
    per_template = torch.stack(
        [F.normalize(model.encode_text(tokenizer([t.format(n) for t in templates])), dim=-1) for n in names]
    )
    expected = F.normalize(per_template.mean(dim=1), dim=-1)
    got = tiny_teacher.encode_text(names, templates)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_frames_match_images_and_logit_scale(tiny_teacher):
    video = torch.rand(2, 3, 3, 64, 64)
    frames = tiny_teacher.encode_frames(video)
    assert frames.shape == (2, 3, tiny_teacher.embed_dim)
    torch.testing.assert_close(frames[1, 2], tiny_teacher.encode_images(video[1, 2:3])[0], atol=1e-6, rtol=1e-5)
    assert tiny_teacher.logit_scale == pytest.approx(float(_reference_open_clip(tiny_teacher).logit_scale.exp()))


def test_other_image_sizes_are_resized_and_centre_cropped(tiny_teacher):
    wide = torch.rand(1, 3, 64, 128)
    centre = wide[..., 32:96]
    torch.testing.assert_close(tiny_teacher.encode_images(wide), tiny_teacher.encode_images(centre), atol=1e-6, rtol=1e-5)


def test_frozen_under_train_and_absent_from_optimiser():
    teacher = create_teacher(TINY)
    parent = nn.Module()
    parent.teacher = teacher
    parent.head = nn.Linear(4, 4)
    parent.train()
    assert not teacher.training
    assert all(not module.training for module in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    params = trainable_parameters(parent)
    assert {id(p) for p in params} == {id(p) for p in parent.head.parameters()}
    optimiser = torch.optim.AdamW(params)
    (parent.head(torch.ones(1, 4)).sum() + teacher.encode_images(torch.rand(1, 3, 64, 64)).sum()).backward()
    optimiser.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(id(p) not in {id(q) for g in optimiser.param_groups for q in g["params"]} for p in teacher.parameters())


def test_weights_left_out_of_parent_checkpoint_and_reloaded_strictly():
    teacher = create_teacher(TINY)
    parent = nn.Module()
    parent.teacher = teacher
    parent.head = nn.Linear(4, 4)
    state = parent.state_dict()
    assert set(state) == {"head.weight", "head.bias"}
    before = teacher.encode_images(torch.ones(1, 3, 64, 64))
    parent.load_state_dict(state, strict=True)
    torch.testing.assert_close(teacher.encode_images(torch.ones(1, 3, 64, 64)), before)

    kept = create_teacher(TINY, save_weights=True)
    holder = nn.Module()
    holder.teacher = kept
    assert any(key.startswith("teacher.adapter.model.") for key in holder.state_dict())


def test_text_cache_hits_on_repeated_class_lists():
    teacher = create_teacher(TINY)
    first = teacher.encode_text(["a", "b"], "video")
    assert (teacher.text_cache_hits, teacher.text_cache_misses) == (0, 1)
    again = teacher.encode_text(["a", "b"], list(VIDEO_TEMPLATES))
    assert again is first
    assert (teacher.text_cache_hits, teacher.text_cache_misses) == (1, 1)
    teacher.encode_text(["b", "a"], "video")
    assert teacher.text_cache_misses == 2


def test_mixed_precision_runs_and_stays_close(tiny_teacher):
    bf16 = create_teacher(TINY, precision="bf16")
    bf16.adapter.model.load_state_dict(tiny_teacher.adapter.model.state_dict())
    pixels = torch.rand(2, 3, 64, 64)
    low = bf16.encode_images(pixels)
    assert low.dtype == torch.float32
    assert F.cosine_similarity(low, tiny_teacher.encode_images(pixels)).min() > 0.98


def test_checkpoint_files_safetensors_and_torch(tmp_path, tiny_teacher):
    state = _reference_open_clip(tiny_teacher).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tiny.safetensors")
    torch.save(state, tmp_path / "tiny.pt")
    pixels = torch.rand(1, 3, 64, 64)
    expected = tiny_teacher.encode_images(pixels)
    for name in ("tiny.safetensors", "tiny.pt"):
        loaded = create_teacher(TINY, pretrained=str(tmp_path / name))
        torch.testing.assert_close(loaded.encode_images(pixels), expected)


def test_openai_torchscript_file_loads_with_quick_gelu(tmp_path):
    # OpenAI's own CLIP files (ViT-B-16.pt) are TorchScript archives of QuickGELU models;
    # this architecture's config uses GELU, so only the file can tell.
    arch = "vlkd-synth-vit"
    assert not open_clip.get_model_config(arch).get("quick_gelu")
    reference = write_openai_style_archive(arch, tmp_path / "openai.pt")
    pixels = torch.rand(1, 3, 64, 64)
    torch.save(reference.state_dict(), tmp_path / "state.pt")
    assert is_torchscript_archive(tmp_path / "openai.pt") and not is_torchscript_archive(tmp_path / "state.pt")

    loaded = create_teacher(arch, pretrained=str(tmp_path / "openai.pt"))
    assert type(loaded.adapter.model.visual.transformer.resblocks[0].mlp.gelu) is open_clip.transformer.QuickGELU
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (loaded.preprocess.mean, loaded.preprocess.std))
    expected = F.normalize(reference.encode_image((pixels - mean) / std), dim=-1)  # 64 px: no resize
    torch.testing.assert_close(loaded.encode_images(pixels), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="does not hold the weights of this architecture"):
        create_teacher(TINY, pretrained=str(tmp_path / "openai.pt"))


def test_open_clip_hub_folder(tmp_path, tiny_teacher):
    model = _reference_open_clip(tiny_teacher)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    config = {"model_cfg": open_clip.get_model_config(TINY), "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    loaded = create_teacher(str(tmp_path))
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5)
    pixels = torch.rand(1, 3, 64, 64)
    expected = F.normalize(model.encode_image((pixels - 0.5) / 0.25), dim=-1)
    torch.testing.assert_close(loaded.encode_images(pixels), expected, atol=1e-6, rtol=1e-5)


def test_hugging_face_folder_matches_transformers(hf_clip_folder):
    from transformers import CLIPModel, CLIPTokenizer

    teacher = create_teacher(str(hf_clip_folder))
    reference = CLIPModel.from_pretrained(hf_clip_folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(hf_clip_folder)
    pixels = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(teacher.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(teacher.preprocess.std).view(1, 3, 1, 1)
    with torch.no_grad():
        image_out = reference.get_image_features(pixel_values=(pixels - mean) / std)
        tokens = tokenizer(["a photo of a dog."], padding=True, return_tensors="pt")
        text_out = reference.get_text_features(**tokens)
    image_ref = image_out if isinstance(image_out, torch.Tensor) else image_out.pooler_output
    text_ref = text_out if isinstance(text_out, torch.Tensor) else text_out.pooler_output
    torch.testing.assert_close(teacher.encode_images(pixels), F.normalize(image_ref, dim=-1), atol=1e-5, rtol=1e-4)
    got_text = teacher.encode_text(["dog"], "photo")
    torch.testing.assert_close(got_text, F.normalize(text_ref, dim=-1), atol=1e-5, rtol=1e-4)
    assert teacher.embed_dim == 16


def test_hf_tokenizer_matches_open_clip_tokenizer(hf_clip_folder):
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(hf_clip_folder)
    ours = open_clip.get_tokenizer(TINY)
    text = "a video of a person playing the violin."
    hf_ids = hf(text)["input_ids"]
    assert hf_ids == ours([text])[0][: len(hf_ids)].tolist()


def test_missing_pretrained_weights_fail_fast_with_the_fix():
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match=r"pretrained=/path/to/weights"):
        create_teacher("ViT-B-16", pretrained="openai", offline=True)
    assert time.perf_counter() - start < 5


def test_user_errors_are_named():
    with pytest.raises(ConfigError, match="unknown CLIP architecture 'ViT-X-99'"):
        create_teacher("ViT-X-99")
    with pytest.raises(ConfigError, match="unknown pretrained tag 'nope'"):
        create_teacher("ViT-B-16", pretrained="nope")
    with pytest.raises(MissingFileError, match="missing.safetensors"):
        create_teacher(TINY, pretrained="/no/such/missing.safetensors")
    with pytest.raises(ConfigError, match="weights file"):
        create_teacher("/no/such/weights.safetensors")
