"""The Compare tab in a real browser (``tests/browser_tools.py``), as a new user walks it.

Run a small grid (2×1 cells, 2 steps) on the tiny model, see the grid, its scores line and the
cells; click a cell and see its parameters; switch the X axis to ``model`` and see the values
box hold models; check the grid's title is not under a label badge. Then the same tab on a
phone viewport.
"""

from __future__ import annotations

import time

from browser_tools import gallery_images, number, shot, visible, wait_for_text


def open_tab(page, name: str) -> None:
    """Click a tab; on a narrow screen Gradio puts the last tabs in a "More tabs" menu."""
    tab = page.get_by_role("tab", name=name, exact=True).filter(visible=True)
    if tab.count():
        tab.first.click()
    else:
        page.get_by_label("More tabs").click()
        page.locator(".overflow-dropdown button").filter(has_text=name).first.click()
    visible(page, "X axis (columns)").wait_for()


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in a dropdown as a user does: open it, click the option."""
    box = visible(page, label)
    box.click()
    page.get_by_role("option", name=option, exact=True).filter(visible=True).first.click()
    time.sleep(0.5)  # the change event's answer


def set_text(page, label: str, text: str) -> None:
    field = visible(page, label)
    field.fill(text)
    field.press("Tab")


def run_small_grid(page, seed: int) -> None:
    set_text(page, "X values", "1, 3")
    pick(page, "Y axis (rows)", "none")
    page.get_by_text("Base settings").filter(visible=True).first.click()
    number(page, "Seed (-1: draw one)", seed)
    number(page, "Steps", 2)
    page.get_by_role("button", name="Run comparison").filter(visible=True).click()
    wait_for_text(page.locator("#compare-scores"), rf"1×2 cells\*?\*? · seed {seed}\b")
    page.locator("#compare-grid img").first.wait_for(state="visible")
    gallery_images(page, "compare-gallery").first.wait_for(state="visible")


def assert_grid_not_covered(page) -> None:
    """The grid PNG's top rows (its title) are under no label badge of its own block."""
    grid = page.locator("#compare-grid img").filter(visible=True).first.bounding_box()
    assert grid and grid["width"] > 100, grid
    title_band = {"x": grid["x"], "y": grid["y"], "width": grid["width"], "height": 40}
    for badge in page.locator("#compare-grid [data-testid='block-label'], #compare-grid label") \
            .filter(visible=True).all():
        box = badge.bounding_box()
        if box:
            overlap_x = min(box["x"] + box["width"], title_band["x"] + title_band["width"]) \
                - max(box["x"], title_band["x"])
            overlap_y = min(box["y"] + box["height"], title_band["y"] + title_band["height"]) \
                - max(box["y"], title_band["y"])
            assert overlap_x <= 0 or overlap_y <= 0, f"a label {box} covers the grid's title {grid}"
    heading = page.locator("#compare-grid-heading").bounding_box()
    assert heading and heading["y"] + heading["height"] <= grid["y"] + 1, (heading, grid)


def test_compare_tab_runs_a_grid_shows_a_cell_and_switches_the_axis(page):
    open_tab(page, "Compare")
    # Out of the box: the defaults a user sees are a runnable comparison.
    assert visible(page, "X values").input_value() == "1, 4, 7"
    assert visible(page, "Y values").input_value() == "5, 20"
    shot(page, "compare-01-defaults")
    run_small_grid(page, seed=21)
    assert gallery_images(page, "compare-gallery").count() == 2
    page.locator("#compare-gallery").get_by_text("guidance 3").first.wait_for()
    assert_grid_not_covered(page)
    shot(page, "compare-02-grid")

    # Click a cell: its axes, seconds and parameters appear beside it.
    gallery_images(page, "compare-gallery").nth(1).click()
    info = wait_for_text(page.locator("#compare-cell-info"), r"guidance 3 · \d+\.\d+ s")
    assert "Seed: 21," in info and "Steps: 2," in info
    shot(page, "compare-03-cell")

    # Switch X to model: the values box now lists models, not guidance values.
    pick(page, "X axis (columns)", "model")
    values = visible(page, "X values")
    deadline = time.monotonic() + 30
    while values.input_value() == "1, 3":
        assert time.monotonic() < deadline, "the X values box kept the guidance values"
        time.sleep(0.1)
    models = [v.strip() for v in values.input_value().split(",")]
    assert "stabilityai/sd-turbo" in models and models[0].endswith("tiny-txt2img"), models
    pick(page, "X axis (columns)", "steps")
    deadline = time.monotonic() + 30
    while values.input_value() != "5, 20":
        assert time.monotonic() < deadline, values.input_value()
        time.sleep(0.1)
    shot(page, "compare-04-axis-model")


def test_compare_tab_on_a_phone(phone_page):
    page = phone_page
    open_tab(page, "Compare")
    run_small_grid(page, seed=22)
    assert_grid_not_covered(page)
    grid = page.locator("#compare-grid img").filter(visible=True).first.bounding_box()
    assert grid["x"] >= 0 and grid["x"] + grid["width"] <= 390 + 1, grid  # no sideways scroll
    shot(page, "compare-05-phone")
