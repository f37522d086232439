"""The Features tab (``vgen.ui.tabs.features``) in a real browser, as a new user meets it on a
desktop and on a phone: inspect a prompt, read the maps and the denoising path, use a word's
map as an inpainting mask in the Edit tab, inspect an edit.

Each test is named after the defect it catches (issue #21). Tiny random 64×64 models
(``hardened_app``), fixed seeds, few steps.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image, ImageDraw

from browser_tools import gallery_images, number, shot, visible, wait_for_text

FEATURES_INFO = "#features-info"
EDIT_INFO = "#edit-info [data-testid='markdown']"


def _tab(page, name: str) -> None:
    """Open a tab as a user does: its button, or on a narrow screen through "More tabs"."""
    button = page.get_by_role("tab", name=name).filter(visible=True)
    if not button.count():
        page.get_by_role("button", name="More tabs").filter(visible=True).first.click()
        # the menu's item (buttons with tabindex -1 only measure the tab bar's width)
        button = page.locator("button:not([tabindex='-1'])", has_text=name).filter(visible=True)
    button.first.click()


def _inspect(page, prompt: str = "a red circle", steps: int = 3, seed: int = 4) -> None:
    _tab(page, "Features")
    page.get_by_label("Prompt to inspect").fill(prompt)
    number(page, "Seed", seed)
    number(page, "Steps (0 = model default)", steps)
    page.get_by_role("button", name="Inspect", exact=True).click()
    wait_for_text(page.locator(FEATURES_INFO), rf"seed {seed} · {steps} steps")
    page.locator("#features-overlay img").wait_for(state="visible")


def _use_as_mask(page, word: str = "circle", threshold: float = 0.3) -> None:
    page.locator("#features-word").get_by_text(word, exact=True).click()
    field = page.get_by_label("number input for Mask threshold")
    field.fill(str(threshold))
    field.press("Tab")
    time.sleep(0.5)
    page.get_by_role("button", name="Use as mask → Edit (inpaint)").click()
    page.locator("#edit-editor canvas").filter(visible=True).first.wait_for(state="visible")
    time.sleep(2.0)  # the picture and its mask layer are drawn


def _magenta(image: Image.Image) -> float:
    """How magenta a picture is on average (the mask's colour is magenta)."""
    a = np.asarray(image.convert("RGB")).astype(int)
    return float((a[..., 0] + a[..., 2] - 2 * a[..., 1]).mean())


def test_use_as_mask_opens_an_inpaint_edit_that_runs(page):
    """Defect 6: "Use as mask → Edit" once hung at "processing", and the instruction box kept
    old text. On a fresh page: Inspect, pick a word, Use as mask: the Edit tab shows the image,
    mode inpaint, the inspected prompt as the instruction, and the edit runs."""
    _inspect(page)
    _tab(page, "Edit")
    page.get_by_label("Instruction / prompt").fill("old text of another edit")
    _tab(page, "Features")
    _use_as_mask(page)
    assert visible(page, "inpaint").is_checked()
    assert page.get_by_label("Instruction / prompt").input_value() == "a red circle"
    shot(page, "features-mask-in-editor")
    number(page, "Steps", 3)
    page.get_by_role("button", name="Edit", exact=True).click()
    info = wait_for_text(page.locator(EDIT_INFO), r"inpaint|No image")
    assert "inpaint" in info and "strength" in info, info
    gallery_images(page, "edit-gallery").first.wait_for(state="visible")
    shot(page, "features-mask-edited")


def test_use_as_mask_draws_the_mask_in_the_editor(page):
    """Defect 6: on a fresh page the mask was applied but not drawn in the editor (Gradio
    6.31's editor does not draw a layer the server sets; the picture now carries the mask
    tinted in, see features.mask_editor_value). The editor's canvas must show the mask (its
    translucent magenta) over the picture."""
    _inspect(page)
    src = page.locator("#features-image img").get_attribute("src")
    picture = Image.open(io.BytesIO(page.request.get(src).body()))
    _use_as_mask(page)
    canvas = page.locator("#edit-editor canvas").filter(visible=True).first
    drawn = Image.open(io.BytesIO(canvas.screenshot()))
    assert _magenta(drawn) > _magenta(picture) + 20, "the mask is not drawn in the editor"


def test_features_shows_small_pictures_enlarged_and_the_path_in_rows(page):
    """Defect 9: the 64×64 image and maps were shown at native size, and a 20-step filmstrip
    was squeezed into one unreadable strip. The word's overlay is drawn at least 256 px, the
    filmstrip wraps into rows with readable frames."""
    _inspect(page, "a red circle to the left of a blue square", steps=20, seed=5)
    time.sleep(1.0)
    overlay = page.locator("#features-overlay img").bounding_box()
    assert overlay["width"] >= 250 and overlay["height"] >= 250, overlay
    strip = page.locator("#features-filmstrip img")
    natural = strip.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert natural[1] > natural[0] / 2, natural  # rows, not one strip
    box = strip.bounding_box()
    assert box["width"] / 5 >= 80, box  # five frames a row, each readable
    shot(page, "features-desktop-20-steps")


def test_inspect_this_edit_inspects_the_edit_on_screen_in_a_browser(page, tmp_path):
    """Defect 7: "Inspect this edit" inspected the form's current mode, not the edit shown.
    An img2img edit, then the form switched to inpaint: the Features tab inspects the img2img
    edit with its seed."""
    source = tmp_path / "source.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).rectangle([16, 16, 47, 47], fill="red")
    picture.save(source)
    _tab(page, "Edit")
    editor = page.locator("#edit-editor")
    editor.locator("canvas").first.wait_for(state="attached")
    time.sleep(1.0)
    editor.locator("input[type=file]").first.set_input_files(str(source))
    time.sleep(1.5)
    page.get_by_label("Instruction / prompt").fill("a blue square")
    visible(page, "Randomize seed").uncheck()
    number(page, "Seed", 21)
    number(page, "Steps", 3)
    page.get_by_role("button", name="Edit", exact=True).click()
    wait_for_text(page.locator(EDIT_INFO), r"img2img .*seed 21\b")
    visible(page, "inpaint").check()  # the form changes; the edit on screen does not
    page.get_by_role("button", name="Inspect this edit → Features").click()
    info = wait_for_text(page.locator(FEATURES_INFO), r"seed 21 ·")
    assert "img2img" in info
    assert page.locator("#features-word").get_by_text("square", exact=True).count() == 1
    shot(page, "features-inspected-edit")


def test_features_on_a_phone(phone_page):
    """The Features tab on a phone (390×844): inspect, read the overlay, enlarged."""
    page = phone_page
    _inspect(page, steps=4, seed=6)
    overlay = page.locator("#features-overlay img").bounding_box()
    assert overlay["width"] >= 250, overlay
    shot(page, "features-phone")
