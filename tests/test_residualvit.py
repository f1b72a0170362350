"""ResidualViT: the backbone (exactness, token counts, selection, streaming), its distillation method and configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vlkd.cli import main
from vlkd.errors import ConfigError
from vlkd.methods import ResidualViTDistillation, trainable_parameters
from vlkd.models import ResidualViT, StreamState, create_student, list_students, residual_vit_from_checkpoint
from vlkd.models.residual_vit import num_kept_patches, patch_motion, select_patches
from vlkd.teacher import TeacherSpec

REPO = Path(__file__).resolve().parent.parent
TINY = TeacherSpec(name="vlkd-tiny-vit", pretrained=None)
CLASSES = ["running", "jumping", "swimming"]


def _clips(batch: int, frames: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    return torch.rand(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _moving_square(frames: int, size: int = 64) -> torch.Tensor:
    """(1, T, 3, S, S): a bright square moving right over a fixed noisy background (consecutive frames alike)."""
    background = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1)) * 0.3
    video = background.repeat(frames, 1, 1, 1)
    for t in range(frames):
        left = (3 * t) % (size - 12)
        video[t, :, 20:32, left : left + 12] = 1.0
    return video.unsqueeze(0)


# --------------------------------------------------------------------------- backbone


def test_registered_and_exact_with_no_reduction_and_no_token(tiny_teacher):
    assert "residual_vit" in list_students()
    model = create_student("residual_vit", teacher=tiny_teacher, drop_ratio=0.0, residual_token=False)
    video = _clips(2, 7, size=80)  # another size: resized and cropped exactly as the teacher does
    with torch.no_grad():
        features = model(video)
    assert features.shape == (2, 7, tiny_teacher.embed_dim)
    # Frames 1-3 and 5-6 went through the reduced path (all patches kept), 0 and 4 through the full ViT.
    torch.testing.assert_close(features, tiny_teacher.encode_frames(video), rtol=1e-5, atol=1e-6)


def test_i_frames_are_the_teacher_and_p_frames_are_not(tiny_teacher):
    torch.manual_seed(0)
    model = ResidualViT(tiny_teacher, group_size=3, drop_ratio=0.85)
    video = _moving_square(7)
    with torch.no_grad():
        features, teacher = model(video), tiny_teacher.encode_frames(video)
    is_i = model.i_frame_mask(7)
    assert is_i.tolist() == [True, False, False, True, False, False, True]
    torch.testing.assert_close(features[:, is_i], teacher[:, is_i])
    assert ((features[:, ~is_i] - teacher[:, ~is_i]).norm(dim=-1) > 1e-3).all()
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(1, 7))


@pytest.mark.parametrize("residual_token", [True, False])
def test_p_frames_see_the_kept_patches_the_class_token_and_the_residual_token(tiny_teacher, residual_token):
    model = ResidualViT(tiny_teacher, group_size=4, drop_ratio=0.85, residual_token=residual_token)
    assert model.num_patches == 16 and model.num_kept == 2  # round(0.15 * 16)
    lengths = []
    hook = model.visual.transformer.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model(_moving_square(6))
    finally:
        hook.remove()
    # One full pass (frames 0 and 4: 16 patches + class token), one reduced pass (4 P-frames).
    assert lengths == [17, 2 + 1 + int(residual_token)]


def test_kept_patch_counts_round_as_published():
    assert num_kept_patches(196, 0.85) == 29 and num_kept_patches(196, 0.5) == 98 and num_kept_patches(196, 0.75) == 49
    assert num_kept_patches(16, 0.0) == 16 and num_kept_patches(16, 0.99) == 0
    assert num_kept_patches(10, 0.75) == 3  # 2.5 rounds up


def test_selection_modes():
    grid = (4, 4)
    generator = torch.Generator().manual_seed(0)
    random = select_patches("random", 50, 3, grid, generator=generator)
    assert random.shape == (50, 3) and (random[:, 1:] > random[:, :-1]).all()  # sorted, distinct
    assert len({tuple(row) for row in random.tolist()}) > 10  # frames draw their own patches
    assert select_patches("uniform", 2, 4, grid).tolist() == [[2, 6, 10, 14]] * 2
    assert select_patches("centre", 1, 4, grid).tolist() == [[5, 6, 9, 10]]
    with pytest.raises(ConfigError, match="token selection"):
        select_patches("biggest", 1, 4, grid)


def test_motion_selection_keeps_the_patches_that_changed():
    previous = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    frames = previous.clone()
    frames[0, :, 0:16, 48:64] += 0.5  # patch 3 changes a lot
    frames[0, :, 48:52, 0:16] += 0.2  # patch 12 a little
    frames[1, :, 16:32, 16:32] -= 0.3  # frame 1: patch 5 only
    motion = patch_motion(frames, previous, 16)
    assert motion.shape == (2, 16)
    chosen = select_patches("motion", 2, 2, (4, 4), motion=motion)
    assert chosen[0].tolist() == [3, 12]
    # Frame 1: patch 5 moved; the tie among the still patches goes to those nearest the centre.
    assert 5 in chosen[1].tolist() and set(chosen[1].tolist()) <= {5, 6, 9, 10}


def test_the_model_keeps_the_patches_the_moving_square_passed_through(tiny_teacher):
    model = ResidualViT(tiny_teacher, group_size=4, drop_ratio=0.85, selection="motion")
    video = _moving_square(4)[0]  # already at the model's size
    chosen = model.select_tokens(video[1:], previous=video[:-1])
    assert chosen.shape == (3, 2)
    # The square spans pixel rows 20-31, i.e. patch rows 1 and 2: every kept patch lies there.
    assert set((chosen // 4).flatten().tolist()) <= {1, 2}
    with pytest.raises(ValueError, match="previous frame"):
        model.select_tokens(video[1:])


def test_streaming_in_chunks_equals_one_shot_encoding(tiny_teacher):
    torch.manual_seed(0)
    model = ResidualViT(tiny_teacher, group_size=4, drop_ratio=0.75, selection="motion")
    video = torch.cat([_moving_square(11), _moving_square(11).flip(-1)])  # (2, 11, ...)
    with torch.no_grad():
        one_shot = model(video)
        parts, state = [], None
        for start, stop in ((0, 3), (3, 8), (8, 9), (9, 11)):  # boundaries inside and between groups
            features, state = model.encode_video(video[:, start:stop], state=state, return_state=True)
            parts.append(features)
    assert state.position == 11
    torch.testing.assert_close(torch.cat(parts, dim=1), one_shot, rtol=1e-5, atol=1e-6)


def test_bad_arguments_fail_clearly(tiny_teacher):
    with pytest.raises(ConfigError, match="drop_ratio"):
        ResidualViT(tiny_teacher, drop_ratio=1.0)
    with pytest.raises(ConfigError, match="group_size"):
        ResidualViT(tiny_teacher, group_size=0)
    with pytest.raises(ConfigError, match="selection"):
        ResidualViT(tiny_teacher, selection="best")
    with pytest.raises(ValueError, match="state of the previous chunk"):
        ResidualViT(tiny_teacher).encode_video(_clips(1, 2), state=StreamState(position=2))


def test_tokenizer_checkpoint_round_trip_and_teacher_mismatch(tiny_teacher, tmp_path):
    torch.manual_seed(0)
    model = ResidualViT(tiny_teacher, group_size=3, drop_ratio=0.5, tokenizer="mlp")
    path = model.save_tokenizer(tmp_path / "tok.safetensors")
    loaded = residual_vit_from_checkpoint(tiny_teacher, path)
    assert (loaded.group_size, loaded.drop_ratio, loaded.tokenizer_kind) == (3, 0.5, "mlp")
    video = _moving_square(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video))
    assert residual_vit_from_checkpoint(tiny_teacher, path, group_size=2).group_size == 2
    # A Lightning checkpoint of the training method works too, with its settings.
    method = ResidualViTDistillation(teacher=TINY, group_size=3, drop_ratio=0.5, tokenizer="mlp")
    method.student.tokenizer.load_state_dict(model.tokenizer.state_dict())
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": method.state_dict(), "hyper_parameters": dict(method.hparams)}, ckpt)
    from_ckpt = residual_vit_from_checkpoint(tiny_teacher, ckpt)
    assert (from_ckpt.group_size, from_ckpt.drop_ratio, from_ckpt.tokenizer_kind) == (3, 0.5, "mlp")
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(video), model(video))
    other = TeacherSpec(name="vlkd-synth-vit", pretrained=None).build()
    with pytest.raises(ConfigError, match="does not fit teacher"):
        residual_vit_from_checkpoint(other, path)


# --------------------------------------------------------------------------- distillation method


@pytest.fixture(scope="module")
def method() -> ResidualViTDistillation:
    torch.manual_seed(0)
    return ResidualViTDistillation(teacher=TINY, group_size=4, drop_ratio=0.85)


def test_only_the_tokenizer_trains(method):
    tokenizer = {id(p) for p in method.student.tokenizer.parameters()}
    assert {id(p) for p in trainable_parameters(method)} == tokenizer
    optimizer = torch.optim.AdamW(trainable_parameters(method), lr=1e-3)
    loss, _ = method.training_loss(_moving_square(8), CLASSES)
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.student.tokenizer.parameters())
    assert not {id(p) for p in optimizer.state} - tokenizer
    # Checkpoints hold the tokenizer, never the teacher (shared by the backbone).
    assert set(method.state_dict()) == {"student.tokenizer.net.weight", "student.tokenizer.net.bias"}
    optimizer.zero_grad()


def test_distillation_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = ResidualViTDistillation(teacher=TINY, group_size=4, drop_ratio=0.85, train_selection="centre", lr=1e-2)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    video = _moving_square(8)
    losses = []
    for _ in range(6):
        loss, _ = model.training_loss(video, CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_feature_losses_are_zero_when_the_student_is_the_teacher(loss):
    model = ResidualViTDistillation(teacher=TINY, drop_ratio=0.0, loss=loss)
    target = torch.nn.functional.normalize(torch.randn(5, model.teacher.embed_dim), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, model.teacher.embed_dim), dim=-1)
    assert model.distillation_loss(target, target, text).abs() < 1e-6
    assert model.distillation_loss(target.roll(1, 0), target, text) > 0.1


def test_training_without_p_frames_or_token_fails_clearly():
    one_group = ResidualViTDistillation(teacher=TINY, group_size=4)
    with pytest.raises(ConfigError, match="no P-frame"):
        one_group.training_loss(_clips(1, 1), CLASSES)
    no_token = ResidualViTDistillation(teacher=TINY, residual_token=False)
    with pytest.raises(ConfigError, match="nothing to train"):
        no_token.training_loss(_clips(1, 4), CLASSES)
    with pytest.raises(ConfigError, match="loss"):
        ResidualViTDistillation(teacher=TINY, loss="kl")


def test_eval_logits_at_no_reduction_are_the_teachers():
    model = ResidualViTDistillation(teacher=TINY, drop_ratio=0.0, residual_token=False)
    video = _clips(2, 5)
    teacher = model.teacher
    text = teacher.encode_text(CLASSES, "video")
    expected = teacher.logit_scale * (teacher.encode_frames(video) @ text.T).mean(dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.classify(video, CLASSES), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- configs through the CLI

CONFIGS = sorted((REPO / "configs").glob("residualvit_*.yaml"))
# A SynthActions world small enough to render in a few seconds.
TINY_SYNTH = {"size": 32, "frames": 4, "clips_per_class": 1, "train_clips_per_class": 2, "shots": 1}


def test_both_configs_are_shipped():
    assert {p.stem for p in CONFIGS} == {"residualvit_synth", "residualvit_k400_b2n"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from tests.test_froster import write_world

    return write_world(tmp_path_factory.mktemp("residualvit_world"))


def _overrides(config: Path, world: Path, out: Path) -> list[str]:
    data = {"root": str(world), "num_frames": 4, "image_size": 64, "batch_size": 2, "num_workers": 0}
    if config.stem == "residualvit_synth":
        data.update(TINY_SYNTH, root=str(out / "synth" / "flat"))
    else:
        data.update(test_views=1, base2novel={"dataset": "k400", "seed": 1, "split_dir": str(world / "splits")})
    trainer = {"accelerator": "cpu", "devices": 1, "precision": "32", "default_root_dir": str(out / "runs"),
               "enable_progress_bar": False, "enable_model_summary": False}
    model = {"teacher": {"name": "vlkd-tiny-vit", "pretrained": None, "precision": "fp32"}}
    override = out / "override.yaml"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(yaml.safe_dump({"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}))
    return ["--config", str(config), "--config", str(override)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_one_fast_dev_run_step_and_exports_the_tokenizer(config, world, tmp_path, capsys):
    assert main(["fit", *_overrides(config, world, tmp_path), "--trainer.fast_dev_run", "1"]) == 0
    (exported,) = (tmp_path / "runs").rglob("residual_tokenizer.safetensors")
    out = capsys.readouterr().out
    assert "base:" in out and "hm:" in out  # the final zero-shot evaluation ran
    teacher = TINY.build()
    assert residual_vit_from_checkpoint(teacher, exported).group_size == 4
