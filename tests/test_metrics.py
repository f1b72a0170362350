"""Accuracy metrics, the DDP-safe accumulator, seed summaries and result files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from vlkd.eval.metrics import (
    MeanStd,
    OpenVocabAccuracy,
    harmonic_mean,
    mean_class_accuracy,
    summarize_seeds,
    topk_accuracy,
)
from vlkd.eval.results import format_cell, markdown_table, read_results, write_results

# Four samples, three classes.  Ranking per row (best first) and target:
#   row 0: 0 > 1 > 2, target 0 -> top1 hit
#   row 1: 2 > 1 > 0, target 1 -> top2 hit
#   row 2: 1 > 2 > 0, target 0 -> top3 only
#   row 3: 2 > 0 > 1, target 2 -> top1 hit
LOGITS = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0], [0.1, 0.9, 0.5], [0.5, 0.2, 0.7]])
TARGETS = torch.tensor([0, 1, 0, 2])


def test_topk_accuracy_hand_computed():
    assert topk_accuracy(LOGITS, TARGETS, ks=(1, 2, 3)) == pytest.approx({"top1": 50.0, "top2": 75.0, "top3": 100.0})


def test_topk_larger_than_num_classes_is_capped():
    # k=5 with 3 classes: every target is within the top 3, so 100 %, and the key stays "top5".
    assert topk_accuracy(LOGITS, TARGETS) == pytest.approx({"top1": 50.0, "top5": 100.0})


def test_topk_matches_torchmetrics_on_random_data():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 20, generator=generator)
    targets = torch.randint(0, 20, (500,), generator=generator)
    ours = topk_accuracy(logits, targets, ks=(1, 5))
    for k in (1, 5):
        reference = MulticlassAccuracy(num_classes=20, top_k=k, average="micro")(logits, targets)
        assert ours[f"top{k}"] == pytest.approx(100 * reference.item(), abs=1e-4)


def test_mean_class_accuracy_hand_computed_and_skips_absent_classes():
    # Per-class recall: class 0 -> 1/2, class 1 -> 0/1, class 2 -> 1/1; mean = 50 %.
    assert mean_class_accuracy(LOGITS, TARGETS, num_classes=3) == pytest.approx(50.0)
    # Only classes 0 and 2 present (rows 0, 2, 3): recalls 1/2 and 1/1 -> 75 %, not (0.5 + 1 + 0) / 3.
    subset = [0, 2, 3]
    assert mean_class_accuracy(LOGITS[subset], TARGETS[subset]) == pytest.approx(75.0)
    # torchmetrics' macro average differs here: class 1 is predicted once, so it counts as a 0 % class.
    reference = MulticlassAccuracy(num_classes=3, average="macro")(LOGITS[subset], TARGETS[subset])
    assert 100 * reference.item() == pytest.approx(50.0)


def test_mean_class_accuracy_differs_from_micro_on_imbalanced_data():
    logits = torch.tensor([[1.0, 0.0]] * 9 + [[1.0, 0.0]])  # always predicts class 0
    targets = torch.tensor([0] * 9 + [1])
    assert topk_accuracy(logits, targets, ks=(1,))["top1"] == pytest.approx(90.0)
    assert mean_class_accuracy(logits, targets) == pytest.approx(50.0)


@pytest.mark.parametrize(
    "logits, targets, message",
    [
        (torch.zeros(2, 3), torch.tensor([0, 3]), "target ids must be in 0..2"),
        (torch.zeros(2, 3), torch.tensor([0]), "targets must be"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), "logits must be"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "integer class ids"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "no samples"),
    ],
)
def test_invalid_inputs(logits, targets, message):
    with pytest.raises(ValueError, match=message):
        topk_accuracy(logits, targets)
    with pytest.raises(ValueError, match=message):
        mean_class_accuracy(logits, targets)


def test_mean_class_accuracy_checks_num_classes():
    with pytest.raises(ValueError, match="num_classes=4"):
        mean_class_accuracy(LOGITS, TARGETS, num_classes=4)


def test_harmonic_mean():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(70.0, 70.0) == pytest.approx(70.0)
    assert harmonic_mean(0.0, 50.0) == 0.0 and harmonic_mean(50.0, 0.0) == 0.0 and harmonic_mean(0, 0) == 0.0
    assert harmonic_mean(torch.tensor(40.0), np.float64(60.0)) == pytest.approx(48.0)
    with pytest.raises(ValueError):
        harmonic_mean(-1.0, 50.0)


def test_summarize_seeds():
    runs = [
        {"base_top1": 1.0, "novel_top1": torch.tensor(10.0), "dataset": "k400"},
        {"base_top1": 3, "novel_top1": np.float32(10.0), "dataset": "k400"},
    ]
    summary = summarize_seeds(runs)
    assert list(summary) == ["base_top1", "novel_top1"]  # the string entry is skipped
    assert summary["base_top1"] == pytest.approx((2.0, math.sqrt(2.0)))  # sample std, ddof=1
    assert summary["novel_top1"] == (10.0, 0.0)
    assert summarize_seeds(runs, ddof=0)["base_top1"] == pytest.approx((2.0, 1.0))
    assert summarize_seeds(runs[:1])["base_top1"] == (1.0, 0.0)
    assert summarize_seeds(runs)["base_top1"].mean == pytest.approx(2.0)


def test_summarize_seeds_errors():
    with pytest.raises(ValueError, match="at least one run"):
        summarize_seeds([])
    with pytest.raises(ValueError, match="run 1 lacks a numeric 'hm'"):
        summarize_seeds([{"hm": 1.0}, {"other": 2.0}])


# --------------------------------------------------------------------------- accumulator


def random_batch(num_samples: int, num_classes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_samples, num_classes, generator=generator), torch.randint(
        0, num_classes, (num_samples,), generator=generator
    )


def test_open_vocab_accuracy_matches_functional_metrics_over_batches():
    base_logits, base_targets = random_batch(100, 7, seed=1)
    novel_logits, novel_targets = random_batch(60, 4, seed=2)
    metric = OpenVocabAccuracy({"base": 7, "novel": 4}, top_k=5)
    for start in range(0, 100, 32):
        metric.update(base_logits[start : start + 32], base_targets[start : start + 32], group="base")
    for start in range(0, 60, 25):
        metric.update(novel_logits[start : start + 25], novel_targets[start : start + 25], group="novel")
    result = {key: value.item() for key, value in metric.compute().items()}
    base = topk_accuracy(base_logits, base_targets)
    novel = topk_accuracy(novel_logits, novel_targets)
    assert result == pytest.approx(
        {
            "base_top1": base["top1"],
            "base_top5": base["top5"],
            "base_mean_class": mean_class_accuracy(base_logits, base_targets),
            "novel_top1": novel["top1"],
            "novel_top5": 100.0,  # 4 novel classes: top-5 is capped at 4
            "novel_mean_class": mean_class_accuracy(novel_logits, novel_targets),
            "hm": harmonic_mean(base["top1"], novel["top1"]),
            "base_videos": 100,
            "novel_videos": 60,
        },
        abs=1e-4,
    )


def test_open_vocab_accuracy_merges_like_ddp_ranks():
    # Two "ranks" see disjoint halves; merging their (summed) states gives the full-data result.
    logits, targets = random_batch(90, 6, seed=3)
    rank0, rank1, single = (OpenVocabAccuracy({"base": 6}) for _ in range(3))
    rank0.update(logits[:50], targets[:50])
    rank1.update(logits[50:], targets[50:])
    single.update(logits, targets)
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), single.compute()
    assert merged.keys() == expected.keys() == {"base_top1", "base_top5", "base_mean_class", "base_videos"}
    assert merged["base_videos"].item() == 90
    for key in expected:
        assert merged[key].item() == pytest.approx(expected[key].item())


def test_open_vocab_accuracy_reports_only_evaluated_groups_and_resets():
    metric = OpenVocabAccuracy({"base": 3, "novel": 3})
    metric.update(LOGITS, TARGETS, group="novel")
    result = metric.compute()
    assert set(result) == {"novel_top1", "novel_top5", "novel_mean_class", "novel_videos"}  # no base, so no hm
    assert result["novel_top1"].item() == pytest.approx(50.0)
    metric.reset()
    metric.update(LOGITS, TARGETS, group="base")
    assert "novel_top1" not in metric.compute()


def test_open_vocab_accuracy_rejects_mismatched_input():
    metric = OpenVocabAccuracy({"base": 3, "novel": 2})
    with pytest.raises(ValueError, match="unknown group 'val'"):
        metric.update(LOGITS, TARGETS, group="val")
    with pytest.raises(ValueError, match="group 'novel' has 2 classes"):
        metric.update(LOGITS, TARGETS, group="novel")
    with pytest.raises(ValueError):
        OpenVocabAccuracy({})


def test_open_vocab_accuracy_scores_named_class_subsets():
    logits = torch.eye(4)[[0, 1, 2, 3, 0, 0]]  # predictions 0 1 2 3 0 0
    targets = torch.tensor([0, 1, 2, 3, 2, 3])  # the last two are wrong, both in classes {2, 3}
    metric = OpenVocabAccuracy({"base": 4}, subsets={"base": {"static": [0, 1], "temporal": [2, 3]}})
    metric.update(logits, targets, group="base")
    result = metric.compute()
    assert result["base_static_top1"].item() == pytest.approx(100.0)
    assert result["base_temporal_top1"].item() == pytest.approx(50.0)
    assert result["base_top1"].item() == pytest.approx(100.0 * 4 / 6)
    with pytest.raises(ValueError, match="outside"):
        OpenVocabAccuracy({"base": 4}, subsets={"base": {"static": [4]}})
    with pytest.raises(ValueError, match="unknown group"):
        OpenVocabAccuracy({"base": 4}, subsets={"novel": {"static": [0]}})


# --------------------------------------------------------------------------- result files


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Table lines of a Markdown document as dicts (test-side parser, independent of the writer)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    header, separator, *body = split
    assert set(separator) == {"---"}
    return [dict(zip(header, row, strict=True)) for row in body]


def test_write_results_round_trip(tmp_path):
    results = {
        "k400": {"base_top1": MeanStd(70.123456789, 0.5), "novel_top1": (50.0, 1.25), "hm": torch.tensor(58.3)},
        "ucf101": {"top1": np.float64(81.0), "videos": 3783, "top5": float("nan")},
    }
    json_path, md_path = write_results(results, tmp_path / "out", name="bench")
    assert (json_path.name, md_path.name) == ("bench.json", "bench.md")

    raw = json.loads(json_path.read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN literal
    assert raw["k400"]["base_top1"] == {"mean": 70.1235, "std": 0.5}
    assert raw["k400"]["hm"] == 58.3 and raw["ucf101"]["top5"] is None and raw["ucf101"]["videos"] == 3783

    loaded = read_results(json_path)
    assert loaded["k400"]["novel_top1"] == MeanStd(50.0, 1.25)
    assert isinstance(loaded["k400"]["base_top1"], MeanStd)

    rows = parse_markdown_table(md_path.read_text())
    assert rows == [
        {"name": "k400", "base_top1": "70.12 ± 0.50", "novel_top1": "50.00 ± 1.25", "hm": "58.30",
         "top1": "-", "videos": "-", "top5": "-"},
        {"name": "ucf101", "base_top1": "-", "novel_top1": "-", "hm": "-",
         "top1": "81.00", "videos": "3783", "top5": "nan"},
    ]


def test_write_results_flat_dict_is_a_metric_value_table(tmp_path):
    _, md_path = write_results({"base_top1": 71.0, "hm": (60.0, 2.0)}, tmp_path)
    assert md_path.read_text().startswith("# results\n")
    assert parse_markdown_table(md_path.read_text()) == [
        {"metric": "base_top1", "value": "71.00"},
        {"metric": "hm", "value": "60.00 ± 2.00"},
    ]


def test_markdown_table_columns_and_escaping():
    rows = [{"method": "a|b", "top1": 1.0, "extra": 3}, {"method": "c", "top1": (2.0, 0.125)}]
    assert markdown_table(rows, columns=["top1", "method"], digits=1) == (
        "| top1 | method |\n| --- | --- |\n| 1.0 | a\\|b |\n| 2.0 ± 0.1 | c |\n"
    )
    assert markdown_table([]) == ""
    assert format_cell(None) == "-" and format_cell(True) == "True" and format_cell([1, 2]) == "[1,2]"


def test_read_results_errors(tmp_path):
    from vlkd.errors import ConfigError, MissingFileError

    with pytest.raises(MissingFileError):
        read_results(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_results(tmp_path / "bad.json")
