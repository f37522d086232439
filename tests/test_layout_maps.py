"""Each layout object's phrase attention against its box (``vgen.layout_maps``, issue #22:
"Features shows each box's phrase attention"): which prompt words a phrase names, the in-box
share of their summed map, the overlay with its box, and the readable word spacing the layout
legend now shares. Tiny numpy maps, no model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vgen.attention_maps import AttentionMaps, PromptTokens
from vgen.layout import Layout
from vgen.layout_maps import (FUNCTION_WORDS, box_maps, box_overlay, box_weights, draw_text,
                              label_font, phrase_keys, text_length)

PROMPT = "a red circle to the left of a blue square"


def _maps(height: int = 8, width: int = 8) -> AttentionMaps:
    """Maps of PROMPT at one step on a grid as large as the image (so no resampling blurs the
    boxes' edges): "red" and "circle" attend to rows 2-4, columns 0-2; "blue" to rows 2-4,
    columns 5-7; "square" everywhere; the rest a little."""
    words = PROMPT.split()
    n = len(words)
    tokens = PromptTokens(tuple(words), tuple(range(1, n + 1)), tuple(range(n)), 0, n + 1,
                          (n + 2,), 77)
    sums = np.full((1, height, width, n + 3), 1e-3, np.float32)  # start, words, end, padding
    for word, rows, cols in (("red", slice(2, 5), slice(0, 3)), ("circle", slice(2, 5), slice(0, 3)),
                             ("blue", slice(2, 5), slice(5, 8))):
        sums[0, rows, cols, 1 + words.index(word)] = 1.0
    sums[0, :, :, 1 + words.index("square")] = 1.0
    key = (0, "up", height, width)
    return AttentionMaps(tokens, {key: sums}, {key: 1}, (999.0,), (width, height), PROMPT)


LAYOUT = Layout.from_dict({"objects": [
    {"phrase": "a red circle", "box": [0.0, 0.25, 0.375, 0.625]},  # exactly rows 2-4, cols 0-2
    {"phrase": "a blue square", "box": [0.625, 0.25, 1.0, 0.625]},
    {"phrase": "a green triangle", "box": [0.4, 0.7, 0.6, 0.9]},
]})


def test_each_object_gets_its_words_map_and_in_box_share():
    red, blue, green = box_maps(_maps(), LAYOUT)
    assert red.words == ["red", "circle"] and red.missing == ()
    # Nearly all of red+circle lies in its box (the rest: the 1e-3 floor elsewhere).
    mass_in, mass_out = 2 * 9 * 1.0, 2 * 55 * 1e-3
    assert red.inside == pytest.approx(mass_in / (mass_in + mass_out), rel=1e-4)
    assert red.area == pytest.approx(0.375 * 0.375)
    assert red.map.shape == (8, 8) and red.map.max() == pytest.approx(1.0)
    assert red.map[3, 1] == pytest.approx(1.0) and red.map[0, 7] == pytest.approx(0.0)
    # blue (in its box) + square (everywhere): about (9 + 9) / (9 + 64) of the mass.
    assert blue.words == ["blue", "square"]
    assert blue.inside == pytest.approx(18 / 73, abs=0.01)
    # No word of the phrase in the prompt: said so, and no (empty) map.
    assert green.map is None and green.inside is None and green.keys == ()
    assert green.missing == ("green", "triangle")
    assert "none of its words is in the prompt" in green.note()
    assert red.to_dict() == {"phrase": "a red circle", "box": [0.0, 0.25, 0.375, 0.625],
                             "words": ["red", "circle"], "missing": [],
                             "inside": round(red.inside, 4), "box_area": 0.1406}


def test_the_share_follows_the_step_filter():
    maps = _maps()
    with pytest.raises(ValueError, match="no attention recorded"):
        box_maps(maps, LAYOUT, step_range=(3, 4))
    assert box_maps(maps, LAYOUT, step_range=(0, 0))[0].inside == box_maps(maps, LAYOUT)[0].inside


def test_a_phrase_takes_the_run_of_prompt_words_that_names_it():
    keys = ["0:a", "1:red", "2:circle", "3:and", "4:a", "5:blue", "6:circle"]
    assert phrase_keys(keys, "a red circle") == (["1:red", "2:circle"], [])
    assert phrase_keys(keys, "a blue circle") == (["5:blue", "6:circle"], [])
    # A word the prompt lacks is named; the run naming the most phrase words wins.
    assert phrase_keys(keys, "a small red circle") == (["1:red", "2:circle"], ["small"])
    # Plurals match both ways; words apart in the prompt are both used.
    assert phrase_keys(["0:two", "1:red", "2:circles"], "a red circle") == (
        ["1:red", "2:circles"], [])
    assert phrase_keys(["0:a", "1:circle", "2:that", "3:is", "4:red"], "red circles") == (
        ["1:circle", "4:red"], [])
    assert phrase_keys(keys, "a green triangle") == ([], ["green", "triangle"])


def test_box_weights_cover_edge_pixels_in_part():
    w = box_weights((0.1, 0.0, 0.5, 0.25), 10, 4)
    assert w.shape == (4, 10) and w.sum() == pytest.approx(0.4 * 10 * 0.25 * 4)
    assert w[0, 1] == pytest.approx(1.0) and w[0, 5] == pytest.approx(0.0) and w[1, 2] == 0


def test_the_overlay_is_enlarged_and_outlines_its_box():
    image = Image.new("RGB", (8, 8), "white")
    red, _, green = box_maps(_maps(), LAYOUT)
    picture = box_overlay(image, red)
    assert picture.width == 256 and picture.height > 256  # the phrase and figures below
    edge = picture.getpixel((int(0.375 * 256) - 2, 128))  # the box's right edge: cyan
    assert edge[2] > 200 and edge[1] > 200 and edge[0] < 60
    plain = box_overlay(image, green)  # no map: the picture greyed, the box still drawn
    assert plain.size[0] == 256 and plain.getpixel((10, 10)) == (255, 255, 255)


def test_words_are_written_apart():
    """The layout legend's words ran together (Pillow's default font has a narrow space)."""
    font = label_font(16)
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    space = text_length(draw, "a small", font) - text_length(draw, "asmall", font)
    assert space == pytest.approx(0.3 * 16) and space > draw.textlength(" ", font=font) + 1
    canvas = Image.new("L", (200, 30), 0)
    draw_text(ImageDraw.Draw(canvas), (2, 2), "a small", font, 255)
    columns = np.flatnonzero(np.asarray(canvas).max(0) > 0)  # the columns with ink
    assert np.diff(columns).max() > 0.3 * 16  # a visible space between "a" and "small"
