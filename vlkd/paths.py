"""Where the package finds the small data it ships (split files, prompt templates, tiny weights).

In a source checkout or an editable install the data live in the repository's
top-level ``data/`` folder; a wheel install places the same tree under
``<prefix>/share/vlkd``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from vlkd.errors import MissingFileError

_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "data",
    Path(sys.prefix) / "share" / "vlkd",
)


def asset_dir() -> Path:
    """The folder holding the shipped data."""
    for candidate in _CANDIDATES:
        if (candidate / "base2novel").is_dir():
            return candidate
    raise MissingFileError(
        _CANDIDATES[0], "vlkd shipped data folder", "reinstall vlkd: `pip install -e .` from a checkout"
    )


def asset_path(*parts: str) -> Path:
    """A path inside the shipped data folder, checked to exist."""
    path = asset_dir().joinpath(*parts)
    if not path.exists():
        raise MissingFileError(path, "shipped data file")
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (the data identity manifests and caches record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
