"""Datasets, the data module and a zero-shot run through the CLI on generated videos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vlkd.cli import main
from vlkd.data import Base2NovelSpec, VideoDataModule, VideoSample
from vlkd.data.datasets import TooManyUnreadableVideos, VideoClipDataset, collate_clips
from vlkd.data.sampling import FrameSampler
from vlkd.data.splits import Base2NovelSplit, write_base2novel
from vlkd.data.writer import write_video
from vlkd.errors import MissingFileError

BASE = ["red", "green", "blue"]
NOVEL = ["white", "black"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (240, 240, 240),
           "black": (10, 10, 10)}


def _clip(colour, seed: int, frames: int = 12, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = np.array(COLOURS[colour], np.uint8)
    video = np.clip(video.astype(int) + rng.integers(-10, 10, video.shape), 0, 255).astype(np.uint8)
    for t in range(frames):  # a moving grey bar so frames differ
        video[t, :, (3 * t) % size] = 128
    return video


@pytest.fixture(scope="module")
def colour_world(tmp_path_factory) -> Path:
    """A 5-class base-to-novel world in the real split layout, with one corrupt and one missing video."""
    root = tmp_path_factory.mktemp("colours")
    samples = {}
    for names, half in ((BASE, "base"), (NOVEL, "novel")):
        for label, name in enumerate(names):
            for k in range(3):
                rel = f"videos/{name}_{k}.mp4"
                write_video(root / rel, _clip(name, seed=label * 10 + k), fps=12)
                samples.setdefault(half, []).append(VideoSample(rel, label))
    (root / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    train = [s for s in samples["base"] if not s.path.endswith("_2.mp4")]
    train += [VideoSample("videos/corrupt.mp4", 0), VideoSample("videos/missing.mp4", 1)]
    base_val = [*samples["base"], VideoSample("videos/corrupt.mp4", 2)]
    split = Base2NovelSplit("colours", BASE, NOVEL, train, base_val, samples["novel"])
    write_base2novel(split, root / "splits_dir", seed=1)
    return root


def _datamodule(world: Path, **kwargs) -> VideoDataModule:
    spec = Base2NovelSpec(dataset="colours", seed=1, split_dir=str(world / "splits_dir"))
    defaults = dict(num_frames=4, image_size=32, batch_size=4, num_workers=0, test_views=2)
    return VideoDataModule(str(world), base2novel=spec, **{**defaults, **kwargs})


def test_datamodule_batches_have_documented_shapes(colour_world):
    dm = _datamodule(colour_world)
    dm.setup("fit")
    assert [s.name for s in dm.eval_sets] == ["base", "novel"]
    assert dm.eval_sets[1].class_names == NOVEL
    train = next(iter(dm.train_dataloader()))
    assert train["video"].shape[1:] == (4, 3, 32, 32)
    assert train["video"].dtype == torch.float32 and 0 <= train["video"].min() and train["video"].max() <= 1
    base_loader, novel_loader = dm.val_dataloader()
    batch = next(iter(novel_loader))
    assert batch["video"].shape[1:] == (2, 4, 3, 32, 32)
    assert batch["label"].tolist() == [0, 0, 0, 1]


def test_corrupt_and_missing_videos_are_skipped_and_reported(colour_world):
    dm = _datamodule(colour_world)
    dm.setup("fit")
    dataset = dm.train_dataset
    paths = [s.path for s in dataset.samples]
    for bad in ("videos/corrupt.mp4", "videos/missing.mp4"):
        item = dataset[paths.index(bad)]
        assert item["index"] != paths.index(bad)
        assert len(item["skipped"]) >= 1 and bad.split("/")[1] in item["skipped"][0]
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    assert sum(1 for s in batch["skipped"] if "corrupt.mp4" in s or "missing.mp4" in s) >= 2


def test_all_unreadable_gives_one_clear_error(tmp_path):
    dataset = VideoClipDataset(tmp_path, [VideoSample("nope.mp4", 0)], ["a"], FrameSampler(num_frames=2),
                               image_size=16, max_consecutive_failures=3)
    with pytest.raises(TooManyUnreadableVideos, match="check the data root"):
        dataset[0]


def test_training_augmentation_differs_between_draws_evaluation_does_not(colour_world):
    dm = _datamodule(colour_world)
    dm.setup("fit")
    torch.manual_seed(0)
    first, second = dm.train_dataset[0]["video"], dm.train_dataset[0]["video"]
    assert not torch.equal(first, second)
    evaluation = dm.eval_datasets[0]
    assert torch.equal(evaluation[1]["video"], evaluation[1]["video"])


@pytest.mark.parametrize("scale_jitter", [None, (32, 40)])
def test_a_drawn_view_is_stored_and_cut_again_exactly(colour_world, scale_jitter):
    """A training item is a drawn view; the view's frames and crop, replayed, give the same pixels."""
    import random

    from vlkd.data.datasets import ClipView

    dm = _datamodule(colour_world, scale_jitter=scale_jitter, flip=True)
    dm.setup("fit")
    dataset = dm.train_dataset
    for seed in range(6):
        video, view = dataset.draw_view(1, random.Random(seed))
        torch.testing.assert_close(dataset.replay_view(1, ClipView.from_tensors(view.to_tensors())), video,
                                   rtol=0, atol=0)
        assert torch.equal(dataset._load(1, random.Random(seed))["video"], video)  # training draws the same view
    _, evaluation_view = dataset.draw_view(1, None, evaluation=True)
    assert evaluation_view.crop.box[2:] == (32, 32) and not evaluation_view.crop.flip


def test_no_flip_keeps_left_right_order_flip_sometimes_mirrors():
    import random

    from vlkd.data.transforms import train_transform

    # Brightness grows from left to right; crops keep that order, only a flip reverses it.
    video = torch.linspace(0, 1, 32).expand(2, 3, 24, 32).clone()

    def left_to_right(out: torch.Tensor) -> bool:
        return bool(out[..., -1].mean() > out[..., 0].mean())

    assert all(left_to_right(train_transform(video, 16, random.Random(s), flip=False)) for s in range(30))
    assert not all(left_to_right(train_transform(video, 16, random.Random(s), flip=True)) for s in range(30))


def test_scale_jitter_crops_keep_most_of_the_short_side():
    """Short side to 16..18 px, then a 16 px crop: a 24 x 32 frame keeps 2/3 to 3/4 of its width."""
    import random

    from vlkd.data.transforms import scale_jitter_crop, train_transform

    video = torch.linspace(0, 1, 32).expand(2, 3, 24, 32).clone()  # value = horizontal position
    spans = []
    for seed in range(40):
        out = train_transform(video, 16, random.Random(seed), flip=False, scale_jitter=(16, 18))
        assert out.shape == (2, 3, 16, 16)
        assert torch.equal(out[0], out[1])  # one crop for every frame of the clip
        spans.append(float(out[..., -1].mean() - out[..., 0].mean()))
    # Each pixel holds about 1/31 of the ramp; 15 pixel steps across the crop at scale s cover 15 * 32 / (31 * s * 4/3).
    assert min(spans) > 15 * 24 / (31 * 18) - 0.03 and max(spans) < 15 * 24 / (31 * 16) + 0.03
    assert max(spans) - min(spans) > 0.05  # the scale does vary
    with pytest.raises(ValueError, match="crop size"):
        scale_jitter_crop(video, 16, random.Random(0), (12, 18))


def test_scale_jitter_below_the_crop_size_is_a_config_error(colour_world):
    from vlkd.errors import ConfigError

    with pytest.raises(ConfigError, match="scale_jitter .* at least image_size"):
        _datamodule(colour_world, image_size=32, scale_jitter=[24, 36])


def test_missing_root_is_a_clear_error(tmp_path):
    dm = VideoDataModule(str(tmp_path / "absent"), base2novel=Base2NovelSpec("k400"))
    with pytest.raises(MissingFileError, match="video root folder"):
        dm.setup("fit")
    from vlkd.errors import ConfigError

    with pytest.raises(ConfigError, match="data.root is missing"):
        VideoDataModule(base2novel=Base2NovelSpec("k400"))


def _write_config(world: Path, tmp_path: Path) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": True, "default_root_dir": str(tmp_path / "runs"),
                    "enable_progress_bar": False},
        "model": {"class_path": "ZeroShotCLIP",
                  "init_args": {"teacher": {"name": "vlkd-tiny-vit", "pretrained": None}, "templates": "photo"}},
        "data": {"class_path": "VideoDataModule",
                 "init_args": {"root": str(world),
                               "base2novel": {"dataset": "colours", "seed": 1, "split_dir": str(world / "splits_dir")},
                               "num_frames": 4, "image_size": 64, "batch_size": 4, "num_workers": 0}},
    }
    path = tmp_path / "zeroshot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_zero_shot_test_run_through_the_cli_writes_results(colour_world, tmp_path, capsys):
    config = _write_config(colour_world, tmp_path)
    assert main(["test", "--config", str(config)]) == 0
    results_files = list((tmp_path / "runs").rglob("results.json"))
    assert len(results_files) == 1
    results = json.loads(results_files[0].read_text())
    assert set(results) >= {"base", "novel", "hm"}
    assert 0 <= results["base"] <= 100 and 0 <= results["novel"] <= 100
    assert (results_files[0].parent / "config.yaml").is_file()  # the resolved config beside the logs
    out = capsys.readouterr().out
    assert "hm:" in out
    # The corrupt evaluation video is reported, and left out of the 9 scored base videos.
    skipped = (results_files[0].parent / "skipped_videos.txt").read_text()
    assert "corrupt.mp4" in skipped
    assert results["metrics"]["base_videos"] == 9
    assert results["metrics"]["novel_videos"] == 6


def test_synthactions_eval_sets_score_static_and_temporal_classes_apart(tmp_path):
    from vlkd.data import SynthActionsDataModule
    from vlkd.data.synthetic import build_world

    module = SynthActionsDataModule(root=str(tmp_path / "flat"), zero_shot_styles=["textured"], size=32, frames=4,
                                    clips_per_class=1, train_clips_per_class=2, shots=1, num_workers=0)
    module.prepare_data()
    module.setup("fit")
    assert [s.group for s in module.eval_sets] == ["base", "novel", "zero_shot"]
    for eval_set, style in zip(module.eval_sets, ["flat", "flat", "textured"]):
        world = build_world(style)
        groups = {name: world.group_of(name) for name in eval_set.class_names}
        assert set(eval_set.subsets) == {"static", "temporal"}
        for group, indices in eval_set.subsets.items():
            assert sorted(indices) == [i for i, name in enumerate(eval_set.class_names) if groups[name] == group]
    # A plain video folder has no groups.
    assert VideoDataModule.class_subsets(module, tmp_path, ["a"]) == {}


def test_zero_shot_splits_are_scored_apart_and_summarised(colour_world, tmp_path, capsys):
    """`split: [1, 2, 3]` makes three evaluation sets, and results.json reports the mean ± std of their top-1."""
    from vlkd.data.annotations import write_class_names, write_video_list
    from vlkd.data.splits import ZeroShotLayout

    layout = ZeroShotLayout.generic("colours")
    split_dir = tmp_path / "zero_shot_lists"
    names = BASE + NOVEL
    for split in (1, 2, 3):  # split k scores the clips of the first k + 2 colours: three different video sets
        samples = [VideoSample(f"videos/{name}_{k}.mp4", label)
                   for label, name in enumerate(names[: split + 2]) for k in range(3)]
        write_class_names(names, split_dir / "labels" / layout.labels.format(split=split))
        write_video_list(samples, split_dir / "zero_shot" / layout.samples.format(split=split))
    config = yaml.safe_load(_write_config(colour_world, tmp_path).read_text())
    data = config["data"]["init_args"]
    del data["base2novel"], data["root"]  # zero-shot sets name their own roots
    data["zero_shot"] = [{"dataset": "colours", "root": str(colour_world), "split": [1, 2, 3],
                          "split_dir": str(split_dir)}]
    path = tmp_path / "zero_shot_splits.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["test", "--config", str(path)]) == 0
    (results_file,) = (tmp_path / "runs").rglob("results.json")
    results = json.loads(results_file.read_text())
    per_split = [results["metrics"][f"colours_s{split}_top1"] for split in (1, 2, 3)]
    assert [results["metrics"][f"colours_s{split}_videos"] for split in (1, 2, 3)] == [9, 12, 15]
    assert len(set(per_split)) > 1  # otherwise the std below would be 0 whatever was computed
    assert results["colours"]["mean"] == pytest.approx(np.mean(per_split), abs=1e-4)
    assert results["colours"]["std"] == pytest.approx(np.std(per_split, ddof=1), abs=1e-4)
    assert "colours: " in capsys.readouterr().out


@pytest.mark.parametrize("split", [[], [1, 1]])
def test_zero_shot_split_list_must_name_distinct_splits(split):
    from vlkd.data.datamodule import ZeroShotSpec
    from vlkd.errors import ConfigError

    with pytest.raises(ConfigError, match="distinct split numbers"):
        ZeroShotSpec("ucf101", root="/videos", split=split)
