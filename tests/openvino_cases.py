"""VGEN_BACKEND=openvino (issue #23, vgen.openvino_backend): the denoiser converted to OpenVINO
at the job's shapes, cached on disk, compiled at vgen's precision; the same images as PyTorch
within rounding, said in the result and the PNG; calls that look inside the model run the torch
UNet; a bad setting is refused with the allowed values.

Not collected by the suite itself: ``tests/test_openvino_backend.py`` runs this file in a pytest
process of its own (see why there)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vgen import openvino_backend
from vgen.bench_measure import psnr
from vgen.errors import ModelError
from vgen.edit import edit
from vgen.generate import generate
from vgen.metadata import parse_parameters
from vgen.pipelines import ModelCache
from vgen.requests import EditRequest, GenerateRequest

pytest.importorskip("openvino", reason="the OpenVINO backend needs the openvino package (.ci/run installs it)")


@pytest.fixture
def ov_env(tiny_env, tmp_path, monkeypatch):
    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VGEN_DTYPE", "float32")  # no precision micro-benchmark in a fresh cache
    return tmp_path / "cache"


def _request(**kw) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a red circle", "steps": 3, "seed": 3, "guidance": 5.0, **kw})


def test_openvino_draws_what_torch_draws_converts_once_and_says_so(ov_env, monkeypatch):
    ref = generate(_request(), cache=ModelCache(max_models=1))
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    cache = ModelCache(max_models=1)
    r = generate(_request(), cache=cache)
    assert r.extras["backend"] == "openvino"
    assert parse_parameters(r.parameters[0])["Backend"] == "openvino"
    assert psnr(ref.images[0], r.images[0]) > 40
    stand_in = openvino_backend.denoiser_for(cache.get(None))
    assert stand_in.used == {"openvino": 3 * 1, "torch": 0}  # 3 steps, guidance batched in one call
    assert stand_in.converted == 1
    assert len(list(ov_env.glob("openvino/*/denoiser.xml"))) == 1
    # Regression: with OpenVINO's default pinning, its thread stayed on a core another process
    # kept busy (vgen bench --busy-core: 2.17x the idle time, against 0.99x unpinned).
    ((request, _int8),) = stand_in._ir._compiled.values()
    assert request.get_compiled_model().get_property("ENABLE_CPU_PINNING") is False
    # Regression: the converter leaves batch and spatial sizes dynamic, and a dynamic SD-Turbo
    # UNet IR ran slower than optimum-intel's reshaped one (0.72 against 0.64 s per call).
    (signature,) = [json.loads(k)[0] for k in stand_in._ir._compiled]
    compiled_shapes = [list(p.get_partial_shape().to_shape()) for p in request.get_compiled_model().inputs]
    assert compiled_shapes == list(signature.values())
    # No guidance batch is a new signature; a new process (cache) reads the saved IRs back.
    generate(_request(guidance=1.0), cache=cache)
    assert stand_in.converted == 2
    again = ModelCache(max_models=1)
    r2 = generate(_request(), cache=again)
    assert openvino_backend.denoiser_for(again.get(None)).converted == 0
    assert np.array_equal(np.asarray(r2.images[0]), np.asarray(r.images[0]))


def test_a_call_that_looks_inside_the_model_runs_the_torch_unet(ov_env, monkeypatch):
    """A hook on one of the torch UNet's blocks (what the Features tab does) must see the
    blocks run: the IR has no blocks to hook."""
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    cache = ModelCache(max_models=1)
    generate(_request(steps=1), cache=cache)
    unet = cache.get(None).pipe.unet
    seen = []
    handle = unet.down_blocks[0].register_forward_hook(lambda m, a, out: seen.append(1))
    try:
        r = generate(_request(steps=2), cache=cache)
    finally:
        handle.remove()
    assert seen and r.extras["backend"] == "torch"
    assert "ran on PyTorch" in r.extras["backend_note"]
    plain = generate(_request(steps=1), cache=cache)  # the hook is gone
    assert plain.extras["backend"] == "openvino" and not plain.extras["backend_note"]


def test_the_embedded_distilled_model_takes_its_guidance_input_through_openvino(tmp_path, monkeypatch):
    """The shipped default: a UNet with ``time_cond_proj_dim`` (the guidance embedding)."""
    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VGEN_DTYPE", "float32")
    req = GenerateRequest(prompt="a red circle above a blue square", model="vgen-shapes-distilled", seed=5)
    ref = generate(req, cache=ModelCache(max_models=1))
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    r = generate(req, cache=ModelCache(max_models=1))
    assert r.extras["backend"] == "openvino"
    assert psnr(ref.images[0], r.images[0]) > 35


def test_a_layout_on_the_grounded_model_runs_its_grounding_through_openvino(tmp_path, monkeypatch):
    """The app's default path (Plan the layout): GLIGEN's grounding as IR inputs while the fusers
    run, the plain IR after scheduled sampling turns them off; layout guidance's gradient steps
    need autograd, so they run on the torch UNet."""
    from vgen.layout import Layout

    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VGEN_DTYPE", "float32")
    layout = Layout.from_json('{"objects": [{"phrase": "a red circle", "box": [0.05, 0.3, 0.45, 0.7]},'
                              ' {"phrase": "a blue square", "box": [0.55, 0.3, 0.95, 0.7]}]}')
    req = GenerateRequest(prompt="a red circle to the left of a blue square", model="vgen-shapes-grounded",
                          seed=2, layout=layout, layout_guidance=0.0)
    ref = generate(req, cache=ModelCache(max_models=1))
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    cache = ModelCache(max_models=1)
    r = generate(req, cache=cache)
    assert r.extras["backend"] == "openvino"
    assert psnr(ref.images[0], r.images[0]) > 35
    assert openvino_backend.denoiser_for(cache.get("vgen-shapes-grounded")).converted == 2  # grounded, plain
    guided = generate(GenerateRequest(**{**req.__dict__, "layout_guidance": 0.5}), cache=cache)
    assert guided.extras["backend"] == "openvino+torch" and "Some denoiser call" in guided.extras["backend_note"]


@pytest.mark.parametrize("value", ["onnx", "OpenVINO-GPU"])
def test_a_bad_backend_names_the_allowed_ones(ov_env, monkeypatch, value):
    monkeypatch.setenv("VGEN_BACKEND", value)
    with pytest.raises(ModelError, match="not one of torch, openvino"):
        generate(_request(steps=1), cache=ModelCache(max_models=1))


def test_status_says_the_backend(monkeypatch):
    from vgen.status import engine_status

    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    assert engine_status([])["backend"] == "openvino"
    monkeypatch.delenv("VGEN_BACKEND")
    assert engine_status([])["backend"] == "torch"


@pytest.fixture
def fast_env(tmp_path, monkeypatch):
    """A tiny SD-shaped model and a tiny AutoencoderTiny as its TAESD (VGEN_TAESD, a local folder)."""
    from vgen.bench_models import save_tiny_autoencoder, save_tiny_sd

    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tmp_path / "models"))
    monkeypatch.setenv("VGEN_TAESD", str(save_tiny_autoencoder(tmp_path / "models" / "taesd", tiny=True)))
    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VGEN_DTYPE", "float32")
    return save_tiny_sd(tmp_path / "models" / "tiny-sd"), tmp_path / "cache"


def test_a_job_runs_its_text_encoder_denoiser_and_either_decoder_on_openvino(fast_env, monkeypatch):
    model, cache_dir = fast_env
    req = GenerateRequest(prompt="two yellow triangles", model=str(model), steps=2, guidance=0.0, seed=3,
                          decoder="fast", num_images=2)
    ref = generate(req, cache=ModelCache(max_models=1))
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    r = generate(req, cache=ModelCache(max_models=1))
    assert r.extras["backend"] == "openvino"
    assert r.extras["openvino_parts"] == "text encoder, denoiser, decoder"
    assert r.extras["decoder"].startswith("fast: tiny autoencoder")  # the stand-in is still TAESD to the job
    assert r.timings.decode_s > 0 and r.timings.encode_s > 0  # the phase timer sees the stand-ins
    for a, b in zip(ref.images, r.images):  # two images: one latent per decoder call, one row per text call
        assert psnr(a, b) > 40
    assert {p.name for p in cache_dir.glob("openvino/*/*.xml")} == {"text_encoder.xml", "denoiser.xml",
                                                                     "decoder.xml"}
    # The full VAE's decoder runs there too (OpenVINO decoded SD's VAE faster at static shapes).
    full_req = GenerateRequest(**{**req.__dict__, "decoder": "full"})
    full = generate(full_req, cache=ModelCache(max_models=1))
    assert full.extras["openvino_parts"] == "text encoder, denoiser, decoder"
    assert full.extras["decoder"] == "full: AutoencoderKL"  # the stand-in is the model's VAE to the job
    assert len(list(cache_dir.glob("openvino/*/decoder.xml"))) == 2  # TAESD's and the VAE's
    monkeypatch.setenv("VGEN_BACKEND", "torch")
    full_ref = generate(full_req, cache=ModelCache(max_models=1))
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    for a, b in zip(full_ref.images, full.images):
        assert psnr(a, b) > 40
    # An edit encodes its source with the torch VAE (the stand-in hands encode over) and decodes on the IR.
    edited = edit(EditRequest(prompt="a red circle", model=str(model), image=full.images[0], steps=2, guidance=0.0,
                              seed=3, strength=0.5), cache=ModelCache(max_models=1))
    assert edited.extras["openvino_parts"] == "text encoder, denoiser, decoder"


def test_the_text_encoder_stand_in_answers_as_the_clip_model_does(fast_env, monkeypatch):
    """What diffusers asks of a text encoder: ``[0]``, the hidden states for ``clip_skip`` and
    SDXL (``[-1]``, ``.hidden_states``), a tuple with ``return_dict=False``; a call with an
    attention mask (GLIGEN's phrases) runs the torch model."""
    import torch

    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    loaded = ModelCache(max_models=1).get(str(fast_env[0]))
    stand_in = openvino_backend.stand_ins_for(loaded)["text_encoder"]
    torch_model = stand_in.torch_module
    cfg = torch_model.config
    length = min(77, cfg.max_position_embeddings)
    ids = torch.randint(0, cfg.vocab_size, (3, length))
    with torch.inference_mode():
        want = torch_model(ids, output_hidden_states=True)
        got = stand_in(ids, output_hidden_states=True)
        assert torch.allclose(got[0], want[0], atol=1e-4) and torch.allclose(got.pooler_output, want.pooler_output,
                                                                              atol=1e-4)
        assert len(got[-1]) == len(want.hidden_states)
        assert torch.allclose(got[-1][-2], want.hidden_states[-2], atol=1e-4)
        plain = stand_in(ids[:1], return_dict=False)
        assert isinstance(plain, tuple) and torch.allclose(plain[0], want[0][:1], atol=1e-4)
        assert stand_in.used == {"openvino": 4, "torch": 0}  # one row per call
        masked = stand_in(ids[:2], attention_mask=torch.ones(2, length, dtype=torch.long))
        assert stand_in.used["torch"] == 1 and torch.allclose(masked[0], want[0][:2], atol=1e-4)


def test_the_warm_up_converts_the_default_path_so_the_first_layout_job_does_not(tmp_path, monkeypatch):
    """Regression: under the backend the app's first planned-layout image took 16.2 s in the
    browser, converting the grounded twin's IRs; the warm-up converted only the default model's."""
    from vgen import pipelines
    from vgen.layout import Layout
    from vgen.worker import warm_up

    monkeypatch.setattr(pipelines, "_CACHE", None)  # the warm-up loads into the process's model cache
    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VGEN_DTYPE", "float32")
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    monkeypatch.delenv("VGEN_DEFAULT_MODEL", raising=False)  # the embedded default, whose twin draws layouts
    warm_up()
    roles = sorted(p.name for p in (tmp_path / "cache").glob("openvino/*/*.xml"))
    # Denoisers: grounded, plain, distilled; the two models' text encoders and VAE decoders.
    assert roles == ["decoder.xml"] * 2 + ["denoiser.xml"] * 3 + ["text_encoder.xml"] * 2
    model_cache = pipelines.model_cache
    layout = Layout.from_json('{"objects": [{"phrase": "a blue square", "box": [0.1, 0.1, 0.5, 0.5]}]}')
    r = generate(GenerateRequest(prompt="a blue square", layout=layout, seed=4), cache=model_cache())
    assert r.extras["backend"] == "openvino"
    assert openvino_backend.denoiser_for(model_cache().get("vgen-shapes-grounded")).converted == 2  # in the warm-up


def test_quantize_makes_an_int8_denoiser_that_runs_only_when_asked(fast_env, monkeypatch):
    """python -m vgen quantize (vgen.openvino_int8): calibrated on the model's own calls, saved
    beside the converted IR, used under VGEN_OPENVINO_INT8=1 and said in the result and PNG."""
    from vgen.openvino_int8 import quantize

    model, cache_dir = fast_env
    req = GenerateRequest(prompt="two yellow triangles", model=str(model), steps=2, guidance=0.0, seed=3)
    monkeypatch.setenv("VGEN_BACKEND", "torch")
    with pytest.raises(ModelError, match="VGEN_BACKEND=openvino"):
        quantize(req, prompts=("a",))
    monkeypatch.setenv("VGEN_BACKEND", "openvino")
    plain = generate(req, cache=ModelCache(max_models=1))
    folders = quantize(req, prompts=("a red square", "two blue circles", "a green triangle"), log=lambda m: None)
    assert len(folders) == 1 and (folders[0] / "denoiser-int8.xml").is_file()
    assert json.loads((folders[0] / "int8.json").read_text())["calls"] == 3 * 2  # 3 prompts, 2 steps
    assert generate(req, cache=ModelCache(max_models=1)).extras["openvino_parts"] == "text encoder, denoiser, decoder"
    monkeypatch.setenv("VGEN_OPENVINO_INT8", "1")
    r = generate(req, cache=ModelCache(max_models=1))
    assert r.extras["openvino_parts"] == "text encoder, denoiser (int8), decoder"
    assert parse_parameters(r.parameters[0])["Quantized"] == "denoiser int8"
    assert psnr(plain.images[0], r.images[0]) > 25
    # Another size has no int8 IR: it runs the converted one, and says nothing of int8.
    other = generate(GenerateRequest(**{**req.__dict__, "width": 128, "height": 128}), cache=ModelCache(max_models=1))
    assert other.extras["openvino_parts"] == "text encoder, denoiser, decoder"
