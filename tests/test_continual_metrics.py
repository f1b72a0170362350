"""MTIL continual-learning metrics (transfer / average / last), the matrix table, the heatmap and results files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlkd.errors import ConfigError
from vlkd.eval import continual_metrics, matrix_table, plot_accuracy_matrix, read_results, write_continual_results

# Rows: after training stage 1, 2, 3; columns: datasets 1, 2, 3 in sequence order.
#   transfer: column 2 over stage 1 -> 30; column 3 over stages 1-2 -> (40 + 50) / 2 = 45;
#             (30 + 45) / 2 = 37.5
#   average:  (80 + 30 + 40 + 70 + 90 + 50 + 60 + 90 + 93) / 9 = 603 / 9 = 67
#             column means (80 + 70 + 60) / 3 = 70, (30 + 90 + 90) / 3 = 70, (40 + 50 + 93) / 3 = 61
#   last:     (60 + 90 + 93) / 3 = 243 / 3 = 81
MATRIX_3 = [
    [80.0, 30.0, 40.0],
    [70.0, 90.0, 50.0],
    [60.0, 90.0, 93.0],
]
DATASETS_3 = ["aircraft", "caltech101", "cifar100"]

# transfer: column 2 -> 20; column 3 -> (30 + 50) / 2 = 40; column 4 -> (40 + 60 + 80) / 3 = 60;
#           (20 + 40 + 60) / 3 = 40  (pooling the six upper cells instead would give 280 / 6 = 46.67)
# average:  (180 + 285 + 327 + 320) / 16 = 1112 / 16 = 69.5
#           column means 300 / 4 = 75, 275 / 4 = 68.75, 260 / 4 = 65, 277 / 4 = 69.25
# last:     (60 + 75 + 88 + 97) / 4 = 320 / 4 = 80
MATRIX_4 = [
    [90.0, 20.0, 30.0, 40.0],
    [80.0, 95.0, 50.0, 60.0],
    [70.0, 85.0, 92.0, 80.0],
    [60.0, 75.0, 88.0, 97.0],
]
DATASETS_4 = ["aircraft", "caltech101", "cifar100", "dtd"]


def test_three_by_three_metrics_worked_by_hand():
    metrics = continual_metrics(MATRIX_3)
    assert metrics["transfer"] == 37.5
    assert metrics["average"] == 67.0
    assert metrics["last"] == 81.0
    assert all(isinstance(metrics[key], float) for key in ("transfer", "average", "last"))


def test_three_by_three_per_dataset_columns():
    metrics = continual_metrics(MATRIX_3)
    assert metrics["transfer_per_dataset"] == [None, 30.0, 45.0]
    assert metrics["average_per_dataset"] == [70.0, 70.0, 61.0]
    assert metrics["last_per_dataset"] == [60.0, 90.0, 93.0]


def test_four_by_four_metrics_average_columns_before_datasets():
    metrics = continual_metrics(MATRIX_4)
    assert metrics["transfer"] == 40.0
    assert metrics["average"] == 69.5
    assert metrics["last"] == 80.0
    assert metrics["transfer_per_dataset"] == [None, 20.0, 40.0, 60.0]
    assert metrics["average_per_dataset"] == [75.0, 68.75, 65.0, 69.25]
    assert metrics["last_per_dataset"] == [60.0, 75.0, 88.0, 97.0]


def test_transfer_ignores_the_diagonal_and_lower_triangle():
    changed = np.array(MATRIX_4)
    changed[np.tril_indices(4)] = 5.0  # every cell at or after the stage that trained on its dataset
    before, after = continual_metrics(MATRIX_4), continual_metrics(changed)
    assert after["transfer"] == before["transfer"]
    assert after["average"] != before["average"]
    assert after["last"] != before["last"]


def test_torch_numpy_and_list_inputs_agree():
    from_list = continual_metrics(MATRIX_4)
    assert continual_metrics(np.array(MATRIX_4)) == from_list
    assert continual_metrics(torch.tensor(MATRIX_4)) == from_list  # float32
    assert continual_metrics(torch.tensor(MATRIX_4, dtype=torch.float64)) == from_list
    assert continual_metrics(torch.tensor(MATRIX_4, dtype=torch.bfloat16)) == from_list  # integers below 256 are exact
    assert continual_metrics(torch.tensor(MATRIX_4, requires_grad=True)) == from_list
    assert continual_metrics(np.array(MATRIX_4, dtype=np.int64)) == from_list


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([[50.0, 60.0, 70.0], [40.0, 50.0, 60.0]], r"must be square \(T x T\), got shape \(2, 3\)"),
        ([50.0, 60.0], r"must be square \(T x T\), got shape \(2,\)"),
        ([[50.0]], r"is 1 x 1; a task sequence needs at least 2 datasets"),
        ([[50.0, math.nan], [40.0, 50.0]], r"has NaN or infinite values"),
        ([[50.0, math.inf], [40.0, 50.0]], r"has NaN or infinite values"),
        ([[50.0, 101.0], [40.0, 50.0]], r"percentages in \[0, 100\], got 40 to 101"),
        ([[50.0, -1.0], [40.0, 50.0]], r"percentages in \[0, 100\], got -1 to 50"),
        ([["a", "b"], ["c", "d"]], r"must hold numbers, got <U1 values"),
        ([[True, False], [False, True]], r"must hold numbers, got bool values"),
        ("accuracies", r"must hold numbers"),
        (None, r"must hold numbers, got object values"),
        ([[50.0, 60.0], [40.0]], r"not a rectangular array of numbers"),
    ],
)
def test_invalid_matrices_raise_a_one_line_config_error(matrix, message):
    with pytest.raises(ConfigError, match=message) as error:
        continual_metrics(matrix)
    assert "\n" not in str(error.value)
    assert "; " in str(error.value)  # the problem, then the fix


def test_dataset_names_and_zero_shot_row_are_checked_against_the_matrix(tmp_path):
    with pytest.raises(ConfigError, match=r"do not name the 3 matrix columns; pass 3 distinct names"):
        matrix_table(MATRIX_3, DATASETS_3[:2])
    with pytest.raises(ConfigError, match=r"do not name the 3 matrix columns"):
        matrix_table(MATRIX_3, ["a", "a", "b"])
    with pytest.raises(ConfigError, match=r"datasets must be a list of names"):
        matrix_table(MATRIX_3, "abc")
    with pytest.raises(ConfigError, match=r"zero-shot row has shape \(2,\), expected \(3,\)"):
        plot_accuracy_matrix(MATRIX_3, DATASETS_3, tmp_path / "m.png", zero_shot=[50.0, 60.0])
    with pytest.raises(ConfigError, match=r"zero-shot row values must be percentages"):
        write_continual_results(tmp_path, MATRIX_3, DATASETS_3, "finetune", zero_shot=[50.0, 60.0, 0.7e3])
    assert not (tmp_path / "m.png").exists()
    assert not (tmp_path / "results.json").exists()


def test_matrix_table_rows_are_stages_and_columns_datasets():
    table = matrix_table(MATRIX_3, DATASETS_3, zero_shot=[25.0, 80.5, 60.25])
    assert table.splitlines() == [
        "| stage | aircraft | caltech101 | cifar100 |",
        "| --- | --- | --- | --- |",
        "| zero-shot | 25.0 | 80.5 | 60.2 |",
        "| after aircraft | 80.0 | 30.0 | 40.0 |",
        "| after caltech101 | 70.0 | 90.0 | 50.0 |",
        "| after cifar100 | 60.0 | 90.0 | 93.0 |",
    ]
    assert "zero-shot" not in matrix_table(MATRIX_3, DATASETS_3)
    assert "| after aircraft | 80.00 | 30.00 | 40.00 |" in matrix_table(MATRIX_3, DATASETS_3, digits=2)


def _png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def test_heatmap_is_a_png_whose_pixels_follow_the_matrix(tmp_path):
    first = plot_accuracy_matrix(MATRIX_3, DATASETS_3, tmp_path / "a" / "first.png", title="finetune")
    assert first == tmp_path / "a" / "first.png"
    pixels = _png(first)
    height, width = pixels.shape[:2]
    assert 200 <= width <= 2000 and 150 <= height <= 2000
    assert pixels.std() > 0.05  # not a blank canvas

    other = np.array(MATRIX_3)
    other[0, 1] = 0.0
    second = _png(plot_accuracy_matrix(other, DATASETS_3, tmp_path / "second.png", title="finetune"))
    assert second.shape == pixels.shape
    assert not np.array_equal(second, pixels)

    # Same matrix, same picture: the difference above comes from the values, not from the run.
    again = _png(plot_accuracy_matrix(MATRIX_3, DATASETS_3, tmp_path / "again.png", title="finetune"))
    assert np.array_equal(again, pixels)


@pytest.mark.parametrize("value", [20.0, 80.0])
def test_heatmap_colour_scale_is_fixed_from_0_to_100(tmp_path, value):
    # A constant matrix fills the cells with one colour: viridis(value / 100) on a fixed 0-100 scale,
    # whereas a scale fitted to the data would have no range to spread a constant over.
    from matplotlib import colormaps

    pixels = _png(plot_accuracy_matrix(np.full((2, 2), value), ["a", "b"], tmp_path / "constant.png"))
    rgb = np.round(pixels[..., :3].reshape(-1, 3) * 255).astype(int)
    colours, counts = np.unique(rgb[(rgb < 250).any(axis=1)], axis=0, return_counts=True)
    dominant = colours[counts.argmax()]
    expected = np.round(np.array(colormaps["viridis"](value / 100.0)[:3]) * 255)
    assert np.abs(dominant - expected).max() <= 2


def test_heatmap_draws_the_zero_shot_row_above(tmp_path):
    plain = _png(plot_accuracy_matrix(MATRIX_3, DATASETS_3, tmp_path / "plain.png"))
    with_zero_shot = _png(
        plot_accuracy_matrix(MATRIX_3, DATASETS_3, tmp_path / "zs.png", zero_shot=[50.0, 60.0, 70.0])
    )
    assert with_zero_shot.shape[0] > plain.shape[0]
    assert with_zero_shot.shape[1] == plain.shape[1]


def test_write_continual_results_round_trips(tmp_path):
    zero_shot = [40.0, 85.0, 65.0]
    paths = write_continual_results(
        tmp_path / "run", torch.tensor(MATRIX_3), DATASETS_3, "zscl", zero_shot=zero_shot, extra={"seed": 1}
    )
    assert paths == {
        "json": tmp_path / "run" / "results.json",
        "markdown": tmp_path / "run" / "results.md",
        "heatmap": tmp_path / "run" / "accuracy_matrix.png",
    }
    results = read_results(paths["json"])
    assert list(results)[:3] == ["transfer", "average", "last"]  # the headline first, like other methods
    assert results == {
        "transfer": 37.5,
        "average": 67.0,
        "last": 81.0,
        "method": "zscl",
        "datasets": DATASETS_3,
        "matrix": MATRIX_3,
        "zero_shot": zero_shot,
        "transfer_per_dataset": [None, 30.0, 45.0],
        "average_per_dataset": [70.0, 70.0, 61.0],
        "last_per_dataset": [60.0, 90.0, 93.0],
        "seed": 1,
    }

    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# zscl\n")
    assert "| metric | aircraft | caltech101 | cifar100 | mean |" in markdown
    assert "| transfer | - | 30.00 | 45.00 | 37.50 |" in markdown
    assert "| last | 60.00 | 90.00 | 93.00 | 81.00 |" in markdown
    assert "| zero-shot | 40.0 | 85.0 | 65.0 |" in markdown
    assert "| after cifar100 | 60.0 | 90.0 | 93.0 |" in markdown
    _png(paths["heatmap"])


def test_write_continual_results_without_zero_shot_stores_null(tmp_path):
    paths = write_continual_results(tmp_path, MATRIX_4, DATASETS_4, "finetune")
    results = read_results(paths["json"])
    assert results["zero_shot"] is None
    assert results["matrix"] == MATRIX_4
    assert results["transfer"] == 40.0
    assert "zero-shot" not in paths["markdown"].read_text()


def test_extra_entries_may_not_overwrite_the_record(tmp_path):
    with pytest.raises(ConfigError, match=r"extra results would overwrite last, method; rename those keys"):
        write_continual_results(tmp_path, MATRIX_3, DATASETS_3, "finetune", extra={"method": "x", "last": 1.0})
