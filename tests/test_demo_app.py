"""The demo page served for real: called through gradio_client, and driven in headless Chromium with Playwright.

The browser test needs Playwright (`pip install playwright`, in the dev extra) and a
Chromium binary: Debian's `chromium` package (`apt-get install chromium`, which
.ci/run installs), or any binary named by the VLKD_CHROMIUM environment variable.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client")

from tests.conftest import free_port  # noqa: E402
from vlkd.commands.teacher_options import DEFAULT_TEACHER  # noqa: E402
from vlkd.data.synthetic import clip_rng, render_clip  # noqa: E402
from vlkd.data.writer import write_video  # noqa: E402
from tests.test_demo import write_random_detector, write_scene  # noqa: E402
from vlkd.demo import load_detector, load_teacher_scorer  # noqa: E402
from vlkd.demo.app import API_NAME, DETECT_API_NAME, DETECTION_COLUMNS, build_demo, launch  # noqa: E402
from vlkd.demo.handler import DEFAULT_MAX_FRAMES, NO_DETECTOR_HELP  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "samples" / "three_scenes.mp4"
SCENES = "orange ball on grass, red star in water, blue star on sand"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """The demo with the shipped teacher and an (untrained) EZAD detector, served on a free local port for the
    module's tests."""
    detector = load_detector(write_random_detector(tmp_path_factory.mktemp("detector") / "ezad_synth"))
    demo = build_demo([load_teacher_scorer(*DEFAULT_TEACHER)], detector=detector)
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(url):
    return gradio_client.Client(url, verbose=False)


def _ask(client, video: Path, names: str, curve: str = "probability", top_k: int = 5):
    model = f"frozen teacher: {DEFAULT_TEACHER[0]} ({DEFAULT_TEACHER[1]})"
    return client.predict(gradio_client.handle_file(str(video)), names, model, curve, top_k,
                          api_name=f"/{API_NAME}")


def test_the_served_app_answers_with_the_top_k_actions_a_plot_and_a_status(client):
    label, plot, status = _ask(client, SAMPLE, SCENES + ", green square on sand", top_k=3)
    assert label["label"] == "orange ball on grass"
    confidences = label["confidences"]
    assert [c["label"] for c in confidences][:1] == ["orange ball on grass"] and len(confidences) == 3
    assert [c["confidence"] for c in confidences] == sorted((c["confidence"] for c in confidences), reverse=True)
    rows = plot["value"]["data"]
    assert plot["value"]["columns"] == ["time (s)", "score", "action"]
    assert len(rows) == 48 * 4  # one row per frame and action
    assert plot["y_title"] == "probability"
    assert "48 frames scored of 48" in status


def test_the_served_app_plots_cosine_similarity_on_request(client):
    _, plot, _ = _ask(client, SAMPLE, SCENES, curve="cosine")
    assert plot["y_title"] == "cosine similarity"
    scores = [row[1] for row in plot["value"]["data"]]
    assert all(-1.0 <= s <= 1.0 for s in scores) and abs(sum(scores) - 48) > 1  # not per-frame probabilities


def test_bad_input_comes_back_as_a_message_not_a_crash(client, tmp_path):
    with pytest.raises(gradio_client.exceptions.AppError, match="'orange ball on grass' is given twice"):
        _ask(client, SAMPLE, "orange ball on grass, orange ball on grass")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(gradio_client.exceptions.AppError, match="cannot read notes.mp4 as a video"):
        _ask(client, text, "running")
    # The app still answers afterwards.
    label, _, _ = _ask(client, SAMPLE, SCENES)
    assert label["label"] == "orange ball on grass"


def test_a_long_video_is_scored_with_a_note_in_the_page(client, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "long.mp4", pixels, fps=20, crf=35)  # 10 s: 80 frames at 8 fps, over the limit
    _, plot, status = _ask(client, video, "noise, a red ball")
    assert len(plot["value"]["data"]) == DEFAULT_MAX_FRAMES * 2
    assert f"{DEFAULT_MAX_FRAMES} frames spread over all of it" in status


# --------------------------------------------------------------------------- the detection tab

def _detect(client, image: Path, names: str, threshold: float = 0.0):
    return client.predict(gradio_client.handle_file(str(image)), names, threshold, api_name=f"/{DETECT_API_NAME}")


def test_the_served_app_detects_named_objects_with_boxes_and_a_table(client, tmp_path):
    from PIL import Image

    drawn, table, status = _detect(client, write_scene(tmp_path / "scene.png"), "red ball, blue triangle")
    with Image.open(drawn) as image:
        assert image.size == (128 * 6, 96 * 6)
    assert table["headers"] == DETECTION_COLUMNS and table["data"]
    assert {row[0] for row in table["data"]} <= {"red ball", "blue triangle"}
    scores = [row[1] for row in table["data"]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert f"{len(table['data'])} boxes above 0" in status and "128 x 96 px" in status
    _, high, _ = _detect(client, tmp_path / "scene.png", "red ball, blue triangle", threshold=0.9)
    assert high["data"] and all(row[1] > 0.9 for row in high["data"])


def test_a_bad_image_or_bad_names_come_back_as_a_message(client, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(gradio_client.exceptions.AppError, match="cannot read notes.png as an image"):
        _detect(client, notes, "red ball")
    with pytest.raises(gradio_client.exceptions.AppError, match="'Red ball' is given twice"):
        _detect(client, write_scene(tmp_path / "scene.png"), "red ball, Red ball")
    _, table, _ = _detect(client, tmp_path / "scene.png", "red ball")  # and the app still answers
    assert table["headers"] == DETECTION_COLUMNS


def test_without_a_detector_the_detection_tab_says_how_to_get_one():
    demo = build_demo([load_teacher_scorer(*DEFAULT_TEACHER)])
    texts = [getattr(block, "value", None) for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert NO_DETECTOR_HELP in texts
    assert DETECT_API_NAME not in {fn.api_name for fn in demo.fns.values()}
    assert any(isinstance(block, gr.Tab) and block.label == "Detection" for block in demo.blocks.values())


# --------------------------------------------------------------------------- a real browser

def _chromium() -> str | None:
    candidates = [os.environ.get("VLKD_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def page(url):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (in the dev extra)")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium binary: apt-get install chromium, or set VLKD_CHROMIUM to one")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url, wait_until="networkidle")
        yield page
        browser.close()


def test_in_a_browser_an_uploaded_video_gets_its_label_and_plot(page, tmp_path):
    clip = render_clip(clip_rng(7, "flat", "purple ball in water", "val", 0), "purple ball in water", "flat", 64, 16)
    video = write_video(tmp_path / "upload.mp4", clip, fps=8)
    page.locator("#video input[type=file]").set_input_files(str(video))
    page.locator("#names textarea").fill("red square on grass, purple ball in water, yellow star on snow")
    page.locator("#score").click()
    status = page.locator("#status")
    status.get_by_text("answered in").wait_for()
    assert "16 frames scored of 16" in status.inner_text()
    assert page.locator("#label [data-testid=label-output-value]").inner_text() == "purple ball in water"
    # The plot: a Vega chart with one line per action and the actions in its legend.
    chart = page.locator("#plot svg.marks")
    chart.wait_for()
    assert page.locator("#plot .mark-line path").count() == 3
    legend = chart.text_content()
    for name in ("red square on grass", "purple ball in water", "yellow star on snow"):
        assert name in legend


def test_in_a_browser_bad_names_show_an_error_message(page):
    page.locator("#names textarea").fill("running, ")
    page.locator("#score").click()
    toast = page.get_by_text("an action name is empty: remove the extra comma")
    toast.wait_for()
    assert toast.is_visible()


def test_in_a_browser_the_detection_tab_draws_boxes_and_lists_them(page, tmp_path):
    page.get_by_role("tab", name="Detection").click()
    page.locator("#detect-image input[type=file]").set_input_files(str(write_scene(tmp_path / "scene.png")))
    page.locator("#objects textarea").fill("red ball, blue triangle")
    page.locator("#detect").click()
    status = page.locator("#detect-status")
    status.get_by_text("answered in").wait_for()
    assert "128 x 96 px" in status.inner_text()
    page.locator("#detections img").wait_for()
    found = int(status.inner_text().split("·")[1].split()[0])  # "N boxes above 0.3"
    assert found > 0
    # The table lists them (a header row and one row per box) by the typed names.
    grid = page.locator("#detection-table [role=grid]")
    assert grid.get_attribute("aria-rowcount") == str(found + 1)
    assert re.search(r"red ball|blue triangle", grid.inner_text())
    page.get_by_role("tab", name="Actions").click()
