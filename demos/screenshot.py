"""Take the demo's screenshot for the docs: a real query in headless Chromium.

    python demos/screenshot.py --out docs/images/demo.png [--chromium /usr/bin/chromium]

Serves the demo with the shipped teacher on a free local port, uploads the
three-scene sample, asks for its actions and saves a PNG of the whole page.
Needs ``pip install "vlkd[demo]" playwright`` and a Chromium binary.
"""

from __future__ import annotations

import argparse
import shutil
import socket
from pathlib import Path

from vlkd.commands.teacher_options import DEFAULT_TEACHER
from vlkd.demo import load_teacher_scorer
from vlkd.demo.app import build_demo, launch
from vlkd.paths import asset_dir

QUERY = "orange ball on grass, red star in water, blue star on sand, green square on sand"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/images/demo.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = build_demo([load_teacher_scorer(*DEFAULT_TEACHER)])
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            page.locator("#video input[type=file]").set_input_files(str(asset_dir() / "samples" / "three_scenes.mp4"))
            page.locator("#names textarea").fill(QUERY)
            page.locator("#score").click()
            page.locator("#status").get_by_text("answered in").wait_for(timeout=60_000)
            page.locator("#plot svg.marks").wait_for()
            page.wait_for_timeout(1000)  # let the label's bars and the chart finish their transitions
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"screenshot written to {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
