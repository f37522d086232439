"""Drawing a layout through the engine (vgen.grounded, vgen.layout_guidance): parity with
diffusers' StableDiffusionGLIGENPipeline, layout guidance, the errors, the PNG record, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vgen.layout import Layout

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout.from_json('{"objects": [{"phrase": "a red circle", "box": [0.05, 0.3, 0.45, 0.7]},'
                          ' {"phrase": "a blue square", "box": [0.55, 0.3, 0.95, 0.7]}]}')
PROMPT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def tiny_gligen(tmp_path_factory):
    from vgen.archs import save_arch

    root = tmp_path_factory.mktemp("gligen-root")
    return save_arch("gligen", root / "tiny-gligen", tiny=True)


@pytest.fixture
def gligen_env(tiny_gligen, tiny_models, monkeypatch):
    from vgen import pipelines

    monkeypatch.setenv("VGEN_MODEL_ROOTS", f"{tiny_gligen.parent}:{tiny_models['root']}")
    monkeypatch.setattr(pipelines, "_CACHE", None)
    return tiny_gligen


def _request(model, **kw):
    from vgen.requests import GenerateRequest

    base = dict(model=str(model), steps=4, guidance=3.0, seed=5, width=64, height=64, layout=LAYOUT)
    return GenerateRequest(PROMPT, **{**base, **kw})


def test_layout_without_guidance_matches_the_diffusers_gligen_pipeline(gligen_env):
    from diffusers import StableDiffusionGLIGENPipeline

    from vgen.catalog import model_defaults
    from vgen.generate import generate
    from vgen.pipelines import model_cache

    ours = generate(_request(gligen_env, layout_guidance=0.0)).images[0]
    beta = model_defaults(model_cache().get(str(gligen_env))).gligen_beta
    pipe = StableDiffusionGLIGENPipeline.from_pretrained(str(gligen_env), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, num_inference_steps=4, guidance_scale=3.0, height=64, width=64,
               gligen_phrases=LAYOUT.phrases, gligen_boxes=LAYOUT.boxes,
               gligen_scheduled_sampling_beta=beta,
               generator=torch.Generator().manual_seed(5)).images[0]
    diff = np.abs(np.asarray(ours, np.int16) - np.asarray(ref, np.int16))
    assert diff.max() <= 1, diff.max()


def test_layout_guidance_moves_the_image_and_restores_the_model(gligen_env):
    from vgen.generate import generate
    from vgen.pipelines import model_cache

    off = np.asarray(generate(_request(gligen_env, layout_guidance=0.0)).images[0], np.int16)
    result = generate(_request(gligen_env, layout_guidance=0.5))
    on = np.asarray(result.images[0], np.int16)
    assert np.abs(on - off).max() > 0
    unet = model_cache().get(str(gligen_env)).pipe.unet
    fusers = [m for m in unet.modules() if type(m).__name__ == "GatedSelfAttentionDense"]
    assert fusers and all(m.enabled for m in fusers)  # scheduled sampling switched them back on
    assert not any("Recording" in type(p).__name__ for p in unet.attn_processors.values())
    assert result.request.layout == LAYOUT


def test_layout_guidance_reaches_every_phrase_word():
    from transformers import AutoTokenizer

    from vgen.attention import prompt_tokens
    from vgen.layout_guidance import box_masks, token_boxes

    tok = AutoTokenizer.from_pretrained(ROOT / "checkpoints" / "vgen-shapes" / "tokenizer")
    lay = Layout.from_json('{"objects": [{"phrase": "an orange triangle", "box": [0, 0, 0.5, 0.5]},'
                           ' {"phrase": "a pink triangle", "box": [0.5, 0.5, 1, 1]}]}')
    tokens = prompt_tokens(tok, "three orange triangles and a pink triangle")
    named = {tokens.tokens[tokens.positions.index(p)]: objs for p, objs in token_boxes(tokens, lay)}
    assert named == {"orange": [0], "triangles": [0, 1], "pink": [1], "triangle": [0, 1]}
    masks, weight = box_masks(tokens, lay, (16, 16))
    orange = tokens.positions[1]
    assert weight[0, orange] == 1 and masks[0, orange, :8, :8].all() and not masks[0, orange, 8:, 8:].any()


def test_a_layout_on_a_model_without_gligen_layers_says_which_models_take_one(gligen_env, tiny_models):
    from vgen.errors import InvalidRequestError
    from vgen.generate import generate

    with pytest.raises(InvalidRequestError, match="takes no layout.*GLIGEN"):
        generate(_request(tiny_models["txt2img"]))


def test_bad_layout_requests_are_refused():
    from vgen.errors import InvalidRequestError
    from vgen.requests import EditRequest, GenerateRequest, LayoutPlan, check_inputs

    ok = dict(steps=4, guidance=3.0, width=64, height=64, seed=1)
    with pytest.raises(InvalidRequestError, match="layout must be a vgen.layout.Layout"):
        check_inputs(GenerateRequest("x", layout='{"objects": []}', **ok))
    with pytest.raises(InvalidRequestError, match="request has no layout"):
        check_inputs(GenerateRequest("x", layout_plan=LayoutPlan("p"), **ok))
    with pytest.raises(InvalidRequestError, match="layout guidance"):
        check_inputs(GenerateRequest("x", layout=LAYOUT, layout_guidance=-1.0, **ok))
    with pytest.raises(InvalidRequestError, match="edits take none"):
        from PIL import Image

        check_inputs(EditRequest("x", layout=LAYOUT, image=Image.new("RGB", (64, 64)), **ok))


def test_the_png_records_the_layout_and_its_plan_and_restores_them(gligen_env):
    from vgen.generate import generate
    from vgen.metadata import read_parameters, request_from_parameters
    from vgen.requests import LayoutPlan

    plan = LayoutPlan("vgen-shapes-planner", "step 1", 7, 0.7)
    image = generate(_request(gligen_env, layout_guidance=0.2, layout_plan=plan)).images[0]
    text = read_parameters(image)
    assert 'Layout: "{\\"objects\\"' in text and "Layout planner: vgen-shapes-planner" in text
    back = request_from_parameters(text)
    assert back.layout == LAYOUT and back.layout_plan == plan and back.layout_guidance == 0.2


def test_features_capture_sees_the_steps_not_the_guidance_passes(gligen_env):
    from vgen.attention import inspect_generation

    plain = inspect_generation(_request(gligen_env, layout_guidance=0.0), maps=True, path=True)
    out = inspect_generation(_request(gligen_env, layout_guidance=0.5), maps=True, path=True)
    assert out.maps.timesteps == plain.maps.timesteps
    assert len(out.path[0]) == len(plain.path[0])


def _cli(*args, env_extra=None, cwd=ROOT):
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "VGEN_DTYPE": "float32", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "vgen", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_cli_plan_prints_reproducible_layouts():
    a = _cli("plan", PROMPT, "--seed", "3", "--num", "2")
    assert a.returncode == 0, a.stderr
    lines = a.stdout.strip().splitlines()
    assert len(lines) == 2 and all(len(Layout.from_json(x)) >= 1 for x in lines)
    assert _cli("plan", PROMPT, "--seed", "3", "--num", "2").stdout == a.stdout


def test_cli_generate_with_a_layout_file_and_with_plan(tiny_gligen, tmp_path, monkeypatch, capsys):
    from vgen.cli import main
    from vgen.metadata import read_parameters

    env = {"VGEN_MODEL_ROOTS": str(tiny_gligen.parent)}
    layout = tmp_path / "layout.json"
    layout.write_text(LAYOUT.to_json())
    out = tmp_path / "a.png"
    # The real command line once (a subprocess); the other cases in this process, which is
    # the same parser and entry function without another torch import.
    r = _cli("generate", PROMPT, "--model", str(tiny_gligen), "--layout", str(layout), "--steps", "2",
             "--seed", "1", "--out", str(out), env_extra=env)
    assert r.returncode == 0, r.stderr
    info = read_parameters(str(out))
    assert "Layout:" in info and "Layout planner" not in info
    for k, v in {**env, "VGEN_DTYPE": "float32"}.items():
        monkeypatch.setenv(k, v)
    assert main(["generate", PROMPT, "--model", str(tiny_gligen), "--plan", "--steps", "2", "--seed", "1",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert "Layout planner: vgen-shapes-planner" in read_parameters(str(tmp_path / "b.png"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"objects": [{"phrase": "a cat", "box": [0.5, 0, 0.2, 1]}]}))
    capsys.readouterr()
    assert main(["generate", PROMPT, "--model", str(tiny_gligen), "--layout", str(bad), "--out",
                 str(tmp_path / "c.png")]) == 2
    assert "x1" in capsys.readouterr().err


def test_a_prompts_file_with_plan_draws_each_prompt_on_its_own_layout(gligen_env, tmp_path):
    from vgen.batch import generate_file
    from vgen.metadata import read_parameters, request_from_parameters
    from vgen.requests import GenerateRequest

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle above a blue square\ntwo green triangles\n")
    base = GenerateRequest("", model=str(gligen_env), steps=2, seed=4, width=64, height=64)
    written = generate_file(prompts, tmp_path / "out", base, plan=True)
    made = [request_from_parameters(read_parameters(str(p))) for p in written]
    assert len(made) == 2 and all(r.layout is not None and r.layout_plan.seed == 4 for r in made)
    assert made[0].layout != made[1].layout


@pytest.mark.parametrize("scheduler", ["euler", "dpm++2m"])
def test_layout_guidance_runs_on_sigma_and_ddpm_schedulers(gligen_env, scheduler):
    from vgen.generate import generate

    result = generate(_request(gligen_env, layout_guidance=0.3, scheduler=scheduler))
    assert np.asarray(result.images[0]).std() > 0
