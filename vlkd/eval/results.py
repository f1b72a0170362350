"""Result files: a JSON record for machines and a Markdown table for people.

Conventions shared by both outputs:

* a ``(mean, std)`` pair — a :class:`~vlkd.eval.metrics.MeanStd` or any tuple of
  two real numbers, as :func:`~vlkd.eval.metrics.summarize_seeds` returns — is
  written to JSON as ``{"mean": m, "std": s}`` and shown in Markdown as
  ``m ± s``; :func:`read_results` turns such objects back into ``MeanStd``;
* floats are stored in JSON with 6 significant digits (ample for percentages
  and losses, and keeps files diffable); NaN/inf become ``null``;
* tensors and NumPy values are converted to plain Python numbers/lists.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlkd.errors import ConfigError, MissingFileError
from vlkd.eval.metrics import MeanStd

__all__ = ["format_cell", "markdown_table", "read_results", "write_results"]

_SIGNIFICANT_DIGITS = 6
_MISSING_CELL = "-"


def write_results(
    results: Mapping[str, Any], out_dir: str | Path, name: str = "results", digits: int = 2
) -> tuple[Path, Path]:
    """Write ``results`` to ``<out_dir>/<name>.json`` and ``<out_dir>/<name>.md``; returns both paths.

    The Markdown table has one row per entry when every value of ``results`` is
    a mapping (``{"k400": {"base_top1": ..., ...}, "ucf101": {...}}``, first
    column ``name``), and otherwise two columns ``metric | value``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(_to_json(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if results and all(isinstance(value, Mapping) for value in results.values()):
        rows = [{"name": key, **value} for key, value in results.items()]
    else:
        rows = [{"metric": key, "value": value} for key, value in results.items()]
    md_path.write_text(f"# {name}\n\n{markdown_table(rows, digits=digits)}", encoding="utf-8")
    return json_path, md_path


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a JSON file written by :func:`write_results`, restoring ``MeanStd`` pairs."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "results file", "write it with vlkd.eval.results.write_results")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from error
    return _from_json(data)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table, one line per row, ending in a newline.

    ``columns`` defaults to every key in first-seen order; a row lacking a column
    shows ``-``.  Cells are formatted by :func:`format_cell`.  Returns ``""`` when
    there is nothing to show (no rows and no columns).
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return ""
    lines = [
        _markdown_row(_escape(str(column)) for column in columns),
        _markdown_row("---" for _ in columns),
    ]
    for row in rows:
        cells = (format_cell(row[column], digits) if column in row else _MISSING_CELL for column in columns)
        lines.append(_markdown_row(cells))
    return "\n".join(lines) + "\n"


def format_cell(value: Any, digits: int = 2) -> str:
    """One Markdown cell: ``m ± s`` for pairs, ``digits`` decimals for floats, escaped text otherwise."""
    value = _plain(value)
    pair = _as_pair(value)
    if pair is not None:
        return f"{pair.mean:.{digits}f} ± {pair.std:.{digits}f}"
    if value is None:
        return _MISSING_CELL
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (Mapping, list, tuple)):
        return _escape(json.dumps(_to_json(value), separators=(",", ":")))
    return _escape(str(value))


# --------------------------------------------------------------------------- helpers


def _markdown_row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _escape(text: str) -> str:
    # A pipe would end the cell and a newline the row.
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _plain(value: Any) -> Any:
    """Tensors and NumPy values as Python scalars/lists; everything else unchanged."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _as_pair(value: Any) -> MeanStd | None:
    """``value`` as a (mean, std) pair if it is a tuple of exactly two real numbers."""
    if isinstance(value, tuple) and len(value) == 2:
        items = [_plain(item) for item in value]
        if all(isinstance(item, numbers.Real) and not isinstance(item, bool) for item in items):
            return MeanStd(float(items[0]), float(items[1]))
    return None


def _to_json(value: Any) -> Any:
    """``value`` as JSON-ready Python data following the module's conventions."""
    value = _plain(value)
    pair = _as_pair(value)
    if pair is not None:
        return {"mean": _to_json(pair.mean), "std": _to_json(pair.std)}
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return float(f"{value:.{_SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} value {value!r} in a results file")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"mean", "std"}:
            return MeanStd(*(math.nan if value[key] is None else value[key] for key in ("mean", "std")))
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value
