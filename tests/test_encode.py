"""`vlkd encode`: dense features of whole videos, streamed in chunks, written with their timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlkd.cli import main
from vlkd.commands.encode import DenseEncoder
from vlkd.data.video import read_frames
from vlkd.data.writer import write_video
from vlkd.models import ResidualViT
from vlkd.teacher import create_teacher

FPS = 8
FRAMES = 21


def _frames(count: int, seed: int) -> np.ndarray:
    """(T, 48, 80, 3) uint8: a square sliding over a still textured background (not the model's size)."""
    rng = np.random.default_rng(seed)
    background = (rng.random((48, 80, 3)) * 120).astype(np.uint8)
    video = np.repeat(background[None], count, axis=0)
    for t in range(count):
        left = (3 * t) % 60
        video[t, 10:30, left : left + 20] = (230, 40, 40)
    return video


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("encode_videos")
    write_video(folder / "a.mp4", _frames(FRAMES, 0), fps=FPS)
    write_video(folder / "sub" / "b.mp4", _frames(13, 1), fps=FPS)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 200)  # an MP4 header, no video
    return folder


@pytest.fixture(scope="module")
def teacher():
    return create_teacher("vlkd-synth-vit", pretrained="synthactions")


@pytest.fixture(scope="module")
def checkpoint(teacher, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ResidualViT(teacher, group_size=4, drop_ratio=0.75)
    return model.save_tokenizer(tmp_path_factory.mktemp("tokenizer") / "residual_tokenizer.safetensors")


def _load(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_streaming_across_chunks_equals_one_shot_encoding(teacher, checkpoint, videos):
    from vlkd.models import residual_vit_from_checkpoint

    model = residual_vit_from_checkpoint(teacher, checkpoint).eval()
    frames = read_frames(videos / "a.mp4", list(range(FRAMES)))  # uint8 (T, C, H, W)
    streamed = DenseEncoder(model, chunk=5).encode_frames(frames.split(5))  # chunks cut groups of 4
    uneven = DenseEncoder(model).encode_frames(frames.split([3, 1, 9, 8]))
    with torch.no_grad():
        whole = model(frames.float().div(255).unsqueeze(0))[0]
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(uneven, whole, rtol=1e-5, atol=1e-6)
    # The full-ViT mode is the teacher, frame by frame.
    full = DenseEncoder(model, full=True, chunk=4).encode_frames(frames.split(4))
    torch.testing.assert_close(full, teacher.encode_frames(frames.float().div(255).unsqueeze(0))[0])


def test_cli_writes_features_and_timestamps_and_chunks_do_not_matter(checkpoint, videos, tmp_path):
    video = videos / "a.mp4"
    args = [str(video), "--fps", "4", "--checkpoint", str(checkpoint)]
    assert main(["encode", *args, "--out", str(tmp_path / "small.npz"), "--chunk", "3"]) == 0
    assert main(["encode", *args, "--out", str(tmp_path / "one.npz"), "--chunk", "1000"]) == 0
    small, one = _load(tmp_path / "small.npz"), _load(tmp_path / "one.npz")
    expected_indices = list(range(0, FRAMES, 2))  # 8 fps resampled to 4 fps
    assert small["frame_indices"].tolist() == expected_indices
    np.testing.assert_allclose(small["timestamps"], np.array(expected_indices) / FPS)
    assert small["features"].shape == (len(expected_indices), 128) and small["features"].dtype == np.float32
    np.testing.assert_allclose(small["features"], one["features"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(small["features"], axis=1), 1.0, rtol=1e-5)
    meta = json.loads(str(small["meta"]))
    assert meta["mode"] == "residual_vit" and meta["group_size"] == 4 and meta["drop_ratio"] == 0.75
    assert meta["kept_patches"] == 4 and meta["frames"] == len(expected_indices)


def test_full_mode_and_the_residual_mode_differ_only_on_p_frames(checkpoint, videos, tmp_path):
    video = str(videos / "a.mp4")
    assert main(["encode", video, "--out", str(tmp_path / "full.npz"), "--full", "--half"]) == 0
    assert main(["encode", video, "--out", str(tmp_path), "--checkpoint", str(checkpoint)]) == 0
    full, residual = _load(tmp_path / "full.npz"), _load(tmp_path / "a.npz")
    assert full["features"].dtype == np.float16 and len(full["features"]) == FRAMES
    cosine = (full["features"].astype(np.float32) * residual["features"]).sum(axis=1)
    is_i = np.arange(FRAMES) % 4 == 0
    np.testing.assert_allclose(cosine[is_i], 1.0, atol=2e-3)  # float16 storage
    assert (cosine[~is_i] < 0.9999).all()


def test_a_list_skips_and_reports_unreadable_videos(checkpoint, videos, tmp_path, capsys):
    listing = videos / "list.txt"
    listing.write_text("a.mp4\nbroken.mp4\nmissing.mp4 3\nsub/b.mp4 1\n")
    out = tmp_path / "features"
    assert main(["encode", str(listing), "--out", str(out), "--checkpoint", str(checkpoint)]) == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz")) == ["a.npz", "sub/b.npz"]
    assert len(_load(out / "sub" / "b.npz")["features"]) == 13
    failed = (out / "failed.txt").read_text().splitlines()
    assert [Path(line.split("\t")[0]).name for line in failed] == ["broken.mp4", "missing.mp4"]
    assert "2 of 4 video(s) could not be read" in capsys.readouterr().err
    # A folder input encodes every video file under it; existing outputs are kept.
    assert main(["encode", str(videos), "--out", str(out), "--full"]) == 1


def test_bad_inputs_fail_with_one_line(checkpoint, videos, tmp_path, capsys):
    assert main(["encode", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "x.npz"), "--full"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["encode", str(videos / "broken.mp4"), "--out", str(tmp_path / "x.npz"), "--full"]) == 2
    assert "cannot read video" in capsys.readouterr().err
    assert main(["encode", str(videos / "a.mp4"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["encode", str(videos / "a.mp4"), "--out", str(tmp_path / "x.npz"), "--full", "--fps", "0"]) == 2
    assert main(["encode", str(videos / "a.mp4"), "--out", str(tmp_path / "x.npz"),
                 "--teacher", "vlkd-tiny-vit", "--checkpoint", str(checkpoint)]) == 2
    assert "does not fit teacher" in capsys.readouterr().err
