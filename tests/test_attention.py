"""Cross-attention maps, map -> mask, the denoising path, and ``python -m vgen attention`` /
``eval attention`` (tiny random pipelines; the embedded model's architecture; the shipped
checkpoint when it is there)."""

from __future__ import annotations

import json
import string
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vgen import pipelines
from vgen.attention import (
    AttentionCapture,
    CaptureProcessor,
    generate_with_maps,
    inspect_generation,
    prompt_tokens,
)
from vgen.attention_maps import otsu_threshold
from vgen.denoising import predicted_x0
from vgen.edit import edit
from vgen.errors import CancelledError, InvalidRequestError
from vgen.generate import generate
from vgen.jobs import JobControl
from vgen.viz import filmstrip
from vgen.requests import EditRequest, GenerateRequest

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "vgen-shapes"
PROMPT = "a red circle and a blue square"
KEYS = ["0:a", "1:red", "2:circle", "3:and", "4:a", "5:blue", "6:square"]


def _unet(ref: str | None = None):
    return pipelines.model_cache().get(ref).pipe.unet


def _processor_ids(unet) -> dict[str, int]:
    return {name: id(p) for name, p in unet.attn_processors.items()}


def _assert_maps(maps, keys, size=(64, 64)):
    m = maps.maps()
    assert list(m) == keys
    for v in m.values():
        assert v.shape == size[::-1] and v.dtype == np.float32
        assert 0.0 <= v.min() and v.max() <= 1.0 and v.max() == pytest.approx(1.0)


# ---- maps ----------------------------------------------------------------------------------

def test_maps_have_one_key_per_prompt_token_and_image_size(tiny_env, tmp_path):
    result, maps = generate_with_maps(GenerateRequest(prompt=PROMPT, steps=2, seed=1))
    _assert_maps(maps, KEYS)
    assert maps.num_steps == 2 and len(maps.timesteps) == 2
    assert maps.keys(include_special=True) == ["-1:<start>", *KEYS, "7:<end>", "8:<padding>"]
    assert set(maps.maps(include_special=True)) == set(maps.keys(True))
    assert maps.word_keys() == KEYS  # word-level tokenizer: one token per word
    # filters: one step, one resolution, one block kind
    res = maps.resolutions
    assert len(res) == 2 and set(maps.kinds) == {"down", "mid", "up"}
    one = maps.maps(step_range=(1, 1), resolutions=[res[-1]], kinds=["up"])
    assert list(one) == KEYS and one["2:circle"].shape == (64, 64)
    assert not np.allclose(one["2:circle"], maps.map("2:circle"))
    share = maps.maps(normalize="tokens")  # the default is DAAM's raw sums ("none")
    assert list(share) == KEYS and not np.allclose(share["2:circle"], maps.map("2:circle"))
    assert np.array_equal(maps.maps(normalize="none")["2:circle"], maps.map("2:circle"))
    with pytest.raises(InvalidRequestError, match="normalize"):
        maps.maps(normalize="softmax")
    with pytest.raises(InvalidRequestError, match="no attention recorded"):
        maps.maps(step_range=(5, 9))
    with pytest.raises(InvalidRequestError, match="no attention map"):
        maps.map("9:cat")
    # npz round trip
    path = maps.save_npz(tmp_path / "maps.npz")
    with np.load(path) as z:
        assert sorted(z.files) == sorted(KEYS)
        assert np.array_equal(z["2:circle"], maps.map("2:circle"))
    # pictures
    assert maps.overlay(result.images[0], "1:red", 0.5).size == (64, 64)
    grid = maps.grid(result.images[0], cell_size=64)
    assert grid.mode == "RGB" and grid.width > 64 * 3


def test_images_are_bit_identical_with_and_without_capture(tiny_env):
    req = GenerateRequest(prompt=PROMPT, steps=3, seed=5, num_images=2)
    plain = generate(req)
    captured, maps = generate_with_maps(req)
    for a, b in zip(plain.images, captured.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert maps.maps(image_index=1)["2:circle"].shape == (64, 64)


def test_the_text_conditioned_half_of_the_batch_is_captured(tiny_env, tiny_models):
    """With guidance 1 there is no unconditional half; the first step sees the same latents,
    so the text-conditioned maps of a guided run must equal the unguided run's."""
    for ref, req in [
        (None, GenerateRequest(prompt=PROMPT, steps=2, seed=3)),
        (str(tiny_models["instruct"]), EditRequest(prompt="make the circle blue", mode="instruct", steps=2,
                                                   seed=3, image=Image.new("RGB", (64, 64), (200, 40, 40)),
                                                   model=str(tiny_models["instruct"]))),
    ]:
        _, guided = generate_with_maps(replace(req, guidance=4.0))
        _, single = generate_with_maps(replace(req, guidance=1.0))
        first = [k for k in guided.sums if k[0] == 0]
        assert first and set(first) == {k for k in single.sums if k[0] == 0}
        for k in first:
            np.testing.assert_allclose(guided.sums[k], single.sums[k], atol=1e-5)


def test_every_edit_mode_gives_maps_and_counts_the_steps_it_runs(tiny_env, tiny_models):
    source = Image.new("RGB", (64, 64), (240, 240, 240))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    cases = [
        ("img2img", None, 2),  # 4 steps at strength 0.5 run 2
        ("inpaint", None, 2),  # a text-to-image UNet inpainting (latent blending)
        ("inpaint", str(tiny_models["inpaint"]), 2),  # a 9-channel inpainting UNet
        ("instruct", str(tiny_models["instruct"]), 4),
    ]
    for mode, model, steps_run in cases:
        req = EditRequest(prompt="a blue square", mode=mode, image=source, mask=mask if mode == "inpaint" else None,
                          steps=4, strength=0.5, seed=2, model=model)
        out = inspect_generation(req, path=True)
        _assert_maps(out.maps, ["0:a", "1:blue", "2:square"])
        assert out.maps.num_steps == steps_run, mode
        assert len(out.path) == 1 and len(out.path[0]) == steps_run
        assert all(f.size == (64, 64) for f in out.path[0])
        assert np.array_equal(np.asarray(out.result.images[0]), np.asarray(edit(req).images[0])), mode


# ---- processors are restored -------------------------------------------------------------

def test_processors_are_restored_after_success_error_and_cancel(tiny_env):
    unet = _unet()
    before = _processor_ids(unet)
    seen = []

    def look(pipe, i, t, kw):  # during the run the cross-attention layers are wrapped
        procs = pipe.unet.attn_processors
        seen.append(all(isinstance(p, CaptureProcessor) == n.endswith("attn2.processor") for n, p in procs.items()))

    req = GenerateRequest(prompt=PROMPT, steps=3, seed=1)
    generate_with_maps(req, control=JobControl(on_step=look))
    assert seen and all(seen)
    assert _processor_ids(unet) == before

    def boom(pipe, i, t, kw):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_with_maps(req, control=JobControl(on_step=boom))
    assert _processor_ids(unet) == before

    control = JobControl()
    control.progress = lambda step, total: control.cancel.set()
    with pytest.raises(CancelledError):
        inspect_generation(req, control=control, path=True)
    assert _processor_ids(unet) == before
    assert not unet._forward_hooks and not unet._forward_pre_hooks
    # and a plain run afterwards is unaffected
    assert generate(req).images[0].size == (64, 64)


def test_capture_restores_when_installing_fails(tiny_env, monkeypatch):
    unet = _unet()
    before = _processor_ids(unet)
    view = pipelines.task_view(pipelines.model_cache().get(None), "txt2img")
    cap = AttentionCapture(PROMPT)(view)
    real = type(unet).set_attn_processor
    calls = []

    def flaky(self, procs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("refused")
        return real(self, procs)

    monkeypatch.setattr(type(unet), "set_attn_processor", flaky)
    with pytest.raises(ValueError, match="refused"):
        with cap:
            pass
    assert _processor_ids(unet) == before and not unet._forward_pre_hooks


# ---- map -> mask ---------------------------------------------------------------------------

def test_map_to_mask_is_a_binary_image_sized_inpainting_mask(tiny_env, tiny_models):
    result, maps = generate_with_maps(GenerateRequest(prompt=PROMPT, steps=2, seed=4))
    mask = maps.to_mask("2:circle", threshold=0.5)
    assert mask.mode == "L" and mask.size == result.images[0].size
    values = set(np.unique(np.asarray(mask)).tolist())
    assert values <= {0, 255} and 255 in values
    assert np.asarray(maps.to_mask("2:circle", 0.0)).min() == 255
    assert (np.asarray(maps.to_mask("2:circle", 0.9)) > 0).sum() <= (np.asarray(mask) > 0).sum()
    with pytest.raises(InvalidRequestError):
        maps.to_mask("2:circle", 1.5)
    # it goes straight into an inpainting edit
    edited = edit(EditRequest(prompt="a green circle", mode="inpaint", image=result.images[0], mask=mask,
                              steps=2, strength=1.0, seed=1, model=str(tiny_models["inpaint"])))
    assert edited.images[0].size == (64, 64)


# ---- tokens, denoising path, helpers ---------------------------------------------------------

def test_clip_bpe_tokens_strip_word_ends_and_group_words(tmp_path):
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    for c in string.ascii_lowercase:
        vocab[c + "</w>"] = len(vocab)
    for t in ("re", "red</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[t] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16)
    pt = prompt_tokens(tok, "a red cube")
    assert pt.tokens == ("a", "red", "c", "u", "b", "e")
    assert pt.words == (0, 1, 2, 2, 2, 2)
    assert (pt.start, pt.end, pt.padding, pt.length) == (0, 7, tuple(range(8, 16)), 16)
    assert pt.keys() == ["0:a", "1:red", "2:c", "3:u", "4:b", "5:e"]


def test_unknown_words_keep_their_text_in_the_keys_and_one_word_prompts_work(tiny_env):
    _, maps = generate_with_maps(GenerateRequest(prompt="a cat circle", steps=1, seed=0))
    assert maps.keys() == ["0:a", "1:cat", "2:circle"]
    _, one = generate_with_maps(GenerateRequest(prompt="circle", steps=1, seed=0))
    _assert_maps(one, ["0:circle"])  # one token: its raw map, not a constant share of 1


def test_x0_formulas_recover_the_clean_sample():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    a = 0.3
    xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a ** 0.5 * eps - (1 - a) ** 0.5 * x0
    torch.testing.assert_close(predicted_x0(xt, eps, a, "epsilon"), x0)
    torch.testing.assert_close(predicted_x0(xt, v, a, "v_prediction"), x0)
    torch.testing.assert_close(predicted_x0(xt, x0, a, "sample"), x0)


def test_denoising_path_has_one_frame_per_step_and_a_filmstrip(tiny_env):
    out = inspect_generation(GenerateRequest(prompt=PROMPT, steps=3, seed=1), maps=False, path=True)
    assert out.maps is None and len(out.path[0]) == 3
    strip = filmstrip(out.path[0], cell_size=48)
    assert strip.width > 3 * 48 and strip.height > 48


def test_capture_without_step_callbacks_counts_unet_calls(tiny_env):
    """Used directly on a pipeline (no JobControl), each UNet call is a step."""
    view = pipelines.task_view(pipelines.model_cache().get(None), "txt2img")
    cap = AttentionCapture(PROMPT)
    with cap(view), torch.inference_mode():
        view(prompt=PROMPT, num_inference_steps=3, guidance_scale=3.0, output_type="pil",
             generator=torch.Generator().manual_seed(0))
    maps = cap.result()
    assert maps.num_steps == 3 and maps.image_size == (64, 64)
    _assert_maps(maps, KEYS)


def test_otsu_threshold_splits_two_modes():
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.8)])
    assert 0.1 < otsu_threshold(values) <= 0.8


# ---- the embedded model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_sized(tmp_path_factory):
    """The embedded model's architecture (full size, random weights), saved like the shipped one."""
    from diffusers import StableDiffusionPipeline

    from vgen.shapes.model import ModelConfig, build_sample_scheduler, build_text_encoder, build_unet, build_vae
    from vgen.shapes.tokenizer import build_tokenizer
    from vgen.shapes.train import fix_tokenizer_class

    cfg = ModelConfig()
    torch.manual_seed(0)
    tok = build_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=build_vae(cfg), unet=build_unet(cfg), tokenizer=tok, scheduler=build_sample_scheduler(cfg),
        text_encoder=build_text_encoder(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("shapes-arch") / "vgen-shapes-random"
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_tokenizer_class(folder)
    return folder


def test_maps_on_the_embedded_architecture(shapes_sized, monkeypatch):
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(shapes_sized.parent))
    monkeypatch.setattr(pipelines, "_CACHE", None)
    result, maps = generate_with_maps(GenerateRequest(prompt=PROMPT, model=str(shapes_sized), steps=2, seed=0))
    _assert_maps(maps, KEYS)
    assert maps.resolutions == [(16, 16), (8, 8), (4, 4)]  # cross-attention at every UNet level
    assert np.array_equal(np.asarray(result.images[0]),
                          np.asarray(generate(GenerateRequest(prompt=PROMPT, model=str(shapes_sized), steps=2,
                                                              seed=0)).images[0]))


@pytest.mark.parametrize("model", ["", "vgen-shapes"])
def test_maps_on_the_shipped_checkpoint(monkeypatch, model):
    """The default (the distilled student: one UNet branch a step) and its teacher."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("VGEN_DEFAULT_MODEL", raising=False)
    monkeypatch.setattr(pipelines, "_CACHE", None)
    result, maps = generate_with_maps(GenerateRequest(prompt=PROMPT, model=model, steps=4, seed=0))
    assert result.model == (model or "vgen-shapes-distilled")
    _assert_maps(maps, KEYS)


# ---- CLI -----------------------------------------------------------------------------------------

def test_cli_attention_writes_image_maps_and_overlays(tiny_env, tmp_path, capsys):
    from vgen.cli import main

    out = tmp_path / "att"
    assert main(["attention", "a red circle", "--seed", "3", "--steps", "2", "--out", str(out), "--path"]) == 0
    with np.load(out / "maps.npz") as z:
        assert sorted(z.files) == ["0:a", "1:red", "2:circle"]
        assert all(z[k].shape == (64, 64) and 0 <= z[k].min() and z[k].max() <= 1 for k in z.files)
    names = {p.name for p in out.iterdir()}
    assert {"image.png", "maps.npz", "grid.png", "path.png", "overlay-00-a.png", "overlay-01-red.png",
            "overlay-02-circle.png"} <= names
    assert "Seed: 3" in Image.open(out / "image.png").info["parameters"]
    # an edit through the same command
    out2 = tmp_path / "att2"
    assert main(["attention", "a blue circle", "--image", str(out / "image.png"), "--strength", "0.5",
                 "--steps", "2", "--seed", "1", "--out", str(out2), "--include-special"]) == 0
    with np.load(out2 / "maps.npz") as z:
        assert sorted(z.files) == sorted(["-1:<start>", "0:a", "1:blue", "2:circle", "3:<end>", "4:<padding>"])


def test_cli_eval_attention_writes_a_report(tiny_env, tmp_path, capsys):
    from vgen.attention_eval import _score, prompt_set
    from vgen.cli import main
    from vgen.shapes import world

    prompts = prompt_set(100, seed=0)
    assert len(prompts) == 100 and len({p for p, _ in prompts}) > 90
    for prompt, pairs in prompts:
        assert len({s for _, s in pairs}) == len(pairs) and len({c for c, _ in pairs}) == len(pairs)
        assert not any(p in world.HELD_OUT for p in pairs)
        assert [w for w in prompt.replace(",", " ").split() if w in world.SHAPES] == [s for _, s in pairs]
    m = np.zeros((64, 64), np.float32)
    m[10:20, 10:20] = 1.0
    mask = np.zeros((64, 64), bool)
    mask[10:30, 10:20] = True
    assert _score(m, mask, 0.5) == (True, 0.5)
    report_path = tmp_path / "r.json"
    assert main(["eval", "attention", "--n", "3", "--steps", "2", "--json", str(report_path)]) == 0
    r = json.loads(report_path.read_text())
    assert r["n_prompts"] == 3 and r["words"] == 6
    assert r["words_scored"] + sum(r["skipped"].values()) == r["words"]
    assert r["capture_overhead"]["runs"] == 3 and "overhead" in r["capture_overhead"]
    assert "pointing game" in capsys.readouterr().out
