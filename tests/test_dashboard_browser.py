"""The ``--http`` dashboard end to end in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium through /usr/bin/chromedriver; nothing is downloaded): a
real-speed replay of the bundled sample with the shipped default bundle serves the page, the
page loads, receives events over Server-Sent Events, and its label, bars, timeline and modality
table update. A screenshot is checked for content and saved as ``dashboard.png`` under
``$EDGE_MER_ARTIFACTS`` (default: the test's tmp dir) for CI to keep.
Skips with a reason when chromium, chromedriver, selenium or the default bundle is absent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from edge_mer.cli import DEFAULT_BUNDLE

SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
CHROMIUM = os.environ.get("EDGE_MER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EDGE_MER_CHROMEDRIVER", "/usr/bin/chromedriver")


def _browser():
    if not os.path.exists(CHROMIUM) or not os.path.exists(CHROMEDRIVER):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_dashboard_in_headless_chromium(tmp_path):
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"needs the shipped default bundle at {DEFAULT_BUNDLE}")
    artifacts = Path(os.environ.get("EDGE_MER_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    driver = _browser()
    out = tmp_path / "e.jsonl"
    # Real speed: 12.7 s of video, an event every 0.5 s after the first 2 s window.
    proc = subprocess.Popen([sys.executable, "-m", "edge_mer", "run", "--video", str(SAMPLE), "--http", "0",
                             "--out", str(out), "--set", "runtime.threads=1"], cwd=REPO, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = None
        for line in proc.stderr:
            m = re.match(r"edge-mer: dashboard on (http://\S+)", line)
            if m:
                url = m.group(1)
                break
        assert url and url.startswith("http://127.0.0.1:"), "the run never printed the dashboard's address"
        driver.get(url)
        text = lambda el: driver.find_element("id", el).text  # noqa: E731
        assert driver.title == "edge-mer live"
        _wait(lambda: text("conn") == "live", 20, "the event stream to open")
        first = _wait(lambda: (m := re.match(r"window (\d+)", text("counter"))) and int(m.group(1)) + 1, 30,
                      "the first event")
        label = text("label").lower()  # shown capitalised by CSS
        bars = driver.find_elements("css selector", "#bars .bar")
        assert len(bars) == 8 and label in [b.get_attribute("data-label") for b in bars]

        def widths() -> list[str]:
            return [b.find_element("css selector", ".fill").get_attribute("style") for b in bars]

        before = widths()
        # Several more events: the counter moves on and the bars follow the probabilities.
        _wait(lambda: int(re.match(r"window (\d+)", text("counter")).group(1)) >= first + 12, 30, "more events")
        assert widths() != before
        # Read in one script: the page re-renders the rows on every event, so element handles
        # taken one by one can go stale between two reads.
        mods = driver.execute_script("const out = {}; for (const r of document.querySelectorAll('#mods tr'))"
                                     " out[r.dataset.mod] = r.innerText; return out;")
        assert "used" in mods["face"] and "used" in mods["audio"]
        assert "absent" in mods["text"] and "speech-to-text" in mods["text"]
        assert re.fullmatch(r"\d+ ms", text("latency"))
        assert text("drops") == "none"
        # The timeline's canvas has drawn lines (pixels of more than the background's colour).
        drawn = driver.execute_script(
            "const c = document.getElementById('timeline'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; const seen = new Set();"
            "for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] << 16 | d[i+1] << 8 | d[i+2]); return seen.size;")
        assert drawn > 8
        png = driver.get_screenshot_as_png()
        proc.wait(60)
        assert proc.returncode == 0, proc.stderr.read()
        _wait(lambda: text("conn") == "run ended", 10, "the page to see the end of the run")
    finally:
        driver.quit()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    (artifacts / "dashboard.png").write_bytes(png)
    import cv2

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] == 1280, None if image is None else image.shape
    colours = np.unique(image.reshape(-1, 3)[::7], axis=0)
    assert image.std() > 10 and len(colours) > 50, "the screenshot is (nearly) one colour"
    events = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(events) >= first + 12
