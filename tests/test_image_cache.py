"""``vlkd cache`` for image data (DHO): stored crops and teacher embeddings, replayed by the labelled and
unlabelled loaders, one cache for every labelled subset of a dataset, refused for other data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.test_dho import CONFIG, WORLD
from vlkd.cli import build_from_config, main
from vlkd.data.datasets import EpochSampler
from vlkd.data.images import ImageView, read_image
from vlkd.data.transforms import apply_crop
from vlkd.errors import ConfigError
from vlkd.teacher.cache import MANIFEST, TeacherCache


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlkd.data.synthetic.images import generate_images

    return generate_images(tmp_path_factory.mktemp("image_cache_world"), **WORLD)


def _overrides(world, out: Path, labelled: str = "shot_2") -> list[str]:
    return ["--config", CONFIG, "--data.init_args.root", str(world.root), "--data.init_args.labelled", labelled,
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
            "--data.init_args.render", json.dumps(WORLD), "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def cache_dir(world, tmp_path_factory) -> Path:
    """Three training crops per image of the training split, float32 embeddings."""
    out = tmp_path_factory.mktemp("image_cache") / "views3"
    args = ["cache", *_overrides(world, out.parent), "--out", str(out), "--no-progress", "--views", "3",
            "--dtype", "float32", "--shard-size", "200"]
    assert main(args) == 0
    return out


def test_the_cache_covers_the_training_split_with_the_image_embeddings(cache_dir, world):
    manifest = json.loads((cache_dir / MANIFEST).read_text())
    assert manifest["method"] == {"class": "vlkd.methods.dho.DHO", "targets": ["image_embedding"]}
    assert manifest["data"]["num_samples"] == 42 * WORLD["pool_per_class"]  # the whole pool, labelled or not
    assert manifest["data"]["crop_scale"] == [0.5, 1.0] and manifest["data"]["image_size"] == 64
    cache = TeacherCache(cache_dir)
    assert set(cache.view(0, 0)) == {"crop"}


def test_every_stored_embedding_belongs_to_the_crop_training_replays(cache_dir, world, tmp_path):
    cli = build_from_config(_overrides(world, tmp_path))
    data, method = cli.datamodule, cli.model
    data.setup("fit")
    cache = TeacherCache(cache_dir)
    crops = set()
    for row in (0, 5, 300, len(data.train_dataset) - 1):
        for view in range(cache.views):
            crop = ImageView.from_tensors(cache.view(row, view)).crop
            crops.add((row, crop))
            pixels = apply_crop(read_image(data.train_dataset.path_of(row)).float() / 255, crop)
            expected = method.teacher.encode_images(pixels[None])[0]
            torch.testing.assert_close(cache.targets(row, view)["image_embedding"], expected, rtol=0, atol=1e-5)
    assert len(crops) == 4 * 3  # the views are augmentations, not one crop three times


def test_training_replays_the_cache_and_never_runs_the_teacher(cache_dir, world, tmp_path):
    """A cached fit: each labelled and unlabelled item carries the stored embedding of the stored crop it shows,
    the labelled loader takes the next view on each cycle, and the teacher's image tower is never called."""
    from lightning.pytorch.callbacks import Callback

    cache = TeacherCache(cache_dir)
    seen_views: dict[str, set[int]] = {"labelled": set(), "unlabelled": set()}

    class CheckTargets(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for part in ("labelled", "unlabelled"):
                dataset = getattr(trainer.datamodule, f"{part}_dataset")
                for index, target in zip(batch[part]["index"].tolist(), batch[part]["teacher"]["image_embedding"]):
                    row = dataset.cache_rows[index]
                    matches = [v for v in range(cache.views)
                               if torch.equal(target, cache.targets(row, v)["image_embedding"])]
                    assert matches, f"{part} image {index}: its target is none of its stored views"
                    seen_views[part].update(matches)

    def fit(*extra: str) -> int:
        cli = build_from_config([*_overrides(world, tmp_path), "--trainer.max_epochs", "1",
                                 "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
                                 "--trainer.callbacks", "[]", *extra])
        calls = []
        cli.model.teacher.adapter.model.visual.register_forward_hook(lambda *_: calls.append(1))
        if extra:
            cli.trainer.callbacks.append(CheckTargets())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert cli.trainer.global_step > 0
        return len(calls)

    assert fit() > 0
    assert fit("--data.init_args.teacher_cache", str(cache_dir)) == 0
    # 84 labelled images in batches of 8 against 588 unlabelled: the labelled loader cycles, one view per cycle.
    assert seen_views["unlabelled"] == {0} and seen_views["labelled"] == {0, 1, 2}


def test_one_cache_serves_every_labelled_subset(cache_dir, world, tmp_path):
    cli = build_from_config([*_overrides(world, tmp_path, labelled="shot_1"), "--data.init_args.teacher_cache",
                             str(cache_dir)])
    cli.datamodule.setup("fit")
    assert cli.datamodule.teacher_cache_reader is not None and len(cli.datamodule.labelled_dataset) == 42


def test_a_cache_of_other_crops_is_refused(cache_dir, world, tmp_path):
    cli = build_from_config([*_overrides(world, tmp_path), "--data.init_args.image_size", "48",
                             "--data.init_args.teacher_cache", str(cache_dir)])
    with pytest.raises(ConfigError, match=r"data\.image_size: 64 in the cache, 48 here"):
        cli.datamodule.setup("fit")


def test_the_ce_baseline_has_nothing_to_cache(world, tmp_path, capsys):
    args = ["cache", *_overrides(world, tmp_path), "--model.init_args.variant", "ce", "--out", str(tmp_path / "c")]
    assert main(args) != 0
    assert "DHO has no teacher outputs to cache" in capsys.readouterr().err


def test_a_cycling_loader_numbers_its_passes():
    sampler = EpochSampler(4, passes_per_epoch=3)
    sampler.set_epoch(2)
    numbers = [{number for _, number in sampler} for _ in range(3)]
    assert numbers == [{6}, {7}, {8}]
    sampler.set_epoch(3)
    assert {number for _, number in sampler} == {9}
    cycling = EpochSampler(50, passes_per_epoch=2)
    first, second = [index for index, _ in cycling], [index for index, _ in cycling]
    assert sorted(first) == sorted(second) == list(range(50)) and first != second  # each pass its own order
