"""The shipped shapes model: loads offline through the engine, generates, evaluates."""

import json
from pathlib import Path

import pytest

from vgen.generate import generate
from vgen.requests import GenerateRequest

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "vgen-shapes"


@pytest.fixture
def offline(monkeypatch):
    from vgen import pipelines

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VGEN_DEFAULT_MODEL", raising=False)
    monkeypatch.setattr(pipelines, "_CACHE", None)


def test_checkpoint_is_small_enough_for_a_space():
    files = [f for f in CHECKPOINT.rglob("*") if f.is_file()]
    assert (CHECKPOINT / "model_index.json").exists() and (CHECKPOINT / "README.md").exists()
    assert sum(f.stat().st_size for f in files) < 20e6
    assert max(f.stat().st_size for f in files) < 10e6
    assert not any(f.suffix in (".bin", ".ckpt", ".pt", ".pth") for f in files)


def test_shipped_vae_config_has_the_fitted_latent_scale():
    """Regression: exports up to step 4762 kept SD's 0.18215 instead of the fitted scale."""
    cfg = json.loads((CHECKPOINT / "vae" / "config.json").read_text())
    assert cfg["scaling_factor"] != 0.18215 and 0.2 < cfg["scaling_factor"] < 10


def test_shipped_vae_posterior_is_what_the_decoder_was_trained_on():
    """Regression: the learned posterior std was ~1 (tiny KL weight), so img2img and inpaint,
    which sample the posterior, started from near-noise (speckles over the kept area)."""
    import random

    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from vgen.shapes import world
    from vgen.shapes.model import DECODER_NOISE_STD
    from vgen.shapes.train import images_to_tensor

    x = images_to_tensor(np.stack([world.render_array(world.sample_scene(random.Random(0)))]))
    for name in ("vgen-shapes", "vgen-shapes-edit"):
        folder = CHECKPOINT.parent / name
        if not (folder / "vae").exists():
            continue
        with torch.no_grad():
            std = AutoencoderKL.from_pretrained(folder, subfolder="vae").encode(x).latent_dist.std
        assert float(std.max()) == pytest.approx(DECODER_NOISE_STD, rel=0.01)


def test_default_model_generates_offline(offline):
    r = generate(GenerateRequest(prompt="a red circle to the left of a blue square", seed=0))
    # The distilled student is the default (issue #23): 10 DDIM steps of one UNet branch.
    assert r.model == "vgen-shapes-distilled" and r.revision == "local"
    assert r.request.steps == 10 and r.sampler == "DDIM"
    assert r.images[0].size == (64, 64)
    assert r.extras["unknown_words"] == []
    r2 = generate(GenerateRequest(prompt="a cat on a sofa", seed=0, steps=2))
    assert r2.extras["unknown_words"] == ["cat", "sofa"]


def test_short_eval_runs(offline, tmp_path):
    from vgen.shapes.evaluate import CATEGORIES, evaluate

    report = evaluate(n=1, seed=0, steps=4, log=lambda m: None)
    assert set(report["categories"]) == set(CATEGORIES)
    assert 0.0 <= report["overall_seen"] <= 1.0
    json.dumps(report)  # serialisable as the --json file


def test_renamed_copy_runs_at_its_cards_settings(offline, tmp_path, monkeypatch):
    """Regression: a copy of the shipped model under another name (or pushed to the Hub) ran
    at the generic 25 steps and guidance 7.5, not the 20 and 4.0 its scores were measured at;
    the card's ``inference: parameters:`` now carry them."""
    import shutil

    copy = tmp_path / "my-shapes"
    shutil.copytree(CHECKPOINT, copy, ignore=shutil.ignore_patterns("eval.json", "training.json"))
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tmp_path))
    r = generate(GenerateRequest(prompt="a red circle", model=str(copy), seed=0))
    assert (r.request.steps, r.request.guidance, r.images[0].size) == (20, 4.0, (64, 64))


def test_card_defaults_read_the_hub_convention_and_skip_bad_values(tmp_path):
    from vgen.catalog import card_defaults, defaults_for
    from vgen.requests import ModelDefaults

    assert card_defaults(tmp_path) == {}  # no card
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert card_defaults(tmp_path) == {}
    (tmp_path / "README.md").write_text(
        "---\nlibrary_name: diffusers\ninference:\n  parameters:\n    num_inference_steps: 8\n"
        "    guidance_scale: 2\n    image_guidance_scale: 1.8\n    width: -64\n"
        "    height: 7.5\n    negative_prompt: blurry\n---\n# card\n")
    assert card_defaults(tmp_path) == {"steps": 8, "guidance": 2.0, "image_guidance": 1.8}
    assert defaults_for("someone/model", folder=tmp_path) == ModelDefaults(512, 512, 8, 2.0, 1.8)
    (tmp_path / "README.md").write_text("---\ninference: [oops\n---\n")  # malformed YAML
    assert card_defaults(tmp_path) == {}
