"""The Features tab (``vgen.ui.tabs.features``): the ``/attention`` endpoint of the real app
(``hardened_app``: a subprocess with the tiny models) and the tab's helpers (word picker,
map -> inpainting mask -> Edit tab round trip, Text to Image -> Features, the handlers run in
process on the tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("gradio_client")

from vgen.ui.demo import build_demo  # noqa: E402
from vgen.ui.forms import source_and_mask  # noqa: E402
from vgen.ui.tabs import edit, features  # noqa: E402


@pytest.fixture(scope="module")
def client(hardened_app, tmp_path_factory):
    from gradio_client import Client

    return Client(hardened_app.url, verbose=False,
                  download_files=str(tmp_path_factory.mktemp("downloads")))


def test_attention_endpoint(client):
    api = client.view_api(return_format="dict", print_info=False)
    params = [p["parameter_name"] for p in api["named_endpoints"]["/attention"]["parameters"]]
    assert params == ["prompt", "model", "seed", "steps", "negative_prompt", "layout"]
    image, grid, strip, keys, boxes = client.predict("a red circle", None, 3, 2,
                                                     api_name="/attention")
    assert keys == ["0:a", "1:red", "2:circle"] and boxes is None  # no layout, no boxes
    picture = Image.open(image)
    assert picture.size == (64, 64) and "Seed: 3," in picture.info["parameters"]
    g, s = Image.open(grid), Image.open(strip)
    assert g.width >= 2 * 64 and g.height >= 2 * 64  # image + 3 labelled overlays, 2x2
    assert s.width > s.height  # 2 steps in one row
    # Same seed, same picture.
    again = client.predict("a red circle", None, 3, 2, api_name="/attention")[0]
    assert Image.open(again).tobytes() == picture.tobytes()


def test_attention_endpoint_errors(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="steps"):
        client.predict("a red circle", None, 3, 0, api_name="/attention")


LAYOUT = {"objects": [{"phrase": "a red circle", "box": [0.05, 0.3, 0.4, 0.65]},
                      {"phrase": "a green triangle", "box": [0.6, 0.3, 0.95, 0.65]}],
          "background": ""}


def test_attention_with_a_layout_measures_each_box(client):
    """Issue #22: /attention's last parameter is a layout (the JSON /generate takes); the
    inspection is drawn from it on the grounded model and says, per object, which prompt words
    its phrase names and how much of their attention lies in its box."""
    import json

    from vgen.layout import Layout

    image, grid, strip, keys, boxes = client.predict(
        "a red circle", "vgen-shapes-grounded", 2, 4, "", json.dumps(LAYOUT),
        api_name="/attention")
    recorded = Image.open(image).info["parameters"]
    assert "Layout: " in recorded and keys == ["0:a", "1:red", "2:circle"]
    red, green = boxes
    assert red["phrase"] == "a red circle" and red["words"] == ["red", "circle"]
    assert 0.0 < red["inside"] < 1.0 and red["box_area"] == pytest.approx(0.35 * 0.35, abs=1e-3)
    assert red["box"] == LAYOUT["objects"][0]["box"] and red["missing"] == []
    # Neither of its words is in the prompt: no share, and the figures say why.
    assert green["inside"] is None and green["missing"] == ["green", "triangle"]
    assert Layout.from_dict(LAYOUT).phrases == [red["phrase"], green["phrase"]]


@pytest.mark.parametrize("layout, message", [
    ("{not json", r"layout: not valid JSON"),
    ('{"objects": [{"phrase": "a red circle", "box": [0.6, 0.1, 0.2, 0.5]}]}',
     r"objects\[0\]\.box: x1 \(0\.2\) must be greater than x0 \(0\.6\)"),
])
def test_attention_with_a_bad_layout_says_what_is_wrong(client, layout, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        client.predict("a red circle", "vgen-shapes-grounded", 2, 4, "", layout,
                       api_name="/attention")


# ---- pure helpers ---------------------------------------------------------------------------


class _Tokens:
    def __init__(self, words, special=("-1:<start>", "3:<end>")):
        self.words, self.special = words, list(special)

    def keys(self, include_special=False):
        return ([self.special[0]] if include_special else []) + self.words + \
               (self.special[1:] if include_special else [])

    def word_keys(self):
        return self.words


def test_word_choices():
    maps = _Tokens(["0:a", "1:red", "2:a"])
    assert features.word_choices(maps) == [("0:a", "0:a"), ("red", "1:red"), ("2:a", "2:a")]
    keys = [k for _, k in features.word_choices(maps, include_special=True)]
    assert keys == ["-1:<start>", "0:a", "1:red", "2:a", "3:<end>"]


def test_mask_round_trips_through_the_editor(tmp_path, monkeypatch):
    """The picture "Use as mask" puts in the editor shows the mask tinted in (Gradio's editor
    draws no layer the server sets); while the editor sends that picture back, the edit gets
    the clean picture and the mask, with strokes painted since added."""
    monkeypatch.setattr(features, "cache_dir", lambda: tmp_path)
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle([40, 20, 59, 39], fill="blue")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([40, 20, 59, 39], fill=255)
    value, attached = features.mask_editor_value(image, mask)
    assert all(Path(p).is_relative_to(tmp_path) for p in [value["background"], *attached.values()])
    assert value["layers"] == [] and value["composite"] is None
    shown = Image.open(value["background"]).convert("RGB")
    assert shown.getpixel((5, 5)) == (255, 255, 255)  # outside the mask: the picture itself
    r, g, b = shown.getpixel((50, 30))
    assert r > g and b > 200  # inside: tinted magenta, the picture showing through
    source, back = source_and_mask(value, attached, "inpaint")
    assert source.tobytes() == image.tobytes()
    assert np.array_equal(np.asarray(back), np.asarray(mask))
    stroke = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(stroke).rectangle([0, 0, 7, 7], fill=(255, 0, 255, 140))
    stroke_path = tmp_path / "stroke.png"
    stroke.save(stroke_path)
    _, both = source_and_mask({**value, "layers": [str(stroke_path)]}, attached, "inpaint")
    assert both.getpixel((3, 3)) == 255 and both.getpixel((50, 30)) == 255
    assert source_and_mask(value, attached, "img2img")[0].tobytes() == image.tobytes()
    # Another picture in the editor (a new upload): the attached mask no longer applies.
    other = tmp_path / "other.png"
    Image.new("RGB", (64, 64), "red").save(other)
    source, back = source_and_mask({"background": str(other), "layers": []}, attached, "inpaint")
    assert source.getpixel((0, 0)) == (255, 0, 0) and back is None


def test_use_as_mask_sends_to_edit(tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.setattr(features, "cache_dir", lambda: tmp_path)

    class Maps:
        def to_mask(self, key, threshold, **filters):
            assert key == "2:square" and threshold == 0.4
            assert filters == {"step_range": (0, 3), "resolutions": ["8x8"]}
            m = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(m).rectangle([0, 0, 9, 9], fill=255)
            return m

    Maps.prompt = "a red square"
    state = features.Inspected(Maps(), Image.new("RGB", (64, 64), "red"), "", "")
    value, attached, mode, prompt, tabs = features.use_as_mask(state, "2:square", 0.4, 3, 0,
                                                               ["8x8"])
    assert mode == "inpaint" and isinstance(tabs, gr.Tabs)
    assert prompt == "a red square"  # the instruction box gets the inspected prompt
    _, mask = source_and_mask(value, attached, "inpaint")
    assert mask.getbbox() == (0, 0, 10, 10)
    with pytest.raises(gr.Error):
        features.use_as_mask(None, "2:square", 0.4, 0, 0, None)


def test_inspect_latest_takes_the_selected_seed():
    gallery = [("a.png", "seed 5"), ("b.png", "seed 6")]
    prompt, model, seed, layout, _ = features.inspect_latest("a red circle", "m", gallery, 1)
    assert (prompt, model, seed, layout) == ("a red circle", "m", 6, "")  # not a vgen PNG
    assert features.inspect_latest("p", "m", gallery, None)[2] == 5


def test_features_tab_is_built():
    demo = build_demo()
    api = demo.get_api_info()
    assert "/attention" in api["named_endpoints"]


# ---- the UI handlers in-process, on the tiny model --------------------------------------------


def _last(agen):
    import asyncio

    from vgen.ui import handlers

    handlers.configure()  # a fresh fair queue in this event loop

    async def run():
        out = None
        async for out in agen:
            pass
        return out

    return asyncio.run(run())


def _quiet(*a, **k):
    pass


def test_inspect_render_mask_and_features_in_process(tiny_env, tmp_path, monkeypatch):
    from vgen.ui import handlers

    monkeypatch.setattr(handlers, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(features, "cache_dir", lambda: tmp_path)
    path, grid, strip, keys, boxes, state = _last(features.inspect_attention(
        "a red circle", "", 3, 2, None, progress=_quiet))
    assert boxes is None and state.layout is None
    assert features.show_boxes(state, 0.6)[0]["visible"] is False  # no layout: no Boxes view
    word, first, last, res, overlay, info = features.show_inspection(state, False, 0.6)
    assert Image.open(path).size == (64, 64) and "seed 3" in info
    assert keys == ["0:a", "1:red", "2:circle"]
    assert [k for _, k in word["choices"]] == ["0:a", "1:red", "2:circle"]
    assert word["value"] == "2:circle" and last["value"] == 1 and res["value"]
    assert overlay.size == (features.DISPLAY_PX,) * 2  # shown enlarged, whole pixels
    assert strip.width > strip.height
    # Re-render from the stored maps: one step, one resolution.
    over, grid2 = features.render_maps(state, "1:red", 1, 1, res["value"][:1], 0.8)
    assert over.size == (features.DISPLAY_PX,) * 2 and grid2.size == grid.size
    # No word yet (a new inspection's controls arrive together): the overlay is left as it is.
    kept, _ = features.render_maps(state, None, 0, 1, res["value"], 0.8)
    assert kept == {"__type__": "update"}
    with pytest.raises(Exception, match="no attention recorded"):
        features.render_maps(state, "1:red", 0, 1, ["3x3"], 0.8)
    # Word -> mask -> Edit tab.
    value, attached, mode, prompt, _ = features.use_as_mask(state, "2:circle", 0.3, 0, 1, None)
    source, mask = source_and_mask(value, attached, "inpaint")
    expected = state.maps.to_mask("2:circle", 0.3, step_range=(0, 1))
    assert mode == "inpaint" and np.array_equal(np.asarray(mask), np.asarray(expected))
    assert prompt == "a red circle"
    assert source.tobytes() == Image.open(path).convert("RGB").tobytes()
    # The generator's own feature views work offline.
    for backbone in ("unet", "vae"):
        views = _last(features.show_features(path, backbone, None, "a red circle",
                                              progress=_quiet))
        assert views and all(isinstance(im, Image.Image) for im, _ in views)
        assert any("PCA" in caption for _, caption in views)


def test_vgg16_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    import gradio as gr

    from vgen import hub
    from vgen.errors import OfflineError

    def offline(*a, **k):
        raise OfflineError("the Hub is unreachable (offline mode)")

    monkeypatch.setattr(hub, "resolve", offline)
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64), "blue").save(picture)
    with pytest.raises(gr.Error, match="could not be fetched.*unet or vae"):
        _last(features.show_features(str(picture), "vgg16", None, "", progress=_quiet))
    with pytest.raises(gr.Error, match="Add an image"):
        _last(features.show_features(None, "vae", None, "", progress=_quiet))


def test_inspect_this_edit_inspects_the_edit_on_screen(tiny_env, tmp_path, monkeypatch):
    """Regression (#21, 7): "Inspect this edit" inspected the form's current mode and settings,
    not the edit shown. It inspects the LastEdit the finished edit left (its mode, its prompt,
    the seed of the selected image), whatever the form says now; every mode can be inspected."""
    import gradio as gr

    from vgen.requests import EditRequest
    from vgen.ui import handlers

    monkeypatch.setattr(handlers, "cache_dir", lambda: tmp_path)
    source = Image.new("RGB", (64, 64), (240, 240, 240))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 30, 30), fill=255)
    for mode in ("img2img", "inpaint"):
        req = EditRequest(prompt="a blue square", negative_prompt="red", image=source,
                          mask=mask if mode == "inpaint" else None, mode=mode, strength=0.8,
                          steps=2, seed=None, num_images=2)
        shown = edit.LastEdit(req, (5, 6))
        path, grid, strip, keys, _, state = _last(features.inspect_edit(shown, 1,
                                                                       progress=_quiet))
        info = state.info
        assert f"{mode} · seed 6" in info and Image.open(path).size == (64, 64)
        assert keys == ["0:a", "1:blue", "2:square"]
        assert "Negative prompt: red" in Image.open(path).info["parameters"]
    with pytest.raises(gr.Error, match="no edit to inspect"):
        features.to_features(None)


def test_inspect_in_features_clears_the_old_maps():
    """Regression (#21, 7): "Inspect in Features" filled prompt and seed but left the previous
    maps on screen until Inspect was pressed. It now fills the Features tab's settings, clears
    the last inspection's pictures, words and info line, and inspects at once
    (``link_text_to_image`` chains the inspection)."""
    gallery = [("a.png", "seed 5"), ("b.png", "seed 6")]
    out = features.inspect_generated("a red circle", "blurry", "m", 4, gallery, 1)
    prompt, negative, model, steps, seed, layout, tabs, *cleared = out
    assert (prompt, negative, model, steps, seed, layout) == ("a red circle", "blurry", "m", 4,
                                                              6, "")
    image, grid, strip, keys, boxes, state, word, overlay, info, view, table = cleared
    assert (image, grid, strip, keys, boxes, state, overlay, info) == (None,) * 7 + ("",)
    assert word["choices"] == [] and word["value"] is None
    assert view["visible"] is False and table["visible"] is False  # the old Boxes view goes


def test_the_filmstrip_wraps_into_rows_and_small_maps_are_shown_enlarged():
    """Regression (#21, 9): a 20-step filmstrip was one unreadable strip and the 64-pixel maps
    were shown at native size. The strip wraps into rows of FILMSTRIP_COLUMNS; what only the
    page shows is enlarged by a whole factor (crisp), larger pictures stay as they are."""
    from vgen.viz import filmstrip

    frames = [Image.new("RGB", (64, 64), (i * 10, 0, 0)) for i in range(20)]
    strip = filmstrip(frames, columns=min(len(frames), features.FILMSTRIP_COLUMNS))
    assert strip.height > strip.width / 2  # 4 rows of 5, not 1 row of 20
    small = features.enlarged(Image.new("RGB", (64, 64)))
    assert small.size == (256, 256)
    assert features.enlarged(Image.new("RGB", (512, 512))).size == (512, 512)
    assert features.enlarged(None) is None
