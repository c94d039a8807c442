"""The playground page in a real headless browser (Debian's chromium driven by Playwright) against
the running app: it loads, a prompt streams in two panes at once, and the page's own chunk/draft log
shows several chunks, a draft that changed during generation and that equals the final text."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]


def browser_or_fail():
    """In CI (``CI`` set, as ``.ci/run`` does) a missing browser fails the test; elsewhere it skips."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
        sync_playwright = None
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        missing.append("chromium (apt-get install -y chromium)")
    if missing:
        message = "the playground test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def test_playground_streams_chunks_and_a_converging_draft(server, tmp_path):
    sync_playwright = browser_or_fail()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(server.base_url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length >= 2", timeout=60_000)
            page.fill("#prompt", "Recite Genesis 1:1.")
            page.fill("#max_tokens", "32")
            page.select_option("#model", "tiny-mdlm")
            page.select_option("#compare", "smollm2-135m")
            page.click("#run")
            page.wait_for_function("window.playground.runs.length === 2 && "
                                   "window.playground.runs.every(r => r.done || r.error)", timeout=240_000)
            runs = page.evaluate("window.playground.runs")
            answers = [page.inner_text(f"#pane{i} .answer") for i in (0, 1)]
            page.screenshot(path=str(tmp_path / "playground.png"))
            if os.environ.get("DFAST_PLAYGROUND_SCREENSHOT"):
                page.screenshot(path=os.environ["DFAST_PLAYGROUND_SCREENSHOT"])
        finally:
            browser.close()
    diffusion, ar = sorted(runs, key=lambda r: r["pane"])
    assert diffusion["error"] is None and ar["error"] is None, (diffusion["error"], ar["error"])
    assert diffusion["model"] == "tiny-mdlm" and ar["model"] == "smollm2-135m"
    text_chunks = [c for c in diffusion["chunks"] if c["new_text"]]
    assert len(text_chunks) >= 2  # several chunks arrived
    assert diffusion["final_text"] == "".join(c["new_text"] for c in diffusion["chunks"])
    views, released = [], ""
    for c in diffusion["chunks"]:
        released += c["new_text"]
        assert c["draft"] is not None  # the page asked for a draft: every chunk has one
        views.append(released + c["draft"])
    assert len(set(diffusion["drafts"])) > 1  # the draft changed during generation
    assert diffusion["drafts"][-1] == "" and views[-1] == diffusion["final_text"]  # and converged to the answer
    assert answers[0].strip() == diffusion["final_text"].strip()  # what the pane shows
    assert len([c for c in ar["chunks"] if c["new_text"]]) >= 2 and answers[1].strip() == ar["final_text"].strip()
