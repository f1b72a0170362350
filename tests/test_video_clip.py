"""The video student backbone: neighbour-frame attention, equality with CLIP at initialisation, the registry."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError
from vlkd.models import VideoCLIP, create_student, list_students
from vlkd.models.video_clip import neighbour_attention


@pytest.fixture(scope="module")
def students(tiny_teacher):
    """The tiny teacher's weights as a neighbour-attention and a frame-independent student (eval mode)."""
    modes = ("neighbour", "none")
    return {mode: create_student("video_clip", teacher=tiny_teacher, temporal=mode).eval() for mode in modes}


def _clips(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_registry_builds_video_clip_and_rejects_unknown_names(tiny_teacher):
    assert "video_clip" in list_students()
    assert isinstance(create_student("video_clip", teacher=tiny_teacher), VideoCLIP)
    with pytest.raises(ConfigError, match="video_clip"):
        create_student("no_such_student")


def test_student_is_a_trainable_copy_with_the_teachers_keys_and_no_new_parameters(tiny_teacher, students):
    student = students["neighbour"]
    teacher_state = tiny_teacher.adapter.model.state_dict()
    student_state = student.state_dict()
    assert set(student_state) == {f"model.{key}" for key in teacher_state}
    assert all(torch.equal(student_state[f"model.{key}"], value) for key, value in teacher_state.items())
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in tiny_teacher.parameters())  # the teacher is not touched
    assert student.model is not tiny_teacher.adapter.model


def test_one_frame_neighbour_attention_equals_plain_attention(students):
    attn = students["neighbour"].model.visual.transformer.resblocks[0].attn
    x = torch.randn(3, 17, attn.embed_dim)
    expected = attn(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(neighbour_attention(attn, x, frames=1), expected, rtol=1e-5, atol=1e-6)


def test_neighbour_attention_attends_to_previous_and_next_frame_only(students):
    """Frame t's output equals attention with queries of t over the tokens of t-1, t, t+1 (where they exist)."""
    attn = students["neighbour"].model.visual.transformer.resblocks[0].attn
    batch, frames, tokens = 2, 4, 5
    x = torch.randn(batch * frames, tokens, attn.embed_dim)
    out = neighbour_attention(attn, x, frames).view(batch, frames, tokens, -1)
    clips = x.view(batch, frames, tokens, -1)
    for t in range(frames):
        context = clips[:, max(0, t - 1) : t + 2].flatten(1, 2)  # (B, up to 3N, D)
        expected = attn(clips[:, t], context, context, need_weights=False)[0]
        torch.testing.assert_close(out[:, t], expected, rtol=1e-5, atol=1e-5)


def test_zero_padded_ends_keep_zero_keys_in_the_softmax_as_the_authors_code(students):
    """neighbour_zeros: the first and last frame also attend to N zero keys (logit 0) with zero values."""
    attn = students["neighbour"].model.visual.transformer.resblocks[0].attn
    batch, frames, tokens, heads = 2, 3, 5, attn.num_heads
    x = torch.randn(batch * frames, tokens, attn.embed_dim)
    out = neighbour_attention(attn, x, frames, mask_ends=False).view(batch, frames, tokens, -1)
    masked = neighbour_attention(attn, x, frames).view(batch, frames, tokens, -1)
    # Reference, written out per frame and head: keys/values of a missing neighbour are zeros.
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(batch, frames, tokens, -1).chunk(3, dim=-1)
    head_dim = attn.embed_dim // heads
    for t in range(frames):
        neighbours = [k[:, s] if 0 <= s < frames else torch.zeros_like(k[:, t]) for s in (t - 1, t, t + 1)]
        values = [v[:, s] if 0 <= s < frames else torch.zeros_like(v[:, t]) for s in (t - 1, t, t + 1)]
        keys, vals = torch.cat(neighbours, dim=1), torch.cat(values, dim=1)  # (B, 3N, D)
        heads_out = []
        for h in range(heads):
            part = slice(h * head_dim, (h + 1) * head_dim)
            weights = torch.softmax(q[:, t, :, part] @ keys[..., part].transpose(1, 2) / head_dim**0.5, dim=-1)
            heads_out.append(weights @ vals[..., part])
        expected = F.linear(torch.cat(heads_out, dim=-1), attn.out_proj.weight, attn.out_proj.bias)
        torch.testing.assert_close(out[:, t], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1], masked[:, 1], rtol=1e-5, atol=1e-6)  # a middle frame has both neighbours
    assert not torch.allclose(out[:, 0], masked[:, 0], atol=1e-4)  # the ends differ


def test_zero_padded_one_frame_clip_is_not_plain_clip(tiny_teacher, students):
    zeros = create_student("video_clip", teacher=tiny_teacher, temporal="neighbour_zeros").eval()
    video = _clips(1, 1)
    with torch.no_grad():
        one_frame = zeros.encode_video(video, normalize=True)
        plain = students["none"].encode_video(video, normalize=True)
    # One frame with two zero neighbours is not plain CLIP any more (unlike "neighbour").
    assert F.cosine_similarity(one_frame, plain, dim=-1).item() < 1 - 1e-4


def test_one_frame_student_equals_open_clip_encode_image_and_the_teacher(tiny_teacher, students):
    video = _clips(2, 1)
    pixels = tiny_teacher.normalize_pixels(video[:, 0])
    with torch.no_grad():
        open_clip_features = tiny_teacher.adapter.model.encode_image(pixels)
        teacher = tiny_teacher.encode_frames(video)
        for student in students.values():
            torch.testing.assert_close(student.encode_video(video)[:, 0], open_clip_features, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(student.encode_video(video, normalize=True), teacher, rtol=1e-5, atol=1e-5)


def test_frames_interact_under_neighbour_attention_only(students):
    video = _clips(1, 3)
    changed = video.clone()
    changed[:, 1] = _clips(1, 1, seed=1)[:, 0]  # replace frame 2
    with torch.no_grad():
        for mode, moves in (("neighbour", True), ("none", False)):
            before, after = students[mode].encode_video(video), students[mode].encode_video(changed)
            assert torch.allclose(before[:, 0], after[:, 0], atol=1e-6) is not moves, mode


def test_none_mode_encodes_frames_like_separate_images(students):
    video = _clips(1, 3)
    with torch.no_grad():
        together = students["none"].encode_video(video)
        alone = torch.cat([students["none"].encode_video(video[:, t : t + 1]) for t in range(3)], dim=1)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_text_tower_matches_the_teacher(tiny_teacher, students):
    student = students["neighbour"]
    prompts = ["a video of a person running.", "a video of a person swimming."]
    with torch.no_grad():
        text = student.encode_text(student.tokenize(prompts), normalize=True)
    torch.testing.assert_close(text, tiny_teacher.encode_prompts(prompts), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_embeddings_and_gradients(tiny_teacher):
    video = _clips(1, 2)
    grads = []
    for checkpointing in (False, True):
        student = create_student("video_clip", teacher=tiny_teacher, grad_checkpointing=checkpointing)
        student.encode_video(video).square().sum().backward()
        grads.append(student.model.visual.conv1.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bad_temporal_mode_and_wrong_input_shape_are_clear(tiny_teacher, students):
    with pytest.raises(ConfigError, match="temporal"):
        create_student("video_clip", teacher=tiny_teacher, temporal="divided")
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        students["none"].encode_video(torch.rand(2, 3, 64, 64))


def test_student_module_imports_without_lightning():
    code = "import sys, vlkd.models; assert 'lightning' not in sys.modules and 'lightning.pytorch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_embeddings_are_normalised_only_when_asked(students):
    with torch.no_grad():
        raw = students["neighbour"].encode_video(_clips(1, 2))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(1, 2))
    torch.testing.assert_close(F.normalize(raw, dim=-1).norm(dim=-1), torch.ones(1, 2))
