"""The ``vlkd demo`` web page: zero-shot action queries on a video, with a plot over time, and
open-vocabulary object detection on an image with a trained EZAD detector.

* :mod:`~vlkd.demo.handler`: the scoring and detection logic (no UI): decode, embed, score or
  detect, reject bad input;
* :mod:`~vlkd.demo.app`: the Gradio page around it (needs ``pip install "vlkd[demo]"``);
* :mod:`~vlkd.demo.samples`: the SynthActions sample clips shipped in ``data/samples``.

Importing this package does not import Gradio.
"""

from vlkd.demo.handler import (
    DemoInputError,
    Detections,
    ExportedStudentScorer,
    Scorer,
    Scores,
    StudentScorer,
    TeacherScorer,
    detect_objects,
    load_detector,
    load_student_scorer,
    load_teacher_scorer,
    parse_names,
    score_video,
)

__all__ = [
    "DemoInputError",
    "Detections",
    "ExportedStudentScorer",
    "Scorer",
    "Scores",
    "StudentScorer",
    "TeacherScorer",
    "detect_objects",
    "load_detector",
    "load_student_scorer",
    "load_teacher_scorer",
    "parse_names",
    "score_video",
]
