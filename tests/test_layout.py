"""vgen.layout: parse/format round trip and every bad input, each with a clear error naming the
field. Torch-free and fast."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vgen.errors import InvalidLayoutError, InvalidRequestError
from vgen.layout import (
    MAX_JSON_CHARS,
    MAX_OBJECTS,
    Layout,
    LayoutObject,
    iou,
    parse_layout,
)

GOOD = {"objects": [{"phrase": "a red circle", "box": [0.1, 0.4, 0.4, 0.7]},
                    {"phrase": "a blue square", "box": [0.6, 0.4, 0.9, 0.7]}],
        "background": ""}


def test_round_trip_json_and_dict():
    lay = Layout.from_dict(GOOD)
    assert lay.phrases == ["a red circle", "a blue square"]
    assert lay.boxes == [[0.1, 0.4, 0.4, 0.7], [0.6, 0.4, 0.9, 0.7]]
    assert Layout.from_json(lay.to_json()) == lay
    assert json.loads(lay.to_json()) == GOOD
    assert Layout.from_json(lay.to_json(indent=2)) == lay
    assert Layout.from_dict(lay.to_dict()) == lay
    assert parse_layout(lay.to_json()) == parse_layout(GOOD) == parse_layout(lay) == lay
    assert parse_layout(None) is None and parse_layout("  ") is None


def test_round_trip_is_exact_for_any_float_and_keeps_background_and_unicode():
    lay = Layout((LayoutObject("un cercle rouge é", (1 / 3, 0.1 + 0.2, 0.7, 1)),), "a white wall")
    back = Layout.from_json(lay.to_json())
    assert back == lay and back.boxes[0][0] == 1 / 3 and back.background == "a white wall"
    assert isinstance(back.objects[0].box[3], float)


def test_defaults_integers_and_whitespace():
    lay = Layout.from_json('{"objects": [{"phrase": "  a cat ", "box": [0, 0, 1, 1]}]}')
    assert lay.background == "" and lay.objects[0].phrase == "a cat"
    assert lay.objects[0].box == (0.0, 0.0, 1.0, 1.0)
    assert Layout.from_json('{"objects": []}') == Layout(())
    assert len(Layout(())) == 0


def test_rounded_and_pixels():
    lay = Layout((LayoutObject("a", (0.12345, 0.2, 0.56789, 0.9)),))
    assert lay.rounded(2).boxes == [[0.12, 0.2, 0.57, 0.9]]
    assert lay.objects[0].pixel_box(64, 32) == pytest.approx((7.9008, 6.4, 36.34496, 28.8))


def test_frozen():
    lay = Layout.from_dict(GOOD)
    with pytest.raises(Exception):
        lay.background = "x"  # type: ignore[misc]
    with pytest.raises(Exception):
        lay.objects[0].phrase = "x"  # type: ignore[misc]


def _bad(objects=None, **extra):
    data = {"objects": objects if objects is not None else GOOD["objects"], **extra}
    return json.dumps(data)


@pytest.mark.parametrize("text, field, words", [
    (_bad([{"phrase": "a", "box": [-0.1, 0, 0.5, 0.5]}]), "objects[0].box[0]", "from 0 to 1"),
    (_bad([{"phrase": "a", "box": [0, 0, 1.5, 0.5]}]), "objects[0].box[2]", "from 0 to 1"),
    (_bad([{"phrase": "a", "box": [0.5, 0, 0.5, 0.5]}]), "objects[0].box", "x1"),
    (_bad([{"phrase": "a", "box": [0.6, 0, 0.5, 0.5]}]), "objects[0].box", "greater than x0"),
    (_bad([{"phrase": "a", "box": [0, 0.5, 0.5, 0.2]}]), "objects[0].box", "y1"),
    (_bad([{"phrase": "a", "box": [0, 0, 0.5]}]), "objects[0].box", "4 numbers"),
    (_bad([{"phrase": "a", "box": "0,0,1,1"}]), "objects[0].box", "list"),
    (_bad([{"phrase": "a", "box": [0, "0", 1, 1]}]), "objects[0].box[1]", "number"),
    (_bad([{"phrase": "a", "box": [0, True, 1, 1]}]), "objects[0].box[1]", "number"),
    (_bad([{"phrase": "a", "box": [0, None, 1, 1]}]), "objects[0].box[1]", "number"),
    ('{"objects": [{"phrase": "a", "box": [0, NaN, 1, 1]}]}', "objects[0].box[1]", "from 0 to 1"),
    ('{"objects": [{"phrase": "a", "box": [0, 0, Infinity, 1]}]}', "objects[0].box[2]", "from 0 to 1"),
    (_bad([GOOD["objects"][0], {"phrase": "", "box": [0, 0, 1, 1]}]), "objects[1].phrase", "empty"),
    (_bad([{"phrase": "   ", "box": [0, 0, 1, 1]}]), "objects[0].phrase", "empty"),
    (_bad([{"phrase": 3, "box": [0, 0, 1, 1]}]), "objects[0].phrase", "text"),
    (_bad([{"phrase": "x" * 201, "box": [0, 0, 1, 1]}]), "objects[0].phrase", "at most 200"),
    (_bad([{"box": [0, 0, 1, 1]}]), "objects[0].phrase", "missing"),
    (_bad([{"phrase": "a"}]), "objects[0].box", "missing"),
    (_bad([{"phrase": "a", "box": [0, 0, 1, 1], "colour": "red"}]), "objects[0].colour", "unknown"),
    (_bad(["a red circle"]), "objects[0]", "must be an object"),
    (_bad([{"phrase": "a", "box": [0, 0, 1, 1]}] * (MAX_OBJECTS + 1)), "objects", "at most 30"),
    (json.dumps({"objects": {"phrase": "a"}}), "objects", "list"),
    (json.dumps({"background": ""}), "objects", "missing"),
    (_bad(background=5), "background", "text"),
    (_bad(background="x" * 2001), "background", "at most 2000"),
    (_bad(size=3), "size", "unknown field"),
    ("[1, 2]", "", "JSON object"),
    ("{not json", "", "not valid JSON"),
    ("", "", "empty JSON"),
    ("x" * (MAX_JSON_CHARS + 1), "", f"at most {MAX_JSON_CHARS} characters"),
    ("[" * 100_000 + "]" * 100_000, "", "at most"),
])
def test_bad_inputs_name_the_field(text, field, words):
    with pytest.raises(InvalidLayoutError) as info:
        Layout.from_json(text)
    err = info.value
    assert isinstance(err, InvalidRequestError) and isinstance(err, ValueError)
    assert err.field == field
    assert words in str(err)
    if field:
        assert field in str(err)


def test_bad_constructor_arguments():
    with pytest.raises(InvalidLayoutError, match="box"):
        LayoutObject("a", (0.5, 0.5, 0.2, 0.9))
    with pytest.raises(InvalidLayoutError, match="empty"):
        LayoutObject(" ", (0, 0, 1, 1))
    with pytest.raises(InvalidLayoutError, match="at most 30"):
        Layout(tuple(LayoutObject("a", (0, 0, 1, 1)) for _ in range(31)))
    with pytest.raises(InvalidLayoutError, match="objects\\[0\\]"):
        Layout(({"phrase": "a", "box": [0, 0, 1, 1]},))  # type: ignore[arg-type]
    with pytest.raises(InvalidLayoutError, match="list"):
        Layout("a red circle")  # type: ignore[arg-type]
    with pytest.raises(InvalidLayoutError, match="UTF-8"):
        Layout.from_json(b"\xff\xfe")
    with pytest.raises(InvalidLayoutError, match="JSON text"):
        Layout.from_json(12)  # type: ignore[arg-type]
    assert len(Layout(tuple(LayoutObject("a", (0, 0, 1, 1)) for _ in range(30)))) == 30


def test_iou():
    assert iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert iou((0, 0, 1, 1), (1, 1, 2, 2)) == 0.0
    assert iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)


def test_layout_is_torch_free():
    code = "import sys, vgen.layout; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
