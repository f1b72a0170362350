"""The continual configs: ZSCL's real settings in the MTIL ones, run end to end on fake MTIL files, and the synth ones.

Each MTIL config runs as it is but for what needs real data or weights: a tiny random-weight CLIP teacher
(``vlkd-tiny-vit``, open_clip's code path of ViT-B/16), 32 px images, 2 steps of 2 images per task, and for ZSCL
a small ImageNet-style folder and a Conceptual Captions-style TSV as reference data. The datasets are the
fakes of ``tests/mtil_fixtures.py`` in torchvision's layouts, read through torchvision inside
``accept_fake_checksums`` (in this process).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import TINY
from tests.mtil_fixtures import accept_fake_checksums, write_fake_mtil
from vlkd.cli import build_from_config, main
from vlkd.data.mtil import MTIL_ORDER_I, MTIL_ORDER_II

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "continual"
MTIL_CONFIGS = sorted(CONFIGS.glob("*_mtil.yaml"))
SYNTH_CONFIGS = sorted(CONFIGS.glob("*_synth.yaml"))
METHODS = {"finetune": "SequentialFineTune", "lwf": "LwF", "wiseft": "WiSEFT", "zscl": "ZSCL",
           "zeroshot": "ZeroShotContinual", "mulki": "MulKI"}


def test_every_method_has_its_configs():
    assert {p.stem for p in MTIL_CONFIGS} == {f"{m}_mtil" for m in ("finetune", "lwf", "wiseft", "zscl", "mulki")}
    assert {p.stem for p in SYNTH_CONFIGS} == {f"{m}_synth" for m in METHODS}


@pytest.mark.parametrize("config", MTIL_CONFIGS, ids=lambda p: p.stem)
def test_mtil_configs_hold_zscls_settings(config):
    """mtil/scripts/*.sh and mtil/src/args.py: ViT-B/16 (OpenAI), 1,000 iterations, lr 1e-5 (5e-5 for Aircraft and
    MNIST), 100 warm-up steps, label smoothing 0.2, weight decay 0, batch 64, order I, crops of 90-100 %, no flip."""
    settings = yaml.safe_load(config.read_text())
    model, data = settings["model"]["init_args"], settings["data"]["init_args"]
    assert settings["model"]["class_path"] == METHODS[config.stem.split("_")[0]]
    assert model["teacher"] == {"name": "ViT-B-16", "pretrained": "openai"}
    assert (model["lr"], model["task_lr"]) == (1e-5, {"Aircraft": 5e-5, "MNIST": 5e-5})
    schedule = (model["warmup_steps"], model["label_smoothing"], model["weight_decay"], model["beta2"])
    assert schedule == (100, 0.2, 0, 0.999)
    assert (data["source"], data["order"], data["iterations_per_task"], data["batch_size"]) == ("mtil", "I", 1000, 64)
    assert (data["crop_scale"], data["flip"], data["image_size"]) == ([0.9, 1.0], False, 224)
    assert settings["trainer"]["precision"] == "32-true" and settings["seed_everything"] == 42
    if config.stem == "zscl_mtil":
        assert (model["temperature"], model["image_weight"], model["text_weight"]) == (2.0, 1.0, 1.0)
        assert (model["l2_weight"], model["average_every"]) == (1.0, 100)
        assert data["reference"]["images"].endswith("ImageNet/train") and data["reference"]["batch_size"] == 64
        assert data["reference"]["sentences"].endswith("Validation_GCC-1.1.0-Validation_output.csv")
    elif config.stem == "wiseft_mtil":
        assert model["alpha"] == 0.8
    elif config.stem == "lwf_mtil":
        assert (model["temperature"], model["image_weight"], model["text_weight"]) == (2.0, 1.0, 1.0)
    if config.stem != "zscl_mtil":
        assert "reference" not in data


@pytest.fixture(scope="module")
def mtil_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mtil")
    write_fake_mtil(root, train_per_class=2, test_per_class=1)
    return root


@pytest.fixture(scope="module")
def reference_files(tmp_path_factory) -> dict[str, Path]:
    """ImageNet/train with two WordNet-id folders of JPEGs, and Conceptual Captions' validation TSV."""
    from PIL import Image

    base = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        for k in range(3):
            path = base / "ImageNet" / "train" / wnid / f"{wnid}_{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path, format="JPEG")
    captions = base / "Validation_GCC-1.1.0-Validation_output.csv"
    captions.write_text("title\tfilepath\n" + "".join(
        f"{text}\tvalidation/{k}.jpg\n" for k, text in enumerate(
            ["a dog running on the beach", "city skyline at night", "close up of a red flower",
             "people walking in the rain", "an old wooden boat"])))
    return {"images": base / "ImageNet" / "train", "sentences": captions}


def _small(config: Path, tmp_path: Path, root: Path, reference: dict[str, Path]) -> Path:
    """The override of a real config: tiny teacher, 32 px, 2 steps of 2 images per task, CPU, no workers."""
    data = {"root": str(root), "iterations_per_task": 2, "batch_size": 2, "eval_batch_size": 8, "image_size": 32,
            "num_workers": 0}
    if config.stem == "zscl_mtil":
        data["reference"] = {"images": str(reference["images"]), "sentences": str(reference["sentences"]),
                             "batch_size": 2}
    override = {"trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False,
                            "default_root_dir": str(tmp_path / "run")},
                "model": {"init_args": {"teacher": {"name": TINY, "pretrained": None}}},
                "data": {"init_args": data}}
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("config", MTIL_CONFIGS, ids=lambda p: p.stem)
def test_mtil_config_runs_the_whole_sequence_on_fake_files(config, mtil_root, reference_files, tmp_path):
    order_ii = config.stem == "finetune_mtil"  # one config also runs order II, as the command line asks
    extra = ["--data.init_args.order", "II"] if order_ii else []
    with accept_fake_checksums(mtil_root):
        assert main(["fit", "--config", str(config), "--config",
                     str(_small(config, tmp_path, mtil_root, reference_files)), *extra]) == 0
    (results_file,) = (tmp_path / "run").rglob("results.json")
    results = json.loads(results_file.read_text())
    order = list(MTIL_ORDER_II if order_ii else MTIL_ORDER_I)
    assert results["datasets"] == order and results["method"] == METHODS[config.stem.split("_")[0]]
    assert np.asarray(results["matrix"]).shape == (11, 11) and len(results["zero_shot"]) == 11
    assert results["settings"]["lr"] == {name: 5e-5 if name in ("Aircraft", "MNIST") else 1e-5 for name in order}
    assert [task["steps"] for task in results["cost"]["tasks"]] == [2] * 11
    if config.stem == "zscl_mtil":
        assert results["settings"]["reference"]["num_images"] == 6
        assert results["settings"]["reference"]["num_sentences"] == 5


@pytest.mark.parametrize("config", SYNTH_CONFIGS, ids=lambda p: p.stem)
def test_synth_configs_build_and_share_data_and_schedule(config):
    cli = build_from_config(["--config", str(config)])
    assert type(cli.model).__name__ == METHODS[config.stem.split("_")[0]]
    data = cli.config["data"]["init_args"]
    assert (data["source"], data["order"], data["iterations_per_task"], data["batch_size"]) == (
        "synth", "order_1", 150, 32)
    assert cli.model.initial_weights.name == "vlkd-synth-vit"
    if config.stem != "zeroshot_synth":
        assert (cli.model.lr, cli.model.warmup_steps, cli.model.label_smoothing) == (1e-4, 10, 0.2)
    assert (data["reference"] is not None) == (config.stem == "zscl_synth")


@pytest.mark.slow
def test_zscl_synth_config_runs_with_offline_reference_data(tmp_path):
    """The offline reference data: SynthImages stills (rendered when missing) and generated sentences."""
    from vlkd.data.synthetic.tasks import generate_tasks

    generate_tasks(tmp_path / "tasks", size=32, train_per_class=2, val_per_class=1, test_per_class=1)
    override = {"trainer": {"enable_progress_bar": False, "enable_model_summary": False,
                            "default_root_dir": str(tmp_path / "run"), "callbacks": None},
                "data": {"init_args": {"root": str(tmp_path / "tasks"), "iterations_per_task": 2, "batch_size": 2,
                                       "num_workers": 0, "order": ["SynthPlaces", "SynthPastels"],
                                       "reference": {"images": str(tmp_path / "images"), "kind": "synth_images",
                                                     "num_sentences": 20, "batch_size": 2},
                                       "reference_render": {"size": 32, "pool_per_class": 16, "val_per_class": 1,
                                                            "test_per_class": 1}}}}
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    config = CONFIGS / "zscl_synth.yaml"
    assert main(["fit", "--config", str(config), "--config", str(path)]) == 0
    assert (tmp_path / "images" / "world_info.json").is_file()
    (results_file,) = (tmp_path / "run").rglob("results.json")
    results = json.loads(results_file.read_text())
    assert results["datasets"] == ["SynthPlaces", "SynthPastels"] and len(results["matrix"]) == 2
    assert results["settings"]["reference"]["num_images"] == 42 * 16
    assert results["settings"]["reference"]["sentences"] == "generated"
