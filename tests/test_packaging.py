"""Everything in the shipped data/ folder reaches a wheel install (pyproject data-files)."""

from __future__ import annotations

import glob
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def test_every_shipped_data_file_is_listed_in_data_files():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    data_files = config["tool"]["setuptools"]["data-files"]
    listed = {}
    for target, patterns in data_files.items():
        for pattern in patterns:
            for path in glob.glob(str(REPO / pattern)):
                relative = Path(path).relative_to(REPO / "data")
                # A file must land in share/vlkd/<the same relative folder>.
                listed[relative] = Path(target) == Path("share/vlkd") / relative.parent
    shipped = {p.relative_to(REPO / "data") for p in (REPO / "data").rglob("*") if p.is_file()}
    assert shipped - set(listed) == set(), "files under data/ missing from [tool.setuptools.data-files]"
    assert all(listed.values()), "a data-files target does not mirror its source folder"


def test_asset_dir_finds_the_split_files():
    from vlkd.paths import asset_dir, asset_path

    assert asset_dir() == REPO / "data"
    assert asset_path("base2novel", "labels", "kinetics_400_labels.csv").is_file()
