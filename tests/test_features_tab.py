"""The Features tab: the ``/attention`` endpoint of the real app (a subprocess with the tiny
models, the ``served`` / ``client`` fixtures of test_app.py) and the tab's pure helpers
(word picker, map -> inpainting mask -> Edit tab round trip, Text to Image -> Features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("gradio_client")

from test_app import client, served  # noqa: E402,F401  (module-scoped fixtures)

import app  # noqa: E402


def test_attention_endpoint(client):  # noqa: F811
    api = client.view_api(return_format="dict", print_info=False)
    params = [p["parameter_name"] for p in api["named_endpoints"]["/attention"]["parameters"]]
    assert params == ["prompt", "model", "seed", "steps", "negative_prompt"]
    image, grid, strip, keys = client.predict("a red circle", None, 3, 2, api_name="/attention")
    assert keys == ["0:a", "1:red", "2:circle"]
    picture = Image.open(image)
    assert picture.size == (64, 64) and "Seed: 3," in picture.info["parameters"]
    g, s = Image.open(grid), Image.open(strip)
    assert g.width >= 2 * 64 and g.height >= 2 * 64  # image + 3 labelled overlays, 2x2
    assert s.width > s.height  # 2 steps in one row
    # Same seed, same picture.
    again = client.predict("a red circle", None, 3, 2, api_name="/attention")[0]
    assert Image.open(again).tobytes() == picture.tobytes()


def test_attention_endpoint_errors(client):  # noqa: F811
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="steps"):
        client.predict("a red circle", None, 3, 0, api_name="/attention")


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
    assert app.word_choices(maps) == [("0:a", "0:a"), ("red", "1:red"), ("2:a", "2:a")]
    keys = [k for _, k in app.word_choices(maps, include_special=True)]
    assert keys == ["-1:<start>", "0:a", "1:red", "2:a", "3:<end>"]


def test_mask_round_trips_through_the_editor(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "_cache_dir", lambda: tmp_path)
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).rectangle([40, 20, 59, 39], fill="blue")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle([40, 20, 59, 39], fill=255)
    value = app.mask_editor_value(image, mask)
    assert all(Path(p).is_relative_to(tmp_path) for p in [value["background"], *value["layers"]])
    layer = Image.open(value["layers"][0])
    assert layer.mode == "RGBA" and layer.getpixel((50, 30)) == (255, 255, 255, 255)
    assert layer.getpixel((5, 5))[3] == 0
    source, back = app.editor_image_and_mask(value, "inpaint")
    assert source.tobytes() == image.tobytes()
    assert np.array_equal(np.asarray(back), np.asarray(mask))


def test_use_as_mask_sends_to_edit(tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.setattr(app, "_cache_dir", lambda: tmp_path)

    class Maps:
        def to_mask(self, key, threshold, **filters):
            assert key == "2:square" and threshold == 0.4
            assert filters == {"step_range": (0, 3), "resolutions": ["8x8"]}
            m = Image.new("L", (64, 64), 0)
            ImageDraw.Draw(m).rectangle([0, 0, 9, 9], fill=255)
            return m

    state = app.Inspected(Maps(), Image.new("RGB", (64, 64), "red"), "")
    value, mode, tabs = app.use_as_mask(state, "2:square", 0.4, 3, 0, ["8x8"])
    assert mode == "inpaint" and isinstance(tabs, gr.Tabs)
    _, mask = app.editor_image_and_mask(value, "inpaint")
    assert mask.getbbox() == (0, 0, 10, 10)
    with pytest.raises(gr.Error):
        app.use_as_mask(None, "2:square", 0.4, 0, 0, None)


def test_inspect_latest_takes_the_selected_seed():
    gallery = [("a.png", "seed 5"), ("b.png", "seed 6")]
    prompt, model, seed, _ = app.inspect_latest("a red circle", "m", gallery, 1)
    assert (prompt, model, seed) == ("a red circle", "m", 6)
    assert app.inspect_latest("p", "m", gallery, None)[2] == 5


def test_features_tab_is_built():
    demo = app.build_demo()
    api = demo.get_api_info()
    assert "/attention" in api["named_endpoints"]


# ---- the UI handlers in-process, on the tiny model --------------------------------------------


def _last(agen):
    import asyncio

    async def run():
        out = None
        async for out in agen:
            pass
        return out

    return asyncio.run(run())


def test_inspect_render_mask_and_features_in_process(tiny_env, tmp_path, monkeypatch):
    monkeypatch.setattr(app, "_cache_dir", lambda: tmp_path)
    out = _last(app.inspect_from_ui("a red circle", "", None, 3, 2, False, 0.6,
                                    progress=lambda *a, **k: None))
    path, grid, strip, state, word, first, last, res, overlay, info = out
    assert Image.open(path).size == (64, 64) and "seed 3" in info
    assert [k for _, k in word["choices"]] == ["0:a", "1:red", "2:circle"]
    assert word["value"] == "2:circle" and last["value"] == 1 and res["value"]
    assert overlay.size == (64, 64) and strip.width > strip.height
    # Re-render from the stored maps: one step, one resolution.
    over, grid2 = app.render_maps(state, "1:red", 1, 1, res["value"][:1], 0.8)
    assert over.size == (64, 64) and grid2.size == grid.size
    with pytest.raises(Exception, match="no attention recorded"):
        app.render_maps(state, "1:red", 0, 1, ["3x3"], 0.8)
    # Word -> mask -> Edit tab.
    value, mode, _ = app.use_as_mask(state, "2:circle", 0.3, 0, 1, None)
    source, mask = app.editor_image_and_mask(value, "inpaint")
    expected = state.maps.to_mask("2:circle", 0.3, step_range=(0, 1))
    assert mode == "inpaint" and np.array_equal(np.asarray(mask), np.asarray(expected))
    assert source.tobytes() == Image.open(path).convert("RGB").tobytes()
    # The generator's own feature views work offline.
    for backbone in ("unet", "vae"):
        views = app.show_features(path, backbone, None, "a red circle")
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
        app.show_features(str(picture), "vgg16", None, "")
    with pytest.raises(gr.Error, match="Add an image"):
        app.show_features(None, "vae", None, "")


def test_inspect_an_edit_from_the_edit_tab(tiny_env, tmp_path, monkeypatch):
    """Every edit mode can be inspected: the Edit tab's settings, one image, maps of its prompt."""
    monkeypatch.setattr(app, "_cache_dir", lambda: tmp_path)
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (240, 240, 240)).save(source)
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((8, 8, 30, 30), fill=(255, 255, 255, 255))
    layer.save(tmp_path / "layer.png")
    editor = {"background": str(source), "layers": [str(tmp_path / "layer.png")],
              "composite": str(source)}
    for mode in ("img2img", "inpaint"):
        out = _last(app.inspect_edit_from_ui(
            editor, "a blue square", mode, 0.8, 1.5, "red", None, 2, None, 5, False, None, None,
            "model default", False, 0.6, progress=lambda *a, **k: None))
        path, grid, strip, state, word, *_, info = out
        assert f"{mode} · seed 5" in info and Image.open(path).size == (64, 64)
        assert [k for _, k in word["choices"]] == ["0:a", "1:blue", "2:square"]
        assert "Negative prompt: red" in Image.open(path).info["parameters"]
