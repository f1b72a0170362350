"""SynthActions: class vocabulary, rendering semantics, captions, and the generated dataset files."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from vlkd.data.splits import load_base2novel, load_full_class_names, load_zero_shot
from vlkd.data.synthetic import (
    STYLES,
    Concepts,
    build_world,
    generate_actions,
    parse_class_name,
    read_manifest,
    render_clip,
    render_still,
    vocabulary,
)
from vlkd.data.synthetic.actions import clip_rng
from vlkd.data.synthetic.world import MOTIONS, NOVEL_ONLY_WORDS, ActionClass, World
from vlkd.errors import ConfigError

TINY = dict(size=32, frames=8, clips_per_class=2, train_clips_per_class=3, shots=2, progress=False)
WORLDS = {style: build_world(style) for style in STYLES}


def words(name: str) -> set[str]:
    return set(name.split())


# --------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize("style", sorted(STYLES))
def test_world_vocabulary_properties(style):
    world = WORLDS[style]
    names = world.names
    assert len(names) >= 40
    assert len(set(names)) == len(names)
    assert all(words(name) <= vocabulary() for name in names)
    base_words = set().union(*(words(action.name) for action in world.base_classes))
    novel_words = set().union(*(words(action.name) for action in world.novel_classes))
    # Novel names are compositions of base words, except a few words base names never use
    # (unseen objects and scenes, as in Kinetics' novel classes) ...
    assert NOVEL_ONLY_WORDS <= novel_words and not NOVEL_ONLY_WORDS & base_words
    for action in world.novel_classes:
        assert words(action.name) <= base_words | NOVEL_ONLY_WORDS, action.name
    # Static classes of a half differ in colour or ground, not in shape alone.
    for half in (world.base_classes, world.novel_classes):
        pairs = [(a.concepts.colour, a.concepts.context) for a in half if a.group == "static"]
        assert len(set(pairs)) == len(pairs)
    # ... and every motion phrase and shape is named in base, so direction can carry over.
    assert {action.concepts.motion for action in world.base_classes if action.concepts.motion} == set(MOTIONS)
    # Novel classes are new compositions: none of them is a base name.
    assert not {a.name for a in world.novel_classes} & {a.name for a in world.base_classes}

    temporal = [action for action in world.classes if action.group == "temporal"]
    assert 3 * len(temporal) >= len(names)
    for action in temporal:
        twin = world[action.twin]
        assert twin.twin == action.name and twin.half == action.half and twin.group == "temporal"
        # Twins differ only in the direction word(s): same colour, shape and motion axis.
        assert (twin.concepts.colour, twin.concepts.shape, twin.concepts.axis) == (
            action.concepts.colour, action.concepts.shape, action.concepts.axis)
        assert twin.concepts.reversed != action.concepts.reversed
    assert all(action.twin is None for action in world.classes if action.group == "static")
    # Both halves hold single-frame and temporal classes.
    counts = world.counts()
    assert min(counts["base_static"], counts["base_temporal"], counts["novel_static"], counts["novel_temporal"]) > 0
    assert world.group_of(temporal[0].name) == "temporal"


def test_a_catalogue_that_names_a_novel_only_word_in_base_is_refused():
    world = WORLDS["flat"]
    leak = ActionClass("orange ball on grass", Concepts("orange", "ball", context="grass"), "base", None)
    with pytest.raises(ConfigError, match="novel names only"):
        World("flat", (*world.classes, leak))


def test_styles_share_part_of_their_classes():
    flat, textured = (set(WORLDS[style].names) for style in ("flat", "textured"))
    shared = flat & textured
    assert 0 < len(textured - flat) and len(shared) >= len(textured) / 2


def test_concepts_parse_and_validate():
    concepts = parse_class_name("red ball moving left")
    assert concepts == Concepts("red", "ball", motion="moving left")
    assert concepts.twin().name == "red ball moving right" and concepts.twin().twin() == concepts
    assert parse_class_name("blue star in water").context == "water"
    with pytest.raises(ConfigError):
        Concepts("red", "ball", motion="rotating clockwise")  # a rotating ball looks still
    with pytest.raises(ConfigError):
        parse_class_name("red ball dancing")


# --------------------------------------------------------------------------- rendering


def test_render_clip_is_deterministic_per_seed():
    first = render_clip(np.random.default_rng(7), "green star moving left", "textured", size=32, frames=8)
    again = render_clip(np.random.default_rng(7), "green star moving left", "textured", size=32, frames=8)
    other = render_clip(np.random.default_rng(8), "green star moving left", "textured", size=32, frames=8)
    assert first.shape == (8, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 5


def object_mask(video: np.ndarray, colour: str) -> np.ndarray:
    """Pixels close to the flat palette's ``colour`` (backgrounds and distractors are kept away from it)."""
    target = np.asarray(STYLES["flat"].palette[colour]) * 255
    return np.abs(video.astype(float) - target).sum(-1) < 0.4 * 255


def centroids(mask: np.ndarray) -> np.ndarray:
    """(T, 2) x, y centroid of each frame's mask."""
    return np.array([[xs.mean(), ys.mean()] for ys, xs in (np.nonzero(frame) for frame in mask)])


def spin_degrees(mask: np.ndarray, symmetry: int) -> float:
    """Total rotation of a shape with ``symmetry``-fold symmetry, tracking its farthest pixel (clockwise > 0)."""
    angles = []
    for ys, xs in (np.nonzero(frame) for frame in mask):
        far = ((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).argmax()
        angles.append(np.arctan2(ys[far] - ys.mean(), xs[far] - xs.mean()))  # image y points down
    step = 2 * np.pi / symmetry
    return float(np.degrees(((np.diff(angles) + step / 2) % step - step / 2).sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motions_go_the_way_their_names_say(seed):
    def clip(name):
        return render_clip(np.random.default_rng(seed), name, "flat", size=64, frames=16)

    left = centroids(object_mask(clip("red ball moving left"), "red"))
    assert left[-1, 0] < left[0, 0] - 10
    up = centroids(object_mask(clip("blue square moving up"), "blue"))
    assert up[-1, 1] < up[0, 1] - 10
    growing = object_mask(clip("yellow star growing"), "yellow").sum(axis=(1, 2))
    assert growing[-1] > 2 * growing[0]
    opening = object_mask(clip("purple ball opening"), "purple").sum(axis=(1, 2))
    assert opening[-1] < 0.95 * opening[0]
    appearing = object_mask(clip("orange square appearing"), "orange").sum(axis=(1, 2))
    assert appearing[0] < appearing[-1]
    assert spin_degrees(object_mask(clip("green triangle rotating clockwise"), "green"), 3) > 30
    assert spin_degrees(object_mask(clip("purple square rotating counterclockwise"), "purple"), 4) < -30


@pytest.mark.parametrize("style", sorted(STYLES))
def test_twins_share_their_scene_and_differ_in_time(style):
    for action in WORLDS[style].classes:
        if action.group != "temporal" or action.concepts.reversed:
            continue
        forward = render_clip(np.random.default_rng(3), action, style, size=32, frames=8).astype(int)
        backward = render_clip(np.random.default_rng(3), action.twin, style, size=32, frames=8).astype(int)
        # The same scene run the other way: frame by frame the clips differ.
        assert np.abs(forward - backward).mean() > 0.2, action.name
        still, caption = render_still(np.random.default_rng(4), action, style, size=32)
        twin_still, twin_caption = render_still(np.random.default_rng(4), action.twin, style, size=32)
        assert action.name in caption and action.twin in twin_caption
        # Stills of twins come from the same scene: the same colours in the same amounts, roughly.
        assert np.abs(still.astype(int).mean((0, 1)) - twin_still.astype(int).mean((0, 1))).max() < 20


@pytest.mark.parametrize(("name", "sign"), [("red ball moving right", 1), ("red ball moving left", -1)])
def test_both_directions_speed_up_so_twins_are_not_time_reversals(name, sign):
    # A reversed "moving left" clip would slow down towards the right; "moving right" speeds up.
    clip = render_clip(np.random.default_rng(0), name, "flat", size=64, frames=16)
    red = (clip[..., 0].astype(int) - clip[..., 1:].astype(int).max(-1)) > 60
    steps = sign * np.diff([np.nonzero(frame)[1].mean() for frame in red])
    assert steps.sum() > 5
    assert steps[-5:].mean() > 2 * max(steps[:5].mean(), 0.1)



@pytest.mark.parametrize(("name", "sign"), [("red ball growing", 1), ("red ball shrinking", -1)])
def test_every_axis_eases_in_so_scale_twins_are_not_time_reversals_either(name, sign):
    # Linear scale twins would be each other's time reversal: invisible to a reversal-blind student.
    clip = render_clip(np.random.default_rng(0), name, "flat", size=64, frames=16)
    area = ((clip[..., 0].astype(int) - clip[..., 1:].astype(int).max(-1)) > 60).sum((1, 2))
    steps = sign * np.diff(np.sqrt(area))  # the radius grows (or shrinks) at the motion's speed
    assert steps.sum() > 3
    assert steps[-5:].mean() > 2 * max(steps[:5].mean(), 0.05)

@pytest.mark.parametrize(("forward", "backward"), [("red ball growing", "red ball shrinking"),
                                                  ("red ball appearing", "red ball disappearing")])
def test_stills_of_twins_show_the_same_states(forward, backward):
    # A still at a uniformly random time of an eased motion would mostly show its start
    # (growing: small, appearing: faint), telling a still-image teacher the direction.
    def mean_red_mass(name):
        stills = [render_still(np.random.default_rng((7, i)), name, "flat", size=32)[0] for i in range(80)]
        red = np.stack(stills).astype(int)
        return np.clip(red[..., 0] - red[..., 1:].max(-1), 0, None).sum((1, 2)).mean()

    growing, shrinking = mean_red_mass(forward), mean_red_mass(backward)
    assert abs(growing - shrinking) < 0.12 * (growing + shrinking) / 2, (growing, shrinking)


# Words a caption may add to the vocabulary: articles, "a photo of", size and "seen on the left / up high / down low".
CAPTION_FILLERS = {"a", "an", "photo", "of", "seen", "the", "high", "low", "small", "big"}


def caption_words(caption: str) -> set[str]:
    return set(caption.replace(",", " ").split())


def test_render_still_captions_name_every_class():
    rng = np.random.default_rng(0)
    for style, world in WORLDS.items():
        for action in world.classes:
            image, caption = render_still(rng, action, style, size=32)
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            assert action.name in caption
            assert caption_words(caption) <= vocabulary() | CAPTION_FILLERS, caption
    # Random compositions cover the whole vocabulary, as web captions cover CLIP's concepts.
    captions = [render_still(rng, None, "flat", size=16)[1] for _ in range(400)]
    assert vocabulary() <= set().union(*map(caption_words, captions))


def test_render_still_is_deterministic_and_shows_a_frame_of_the_clip():
    image, caption = render_still(np.random.default_rng(5), "red ball on sand", "flat", size=32)
    again, caption_again = render_still(np.random.default_rng(5), "red ball on sand", "flat", size=32)
    assert np.array_equal(image, again) and caption == caption_again
    assert object_mask(image[None], "red").sum() > 10  # the named object is in the picture


# --------------------------------------------------------------------------- generated dataset


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return generate_actions(tmp_path_factory.mktemp("synth"), seed=0, style="flat", workers=2, **TINY)


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_generated_split_loads_with_expected_counts(generated, seed):
    world = generated.world
    split = load_base2novel(generated.name, seed, split_dir=generated.root)
    assert split.base_classes == [a.name for a in world.base_classes]
    assert split.novel_classes == [a.name for a in world.novel_classes]
    assert (len(split.train), len(split.base_val), len(split.novel_val)) == (24 * 2, 24 * 2, 24 * 2)
    assert all(sum(s.label == label for s in split.train) == 2 for label in range(24))
    pool = load_base2novel(generated.name, seed, split_dir=generated.root, train_list="full").train
    assert len(pool) == 24 * 3 and {s.path for s in split.train} <= {s.path for s in pool}
    assert not {s.path for s in split.train} & {s.path for s in split.base_val}
    assert generated.counts["few_shot_train"] == len(split.train)


def test_few_shot_lists_differ_between_seeds(generated):
    trains = [tuple(load_base2novel(generated.name, seed, split_dir=generated.root).train) for seed in (1, 2, 3)]
    assert len(set(trains)) == 3


def test_generated_zero_shot_and_full_labels(generated):
    names = generated.world.names
    assert load_full_class_names(generated.name, split_dir=generated.root) == names
    class_names, samples = load_zero_shot(generated.name, 1, split_dir=generated.root)
    assert class_names == names and len(samples) == 2 * len(names)
    # Zero-shot labels index the full list: each sample's folder names its class.
    assert all(sample.path.split("/")[1] == names[sample.label].replace(" ", "_") for sample in samples)


def test_generated_videos_decode_to_the_rendered_clips(generated):
    _, samples = load_zero_shot(generated.name, 1, split_dir=generated.root)
    for sample in samples[::2]:
        video = decode(generated.root / sample.path)
        assert video.shape == (8, 32, 32, 3)
        name = generated.world.names[sample.label]
        index = int(sample.path.rsplit("_", 1)[1].split(".")[0])
        rendered = render_clip(clip_rng(0, "flat", name, "val", index), name, "flat", size=32, frames=8)
        assert np.abs(video.astype(int) - rendered).mean() < 8, sample.path


def test_manifest_describes_the_world(generated):
    manifest = read_manifest(generated.root)
    assert manifest == json.loads(generated.manifest.read_text())
    assert manifest["settings"]["seed"] == 0 and manifest["settings"]["size"] == 32
    assert manifest["flip_safe"] is False
    classes = {entry["name"]: entry for entry in manifest["classes"]}
    assert list(classes) == generated.world.names
    assert classes["red ball moving left"]["twin"] == "red ball moving right"
    assert classes["red ball moving left"]["group"] == "temporal"
    assert classes["blue ball on sand"]["group"] == "static" and classes["blue ball on sand"]["twin"] is None
    assert manifest["counts"]["videos"] == 24 * 3 + 48 * 2


def test_generation_is_idempotent_and_repairs_missing_clips(generated):
    again = generate_actions(generated.root, seed=0, style="flat", workers=2, **TINY)
    assert again.rendered == 0
    victim = generated.root / "videos" / "red_ball_moving_left" / "val_001.mp4"
    victim.unlink()
    repaired = generate_actions(generated.root, seed=0, style="flat", workers=1, **TINY)
    assert repaired.rendered == 1 and victim.is_file()
    assert decode(victim).shape == (8, 32, 32, 3)


def test_same_settings_give_same_lists_and_other_seeds_differ(generated, tmp_path):
    copy = generate_actions(tmp_path / "copy", seed=0, style="flat", workers=1, **TINY)
    for key, path in generated.files.items():
        assert path.read_bytes() == copy.files[key].read_bytes(), key
    assert read_manifest(copy.root) == read_manifest(generated.root)
    other = generate_actions(tmp_path / "copy", seed=1, style="flat", workers=1, **TINY)
    assert other.rendered == other.counts["videos"]  # a different manifest renders everything
    assert read_manifest(other.root)["settings"]["seed"] == 1
    same_path = "videos/red_ball_on_sand/val_000.mp4"
    assert np.abs(decode(generated.root / same_path).astype(int) - decode(other.root / same_path)).mean() > 5


@pytest.mark.parametrize(
    "override",
    [dict(size=33), dict(size=8), dict(shots=4), dict(style="sketch"), dict(seed=-1), dict(frames=0),
     dict(name="my/data")],
)
def test_bad_settings_are_refused(tmp_path, override):
    settings = {**TINY, **override}
    style = settings.pop("style", "flat")
    with pytest.raises(ConfigError):
        generate_actions(tmp_path, style=style, **settings)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- unlabelled random clips


def test_random_clips_are_new_renders_of_the_vocabulary():
    import torch

    from vlkd.data.datasets import collate_clips
    from vlkd.data.synthetic.clips import RandomSynthClips, vocabulary_names

    names = vocabulary_names()
    assert len(set(names)) == len(names)
    for style, world in WORLDS.items():  # every class of either world is one of the compositions
        assert set(world.names) <= set(names), style
    clips = RandomSynthClips(3, frames=4, size=32)
    torch.manual_seed(0)
    first = collate_clips([clips[i] for i in range(3)])
    assert first["video"].shape == (3, 4, 3, 32, 32) and first["label"].tolist() == [-1, -1, -1]
    assert 0.0 <= first["video"].min() and first["video"].max() <= 1.0
    torch.manual_seed(0)
    assert torch.equal(clips[0]["video"], first["video"][0])  # a seeded run draws the same clips
    assert not torch.equal(clips[0]["video"], first["video"][0])  # a later draw renders a new one
    with pytest.raises(ConfigError, match="unknown SynthActions styles"):
        RandomSynthClips(3, styles=("cartoon",))


def test_data_module_trains_on_random_clips_and_evaluates_on_the_world(tmp_path):
    from vlkd.data import SynthActionsDataModule
    from vlkd.data.synthetic.clips import RandomSynthClips, vocabulary_names

    module = SynthActionsDataModule(root=str(tmp_path / "flat"), random_clips=5, num_frames=4, size=32, frames=4,
                                    clips_per_class=1, train_clips_per_class=2, shots=1, num_workers=0)
    module.prepare_data()
    module.setup("fit")
    assert isinstance(module.train_dataset, RandomSynthClips) and len(module.train_dataset) == 5
    assert module.train_classes == vocabulary_names()
    assert [s.name for s in module.eval_sets] == ["base", "novel"]  # evaluation still on the world's videos
