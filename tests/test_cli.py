"""The `vlkd` command line as a user runs it: help, config printing, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlkd.cli import EXTRA_COMMANDS, LIGHTNING_COMMANDS

REPO = Path(__file__).resolve().parent.parent
REAL_CONFIG = REPO / "configs" / "zeroshot_k400_b2n.yaml"


def run_vlkd(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vlkd"] if module else ["vlkd"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_help_lists_every_subcommand_on_one_line_each():
    result = run_vlkd("--help")
    assert result.returncode == 0, result.stderr
    for name in [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]:
        lines = [line for line in result.stdout.splitlines() if line.strip().startswith(name + " ")]
        assert len(lines) == 1, f"{name} missing from vlkd --help"


def test_python_dash_m_works_too():
    result = run_vlkd("--version", module=True)
    assert result.returncode == 0
    assert result.stdout.startswith("vlkd ")


def test_fit_help():
    result = run_vlkd("fit", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--print_config" in result.stdout


def test_print_config_resolves_short_class_names_and_overrides(tmp_path):
    short = yaml.safe_load(REAL_CONFIG.read_text())
    short["model"]["class_path"] = "ZeroShotCLIP"
    short["data"]["class_path"] = "VideoDataModule"
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(short))
    result = run_vlkd("fit", "--config", str(tmp_path / "short.yaml"), "--data.batch_size", "3", "--print_config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["class_path"].endswith(".ZeroShotCLIP")
    assert config["data"]["class_path"].endswith(".VideoDataModule")
    assert config["model"]["init_args"]["teacher"]["name"] == "ViT-B-16"
    assert config["data"]["init_args"]["batch_size"] == 3
    assert config["data"]["init_args"]["base2novel"]["dataset"] == "k400"


def test_configs_compose(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("data:\n  init_args:\n    num_frames: 16\n")
    result = run_vlkd("validate", "--config", str(REAL_CONFIG), "--config", str(override), "--print_config")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"]["init_args"]["num_frames"] == 16


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--data.init_args.no_such_key", "1"], "no_such_key"),
        (["--data.init_args.batch_size", "many"], "batch_size"),
        (["--config", "/no/such/config.yaml"], "/no/such/config.yaml"),
        (["--model.init_args.teacher.name", "ViT-X-99"], "ViT-X-99"),
    ],
)
def test_bad_config_is_one_line_naming_the_problem(extra, expected):
    result = run_vlkd("fit", "--config", str(REAL_CONFIG), *extra)
    assert result.returncode != 0
    # Lightning may log an INFO line (the seed) first; the error itself is one line.
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vlkd fit: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_command():
    result = run_vlkd("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr
