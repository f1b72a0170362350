"""Continual-learning metrics of the MTIL protocol: the accuracy matrix, its three summaries and its heatmap.

MTIL (Multi-domain Task-Incremental Learning; ZSCL, Zheng et al., "Preventing
Zero-Shot Transfer Degradation in Continual Learning of Vision-Language
Models", ICCV 2023) fine-tunes one CLIP model on a fixed sequence of T
datasets.  After training stage t, every dataset d of the sequence is
evaluated among its own class names, which gives an accuracy matrix
``A[t, d]`` in percent, shape (T, T): row = training stage, column = dataset,
both in sequence order.  The frozen model before any training may be shown as
an extra zero-shot row; it is reported, not part of the metrics.

With 1-based indices:

* **transfer** = 1/(T-1) · Σ_{d=2..T} [ 1/(d-1) · Σ_{t<d} A[t, d] ] — for each
  dataset, the mean accuracy over the stages *before* it was trained on (the
  strict upper triangle, averaged per column first, then across columns);
* **average** = 1/T² · Σ_{t,d} A[t, d] — every cell of the matrix;
* **last** = 1/T · Σ_d A[T, d] — the final row, after the whole sequence.

Transfer measures how much zero-shot ability survives on datasets the model
has not been trained on yet.  The first dataset is excluded because no stage
precedes it: it is trained on at stage 1, so no cell of its column is an
evaluation before training (its column has an empty upper triangle), and it
has no transfer value.  The per-dataset columns are returned too, in sequence
order (``transfer_per_dataset[0]`` is ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlkd.errors import ConfigError
from vlkd.eval.results import markdown_table, write_results

__all__ = ["continual_metrics", "matrix_table", "plot_accuracy_matrix", "write_continual_results"]

_METRICS = ("transfer", "average", "last")


def continual_metrics(matrix: Any) -> dict[str, Any]:
    """Transfer, average and last (percent) of a (T, T) accuracy matrix, with their per-dataset columns.

    ``matrix`` is a list of lists, a NumPy array or a tensor; rows are training
    stages and columns datasets, both in sequence order.  Raises
    :class:`~vlkd.errors.ConfigError` unless it is square, T >= 2, and every
    value is a finite percentage.
    """
    a = _as_matrix(matrix)
    transfer_per_dataset = [None] + [float(a[:d, d].mean()) for d in range(1, len(a))]
    return {
        "transfer": float(np.mean(transfer_per_dataset[1:])),
        "average": float(a.mean()),
        "last": float(a[-1].mean()),
        "transfer_per_dataset": transfer_per_dataset,
        "average_per_dataset": a.mean(axis=0).tolist(),
        "last_per_dataset": a[-1].tolist(),
    }


def matrix_table(matrix: Any, datasets: Sequence[str], zero_shot: Any = None, digits: int = 1) -> str:
    """The accuracy matrix as a Markdown table: one row per stage (``after <dataset>``), one column per dataset."""
    a, datasets, zero_shot = _check(matrix, datasets, zero_shot)
    rows = [] if zero_shot is None else [{"stage": "zero-shot", **dict(zip(datasets, zero_shot.tolist()))}]
    rows += [{"stage": label, **dict(zip(datasets, row))} for label, row in zip(_stage_labels(datasets), a.tolist())]
    return markdown_table(rows, columns=["stage", *datasets], digits=digits)


def plot_accuracy_matrix(
    matrix: Any, datasets: Sequence[str], path: str | Path, title: str | None = None, zero_shot: Any = None
) -> Path:
    """Write the accuracy matrix as a PNG heatmap with its values written in; returns ``path``.

    The colour scale is fixed to 0-100 % so that heatmaps of different methods
    compare at a glance; a zero-shot row, if given, is drawn above the matrix.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    a, datasets, zero_shot = _check(matrix, datasets, zero_shot)
    labels = _stage_labels(datasets)
    if zero_shot is not None:
        a, labels = np.vstack([zero_shot, a]), ["zero-shot", *labels]
    rows, columns = a.shape
    figure = Figure(figsize=(2.5 + 0.9 * columns, 1.5 + 0.5 * rows))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(a, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    for (row, column), value in np.ndenumerate(a):
        # viridis is dark below the middle of the scale: light text there, dark text above.
        colour = "white" if value < 60 else "black"
        axes.text(column, row, f"{value:.1f}", ha="center", va="center", color=colour, fontsize=8)
    if zero_shot is not None:
        axes.axhline(0.5, color="white", linewidth=3)
    axes.set_xticks(range(columns), datasets, rotation=45, ha="right")
    axes.set_yticks(range(rows), labels)
    axes.set_xlabel("evaluated on")
    axes.set_title(title or "accuracy matrix (%)")
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=100)
    return path


def write_continual_results(
    out_dir: str | Path,
    matrix: Any,
    datasets: Sequence[str],
    method: str,
    zero_shot: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``accuracy_matrix.png`` of a continual run to ``out_dir``.

    ``results.json`` holds the three metrics first, then the method, the
    datasets, the matrix, the zero-shot row (``null`` without one), the
    per-dataset columns and the entries of ``extra``; read it back with
    :func:`vlkd.eval.read_results`.  Returns the three paths under the keys
    ``"json"``, ``"markdown"`` and ``"heatmap"``.
    """
    a, datasets, zero_shot = _check(matrix, datasets, zero_shot)
    metrics = continual_metrics(a)
    summary = {
        **{name: metrics[name] for name in _METRICS},
        "method": method,
        "datasets": datasets,
        "matrix": a,
        "zero_shot": zero_shot,
        **{key: value for key, value in metrics.items() if key not in _METRICS},
    }
    clashes = sorted(set(summary) & set(extra or {}))
    if clashes:
        raise ConfigError(f"extra results would overwrite {', '.join(clashes)}; rename those keys")
    summary.update(extra or {})
    json_path, md_path = write_results(summary, out_dir, name="results")
    md_path.write_text(
        f"# {method}\n\n{_metrics_table(metrics, datasets)}\n## Accuracy matrix (%)\n\n"
        f"{matrix_table(a, datasets, zero_shot)}",
        encoding="utf-8",
    )
    heatmap_path = Path(out_dir) / "accuracy_matrix.png"
    heatmap = plot_accuracy_matrix(a, datasets, heatmap_path, title=method, zero_shot=zero_shot)
    return {"json": json_path, "markdown": md_path, "heatmap": heatmap}


# --------------------------------------------------------------------------- helpers


def _metrics_table(metrics: Mapping[str, Any], datasets: list[str]) -> str:
    """Rows transfer / average / last; a column per dataset, then the mean over datasets."""
    rows = [
        {"metric": name, **dict(zip(datasets, metrics[f"{name}_per_dataset"])), "mean": metrics[name]}
        for name in _METRICS
    ]
    return markdown_table(rows, columns=["metric", *datasets, "mean"])


def _stage_labels(datasets: Sequence[str]) -> list[str]:
    return [f"after {name}" for name in datasets]


def _check(matrix: Any, datasets: Sequence[str], zero_shot: Any) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The matrix, the dataset names and the zero-shot row, validated against each other."""
    a = _as_matrix(matrix)
    if isinstance(datasets, str) or not isinstance(datasets, Sequence) or not all(isinstance(n, str) for n in datasets):
        raise ConfigError(f"datasets must be a list of names, got {datasets!r}; pass one name per matrix column")
    datasets = list(datasets)
    if len(datasets) != len(a) or len(set(datasets)) != len(datasets):
        raise ConfigError(
            f"datasets {datasets} do not name the {len(a)} matrix columns; "
            f"pass {len(a)} distinct names in sequence order"
        )
    if zero_shot is not None:
        zero_shot = _as_array(zero_shot, "zero-shot row")
        if zero_shot.shape != (len(a),):
            raise ConfigError(
                f"zero-shot row has shape {zero_shot.shape}, expected ({len(a)},); pass one accuracy per dataset"
            )
    return a, datasets, zero_shot


def _as_matrix(matrix: Any) -> np.ndarray:
    a = _as_array(matrix, "accuracy matrix")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ConfigError(
            f"accuracy matrix must be square (T x T), got shape {a.shape}; evaluate every dataset after every stage"
        )
    if len(a) < 2:
        raise ConfigError(f"accuracy matrix is {len(a)} x {len(a)}; a task sequence needs at least 2 datasets")
    return a


def _as_array(values: Any, what: str) -> np.ndarray:
    """``values`` (nested lists, NumPy, tensor) as a float64 array of finite percentages."""
    if hasattr(values, "detach"):  # a tensor, possibly on a GPU or in bfloat16
        values = values.detach().cpu()
        values = values.double() if values.is_floating_point() else values
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as error:
        message = f"{what} is not a rectangular array of numbers; pass one row of accuracies (percent) per stage"
        raise ConfigError(message) from error
    if array.dtype.kind not in "iuf":
        raise ConfigError(f"{what} must hold numbers, got {array.dtype} values; pass accuracies in percent")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ConfigError(f"{what} has NaN or infinite values; evaluate every dataset after every stage")
    if array.size and (array.min() < 0 or array.max() > 100):
        raise ConfigError(
            f"{what} values must be percentages in [0, 100], got {array.min():g} to {array.max():g}; "
            "pass accuracies in percent (fractions times 100)"
        )
    return array

