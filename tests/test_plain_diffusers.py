"""Every shipped pipeline in checkpoints/ loads and generates with diffusers' plain documented
call, ``DiffusionPipeline.from_pretrained(folder)`` without a dtype, and gives vgen's image
(issue #23). The weights are stored in fp16; the text encoder's config says ``"dtype":
"float32"`` (``vgen.shapes.export.load_in_float32``), so transformers 5 upcasts it at load as
diffusers does its own models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# The pipelines committed under checkpoints/ (a new one belongs here too).
SHIPPED = ["vgen-shapes", "vgen-shapes-distilled", "vgen-shapes-edit"]
PROMPT = "a red circle to the left of a blue square"
SEED = 7


def _source() -> Image.Image:
    im = Image.new("RGB", (64, 64), (255, 255, 255))
    im.paste((220, 30, 30), (16, 16, 48, 48))
    return im


def _plain(name: str, steps: int, guidance: float, image_guidance: float):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(REPO / "checkpoints" / name))  # no dtype
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=steps, guidance_scale=guidance,
              generator=torch.Generator("cpu").manual_seed(SEED))
    if "InstructPix2Pix" in type(pipe).__name__:
        kw.update(image=_source(), image_guidance_scale=image_guidance)
    else:
        kw.update(height=64, width=64)
    return pipe, pipe(PROMPT, **kw).images[0]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_pipeline_runs_in_plain_diffusers_and_matches_vgen(name, monkeypatch):
    from vgen.catalog import defaults_for
    from vgen.edit import edit
    from vgen.generate import generate
    from vgen.pipelines import ModelCache
    from vgen.requests import EditRequest, GenerateRequest

    monkeypatch.setenv("VGEN_DTYPE", "float32")  # plain diffusers runs fp32: compare like with like
    d = defaults_for(name)
    pipe, image = _plain(name, 2, d.guidance, d.image_guidance)
    dtypes = {k: m.dtype for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert set(dtypes.values()) == {torch.float32}, dtypes
    assert image.size == (64, 64)
    cache = ModelCache(max_models=1)
    if name.endswith("-edit"):
        ours = edit(EditRequest(prompt=PROMPT, model=name, mode="instruct", image=_source(), steps=2,
                                guidance=d.guidance, image_guidance=d.image_guidance, seed=SEED,
                                width=64, height=64), cache=cache)
    else:
        ours = generate(GenerateRequest(PROMPT, model=name, steps=2, guidance=d.guidance, seed=SEED,
                                        width=64, height=64), cache=cache)
    diff = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(ours.images[0], dtype=np.int16))
    assert diff.max() <= 3, f"plain diffusers and vgen differ by up to {diff.max()} levels"


@pytest.mark.parametrize("name", SHIPPED + ["vgen-shapes-grounded"])  # GLIGEN: tests/test_grounded.py
def test_shipped_text_encoder_says_float32_and_every_file_stays_small(name):
    folder = REPO / "checkpoints" / name
    assert json.loads((folder / "text_encoder" / "config.json").read_text())["dtype"] == "float32"
    big = [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size >= 10 * 2**20]
    assert not big, big


def test_exports_say_float32_for_half_configs(tmp_path):
    """What every trainer's export goes through (vgen.shapes.export.publish)."""
    from vgen.shapes.export import load_in_float32, partial_folder, publish

    tmp = partial_folder(tmp_path / "model")
    (tmp / "text_encoder").mkdir(parents=True)
    (tmp / "unet").mkdir()
    (tmp / "text_encoder" / "config.json").write_text(json.dumps({"dtype": "float16", "x": 1}))
    (tmp / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (tmp / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    final = publish(tmp, tmp_path / "model", {"step": 1}, lambda p: p / "README.md")
    assert json.loads((final / "text_encoder" / "config.json").read_text()) == {"dtype": "float32", "x": 1}
    assert json.loads((final / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((final / "unet" / "config.json").read_text()) == {"_class_name": "UNet2DConditionModel"}
    assert load_in_float32(final) == []  # nothing left to change


@pytest.mark.parametrize("name", SHIPPED + ["vgen-shapes-grounded"])
def test_shipped_card_recommends_the_settings_vgen_uses(name):
    """The Hub widget and plain diffusers users read the card's ``inference: parameters``; vgen
    uses its catalog's defaults. Regression: the grounded model's catalog moved to 10 steps and
    the card must say so too."""
    from vgen.catalog import card_defaults, entry_for

    card, catalog = card_defaults(REPO / "checkpoints" / name), entry_for(name).defaults
    assert card, f"{name}'s card recommends no settings"
    for field, value in card.items():
        assert getattr(catalog, field) == value, (name, field)
