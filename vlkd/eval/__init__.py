"""Evaluation: accuracy metrics (top-k, mean class, base/novel harmonic mean), continual-learning metrics and result tables."""

from vlkd.eval.continual import continual_metrics, matrix_table, plot_accuracy_matrix, write_continual_results
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
    "continual_metrics",
    "harmonic_mean",
    "markdown_table",
    "matrix_table",
    "mean_class_accuracy",
    "plot_accuracy_matrix",
    "read_results",
    "summarize_seeds",
    "topk_accuracy",
    "write_continual_results",
    "write_results",
]
