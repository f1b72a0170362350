"""EZAD end to end on a tiny SynthDetection world: re-normalisation, the region cache, the detector, COCO AP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlkd.cli import main
from vlkd.data.synthetic.detection import generate_detection

CONFIG = Path(__file__).parent.parent / "configs" / "ezad_synth.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_detection(tmp_path_factory.mktemp("ezad_world"), train_images=8, val_images=4)


def _override(tmp_path: Path, world, work: Path, **model) -> Path:
    settings = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    renormalization = {**settings["renormalization"], "epochs": 1, "progress": False}
    init = {"work_dir": str(work), "renormalization": renormalization, "vild_proposals": 5, **model}
    override = {
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run"), "max_epochs": 1, "limit_train_batches": 2,
                    "check_val_every_n_epoch": 1, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "run")}}},
        "model": {"init_args": init},
        "data": {"init_args": {"root": str(world.root), "num_workers": 0, "batch_size": 2}},
    }
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


def _fit(tmp_path: Path, world, work: Path, *extra: str, **model) -> dict:
    override = _override(tmp_path, world, work, **model)
    assert main(["fit", "--config", str(CONFIG), "--config", str(override), *extra]) == 0
    (results,) = (tmp_path / "run").rglob("results.json")
    return json.loads(results.read_text())


@pytest.mark.slow
def test_the_synth_config_runs_every_stage_and_reports_base_novel_and_all(world, tmp_path):
    work = tmp_path / "work"
    results = _fit(tmp_path, world, work)
    metrics = results["metrics"]
    for group in ("base", "novel", "all"):
        for key in ("ap", "ap50", "ap_1000det", "ap50_1000det"):
            assert 0.0 <= metrics[f"{group}_{key}"] <= 100.0
    assert results["variant"] == "ezad" and results["stage"] == "test"
    crops = results["crop_top1"]
    assert set(crops) == {"before", "after"} and {"all", "base", "novel"} <= set(crops["before"])
    teacher = [p for p in work.iterdir() if p.name.startswith("teacher-")]
    cache = [p for p in work.iterdir() if p.name.startswith("cache-")]
    assert len(teacher) == 1 and len(cache) == 1 and (cache[0] / "index.json").is_file()
    stamp = (cache[0] / "shard-00000.safetensors").stat().st_mtime_ns
    # another variant on the same data reuses the re-normalised teacher and the cache
    second = tmp_path / "second"
    second.mkdir()
    _fit(second, world, work, variant="no_semantic_regression")
    assert (cache[0] / "shard-00000.safetensors").stat().st_mtime_ns == stamp
    assert len(list(work.iterdir())) == 2


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["base_only", "vild", "no_proposals"])
def test_baselines_train_on_the_same_schedule(world, tmp_path, variant):
    results = _fit(tmp_path, world, tmp_path / "work", variant=variant)
    assert results["variant"] == variant and "novel_ap50" in results["metrics"]
    (log,) = (tmp_path / "run").rglob("metrics.csv")
    header = log.read_text().splitlines()[0].split(",")
    assert ("train/loss_distill" in header) == (variant != "base_only")
    built = sorted(p.name.split("-")[0] for p in (tmp_path / "work").glob("*")) if (tmp_path / "work").exists() else []
    # base-only and ViLD-style use the raw teacher and store nothing; without proposals, the cache still serves
    assert built == ([] if variant in ("base_only", "vild") else ["cache", "teacher"])


def test_an_unknown_variant_is_refused_with_the_choices():
    from vlkd.errors import ConfigError
    from vlkd.methods import EZAD

    with pytest.raises(ConfigError, match="base_only"):
        EZAD(variant="ezad_plus")


@pytest.mark.slow
def test_vlkd_cache_builds_the_region_cache_a_fit_then_reads(world, tmp_path, capsys):
    work = tmp_path / "work"
    override = _override(tmp_path, world, work)
    out = tmp_path / "regions"
    assert main(["cache", "--config", str(CONFIG), "--config", str(override), "--out", str(out), "--no-progress",
                 "--shard-size", "4"]) == 0
    assert main(["cache", "--verify", str(out)]) == 0
    assert json.loads((out / "index.json").read_text())["shards"][1]["samples"] == [4, 8]
    results = _fit(tmp_path, world, work, "--data.init_args.teacher_cache", str(out))
    assert "novel_ap50" in results["metrics"]
    assert not list(work.glob("cache-*"))  # the fit read the given cache and built none
    capsys.readouterr()
    assert main(["cache", "--config", str(CONFIG), "--config", str(override), "--out", str(out), "--views", "4"]) != 0
    assert "drop --views" in capsys.readouterr().err
