"""The Edit tab (``vgen.ui.tabs.edit``): in a real browser as a new user meets it on a desktop
and on a phone (upload, paint, inpaint, Stop), its ``/edit`` endpoint over gradio_client, and
its pure helpers (per-mode strength, the brush).

Each test is named after the defect it catches (issue #21). Tiny random 64×64 models
(``hardened_app``: the default edit model is the tiny instruct model), fixed seeds, few steps
except where a run must last long enough to stop.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image, ImageDraw

from browser_tools import gallery_images, number, shot, visible, wait_for_text

INFO = "#edit-info [data-testid='markdown']"
LONG_STEPS = 150  # the most steps; with 4 images long enough to stop on a tiny model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("edit") / "source.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse([16, 16, 47, 47], fill="red")
    picture.save(path)
    return path


# ---- the API ----------------------------------------------------------------------------------


def test_api_instruct_edit_works_with_its_own_defaults(hardened_app, source, tmp_path):
    """Defect 1: ``/edit`` with mode="instruct" and no model answered "vgen-shapes is not an
    instruction-editing model" (its model defaulted to the text-to-image model). An empty
    model is the mode's default model (here VGEN_DEFAULT_EDIT_MODEL, the tiny instruct one)."""
    from gradio_client import Client, handle_file

    client = Client(hardened_app.url, verbose=False, download_files=str(tmp_path))
    gallery, info, _ = client.predict(handle_file(str(source)), "make the red circle blue",
                                      mode="instruct", api_name="/edit")
    assert "instruct" in info and "tiny-instruct" in info
    image = Image.open(gallery[0]["image"])
    assert image.size == (64, 64) and "Task: instruct" in image.info["parameters"]
    # The State that keeps the last edit for "Inspect this edit" is not part of the API.
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/edit"]
    assert [r["label"] for r in api["returns"]] == ["Edited", "info", "notice"]


# ---- pure helpers ------------------------------------------------------------------------------


def test_inpaint_strength_is_not_the_strength_left_from_img2img():
    """Defect 5: strength was shared between img2img and inpaint (0.3 left over from img2img
    made inpaint do nothing). Each mode keeps its own; a mode never set has the default."""
    from vgen.ui.forms import DEFAULT_STRENGTH
    from vgen.ui.tabs.edit import on_mode_change

    memory = {"mode": "img2img"}
    _, strength, guidance, memory = on_mode_change("inpaint", "vgen-shapes", 0.3, memory)
    assert strength["value"] == DEFAULT_STRENGTH and strength["visible"] and not guidance["visible"]
    _, strength, _, memory = on_mode_change("img2img", "vgen-shapes", 0.9, memory)
    assert strength["value"] == 0.3  # img2img's own, as left
    _, strength, guidance, memory = on_mode_change("instruct", "vgen-shapes", 0.3, memory)
    assert strength["visible"] is False and guidance["visible"]
    _, strength, _, memory = on_mode_change("inpaint", "vgen-shapes", None, memory)
    assert strength["value"] == 0.9  # inpaint's own


def test_the_brush_fits_a_64_pixel_image_and_shows_the_picture_through():
    """Defect 5: the default brush (radius 25) covered about 40 % of a 64-pixel image per
    stroke and its opaque colour hid the picture. The brush is small and translucent."""
    from vgen.ui.tabs import edit

    tab_config = None
    import gradio as gr

    with gr.Blocks():
        tab_config = edit.build().editor.get_config()
    brush = tab_config["brush"]
    assert brush["default_size"] == edit.BRUSH_RADIUS and 2 * edit.BRUSH_RADIUS <= 64 * 0.15
    assert all(isinstance(c, (tuple, list)) and 0 < c[1] < 1 for c in brush["colors"])
    assert tab_config["eraser"]["default_size"] == edit.BRUSH_RADIUS


# ---- the browser --------------------------------------------------------------------------------


def _upload(page, path) -> None:
    page.get_by_role("tab", name="Edit").filter(visible=True).first.click()
    editor = page.locator("#edit-editor")
    editor.locator("canvas").first.wait_for(state="attached")
    time.sleep(1.0)
    editor.locator("input[type=file]").first.set_input_files(str(path))
    editor.locator("canvas").filter(visible=True).first.wait_for(state="visible")
    time.sleep(1.5)  # the picture is drawn and the editor switches to the brush


def _paint(page) -> None:
    canvas = page.locator("#edit-editor canvas").filter(visible=True).first
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    for step in range(1, 9):
        page.mouse.move(cx - 40 + 10 * step, cy, steps=2)
    page.mouse.up()


def _info(page) -> str:
    return page.locator(INFO).inner_text().strip()


def test_edit_stop_leaves_no_stale_result_or_info_line(page, source):
    """Edit-tab Stop (issue #21, 2): after Stop the last edit's results and info line stayed.
    A finished inpaint first (its line names strength), then a long one stopped: no result and
    a line that says "Stopped"; then an edit runs again."""
    _upload(page, source)
    visible(page, "inpaint").check()
    visible(page, "Randomize seed").uncheck()
    number(page, "Seed", 11)
    number(page, "Steps", 4)
    _paint(page)
    shot(page, "edit-desktop-painted")
    page.get_by_role("button", name="Edit", exact=True).click()
    info = wait_for_text(page.locator(INFO), r"seed 11\b")
    assert "inpaint" in info and "strength 0.75" in info
    gallery_images(page, "edit-gallery").first.wait_for(state="visible")
    shot(page, "edit-desktop-inpainted")
    number(page, "Steps", LONG_STEPS)
    number(page, "Images (1-8)", 4)
    page.get_by_role("button", name="Edit", exact=True).click()
    wait_for_text(page.locator(INFO), r"step \d+/")
    page.get_by_role("button", name="Stop").filter(visible=True).click()
    wait_for_text(page.locator(INFO), r"Stopped")
    time.sleep(1.0)  # nothing late comes back
    assert "Stopped" in _info(page) and gallery_images(page, "edit-gallery").count() == 0
    shot(page, "edit-desktop-stopped")
    number(page, "Steps", 3)
    number(page, "Images (1-8)", 1)
    page.get_by_role("button", name="Edit", exact=True).click()
    wait_for_text(page.locator(INFO), r"seed 11\b")


def test_edit_on_a_phone(phone_page, source):
    """The Edit tab on a phone (390×844): upload, img2img, see the result and its line."""
    page = phone_page
    _upload(page, source)
    visible(page, "Randomize seed").uncheck()
    number(page, "Seed", 12)
    number(page, "Steps", 3)
    page.get_by_label("Instruction / prompt").fill("a blue circle")
    page.get_by_role("button", name="Edit", exact=True).click()
    info = wait_for_text(page.locator(INFO), r"seed 12\b")
    assert "img2img" in info
    gallery_images(page, "edit-gallery").first.wait_for(state="visible")
    shot(page, "edit-phone-done")
