"""The app in a real browser (headless Chromium through Playwright; ``tests/browser_tools.py``).

Open the app, type a prompt, generate, see the image and its seed; upload an image, paint a
region, inpaint; press Stop mid-run and see the app ready again (and the server's engine
stopped). The other ``tests/test_browser_*.py`` files walk each tab.
"""

from __future__ import annotations

import time

from PIL import Image, ImageDraw

from browser_tools import gallery_images, number, shot, visible, wait_for_text


def test_generate_inpaint_and_stop_in_a_browser(page, hardened_app, tmp_path):
    # -- Text to Image: type a prompt, generate, see the image and its seed -------------------
    page.get_by_label("Prompt", exact=True).fill("a red circle to the left of a blue square")
    visible(page, "Randomize seed").uncheck()
    number(page, "Seed", 42)
    number(page, "Steps", 2)
    shot(page, "01-prompt")
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    wait_for_text(page.locator("#t2i-info"), r"seed 42\b")
    images = gallery_images(page, "t2i-gallery")
    images.first.wait_for(state="visible")
    assert images.count() >= 1
    page.locator("#t2i-gallery").get_by_text("seed 42").first.wait_for()
    shot(page, "02-generated")

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
    visible(page, "inpaint").check()
    number(page, "Steps", 2)
    box = canvas.bounding_box()
    assert box and box["width"] > 50, box
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy - 30)  # paint a stroke across the middle
    page.mouse.down()
    for step in range(1, 7):
        page.mouse.move(cx - 30 + 10 * step, cy - 30 + 10 * step, steps=2)
    page.mouse.up()
    shot(page, "03-painted")
    page.get_by_role("button", name="Edit", exact=True).click()
    info = wait_for_text(page.locator("#edit-info"), r"inpaint")
    assert "inpaint" in info
    gallery_images(page, "edit-gallery").first.wait_for(state="visible")
    shot(page, "04-inpainted")

    # -- Stop mid-run: the job ends and the app is ready again ---------------------------------
    log_before = hardened_app.log_text().count("generate job stopped")
    page.get_by_role("tab", name="Text to Image").click()
    page.get_by_label("Prompt", exact=True).wait_for()
    number(page, "Steps", 150)
    number(page, "Images (1-8)", 4)
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    wait_for_text(page.locator("#t2i-gallery"), r"denoising|\d+/150")  # it is running
    shot(page, "05-running")
    page.get_by_role("button", name="Stop").filter(visible=True).click()
    deadline = time.monotonic() + 30
    while hardened_app.log_text().count("generate job stopped") == log_before:
        assert time.monotonic() < deadline, "Stop did not stop the engine"
        time.sleep(0.1)
    number(page, "Steps", 2)
    number(page, "Images (1-8)", 1)
    number(page, "Seed", 43)
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    wait_for_text(page.locator("#t2i-info"), r"seed 43\b")  # ready again
    shot(page, "06-ready-again")


def test_each_tab_button_appears_once_after_every_tab_was_opened(page):
    """Regression: three gr.State made in gr.Tabs between the Edit and Features tabs (not inside a
    tab) made Features' and Compare's buttons appear a second time once each was first opened."""
    names = ["Text to Image", "Edit", "Features", "Compare"]
    for name in names[1:] + names[:1]:
        page.get_by_role("tab", name=name, exact=True).first.click()
        page.wait_for_timeout(300)
        assert page.get_by_role("tab").all_inner_texts() == names, name
