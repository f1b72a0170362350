"""`vlkd synth actions` and `vlkd zeroshot` as a user runs them, on a tiny world."""

from __future__ import annotations

import json

import pytest

from vlkd.cli import main


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    args = ["synth", "actions", "--out", str(out), "--size", "32", "--frames", "4", "--clips-per-class", "1",
            "--train-clips-per-class", "2", "--shots", "1", "--workers", "1"]
    assert main(args) == 0
    return out


def test_synth_actions_is_idempotent(tiny_world, capsys):
    args = ["synth", "actions", "--out", str(tiny_world), "--size", "32", "--frames", "4", "--clips-per-class", "1",
            "--train-clips-per-class", "2", "--shots", "1", "--workers", "1"]
    assert main(args) == 0
    assert "already up to date" in capsys.readouterr().out


def test_zeroshot_prints_and_writes_base_novel_hm_and_groups(tiny_world, tmp_path, capsys):
    out = tmp_path / "zs.json"
    code = main(["zeroshot", "--teacher", "vlkd-tiny-vit", "--data", str(tiny_world), "--split", "s2",
                 "--frames", "2", "--workers", "0", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    manifest = json.loads((tiny_world / "world_info.json").read_text())
    halves = [c["half"] for c in manifest["classes"]]
    assert results["videos"] == {"base": halves.count("base"), "novel": halves.count("novel")}
    for key in ("base", "novel", "hm"):
        assert 0.0 <= results[key] <= 100.0
    assert set(results["groups"]) >= {"base_static", "base_temporal", "novel_static", "novel_temporal"}
    printed = capsys.readouterr().out
    assert f"HM {results['hm']:.2f}" in printed


def test_zeroshot_on_a_plain_folder_needs_a_dataset_name(tmp_path, capsys):
    assert main(["zeroshot", "--teacher", "vlkd-tiny-vit", "--data", str(tmp_path)]) == 2
    assert "pass --dataset" in capsys.readouterr().err
