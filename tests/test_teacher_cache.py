"""``vlkd cache``: building, replaying, verifying, resuming and refusing teacher caches, on a generated video world."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_froster import REPO, tiny_overrides, write_world
from vlkd.cli import build_from_config, main
from vlkd.data.datasets import ClipView
from vlkd.teacher.cache import INDEX, MANIFEST, TeacherCache

CONFIG = REPO / "configs" / "froster_ucf_b2n.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Four colour classes, six videos each: twelve training videos of the two base classes."""
    return write_world(tmp_path_factory.mktemp("cache_world"), videos_per_class=6)


@pytest.fixture(scope="module")
def overrides(world, tmp_path_factory) -> list[str]:
    return tiny_overrides(CONFIG, world, tmp_path_factory.mktemp("cache_run"))


def _build(overrides: list[str], out: Path, *extra: str) -> int:
    return main(["cache", *overrides, "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def cache_dir(overrides, tmp_path_factory) -> Path:
    """Three training views per sample, float32 targets, shards of five samples (three shards)."""
    out = tmp_path_factory.mktemp("cache") / "views3"
    assert _build(overrides, out, "--views", "3", "--shard-size", "5", "--dtype", "float32") == 0
    return out


@pytest.fixture(scope="module")
def built(overrides):
    """The config's method and data module, as `vlkd fit` would build them."""
    cli = build_from_config(overrides)
    cli.datamodule.setup("fit")
    return cli.model, cli.datamodule


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_manifest_names_teacher_data_and_views(cache_dir, built):
    method, data = built
    manifest = json.loads((cache_dir / MANIFEST).read_text())
    assert manifest["teacher"] == method.teacher.identity.to_dict()
    assert manifest["data"]["num_samples"] == len(data.train_dataset) == 12
    assert manifest["data"]["sampling"] == {"mode": "window", "num_frames": 2, "stride": 16, "stride_fps": 30}
    assert manifest["views"] == 3 and manifest["dtype"] == "float32" and manifest["seed"] == 1
    assert manifest["method"] == {"class": "vlkd.methods.froster.FROSTER", "targets": ["frames"]}
    index = json.loads((cache_dir / INDEX).read_text())
    assert [entry["samples"] for entry in index["shards"]] == [[0, 5], [5, 10], [10, 12]]
    assert index["shapes"]["target.frames"] == [2, method.teacher.embed_dim]


def test_every_stored_target_belongs_to_the_pixels_training_replays(cache_dir, built):
    """Replay each stored view through the data set's own cropping: the teacher gives the stored embeddings."""
    method, data = built
    cache = TeacherCache(cache_dir)
    views_seen = set()
    for sample in range(len(data.train_dataset)):
        for view in range(cache.views):
            stored = ClipView.from_tensors(cache.view(sample, view))
            views_seen.add((sample, stored))
            pixels = data.train_dataset.replay_view(sample, stored)
            expected = method.teacher.encode_frames(pixels[None])[0]
            torch.testing.assert_close(cache.targets(sample, view)["frames"], expected, rtol=0, atol=1e-6)
    # Training views are augmentations: the three views of a sample are not all the same.
    per_sample = {}
    for sample, view in views_seen:
        per_sample.setdefault(sample, set()).add(view)
    assert all(len(views) > 1 for views in per_sample.values())


def test_one_view_is_the_evaluation_view(overrides, built, tmp_path):
    _, data = built
    assert _build(overrides, tmp_path / "eval", "--views", "1") == 0
    cache = TeacherCache(tmp_path / "eval")
    dataset = data.train_dataset
    for sample in (0, 7):
        stored = ClipView.from_tensors(cache.view(sample, 0))
        _, expected = dataset.draw_view(sample, rng=None, evaluation=True)
        assert stored == expected


def test_training_with_the_cache_never_runs_the_teacher(cache_dir, overrides):
    """The teacher's image tower is never called in a fit on a cached config, and is without one."""

    def image_tower_calls(*extra: str) -> int:
        cli = build_from_config([*overrides, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
                                 "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]", *extra])
        calls = []
        cli.model.teacher.adapter.model.visual.register_forward_hook(lambda *_: calls.append(1))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert cli.trainer.global_step > 0
        return len(calls)

    assert image_tower_calls() > 0
    assert image_tower_calls("--data.init_args.teacher_cache", str(cache_dir)) == 0


def test_each_epoch_replays_the_next_stored_view(cache_dir, overrides):
    """Epoch e trains on stored view e mod K of every sample: three epochs, three views, none repeated."""
    from lightning.pytorch.callbacks import Callback

    cache = TeacherCache(cache_dir)
    seen: dict[int, set[int]] = {}

    class CheckTargets(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            view = trainer.current_epoch % cache.views
            for index, target in zip(batch["index"].tolist(), batch["teacher"]["frames"]):
                torch.testing.assert_close(target, cache.targets(index, view)["frames"], rtol=0, atol=0)
                seen.setdefault(index, set()).add(view)

    cli = build_from_config([*overrides, "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "0",
                             "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
                             "--data.init_args.teacher_cache", str(cache_dir)])
    cli.trainer.callbacks.append(CheckTargets())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert seen == {index: {0, 1, 2} for index in range(12)}


def test_verify_finds_a_damaged_shard(cache_dir, tmp_path, capsys):
    assert main(["cache", "--verify", str(cache_dir)]) == 0
    assert "all 3 shard(s) match" in capsys.readouterr().out
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name, content in _files(cache_dir).items():
        (damaged / name).write_bytes(content)
    shard = damaged / "shard-00001.safetensors"
    content = bytearray(shard.read_bytes())
    content[-1] ^= 0xFF
    shard.write_bytes(bytes(content))
    assert main(["cache", "--verify", str(damaged)]) == 1
    assert "shard-00001.safetensors: sha256 differs" in capsys.readouterr().out


def test_a_killed_build_resumes_to_the_same_bytes(overrides, tmp_path):
    """SIGKILL a build after its first shards, run it again: only the rest is computed, and the folder is
    byte for byte the folder of an uninterrupted build."""
    settings = ["--views", "24", "--shard-size", "1", "--batch-size", "1", "--dtype", "float32"]
    whole = tmp_path / "whole"
    assert _build(overrides, whole, *settings) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "vlkd", "cache", *overrides, "--out", str(killed),
                                "--no-progress", *settings], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(killed.glob("shard-*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {path.name: path.stat().st_mtime_ns for path in killed.glob("shard-*.safetensors")}
    assert finished and not (killed / INDEX).exists(), "the build was not stopped half-way"
    assert len(finished) < 12

    assert _build(overrides, killed, *settings) == 0
    assert {name: (killed / name).stat().st_mtime_ns for name in finished} == finished  # kept, not recomputed
    assert _files(killed) == _files(whole)


def test_two_ddp_ranks_write_the_shards_of_one_process(overrides, cache_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "vlkd", "cache", *overrides, "--out", str(out), "--no-progress", "--views", "3",
         "--shard-size", "5", "--dtype", "float32", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _files(out) == _files(cache_dir)


def test_a_cache_of_other_data_teacher_or_method_is_refused(cache_dir, overrides, tmp_path, capsys):
    use = ["--data.init_args.teacher_cache", str(cache_dir), "--trainer.max_epochs", "1"]

    def error_of(*args: str) -> str:
        assert main(list(args)) == 2
        return capsys.readouterr().err

    assert "data.sampling.num_frames: 2 in the cache, 3 here" in error_of(
        "fit", *overrides, *use, "--data.init_args.num_frames", "3")
    assert "weights_sha256" in error_of("fit", *overrides, *use, "--seed_everything", "5")  # another random teacher
    finetune = tmp_path / "finetune.yaml"
    finetune.write_text("model:\n  class_path: FineTuneCLIP\n  init_args:\n"
                        "    clip: {name: vlkd-tiny-vit, pretrained: null, precision: fp32}\n")
    assert "FineTuneCLIP trains on []" in error_of("fit", *overrides, "--config", str(finetune), *use)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name, content in _files(cache_dir).items():
        if name != INDEX:
            (unfinished / name).write_bytes(content)
    assert "unfinished" in error_of("fit", *overrides, "--data.init_args.teacher_cache", str(unfinished))
    assert "another configuration" in error_of(
        "cache", *overrides, "--out", str(cache_dir), "--views", "2", "--no-progress")
