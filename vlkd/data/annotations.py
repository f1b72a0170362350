"""Annotation files: video lists and class-name lists, read and written in one place.

Three on-disk formats are supported, all UTF-8 (a byte-order mark is tolerated)
with any line ending (LF, CRLF or CR):

* **Video list** (``.txt``; the mmaction / ViFi-CLIP convention used by the
  published base-to-novel splits)::

      val/abc_000010_000020.mp4 169
      some folder/with spaces.avi 3

  One sample a line: a path relative to the dataset's video root, whitespace,
  then an integer label id.  The label is the *last* token, so paths may
  contain spaces; leading/trailing whitespace of a line is ignored.  Blank
  lines are skipped.  mmaction's *rawframe* lists (``path num_frames label``)
  are not supported: their frame count would silently become part of the path.

* **CSV list** (``.csv``)::

      path,label
      "folder, with comma/x.mp4",3

  A header row naming a path column and a ``label`` column.  The path column
  may be called ``path``, ``video`` or ``filename`` (the first found wins;
  writers always use ``path``).  Other columns are ignored.

* **Class names** (``.csv``)::

      id,name
      0,abseiling
      1,"Removing something, revealing something behind"

  Ids must be exactly ``0..N-1`` (any order in the file); the result is
  ordered by id.  Names are stripped, must be non-empty and unique.  Names
  containing commas or quotes must be quoted, as the ``csv`` module does.

Every reader raises :class:`~vlkd.errors.MissingFileError` for a missing file
and :class:`~vlkd.errors.ConfigError` naming the file and line for a bad row.
The writers produce exactly what the readers accept (LF endings, header rows),
so generated datasets round-trip.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vlkd.errors import ConfigError, MissingFileError

__all__ = [
    "VideoSample",
    "read_video_list",
    "read_csv_list",
    "read_annotations",
    "read_class_names",
    "write_video_list",
    "write_csv_list",
    "write_class_names",
]

_VIDEO_LIST_LINE = "`<relative/path> <label_id>` (label id last, a non-negative integer)"
# Accepted header names per field; the first alias is what the writers emit.
_CSV_LIST_FIELDS = {"path": ("path", "video", "filename"), "label": ("label",)}
_CLASS_NAME_FIELDS = {"id": ("id",), "name": ("name",)}
_NON_NEGATIVE_INT = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class VideoSample:
    """One annotated video: ``path`` relative to the dataset root, integer ``label`` id."""

    path: str
    label: int


# --------------------------------------------------------------------------- readers


def read_video_list(path: str | Path) -> list[VideoSample]:
    """Read a whitespace-separated ``relative/path label`` list (see module docstring)."""
    path = Path(path)
    samples = []
    for line_no, line in enumerate(_read_text(path, "video list").split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ConfigError(f"{path}, line {line_no}: expected {_VIDEO_LIST_LINE}, got {line!r}")
        samples.append(VideoSample(parts[0], _parse_id(parts[1], path, line_no, "label id")))
    return samples


def read_csv_list(path: str | Path) -> list[VideoSample]:
    """Read a CSV list with a header containing ``path`` (or ``video``/``filename``) and ``label``."""
    path = Path(path)
    samples = []
    for line_no, record in _read_csv_records(path, "CSV video list", _CSV_LIST_FIELDS):
        if not record["path"]:
            raise ConfigError(f"{path}, line {line_no}: empty video path")
        samples.append(VideoSample(record["path"], _parse_id(record["label"], path, line_no, "label id")))
    return samples


def read_annotations(path: str | Path) -> list[VideoSample]:
    """Read a video list, choosing the format by suffix: ``.csv`` -> CSV list, anything else -> text list."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_csv_list(path)
    return read_video_list(path)


def read_class_names(path: str | Path) -> list[str]:
    """Read an ``id,name`` CSV and return the names ordered by id (ids must be exactly ``0..N-1``)."""
    path = Path(path)
    names_by_id: dict[int, str] = {}
    first_line_of_name: dict[str, int] = {}
    for line_no, record in _read_csv_records(path, "class-name list", _CLASS_NAME_FIELDS):
        class_id = _parse_id(record["id"], path, line_no, "class id")
        name = record["name"]
        if not name:
            raise ConfigError(f"{path}, line {line_no}: class {class_id} has an empty name")
        if class_id in names_by_id:
            raise ConfigError(f"{path}, line {line_no}: class id {class_id} appears twice")
        # A name listed twice would give two identical text embeddings: an ambiguous classifier.
        if name in first_line_of_name:
            raise ConfigError(
                f"{path}, line {line_no}: class name {name!r} already used on line {first_line_of_name[name]}"
            )
        names_by_id[class_id] = name
        first_line_of_name[name] = line_no
    if not names_by_id:
        raise ConfigError(f"{path}: no classes listed (expected `id,name` rows after the header)")
    missing = sorted(set(range(len(names_by_id))) - names_by_id.keys())
    if missing:
        raise ConfigError(
            f"{path}: class ids must be 0..{len(names_by_id) - 1} without gaps; "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}"
        )
    return [names_by_id[class_id] for class_id in range(len(names_by_id))]


# --------------------------------------------------------------------------- writers


def write_video_list(samples: Iterable[VideoSample], path: str | Path) -> Path:
    """Write samples as ``relative/path label`` lines (LF endings); returns the path written."""
    samples = list(samples)
    for sample in samples:
        _check_writable_sample(sample)
    return _write_text(path, "".join(f"{sample.path} {sample.label}\n" for sample in samples))


def write_csv_list(samples: Iterable[VideoSample], path: str | Path) -> Path:
    """Write samples as a ``path,label`` CSV (quoted where needed); returns the path written."""
    rows = []
    for sample in samples:
        _check_writable_sample(sample)
        rows.append((sample.path, sample.label))
    return _write_csv(path, ("path", "label"), rows)


def write_class_names(names: Iterable[str], path: str | Path) -> Path:
    """Write names as an ``id,name`` CSV with ids ``0..N-1`` in the given order; returns the path written."""
    names = list(names)
    for class_id, name in enumerate(names):
        if not _is_clean_line(name):
            # The reader strips names, so such a name would not read back identically.
            raise ConfigError(
                f"class {class_id}: name {name!r} must be a non-empty single-line string "
                "without surrounding whitespace"
            )
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f"class names must be unique; repeated: {duplicates}")
    return _write_csv(path, ("id", "name"), enumerate(names))


# --------------------------------------------------------------------------- shared helpers


def _read_text(path: Path, what: str) -> str:
    """The file's text with universal newlines (CRLF/CR become LF) and any BOM removed."""
    if not path.is_file():
        fix = "it is a folder; point at the file inside it" if path.is_dir() else "check the path"
        raise MissingFileError(path, what, fix)
    try:
        with open(path, encoding="utf-8-sig", newline=None) as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: {what} is not UTF-8 text ({error.reason} at byte {error.start})") from error


def _read_csv_records(
    path: Path, what: str, fields: Mapping[str, tuple[str, ...]]
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a headed CSV as ``(line_no, {field: stripped value})`` for the requested ``fields``.

    ``fields`` maps each wanted field to the header names accepted for it.  Blank
    rows are skipped; a row whose field count differs from the header's is an
    error, because that is what an unquoted comma inside a value looks like.
    """
    reader = csv.reader(io.StringIO(_read_text(path, what)))
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    expected_header = ",".join(aliases[0] for aliases in fields.values())
    if header is None:
        raise ConfigError(f"{path}: empty {what}; expected a header row `{expected_header}`")
    header_line = reader.line_num
    normalized = [cell.strip().lower() for cell in header]
    columns = {}
    for field, aliases in fields.items():
        column = next((normalized.index(alias) for alias in aliases if alias in normalized), None)
        if column is None:
            raise ConfigError(
                f"{path}, line {header_line}: header {header} lacks a "
                f"{' / '.join(repr(alias) for alias in aliases)} column; expected a header like `{expected_header}`"
            )
        columns[field] = column
    records = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ConfigError(
                f"{path}, line {reader.line_num}: expected {len(header)} fields ({','.join(header)}), "
                f"got {len(row)}: {row}; quote values that contain commas"
            )
        records.append((reader.line_num, {field: row[column].strip() for field, column in columns.items()}))
    return records


def _parse_id(token: str, path: Path, line_no: int, what: str) -> int:
    """A non-negative integer id from ``token``, or a ConfigError naming file and line."""
    token = token.strip()
    # Stricter than int(): rejects "-1", "1.0", "+3" and non-ASCII digits.
    if not _NON_NEGATIVE_INT.fullmatch(token):
        raise ConfigError(f"{path}, line {line_no}: {what} must be a non-negative integer, got {token!r}")
    return int(token)


def _check_writable_sample(sample: VideoSample) -> None:
    """Refuse samples the readers could not read back unchanged."""
    path = sample.path
    if not _is_clean_line(path):
        raise ConfigError(
            f"video path {path!r} must be a non-empty single-line string without surrounding whitespace"
        )
    if isinstance(sample.label, bool) or not isinstance(sample.label, int) or sample.label < 0:
        raise ConfigError(f"{path}: label {sample.label!r} must be a non-negative integer")


def _is_clean_line(value: object) -> bool:
    """True for a non-empty one-line string that stripping leaves unchanged (so it round-trips)."""
    return (
        isinstance(value, str) and bool(value) and value == value.strip() and "\n" not in value and "\r" not in value
    )


def _write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
    return path


def _write_csv(path: str | Path, header: tuple[str, ...], rows: Iterable[tuple]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return _write_text(path, buffer.getvalue())
