"""SynthTasks: the CoOp layout of every task, class names and templates the teacher has read, the two orders,
byte-identical rerendering, the up-to-date check, settings validation and the ``vlkd synth tasks`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlkd.cli import main as vlkd_main
from vlkd.data.images import read_split_zhou
from vlkd.data.synthetic.render import render_still
from vlkd.data.synthetic.tasks import (
    LOW_CONTRAST,
    MANIFEST_NAME,
    PLACES,
    TASK_ORDERS,
    TASK_STYLES,
    TASKS,
    SynthTask,
    generate_tasks,
    get_task,
    read_tasks,
    render_task_image,
)
from vlkd.data.synthetic.world import CONTEXTS, STYLES
from vlkd.errors import ConfigError, MissingFileError
from vlkd.teacher.pretrain import CAPTION_TEMPLATES, caption_words

TINY = dict(size=32, train_per_class=2, val_per_class=1, test_per_class=1)
PER_CLASS = {"train": 2, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_tasks(tmp_path_factory.mktemp("synth_tasks"), **TINY)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- layout


def test_every_task_reads_back_in_coop_layout(world):
    manifest = json.loads(world.manifest.read_text())
    assert [task["name"] for task in manifest["tasks"]] == world.tasks == [task.name for task in TASKS]
    assert len(world.tasks) >= 5
    for task in TASKS:
        path = world.split_file(task.name)
        assert path == world.root / task.name / f"split_zhou_{task.name}.json"
        splits, names = read_split_zhou(path)
        assert names == list(task.classes) == world.class_names[task.name]
        assert sorted(splits) == ["test", "train", "val"]
        for role, samples in splits.items():
            assert len(samples) == PER_CLASS[role] * len(names) == world.counts[task.name][role]
            assert sorted({s.label for s in samples}) == list(range(len(names)))
            for sample in samples:
                file = world.image_root(task.name) / sample.path
                assert sample.path.startswith(f"{names[sample.label].replace(' ', '_')}/{role}_")
                with Image.open(file) as image:
                    assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
    assert world.total() == {role: n * sum(len(t.classes) for t in TASKS) for role, n in PER_CLASS.items()}
    assert world.settings == {"seed": 0, **TINY}


def test_manifest_lists_classes_templates_styles_and_reads_back(world):
    manifest = json.loads(world.manifest.read_text())
    for entry, task in zip(manifest["tasks"], TASKS):
        assert entry["classes"] == list(task.classes)
        assert entry["train_template"] == entry["templates"][0] == task.train_template
        assert len(entry["templates"]) >= 3 and entry["style"] == task.style
        assert entry["split_file"] == f"{task.name}/split_zhou_{task.name}.json"
        assert entry["chance"] == pytest.approx(100 / len(task.classes), abs=1e-3)
        assert entry["flip_safe"] is (task.name != "SynthPlaces")
    # each task has its own look: six different styles
    assert len({task.style for task in TASKS}) == len(TASKS)
    assert set(manifest["styles"]) == {task.style for task in TASKS}
    again = read_tasks(world.root)
    assert (again.tasks, again.class_names, again.templates, again.orders, again.counts) == (
        world.tasks, world.class_names, world.templates, world.orders, world.counts)
    assert again.train_template("SynthColours") == "a photo of a {}."


def test_class_names_are_unique_and_words_of_the_teachers_captions():
    all_names = [name for task in TASKS for name in task.classes]
    assert len(set(all_names)) == len(all_names)  # within and across tasks
    for task in TASKS:
        assert 4 <= len(task.classes) <= 10
    # the words of many teacher captions (render_still writes them) cover every class name's words
    rng = np.random.default_rng(0)
    captions = [render_still(rng, None, style, 16)[1] for _ in range(200) for style in STYLES]
    words = caption_words(captions)
    for task in TASKS:
        for name in task.classes:
            assert set(name.split()) <= words, (task.name, name)
        for template in task.templates:
            assert template in CAPTION_TEMPLATES, template


def test_orders_are_permutations_of_all_tasks(world):
    names = sorted(task.name for task in TASKS)
    assert set(world.orders) == {"order_1", "order_2"} == set(TASK_ORDERS)
    for order in world.orders.values():
        assert sorted(order) == names
    assert world.order("order_1") == names  # alphabetical, as MTIL's order I
    first, second = world.order("order_1"), world.order("order_2")
    assert all(a != b for a, b in zip(first, second))  # no task keeps its position
    neighbours = {frozenset(pair) for pair in zip(first, first[1:])}
    assert not neighbours & {frozenset(pair) for pair in zip(second, second[1:])}
    with pytest.raises(ConfigError, match="order_3"):
        world.order("order_3")


def test_images_show_what_their_class_names_say():
    rng = np.random.default_rng(1)
    for task in TASKS:
        for label, fixed in enumerate(task.fixed):
            for _ in range(20):
                concepts = task.concepts(label, rng)
                for key in ("colour", "shape", "context", "motion"):
                    if key in fixed:
                        assert getattr(concepts, key) == fixed[key], (task.name, task.classes[label])
                assert (concepts.colour, concepts.context) not in LOW_CONTRAST
    assert get_task("SynthGrounds").fixed[0] == {"context": "grass"}
    assert get_task("SynthDarkGrounds").fixed[2] == {"context": "water"}
    assert get_task("SynthPastels").fixed[0] == {"colour": "red", "shape": "ball", "context": "sand"}
    assert [f["place"] for f in get_task("SynthPlaces").fixed] == list(PLACES)


def test_a_placed_object_is_drawn_in_its_place():
    """Inside each place's region, that place's images differ most from the task's mean image."""
    task = get_task("SynthPlaces")
    assert not task.flip_safe
    size = 32
    images = {place: np.stack([render_task_image(task, label, "train", i, size=size).astype(float)
                               for i in range(16)]) for label, place in enumerate(task.classes)}
    mean = np.concatenate(list(images.values())).mean(0)
    change = {place: np.abs(stack - mean).sum(-1).mean(0) for place, stack in images.items()}  # (H, W) each
    for region, ((x_from, x_to), (y_from, y_to)) in PLACES.items():
        window = (slice(int(y_from * size), int(y_to * size)), slice(int(x_from * size), int(x_to * size)))
        strongest = max(change, key=lambda place: change[place][window].mean())
        assert strongest == region


# --------------------------------------------------------------------------- determinism and the up-to-date check


def test_rerendering_is_byte_identical_and_reproducible_per_image(world, tmp_path):
    other = generate_tasks(tmp_path / "again", **TINY)
    images = sum(PER_CLASS[role] * len(task.classes) for task in TASKS for role in PER_CLASS)
    assert other.rendered == world.rendered == images
    assert _files(world.root) == _files(other.root)
    task = get_task("SynthObjects")
    with Image.open(world.image_root(task.name) / "green_triangle" / "test_000.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert np.array_equal(pixels, render_task_image(task, task.classes.index("green triangle"), "test", 0, size=32))
    # another seed gives other pixels
    assert not np.array_equal(pixels, render_task_image(task, 7, "test", 0, seed=1, size=32))


def test_up_to_date_is_a_no_op_and_force_or_a_missing_file_renders_again(tmp_path):
    first = generate_tasks(tmp_path / "w", **TINY)
    image = first.image_root("SynthColours") / "red" / "train_000.png"
    stamp = image.stat().st_mtime_ns
    again = generate_tasks(tmp_path / "w", **TINY)
    assert again.rendered == 0 and image.stat().st_mtime_ns == stamp
    image.unlink()
    assert generate_tasks(tmp_path / "w", **TINY).rendered == first.rendered and image.is_file()
    assert generate_tasks(tmp_path / "w", **TINY, force=True).rendered == first.rendered
    # fewer images per class: the ones no longer listed are removed
    smaller = generate_tasks(tmp_path / "w", **{**TINY, "train_per_class": 1})
    assert smaller.rendered > 0 and not (smaller.image_root("SynthColours") / "red" / "train_001.png").exists()
    splits, _ = read_split_zhou(smaller.split_file("SynthColours"))
    listed = {s.path for samples in splits.values() for s in samples}
    on_disk = {p.relative_to(smaller.image_root("SynthColours")).as_posix()
               for p in smaller.image_root("SynthColours").rglob("*.png")}
    assert on_disk == listed


def test_read_tasks_needs_a_manifest(tmp_path):
    with pytest.raises(MissingFileError, match="vlkd synth tasks"):
        read_tasks(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"generator": "something else"}')
    with pytest.raises(ConfigError, match="not a SynthTasks manifest"):
        read_tasks(tmp_path)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("settings, key", [
    ({"train_per_class": 0}, "train_per_class"),
    ({"val_per_class": -1}, "val_per_class"),
    ({"test_per_class": 1.5}, "test_per_class"),
    ({"train_per_class": True}, "train_per_class"),
    ({"size": 8}, "size"),
    ({"seed": -1}, "seed"),
])
def test_bad_settings_raise_one_line_config_errors_naming_the_key(tmp_path, settings, key):
    with pytest.raises(ConfigError) as error:
        generate_tasks(tmp_path, **{**TINY, **settings})
    message = str(error.value)
    assert message.startswith(key) and "\n" not in message and "set --" in message
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("classes, message", [
    (("red", "red"), "distinct"),
    (("red",), "at least two"),
    (("red", "cat"), "unknown: cat"),
    (("red", "green grass"), "hardly show"),
    (("red", "ball rotating clockwise"), "invisible on a ball"),
    (("red", "on grass ball"), "is not"),
])
def test_bad_task_definitions_raise(classes, message):
    with pytest.raises(ConfigError, match=message):
        SynthTask("MyTask", "colour", classes, "flat", ("a photo of a {}.",))


def test_task_definitions_check_style_and_templates_and_may_name_motions():
    with pytest.raises(ConfigError, match="unknown style"):
        SynthTask("MyTask", "colour", ("red", "blue"), "sketchy", ("a photo of a {}.",))
    with pytest.raises(ConfigError, match="exactly one"):
        SynthTask("MyTask", "colour", ("red", "blue"), "flat", ("a photo of a red thing.",))
    motions = SynthTask("MyMotions", "motion", ("growing", "opening"), "outlined", ("a video of {}.",))
    concepts = motions.concepts(1, np.random.default_rng(0))
    assert concepts.motion == "opening" and concepts.context is None and motions.flip_safe
    assert motions.render(0, np.random.default_rng(0), size=16).shape == (16, 16, 3)
    assert set(TASK_STYLES).isdisjoint(STYLES) and set(CONTEXTS) == set(get_task("SynthGrounds").classes)


# --------------------------------------------------------------------------- the command


def test_synth_tasks_command_prints_one_summary_line(tmp_path, capsys):
    args = ["synth", "tasks", "--out", str(tmp_path / "cli"), "--size", "32", "--train-per-class", "1",
            "--val-per-class", "1", "--test-per-class", "1"]
    assert vlkd_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    classes = sum(len(task.classes) for task in TASKS)
    assert len(lines) == 1
    assert lines[0].startswith(f"SynthTasks in {tmp_path / 'cli'}: {len(TASKS)} tasks, {classes} classes")
    assert f"rendered {3 * classes} images" in lines[0] and "order_1, order_2" in lines[0]
    assert vlkd_main(args) == 0
    assert "already up to date" in capsys.readouterr().out
    assert vlkd_main([*args, "--force"]) == 0
    assert f"rendered {3 * classes} images" in capsys.readouterr().out


def test_synth_tasks_command_reports_bad_settings_in_one_line(tmp_path, capsys):
    code = vlkd_main(["synth", "tasks", "--out", str(tmp_path), "--train-per-class", "0"])
    assert code != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "train_per_class" in error and "--train-per-class" in error
