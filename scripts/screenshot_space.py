"""docs/images/space.png: the page on the bundled pipeline after a partial generation, in headless Chromium.

Starts ``app.py`` on the bundled pipeline, uploads the example bass (space/examples/01_Track00001_bass), generates
the other stems with the pipeline's own sampler, waits for the players and the spectrogram, and saves a full-page
screenshot; prints the seconds the generation took (what docs/space.md's caption says).

    .venv/bin/python scripts/screenshot_space.py [--out docs/images/space.png] [--pipeline pipelines/mslddm-synth-small]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(pipeline: str, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(work / "app.log", "w")  # noqa: SIM115 (kept open for the server's life)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--pipeline", pipeline, "--port", str(port),
                             "--workdir", str(work / "app")], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise SystemExit(f"app.py did not start: see {work / 'app.log'}") from None
            time.sleep(0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "space.png"))
    parser.add_argument("--pipeline", default=str(ROOT / "pipelines" / "mslddm-synth-small"))
    parser.add_argument("--example", default=str(ROOT / "space" / "examples" / "01_Track00001_bass" / "bass.flac"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_app(args.pipeline, Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(300_000)
                page.goto(url)
                page.wait_for_selector("#generate-button")
                page.wait_for_function("() => document.querySelector('#steps input').value !== ''")
                page.locator("#upload-bass input[type=file]").set_input_files(args.example)
                page.wait_for_function("() => document.querySelector('#generate-bass input').disabled")
                start = time.perf_counter()
                page.click("#generate-button")
                page.wait_for_function("() => { const a = document.querySelector('#zip a'); return a && a.href; }")
                seconds = time.perf_counter() - start
                page.locator("#spectrogram img").wait_for()
                page.wait_for_timeout(1000)  # let the players draw their waveforms
                page.screenshot(path=args.out, full_page=True)
                info = page.locator("#info").inner_text()
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {args.out}; Generate to the ZIP link: {seconds:.1f} s\n{info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
