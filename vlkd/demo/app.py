"""The demo's page: a Gradio Blocks app around :func:`vlkd.demo.handler.score_video` and
:func:`vlkd.demo.handler.detect_objects`, one tab each.

The **Actions** tab takes a video (an upload or one of the shipped samples), free-text
action names separated by commas and the model to ask; it shows the top-k
actions with their probabilities and a plot over time of how well each action
matches each frame. The **Detection** tab takes an image and free-text object
names and shows the image with the boxes a trained EZAD detector finds, and a
table of them; without a detector it says how to get one. Models are loaded
once, before the app is built; every request reuses them. Input the handler
rejects becomes an error message in the page (``gr.Error``), and notes such as
"this long video was sampled sparsely" appear under the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gradio as gr
import pandas as pd

from vlkd.demo.handler import (
    DEFAULT_FPS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_SCORE_THRESHOLD,
    MAX_CLASSES,
    NO_DETECTOR_HELP,
    Detections,
    Scorer,
    Scores,
    detect_objects,
    score_video,
)
from vlkd.demo.samples import load_samples
from vlkd.errors import VlkdError

#: The API name of the scoring endpoint (``gradio_client``: ``client.predict(..., api_name="/score")``).
API_NAME = "score"
#: The API name of the detection endpoint (``client.predict(image, names, threshold, api_name="/detect")``).
DETECT_API_NAME = "detect"
#: The columns of the detection table.
DETECTION_COLUMNS = ["object", "score", "x", "y", "width", "height"]
#: Plot choices: key -> (radio text, y-axis title).
CURVES = {
    "probability": ("probability per frame (softmax over the actions)", "probability"),
    "cosine": ("cosine similarity per frame", "cosine similarity"),
}
DEFAULT_TOP_K = 5
# System fonts only: the page must look right without reaching any font server.
_THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])

_INTRO = """# Zero-shot action queries
Upload a video or pick a sample below, type the actions you are looking for, separated by commas,
and press **Score**. Nothing was trained on your action names: the model compares every frame with
each name's text embedding (averaged over {templates} prompt templates such as "a video of {{}}.").
The plot shows *when* each action is on screen."""

_DETECTION_INTRO = """# Open-vocabulary object detection
Upload an image, type the objects you are looking for, separated by commas, and press **Detect**.
Any names work: each is embedded by the detector's teacher ("{template}"), and every region the
detector proposes is compared with those embeddings. Boxes scoring above the threshold are drawn and listed."""


def build_demo(
    scorers: Sequence[Scorer],
    samples: Sequence[tuple[Path, object]] | None = None,
    fps: float = DEFAULT_FPS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_classes: int = MAX_CLASSES,
    detector=None,
) -> gr.Blocks:
    """The demo page for already loaded ``scorers`` (the first is selected).

    Args:
        scorers: the models to offer, e.g. the frozen teacher and a FROSTER student.
        samples: ``(video path, sample)`` pairs to offer as examples (default: the shipped ones).
        fps: frames scored per second of video.
        max_frames: most frames scored per video (long videos are sampled sparser).
        max_classes: most action (and object) names per query.
        detector: the detection tab's :class:`~vlkd.methods.ezad_inference.OpenVocabularyDetector`
            (:func:`vlkd.demo.handler.load_detector`); ``None``: the tab says how to get one.
    """
    if not scorers:
        raise ValueError("build_demo needs at least one model")
    by_label = {scorer.label: scorer for scorer in scorers}
    if samples is None:
        samples = load_samples()

    def score(video: str | None, names: str, model: str, curve: str, top_k: float):
        scorer = by_label.get(model, scorers[0])
        try:
            scores = score_video(video, names, scorer, fps=fps, max_frames=max_frames, max_classes=max_classes)
        except VlkdError as error:
            raise gr.Error(str(error), title="Cannot score this query") from None
        for note in scores.notes:
            gr.Warning(note)
        curve_key = curve if curve in CURVES else "probability"
        plot = gr.LinePlot(value=curve_frame(scores, curve_key), y_title=CURVES[curve_key][1])
        return top_k_label(scores, int(top_k)), plot, status_text(scores)

    def detect(image: str | None, names: str, threshold: float):
        try:
            detections = detect_objects(image, names, detector, score_threshold=threshold, max_classes=max_classes)
        except VlkdError as error:
            raise gr.Error(str(error), title="Cannot detect on this image") from None
        return detections.image, detection_frame(detections), detection_status(detections)

    with gr.Blocks(title="vlkd: zero-shot actions and objects", analytics_enabled=False) as demo:
        with gr.Tab("Actions", id="actions", elem_id="actions-tab"):
            gr.Markdown(_INTRO.format(templates=len(scorers[0].templates)))
            with gr.Row():
                with gr.Column(scale=1):
                    video = gr.Video(label="video", sources=["upload"], include_audio=True, height=260, elem_id="video")
                    names = gr.Textbox(label=f"action names, separated by commas (at most {max_classes})", lines=2,
                                       placeholder="red ball on grass, blue star rotating clockwise", elem_id="names")
                    model = gr.Radio([s.label for s in scorers], value=scorers[0].label, label="model",
                                     elem_id="model")
                    with gr.Row():
                        curve = gr.Radio([(text, key) for key, (text, _) in CURVES.items()], value="probability",
                                         label="plot", elem_id="curve")
                        top_k = gr.Slider(1, max_classes, value=DEFAULT_TOP_K, step=1, label="top-k", elem_id="top-k")
                    button = gr.Button("Score", variant="primary", elem_id="score")
                with gr.Column(scale=1):
                    label = gr.Label(label="top actions", elem_id="label")
                    status = gr.Markdown(label="status", elem_id="status")
                    if samples:
                        gr.Examples(
                            examples=[[str(path), sample.queries] for path, sample in samples],
                            example_labels=[getattr(sample, "title", Path(path).stem) for path, sample in samples],
                            inputs=[video, names],
                            label="samples from the SynthActions world (click one, then Score)",
                        )
            # Full width: time runs along x, and the legend has room for many action names.
            plot = gr.LinePlot(x="time (s)", y="score", color="action", x_title="time (s)",
                               y_title=CURVES["probability"][1], label="each action over time", elem_id="plot")
            gr.Markdown(
                f"Frames are scored at {fps:g} per second, at most {max_frames} per video (longer videos are sampled "
                f"evenly over their whole length); at most {max_classes} action names per query."
            )
            inputs, outputs = [video, names, model, curve, top_k], [label, plot, status]
            button.click(score, inputs, outputs, api_name=API_NAME)
            names.submit(score, inputs, outputs, api_name=False)
        with gr.Tab("Detection", id="detection", elem_id="detection-tab"):
            if detector is None:
                gr.Markdown(NO_DETECTOR_HELP, elem_id="no-detector")
            else:
                gr.Markdown(_DETECTION_INTRO.format(template=detector.templates[0].format("...")))
                with gr.Row():
                    with gr.Column(scale=1):
                        image = _undecoded(gr.Image(label="image", type="filepath", image_mode=None,
                                                    sources=["upload", "clipboard"], height=320,
                                                    elem_id="detect-image"))
                        hint = ", ".join(detector.trained_names[:4]) or "red ball, blue triangle"
                        objects = gr.Textbox(label=f"object names, separated by commas (at most {max_classes})",
                                             lines=2, placeholder=hint, elem_id="objects")
                        threshold = gr.Slider(0, 1, value=DEFAULT_SCORE_THRESHOLD, step=0.05,
                                              label="score threshold (boxes scoring above it are kept)",
                                              elem_id="threshold")
                        detect_button = gr.Button("Detect", variant="primary", elem_id="detect")
                    with gr.Column(scale=1):
                        drawn = gr.Image(label="detections", type="pil", format="png", interactive=False,
                                         elem_id="detections")
                        detect_status = gr.Markdown(label="status", elem_id="detect-status")
                table = gr.Dataframe(headers=DETECTION_COLUMNS, label="detections (boxes in the image's pixels)",
                                     interactive=False, elem_id="detection-table")
                gr.Markdown(f"Detector: **{detector.label}**. Scores are the softmax over the typed names and "
                            f"the background; at most {max_classes} names per query.")
                detect_inputs, detect_outputs = [image, objects, threshold], [drawn, table, detect_status]
                detect_button.click(detect, detect_inputs, detect_outputs, api_name=DETECT_API_NAME)
                objects.submit(detect, detect_inputs, detect_outputs, api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=32)
    return demo


def _undecoded(component: gr.Image) -> gr.Image:
    """``component`` handing the handler the uploaded file's path even when Gradio cannot open it as an
    image, so the page names the file and the fix (:func:`vlkd.demo.handler.read_image_file`) rather
    than failing in Gradio's own preprocessing."""
    preprocess = component.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except (OSError, ValueError):  # PIL cannot identify or read the file
            return getattr(payload, "path", None)

    component.preprocess = tolerant
    return component


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = 7860, prevent_thread_lock: bool = False,
           quiet: bool = False):
    """Serve ``demo`` on ``host:port``; blocks unless ``prevent_thread_lock`` (then ``demo.close()`` stops it)."""
    from vlkd.paths import asset_dir

    return demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=prevent_thread_lock,
        allowed_paths=[str(asset_dir() / "samples")],
        max_file_size="500mb",
        ssr_mode=False,
        quiet=quiet,
        theme=_THEME,
        footer_links=["api"],
    )


def top_k_label(scores: Scores, k: int) -> dict[str, float]:
    """The ``gr.Label`` value: the ``k`` most probable actions and their probabilities."""
    return dict(scores.top_k(max(1, k)))


def curve_frame(scores: Scores, curve: str = "probability") -> pd.DataFrame:
    """Long-format table for the plot: one row per (frame, action) with its time and score."""
    values = scores.frame_probabilities if curve == "probability" else scores.frame_similarity
    rows = [
        {"time (s)": round(time, 3), "score": float(values[t, k]), "action": name}
        for t, time in enumerate(scores.frame_times)
        for k, name in enumerate(scores.names)
    ]
    return pd.DataFrame(rows, columns=["time (s)", "score", "action"])


def status_text(scores: Scores) -> str:
    """One line on what was scored, plus any notes."""
    frames = len(scores.frame_times)
    line = (f"**{scores.model}** · {frames} frame{'s' if frames != 1 else ''} scored of {scores.video_frames} "
            f"({scores.video_seconds:.1f} s at {scores.fps:g} fps) · answered in {scores.seconds:.2f} s")
    return "\n\n".join([line, *(f"⚠️ {note}" for note in scores.notes)])



def detection_frame(detections: Detections) -> pd.DataFrame:
    """The detection table: one row per box, best first (object, score, x, y, width, height in pixels)."""
    return pd.DataFrame(detections.rows(), columns=DETECTION_COLUMNS)


def detection_status(detections: Detections) -> str:
    """One line on what was found: boxes per name, the image's size, the threshold and the time taken."""
    found = len(detections.objects)
    per_name = ", ".join(f"{name}: {count}" for name, count in detections.counts().items())
    return (f"**{detections.model}** · {found} box{'es' if found != 1 else ''} above "
            f"{detections.score_threshold:g} ({per_name}) · {detections.width} x {detections.height} px · "
            f"answered in {detections.seconds:.2f} s")
