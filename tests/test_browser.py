"""The app in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Open the app, type a prompt, generate, see the image and its seed; upload an image, paint a
region, inpaint; press Stop mid-run and see the app ready again (and the server's engine
stopped). Screenshots go to ``tests/output/browser/``.

This test FAILS (it is never skipped) when Playwright or Chromium is missing or the browser
cannot start: CI installs both (``.ci/run``). ``VGEN_CHROMIUM`` overrides the browser path.
Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

OUTPUT = Path(__file__).resolve().parent / "output" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage"]
TIMEOUT_MS = 90_000


def _chromium_path() -> str:
    configured = os.environ.get("VGEN_CHROMIUM")
    for candidate in (configured, "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("Chromium is not installed (apt-get install -y chromium, or set VGEN_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"Playwright is not installed ({e}); pip install playwright")
    executable = _chromium_path()
    playwright = sync_playwright().start()
    try:
        try:
            chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                                  args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as e:  # noqa: BLE001 - any launch failure is a failure of this test
            pytest.fail(f"Chromium ({executable}) could not start: {e}")
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser, hardened_app):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    missing: list[str] = []  # a component class the browser does not know is fetched as a
    page.on("response", lambda r: missing.append(r.url)  # custom component, and is not drawn
            if r.status == 404 and "/custom_component/" in r.url else None)
    page.goto(hardened_app.url)
    page.get_by_label("Prompt", exact=True).wait_for()
    yield page
    context.close()
    assert not missing, missing


def _shot(page, name: str) -> None:
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


def _visible(page, label: str):
    """The field with this label on the tab that is showing (the other tab keeps its own)."""
    return page.get_by_label(label, exact=True).filter(visible=True)


def _number(page, label: str, value) -> None:
    field = _visible(page, label)
    field.fill(str(value))
    field.press("Tab")


def _gallery_images(page, gallery: str):
    return page.locator(f"#{gallery} img")


def _wait_for_text(locator, pattern: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = locator.inner_text() if locator.count() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"/{pattern}/ never appeared; last text: {text!r}")


def test_generate_inpaint_and_stop_in_a_browser(page, hardened_app, tmp_path):
    # -- Text to Image: type a prompt, generate, see the image and its seed -------------------
    page.get_by_label("Prompt", exact=True).fill("a red circle to the left of a blue square")
    _visible(page, "Randomize seed").uncheck()
    _number(page, "Seed", 42)
    _number(page, "Steps", 2)
    _shot(page, "01-prompt")
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    _wait_for_text(page.locator("#t2i-info"), r"seed 42\b")
    images = _gallery_images(page, "t2i-gallery")
    images.first.wait_for(state="visible")
    assert images.count() >= 1
    page.locator("#t2i-gallery").get_by_text("seed 42").first.wait_for()
    _shot(page, "02-generated")

    # -- Edit: upload an image, paint a region, inpaint ---------------------------------------
    source = tmp_path / "source.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).rectangle([16, 16, 47, 47], fill="red")
    picture.save(source)
    page.get_by_role("tab", name="Edit").click()
    editor = page.locator("#edit-editor")
    editor.locator("canvas").first.wait_for(state="attached")  # the editor is set up
    time.sleep(1.0)
    editor.locator("input[type=file]").first.set_input_files(str(source))
    canvas = editor.locator("canvas").filter(visible=True).first
    canvas.wait_for(state="visible")
    time.sleep(1.5)  # the picture is drawn and the editor switches to the brush
    _visible(page, "inpaint").check()
    _number(page, "Steps", 2)
    box = canvas.bounding_box()
    assert box and box["width"] > 50, box
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy - 30)  # paint a stroke across the middle
    page.mouse.down()
    for step in range(1, 7):
        page.mouse.move(cx - 30 + 10 * step, cy - 30 + 10 * step, steps=2)
    page.mouse.up()
    _shot(page, "03-painted")
    page.get_by_role("button", name="Edit", exact=True).click()
    info = _wait_for_text(page.locator("#edit-info"), r"inpaint")
    assert "inpaint" in info
    _gallery_images(page, "edit-gallery").first.wait_for(state="visible")
    _shot(page, "04-inpainted")

    # -- Stop mid-run: the job ends and the app is ready again ---------------------------------
    log_before = hardened_app.log_text().count("generate job stopped")
    page.get_by_role("tab", name="Text to Image").click()
    page.get_by_label("Prompt", exact=True).wait_for()
    _number(page, "Steps", 150)
    _number(page, "Images (1-8)", 4)
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    _wait_for_text(page.locator("#t2i-gallery"), r"denoising|\d+/150")  # it is running
    _shot(page, "05-running")
    page.get_by_role("button", name="Stop").filter(visible=True).click()
    deadline = time.monotonic() + 30
    while hardened_app.log_text().count("generate job stopped") == log_before:
        assert time.monotonic() < deadline, "Stop did not stop the engine"
        time.sleep(0.1)
    _number(page, "Steps", 2)
    _number(page, "Images (1-8)", 1)
    _number(page, "Seed", 43)
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    _wait_for_text(page.locator("#t2i-info"), r"seed 43\b")  # ready again
    _shot(page, "06-ready-again")
