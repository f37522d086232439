"""The layout in the app (issue #22 part 4): the ``/plan`` endpoint, ``/generate``'s ``layout``
argument, and the Text to Image tab's layout panel in a real browser (Plan, pick, edit a box,
Generate on vgen-shapes-grounded, "Show boxes"), on a desktop and a phone.

The launched app is ``hardened_app`` (its default model is a tiny random one: the grounded and
plain shapes models are picked by name); few steps (4) keep each grounded image to seconds.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from browser_tools import gallery_fits, number, shot, visible, wait_for_text
from vgen.layout import Layout
from vgen.metadata import parse_parameters, read_parameters
from vgen.ui.tabs.layout_panel import GAP as TILE_GAP
from vgen.ui.tabs.layout_panel import TILE

PROMPT = "a red circle to the left of a blue square"
GROUNDED = "vgen-shapes-grounded"
STEPS = 4
LAYOUT = {"objects": [{"phrase": "a red circle", "box": [0.05, 0.3, 0.4, 0.65]},
                      {"phrase": "a blue square", "box": [0.6, 0.3, 0.95, 0.65]}],
          "background": ""}
SHOTS = Path("/tmp")
INFO = "#t2i-info [data-testid='markdown']"


@pytest.fixture(scope="module")
def client(hardened_app, tmp_path_factory) -> Client:
    return Client(hardened_app.url, verbose=False,
                  download_files=str(tmp_path_factory.mktemp("layout-downloads")))


def _png_fields(path) -> dict:
    return parse_parameters(read_parameters(Image.open(path)))


def _generate(client, layout: str, model: str = GROUNDED, seed: int = 1):
    return client.predict(PROMPT, model=model, steps=STEPS, seed=seed, randomize_seed=False,
                          layout=layout, api_name="/generate")


# ---- the panel's parts (no server) ---------------------------------------------------------------


def test_the_table_becomes_a_layout_and_names_a_bad_row():
    from vgen.errors import InvalidLayoutError
    from vgen.ui.forms import layout_value

    rows = [["a red circle", 0.1, "0.2", 0.4, 0.5], ["", None, "", None, ""],
            ["a blue square", 0.5, 0.5, 0.9, 0.9]]
    layout = layout_value(rows)  # blank rows skipped; typed text read as numbers
    assert layout.phrases == ["a red circle", "a blue square"] and layout.boxes[0][1] == 0.2
    assert layout_value([["", "", "", "", ""]]) is None and layout_value("") is None
    for bad, message in (([["x", 0.5, 0.1, 0.2, 0.3]], r"row 1: x1 \(0\.2\) must be greater"),
                         ([["a", 0.1, 0.1, 0.2, 0.2], ["b", 0.1, "o", 0.2, 0.2]],
                          r"row 2: y0 must be a number from 0 to 1"),
                         ([["", 0.1, 0.1, 0.2, 0.2]], r"row 1: phrase must not be empty"),
                         ([["x", 0.1, 0.1, 1.5, 0.2]], r"row 1: x1 must be a number from 0 to 1")):
        with pytest.raises(InvalidLayoutError, match=message):
            layout_value(bad)


def test_an_unedited_plan_is_drawn_and_recorded_exactly():
    """The table shows a plan rounded to 1/1000; unedited, the planner's exact layout is drawn
    and its LayoutPlan recorded; edited, neither."""
    from vgen.ui.forms import layout_rows, layout_value
    from vgen.ui.tabs.layout_panel import (TABLE_DIGITS, planned_layout, recorded_plan,
                                           tile_at)

    exact = Layout.from_dict({"objects": [{"phrase": "a red circle",
                                           "box": [0.21875, 0.03125, 0.40625, 0.234375]}]})
    plan = {"layouts": [LAYOUT, exact.to_dict()], "seeds": [7, 8], "planner": "p",
            "revision": "step 1", "temperature": 0.7}
    shown = layout_value(layout_rows(exact, TABLE_DIGITS))
    assert shown != exact and planned_layout(plan, shown) == exact
    record = recorded_plan(plan, planned_layout(plan, shown))
    assert (record.planner, record.revision, record.seed, record.temperature) == \
        ("p", "step 1", 8, 0.7)
    edited = layout_value([["a red circle", 0.2, 0.031, 0.406, 0.234]])
    assert planned_layout(plan, edited) == edited and recorded_plan(plan, edited) is None
    assert [tile_at(3, x, 100) for x in (20, 250, 460, 700)] == [0, 1, 2, None]


def _vgen_png(path, layout: Layout | None) -> str:
    from vgen.metadata import attach, format_parameters, save_png
    from vgen.requests import GenerateRequest

    req = GenerateRequest(prompt=PROMPT, steps=STEPS, guidance=4.0, width=64, height=64,
                          layout=layout)
    text = format_parameters(req, 5, "euler", GROUNDED if layout else "vgen-shapes", "r")
    return str(save_png(attach(Image.new("RGB", (64, 64), "white"), text), path))


def test_show_boxes_says_when_there_are_none_and_features_gets_the_layout(tmp_path):
    """"Show boxes" was silent after a plain generation: its note now says there are no boxes
    (a preview, which records nothing yet, does not count). "Inspect in Features" takes the
    selected result's layout from its PNG, so Features shows its Boxes."""
    from vgen.ui.tabs import features
    from vgen.ui.tabs.layout_panel import NO_BOXES, SHOW_BOXES_INFO, result_overlays

    layout = Layout.from_dict(LAYOUT)
    plain, drawn = _vgen_png(tmp_path / "plain.png", None), _vgen_png(tmp_path / "lay.png", layout)
    preview = tmp_path / "preview.png"
    Image.new("RGB", (64, 64)).save(preview)
    gallery, note = result_overlays([(plain, "seed 5")], True)
    assert gallery["visible"] is False and note["info"] == NO_BOXES
    gallery, note = result_overlays([(drawn, "seed 5")], True)
    assert gallery["visible"] is True and len(gallery["value"]) == 1
    assert note["info"] == SHOW_BOXES_INFO
    assert result_overlays([(str(preview), None)], True)[1]["info"] == SHOW_BOXES_INFO
    assert result_overlays([(plain, "seed 5")], False)[1]["info"] == SHOW_BOXES_INFO
    _, _, seed, sent, _ = features.inspect_latest(PROMPT, GROUNDED, [(drawn, "seed 5")], 0)
    assert seed == 5 and Layout.from_json(sent) == layout
    assert features.inspect_latest(PROMPT, "m", [(plain, "seed 5")], 0)[3] == ""


# ---- the API ----------------------------------------------------------------------------------


def test_planning_is_on_for_the_offline_default_and_off_for_a_plain_hub_model(monkeypatch):
    """A first visit (the embedded default model) plans the picture; its layouts are drawn by
    vgen-shapes-grounded. A model that takes no layout starts with planning off."""
    from vgen.ui.tabs.layout_panel import is_grounded

    monkeypatch.delenv("VGEN_DEFAULT_MODEL", raising=False)
    assert is_grounded(None) and is_grounded("vgen-shapes") and is_grounded(GROUNDED)
    assert not is_grounded("stabilityai/sd-turbo") and is_grounded("org/gligen-box")


def test_generate_takes_layout_as_its_last_parameter(client):
    """Existing callers keep working: ``layout`` comes after every earlier parameter."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert names[-2:] == ["decoder", "layout"] and names[0] == "prompt"
    assert [p["parameter_name"] for p in api["/plan"]["parameters"]] == [
        "prompt", "planner", "seed", "num_variants", "temperature"]


def test_plan_returns_layouts_reproducibly(client):
    kwargs = dict(prompt=PROMPT, planner="", seed=3, num_variants=2, temperature=0.7,
                  api_name="/plan")
    answer = client.predict(**kwargs)
    assert answer["planner"] == "vgen-shapes-planner" and answer["revision"]
    assert len(answer["layouts"]) == len(answer["seeds"]) == 2
    layouts = [Layout.from_dict(d) for d in answer["layouts"]]  # each parses
    assert all(len(layout) >= 1 and layout.background == "" for layout in layouts)
    again = client.predict(**kwargs)
    assert again["layouts"] == answer["layouts"] and again["seeds"] == answer["seeds"]
    other = client.predict(**{**kwargs, "seed": 40})
    assert other["seeds"] != answer["seeds"]


def test_plan_refuses_a_planner_outside_the_allowed_folders(client):
    with pytest.raises(AppError, match="outside the allowed model folders"):
        client.predict(PROMPT, planner="/etc", api_name="/plan")


def test_generate_draws_a_layout_on_the_grounded_model(client):
    gallery, info, _ = _generate(client, json.dumps(LAYOUT))
    assert len(gallery) == 1 and GROUNDED in info
    image = Image.open(gallery[0]["image"])
    assert image.size == (64, 64)
    fields = _png_fields(gallery[0]["image"])
    assert Layout.from_json(fields["Layout"]) == Layout.from_dict(LAYOUT)
    assert "Layout planner" not in fields  # typed by the caller, not planned


@pytest.mark.parametrize("layout, message", [
    ("{not json", r"layout: not valid JSON"),
    (json.dumps({"objects": [{"phrase": "a red circle", "box": [0.6, 0.1, 0.2, 0.5]}]}),
     r"objects\[0\]\.box: x1 \(0\.2\) must be greater than x0 \(0\.6\)"),
    (json.dumps({"objects": [{"phrase": "a red circle", "box": [0, 0, 1, 2]}]}),
     r"objects\[0\]\.box\[3\]: must be from 0 to 1"),
])
def test_a_bad_layout_says_what_is_wrong(client, layout, message):
    with pytest.raises(AppError, match=message):
        _generate(client, layout)


def test_a_layout_on_a_plain_model_says_it_takes_none(client):
    with pytest.raises(AppError, match=r"takes no layout.*GLIGEN"):
        _generate(client, json.dumps(LAYOUT), model="")  # the app's default: a tiny plain model


def test_a_layout_on_the_embedded_model_is_drawn_by_its_grounded_twin(client):
    """vgen-shapes takes no layout; vgen-shapes-grounded is it with GLIGEN layers, and draws it."""
    gallery, info, _ = _generate(client, json.dumps(LAYOUT), model="vgen-shapes")
    fields = _png_fields(gallery[0]["image"])
    assert fields["Model"] == GROUNDED and "Layout" in fields


def test_no_layout_is_a_plain_generation(client):
    gallery, info, _ = _generate(client, "", model="vgen-shapes")
    assert len(gallery) == 1 and "Layout" not in _png_fields(gallery[0]["image"])


# ---- the browser ------------------------------------------------------------------------------


def _pick_grounded_model(page) -> None:
    page.locator(".vgen-model input").first.click()
    page.get_by_role("option", name=GROUNDED).first.click()
    # The grounded model turns "Plan the layout" on (and opens the panel).
    deadline = time.monotonic() + 15
    while not page.locator("#t2i-plan-on input").is_checked():
        assert time.monotonic() < deadline, "picking the grounded model left planning off"
        time.sleep(0.1)


def _click_tile(page, index: int) -> None:
    """Click the middle of variant ``index``'s tile in the variants' drawing, as displayed."""
    image = page.locator("#t2i-plan-variants img")
    natural = image.evaluate("img => img.naturalWidth")
    scale = image.bounding_box()["width"] / natural
    x = TILE_GAP + index * (TILE + TILE_GAP) + TILE / 2
    image.click(position={"x": x * scale, "y": (TILE_GAP + TILE / 2) * scale})


def _cell(page, row: int, column: int):
    return page.locator(f'#t2i-layout-table [data-testid="cell-{row}-{column}"]')


def _edit_cell(page, row: int, column: int, value: str) -> None:
    """Edit one cell as a user does: double-click it, type, Enter."""
    _cell(page, row, column).dblclick()
    editor = page.locator("#t2i-layout-table textarea, #t2i-layout-table input").first
    editor.fill(value)
    editor.press("Enter")


def _cell_text(page, row: int, column: int) -> str:
    return _cell(page, row, column).inner_text().split("\n")[0].strip()


def _result_png(page, tmp_path, name: str) -> Path:
    src = page.locator("#t2i-gallery img").first.get_attribute("src")
    path = tmp_path / name
    path.write_bytes(page.request.get(src).body())
    return path


def _fits_horizontally(page, selector: str) -> None:
    """The element lies within the page's width (not cut off at the right edge)."""
    box = page.locator(selector).bounding_box()
    width = page.viewport_size["width"]
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (selector, box)


def _start(page, seed: int) -> None:
    """The prompt typed, the grounded model picked, a fixed seed and few steps."""
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    _pick_grounded_model(page)
    visible(page, "Randomize seed").uncheck()
    number(page, "Seed", seed)
    number(page, "Steps", STEPS)


def test_plan_pick_edit_and_generate_in_the_browser(page, tmp_path):
    _start(page, seed=5)
    page.locator("#t2i-plan").click()
    wait_for_text(page.locator("#t2i-plan-info"), r"vgen-shapes-planner.*seeds 5–7")
    # The three variants drawn, the first in the table and drawn below it.
    page.locator("#t2i-plan-variants img").wait_for(state="visible")
    assert page.get_by_role("radio", name=re.compile(r"^[123] · seed [567] · ")).count() == 3
    page.locator("#t2i-layout-drawing img").wait_for(state="visible")
    wait_for_text(page.locator("#t2i-layout-check"), r"\d+ objects?: Generate draws")
    first_phrase = _cell_text(page, 0, 0)
    assert first_phrase, "the table is empty after Plan"
    shot(page, "layout-planned")
    page.screenshot(path=str(SHOTS / "layout_ui_planned.png"), full_page=True)
    # Another variant, then back to the first by clicking its drawing.
    page.get_by_role("radio", name="2 · seed 6", exact=False).check()
    _click_tile(page, 0)
    deadline = time.monotonic() + 10
    while not (page.get_by_role("radio", name="1 · seed 5", exact=False).is_checked()
               and _cell_text(page, 0, 0) == first_phrase):
        assert time.monotonic() < deadline, "clicking variant 1 did not bring its layout back"
        time.sleep(0.1)
    # Edit one coordinate: the drawing follows, and Generate draws the edited layout.
    _edit_cell(page, 0, 1, "0.05")
    deadline = time.monotonic() + 10
    while _cell_text(page, 0, 1) != "0.05":
        assert time.monotonic() < deadline, f"the edit did not stick: {_cell_text(page, 0, 1)!r}"
        time.sleep(0.1)
    time.sleep(0.5)  # the table's change event reaches the server
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    info = wait_for_text(page.locator(INFO), r"seed 5\b", timeout_s=180)
    assert GROUNDED in info
    fields = _png_fields(_result_png(page, tmp_path, "made.png"))
    drawn = Layout.from_json(fields["Layout"])
    assert drawn.objects[0].phrase == first_phrase and drawn.objects[0].box[0] == 0.05
    assert "Layout planner" not in fields  # edited: no longer the planner's layout
    # "Show boxes": a copy with the boxes; the result itself (its download) stays clean.
    page.locator("#t2i-show-boxes input").check()
    page.locator("#t2i-overlays img").first.wait_for(state="visible")
    time.sleep(0.5)
    gallery_fits(page, "t2i-overlays")
    assert Image.open(_result_png(page, tmp_path, "clean.png")).size == (64, 64)
    shot(page, "layout-generated")
    page.screenshot(path=str(SHOTS / "layout_ui_generated.png"), full_page=True)
    page.locator("#t2i-overlays").screenshot(path=str(SHOTS / "layout_ui_overlay.png"))
    # "Inspect in Features" takes the result's layout along: Features shows each box's phrase
    # attention (issue #22), one line of figures and one overlay per object.
    page.get_by_role("button", name="Inspect in Features").click()
    boxes = page.locator("#features-boxes-info li")
    boxes.first.wait_for(timeout=180_000)
    assert boxes.count() == len(drawn.objects)
    assert Layout.from_json(page.locator("#features-layout textarea").input_value()) == drawn
    assert f"1 · {first_phrase}" in boxes.first.inner_text()
    page.locator("#features-boxes").scroll_into_view_if_needed()  # its picture loads lazily
    page.locator("#features-boxes img").wait_for(state="visible")
    shot(page, "layout-features-boxes")


def test_generate_with_an_empty_table_plans_first_and_records_the_plan(page, tmp_path):
    _start(page, seed=9)
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    wait_for_text(page.locator(INFO), r"seed 9\b", timeout_s=180)
    wait_for_text(page.locator("#t2i-plan-info"), r"vgen-shapes-planner.*seeds 9–11")
    fields = _png_fields(_result_png(page, tmp_path, "planned.png"))
    assert fields["Layout planner"] == "vgen-shapes-planner" and int(fields["Layout seed"]) == 9
    assert Layout.from_json(fields["Layout"]).phrases[0] == _cell_text(page, 0, 0)


def test_a_bad_cell_is_named_before_and_at_generate(page):
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    _pick_grounded_model(page)
    number(page, "Steps", STEPS)
    # No plan: the user writes a layout, starting from the empty table's "+".
    assert "table is empty" in page.locator("#t2i-layout-check").inner_text()
    page.locator("#t2i-layout-table").get_by_role("button", name="Add row").click()
    _edit_cell(page, 0, 0, "a red circle")
    for column, value in ((1, "0.6"), (2, "0.1"), (3, "0.2"), (4, "0.5")):
        _edit_cell(page, 0, column, value)
    text = wait_for_text(page.locator("#t2i-layout-check"), r"row 1: x1 \(0\.2\) must be")
    assert text.startswith("✖")
    page.get_by_role("button", name="Generate").filter(visible=True).click()
    wait_for_text(page.locator(INFO), r"No image was made: layout table, row 1: x1")


def test_phone_plan_shows_the_table_and_drawing_within_the_screen(phone_page):
    page = phone_page
    page.get_by_label("Prompt", exact=True).fill(PROMPT)
    _pick_grounded_model(page)
    page.locator("#t2i-plan").click()
    wait_for_text(page.locator("#t2i-plan-info"), r"vgen-shapes-planner")
    page.locator("#t2i-layout-drawing img").wait_for(state="visible")
    time.sleep(0.5)
    for selector in ("#t2i-plan-variants", "#t2i-layout-table", "#t2i-layout-drawing img"):
        _fits_horizontally(page, selector)
    # The table's own cells fit too: it no longer scrolls sideways (smaller cells on a phone).
    scroll, width = page.locator("#t2i-layout-table .virtual-table-viewport").evaluate(
        "e => [e.scrollWidth, e.clientWidth]")
    assert scroll <= width + 1, (scroll, width)
    page.locator("#t2i-layout-table").scroll_into_view_if_needed()
    shot(page, "layout-phone")
    page.screenshot(path=str(SHOTS / "layout_ui_phone.png"), full_page=True)
