"""Distributed evaluation: two DDP processes (gloo, CPU) report exactly the accuracies of one.

The evaluation metric (:class:`vlkd.eval.metrics.OpenVocabAccuracy`) sums integer
counts across ranks. Lightning's distributed sampler pads every rank to the same
number of samples by repeating samples, which would count those twice; the tiny
world's lists have an even length, so two ranks split them without padding and the
comparison is exact. (With real lists not divisible by the number of processes, up
to ``world_size - 1`` videos per set are counted twice.)

Each run is a ``python -m vlkd`` subprocess, as a user would start it: Lightning's
``ddp`` strategy relaunches that same command for the second rank.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_froster import REPO, tiny_overrides, world  # noqa: F401  (world: fixture)

CONFIG = REPO / "configs" / "froster_ucf_b2n.yaml"
METRICS = ("base_top1", "base_top5", "base_mean_class", "base_videos", "novel_top1", "novel_videos", "hm")


def _vlkd(command: str, out: Path, world: Path, devices: int, *extra: str) -> Path:
    """Run ``vlkd <command>`` on the tiny world with ``devices`` CPU processes; returns the runs folder."""
    strategy = ["--trainer.strategy", "ddp"] if devices > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLKD_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "vlkd", command, *tiny_overrides(CONFIG, world, out),
         "--trainer.devices", str(devices), *strategy, *extra],
        capture_output=True, text=True, timeout=150, cwd=REPO, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "runs"


def _results(runs: Path) -> dict:
    (path,) = runs.rglob("results.json")
    return {key: json.loads(path.read_text())["metrics"][key] for key in METRICS}


@pytest.fixture(scope="module")
def single_process(world, tmp_path_factory) -> dict:
    """Accuracies of the FROSTER student at initialisation, evaluated by one process."""
    results = _results(_vlkd("validate", tmp_path_factory.mktemp("one"), world, devices=1))
    assert results["base_videos"] == results["novel_videos"] == 4
    return results


def test_ddp_validation_during_fit_matches_one_process(single_process, world, tmp_path):
    """One DDP training step (gradients synchronised, teacher outside DDP's parameters), then validation.

    The learning rate is far below float32 resolution, so the weights, and hence the
    accuracies, stay those of initialisation.
    """
    runs = _vlkd("fit", tmp_path, world, 2, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                 "--trainer.num_sanity_val_steps", "0", "--model.init_args.lr", "1e-20")
    (metrics_file,) = runs.rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    logged = {key: float(row[f"val/{key}"]) for row in rows for key in METRICS if row.get(f"val/{key}")}
    assert logged == pytest.approx(single_process)


def test_ddp_validate_writes_the_accuracies_of_one_process(single_process, world, tmp_path):
    assert _results(_vlkd("validate", tmp_path, world, devices=2)) == single_process
