"""Browser-test tools: Debian's Chromium driven by Playwright, as a pytest plugin (fixtures
``browser``, ``page`` for a desktop viewport and ``phone_page``) plus helpers that act as a user
would. Loaded by ``tests/conftest.py`` (``pytest_plugins``); the tests are ``tests/test_browser*.py``.

A browser test FAILS (it is never skipped) when Playwright or Chromium is missing or the browser
cannot start: CI installs both (``.ci/run``). ``VGEN_CHROMIUM`` overrides the browser path.
Playwright's own browser download is not used. Screenshots go to ``tests/output/browser/``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

OUTPUT = Path(__file__).resolve().parent / "output" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage"]
TIMEOUT_MS = 90_000


def chromium_path() -> str:
    configured = os.environ.get("VGEN_CHROMIUM")
    for candidate in (configured, "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("Chromium is not installed (apt-get install -y chromium, or set VGEN_CHROMIUM)")


# Per test module, not per session: Playwright's sync API runs an event loop in the main thread
# while it is started, and every later test's asyncio.run() would then fail ("cannot be called
# from a running event loop").
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"Playwright is not installed ({e}); pip install playwright")
    executable = chromium_path()
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


DESKTOP = {"width": 1280, "height": 1400}
PHONE = {"width": 390, "height": 844}


def open_app(browser, url: str, viewport: dict, **context_options):
    """A new browser context on the app, once its first tab is drawn: (context, page, list of
    custom-component URLs the browser could not fetch, which should stay empty)."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=viewport, **context_options)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    missing: list[str] = []  # a component class the browser does not know is fetched as a
    page.on("response", lambda r: missing.append(r.url)  # custom component, and is not drawn
            if r.status == 404 and "/custom_component/" in r.url else None)
    page.goto(url)
    page.get_by_label("Prompt", exact=True).wait_for()
    return context, page, missing


@pytest.fixture
def page(browser, hardened_app):
    """The app on a desktop viewport (1280×1400)."""
    context, page, missing = open_app(browser, hardened_app.url, DESKTOP)
    yield page
    context.close()
    assert not missing, missing


@pytest.fixture
def phone_page(browser, hardened_app):
    """The app on a phone viewport (390×844, touch, mobile user agent)."""
    context, page, missing = open_app(browser, hardened_app.url, PHONE, is_mobile=True,
                                      has_touch=True, device_scale_factor=2)
    yield page
    context.close()
    assert not missing, missing


def shot(page, name: str) -> None:
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


def visible(page, label: str):
    """The field with this label on the tab that is showing (the other tab keeps its own)."""
    return page.get_by_label(label, exact=True).filter(visible=True)


def number(page, label: str, value, timeout_s: float = 10.0) -> None:
    """Type ``value`` into a field and leave it, as a user would; typed again if the page drew
    the field anew meanwhile (an accordion opening, a busy machine), so a test never runs on
    the old value (regression: a phone Compare run used seed 0 instead of the typed 22)."""
    field = visible(page, label)
    deadline = time.monotonic() + timeout_s
    while True:
        field.fill(str(value))
        field.press("Tab")
        time.sleep(0.2)
        if field.input_value() == str(value) or time.monotonic() > deadline:
            break
    assert field.input_value() == str(value), f"{label} shows {field.input_value()!r}, not {value}"


def gallery_images(page, gallery: str):
    return page.locator(f"#{gallery} img")


def wait_for_text(locator, pattern: str, timeout_s: float = TIMEOUT_MS / 1000) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        text = locator.inner_text() if locator.count() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.1)
    raise AssertionError(f"/{pattern}/ never appeared; last text: {text!r}")


def captions_clear_of_images(page, gallery: str) -> None:
    """Each result's caption (its seed) lies under its picture, not over it: Gradio draws it
    over the bottom right corner, where on a phone it hid part of a shape."""
    items = page.locator(f"#{gallery} .thumbnail-lg").filter(visible=True).all()
    assert items, f"#{gallery} shows no result"
    for item in items:
        img, caption = item.locator("img").first.bounding_box(), item.locator(".caption-label").first.bounding_box()
        assert img and caption, (img, caption)
        assert caption["y"] >= img["y"] + img["height"] - 1, f"the caption {caption} covers the image {img}"


def gallery_fits(page, gallery: str) -> None:
    """Every image shown in the gallery lies wholly inside the gallery's panel (no cropped
    result): a user sees the whole picture without scrolling inside the panel."""
    panel = page.locator(f"#{gallery}").bounding_box()
    assert panel, f"#{gallery} is not drawn"
    for img in page.locator(f"#{gallery} img").filter(visible=True).all():
        box = img.bounding_box()
        if not box:
            continue
        assert box["y"] >= panel["y"] - 1 and box["y"] + box["height"] <= panel["y"] + panel["height"] + 1, \
            f"a result in #{gallery} is cropped: image {box} in panel {panel}"
        assert box["x"] >= panel["x"] - 1 and box["x"] + box["width"] <= panel["x"] + panel["width"] + 1, \
            f"a result in #{gallery} is cropped: image {box} in panel {panel}"
