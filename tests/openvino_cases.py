"""VGEN_BACKEND=openvino (issue #23, vgen.openvino_backend): the denoiser converted to OpenVINO
at the job's shapes, cached on disk, compiled at vgen's precision; the same images as PyTorch
within rounding, said in the result and the PNG; calls that look inside the model run the torch
UNet; a bad setting is refused with the allowed values.

Not collected by the suite itself: ``tests/test_openvino_backend.py`` runs this file in a pytest
process of its own (see why there)."""

from __future__ import annotations

import numpy as np
import pytest

from vgen import openvino_backend
from vgen.bench_measure import psnr
from vgen.errors import ModelError
from vgen.generate import generate
from vgen.metadata import parse_parameters
from vgen.pipelines import ModelCache
from vgen.requests import GenerateRequest

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
