"""Evaluation: accuracy metrics (top-k, mean class, base/novel harmonic mean) and result tables."""

from vlkd.eval.metrics import (
    MeanStd,
    OpenVocabAccuracy,
    harmonic_mean,
    mean_class_accuracy,
    summarize_seeds,
    topk_accuracy,
)
from vlkd.eval.results import markdown_table, read_results, write_results

__all__ = [
    "MeanStd",
    "OpenVocabAccuracy",
    "harmonic_mean",
    "markdown_table",
    "mean_class_accuracy",
    "read_results",
    "summarize_seeds",
    "topk_accuracy",
    "write_results",
]
