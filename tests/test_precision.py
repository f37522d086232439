"""The precision policy (issue #23, vgen.precision): VGEN_DTYPE forced and auto through the
engine, the CPU's cached verdict, bf16 on a CPU keeping the latents and scheduler in fp32, the
precision in /status, the result and the PNG; the OpenMP wait policy children get, and the
busy-core bench."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vgen import config, precision
from vgen.generate import generate
from vgen.metadata import parse_parameters, png_bytes, read_parameters, request_from_parameters
from vgen.pipelines import ModelCache
from vgen.requests import GenerateRequest


def _request(**kw) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a red circle", "steps": 2, "seed": 3, **kw})


@pytest.fixture
def verdict_cache(tmp_path, monkeypatch):
    """A fresh verdict cache and memo; ``measure`` answers ``speedup`` (set it; a dict gives
    one per scale) without timing; ``calls`` counts the scales measured."""
    monkeypatch.setenv("VGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_VERDICT", None)
    state = {"speedup": 2.0, "calls": 0}

    def fake_measure(scale="small", **_):
        state["calls"] += 1
        s = state["speedup"][scale] if isinstance(state["speedup"], dict) else state["speedup"]
        return {"fp32_ms": 10.0, "bf16_ms": 10.0 / s, "bf16_speedup": s}

    monkeypatch.setattr(precision, "measure", fake_measure)
    monkeypatch.setattr(precision, "_has_bf16_instructions", lambda: True)
    yield state
    precision._VERDICT = None


def test_forced_float32(tiny_env, monkeypatch):
    monkeypatch.setenv("VGEN_DTYPE", "float32")
    r = generate(_request(), cache=ModelCache(max_models=1))
    assert r.precision == "fp32"
    assert parse_parameters(r.parameters[0])["Precision"] == "fp32"


def test_forced_bf16_on_cpu_runs_the_unet_vae_and_text_layers_in_bf16_and_the_rest_in_fp32(tiny_env, monkeypatch):
    monkeypatch.setenv("VGEN_DTYPE", "bf16")
    cache = ModelCache(max_models=1)
    r = generate(_request(), cache=cache)
    model = cache.get(None)
    assert model.precision == "bf16" and r.precision == "bf16"
    # Still bf16 after the job's views (diffusers' from_pipe would have made it fp32 in place).
    generate(_request(scheduler="euler"), cache=cache)
    assert model.pipe.unet.dtype == torch.bfloat16
    # The text encoder's layers run bf16; its embedding tables stay fp32, so its dtype (what
    # diffusers casts the prompt embeddings to) and the embeddings it returns are fp32.
    text = model.pipe.text_encoder
    root = getattr(text, "text_model", text)  # transformers 5 has no text_model level in CLIPTextModel
    assert text.dtype == torch.float32 and root.final_layer_norm.weight.dtype == torch.float32
    assert root.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
    ids = model.pipe.tokenizer("a red circle", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert text(ids)[0].dtype == torch.float32
    # force_upcast guards float16's range, not bf16's: the VAE runs bf16 too
    assert model.pipe.vae.config.force_upcast and model.pipe.vae.decoder.conv_in.weight.dtype == torch.bfloat16
    # The scheduler steps on fp32 latents: the UNet's output comes back in fp32.
    seen = {}
    def watch(module, args, out):
        seen["dtype"] = out[0].dtype  # returns None: the output is left as it is

    handle = model.pipe.unet.register_forward_hook(watch)
    generate(_request(seed=4), cache=cache)
    handle.remove()
    assert seen["dtype"] == torch.float32
    # bf16 against fp32 on the same seed: close, not identical.
    monkeypatch.setenv("VGEN_DTYPE", "float32")
    ref = generate(_request(), cache=ModelCache(max_models=1))
    a, b = (np.asarray(x.images[0], dtype=np.float64) for x in (ref, r))
    assert 10 * np.log10(255 ** 2 / max(((a - b) ** 2).mean(), 1e-9)) > 20


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_an_edit_view_leaves_a_bf16_model_in_bf16(tiny_env, monkeypatch, mode):
    """The img2img and inpainting views come from diffusers' ``from_pipe``, which ends with a
    ``.to(dtype)`` of the pipeline: the shared model (its text encoder's bf16 layers included)
    must come out of an edit as it went in, or its later jobs would run fp32 while saying bf16."""
    from PIL import Image

    from vgen.edit import edit
    from vgen.requests import EditRequest

    monkeypatch.setenv("VGEN_DTYPE", "bf16")
    cache = ModelCache(max_models=1)
    generate(_request(), cache=cache)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 32, 32))
    r = edit(EditRequest(prompt="a blue square", image=Image.new("RGB", (64, 64), "white"), mask=mask,
                         mode=mode, steps=2, seed=1), cache=cache)
    assert r.precision == "bf16"
    pipe = cache.get(None).pipe
    root = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
    assert pipe.unet.dtype == torch.bfloat16
    assert pipe.vae.decoder.conv_in.weight.dtype == torch.bfloat16
    assert root.encoder.layers[0].mlp.fc1.weight.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.float32


def test_precision_round_trips_through_the_png(tiny_env, monkeypatch):
    monkeypatch.setenv("VGEN_DTYPE", "bfloat16")
    r = generate(_request(), cache=ModelCache(max_models=1))
    text = read_parameters(Image.open(io.BytesIO(png_bytes(r.images[0]))))
    assert "Precision: bf16" in text.splitlines()[-1]
    assert parse_parameters(text)["Precision"] == "bf16"
    assert request_from_parameters(text).prompt == "a red circle"  # still a plain request


@pytest.mark.parametrize("speedup,expected", [(2.0, "bf16"), (1.0, "fp32"), (0.7, "fp32")])
def test_auto_follows_the_cpu_verdict_and_caches_it(tiny_env, monkeypatch, verdict_cache, speedup, expected):
    monkeypatch.delenv("VGEN_DTYPE", raising=False)
    verdict_cache["speedup"] = speedup
    r = generate(_request(), cache=ModelCache(max_models=1))
    assert r.precision == expected
    cached = json.loads(precision.cache_path().read_text())
    entry = cached[precision.machine_key()]
    assert entry["choice"] == expected and entry["scales"]["small"]["bf16_speedup"] == speedup
    assert verdict_cache["calls"] == len(precision.SCALES)  # each scale measured once
    # Decided once per machine: a new process (memo cleared) reads the file, measures nothing.
    precision._VERDICT = None
    assert precision.choose(torch.device("cpu")).name == expected
    assert verdict_cache["calls"] == len(precision.SCALES)
    assert precision.choose(torch.device("cpu")).reason.startswith("auto: " + expected)


def test_auto_runs_each_model_at_its_denoisers_scale(tiny_env, monkeypatch, verdict_cache):
    """The AMX machine of issue #23: bf16 0.70x at the embedded model's shapes, 3x at SD's."""
    monkeypatch.delenv("VGEN_DTYPE", raising=False)
    verdict_cache["speedup"] = {"small": 0.7, "large": 3.0}
    assert generate(_request(), cache=ModelCache(max_models=1)).precision == "fp32"
    monkeypatch.setattr(precision, "LARGE_PARAMS", 1)  # the tiny test model counts as large
    cache = ModelCache(max_models=1)
    r = generate(_request(), cache=cache)
    assert r.precision == "bf16" and cache.get(None).pipe.unet.dtype == torch.bfloat16
    assert "large denoisers" in precision.choose(torch.device("cpu"), "large").reason


def test_each_scale_is_measured_on_the_threads_its_jobs_run_on(monkeypatch, verdict_cache):
    """Regression: on an AVX512-BF16 EPYC the small scale measured 1.17x on two threads (bf16
    chosen) and 0.96-1.03x on the one thread small models' jobs run on."""
    threads = {}

    def fake_measure(scale="small", **_):
        threads[scale] = torch.get_num_threads()
        return {"fp32_ms": 10.0, "bf16_ms": 5.0, "bf16_speedup": 2.0}

    monkeypatch.setattr(precision, "measure", fake_measure)
    torch.set_num_threads(2)
    verdict = precision.cpu_verdict(refresh=True)
    assert threads == {"small": 1, "large": 2} and torch.get_num_threads() == 2
    assert verdict["scales"]["small"]["threads"] == 1


def test_auto_without_bf16_instructions_is_fp32_without_measuring(monkeypatch, verdict_cache):
    monkeypatch.delenv("VGEN_DTYPE", raising=False)
    monkeypatch.setattr(precision, "_has_bf16_instructions", lambda: False)
    p = precision.choose(torch.device("cpu"))
    assert p.name == "fp32" and not p.mixed and verdict_cache["calls"] == 0
    assert "no bf16 instructions" in p.reason


def test_auto_on_cuda_is_fp16_and_bad_values_are_refused(monkeypatch):
    from vgen.errors import ModelError

    monkeypatch.delenv("VGEN_DTYPE", raising=False)
    assert precision.choose(torch.device("cuda")).name == "fp16"
    monkeypatch.setenv("VGEN_DTYPE", "float64")
    with pytest.raises(ModelError, match="auto, float32, bfloat16, float16"):
        precision.choose(torch.device("cpu"))


def test_status_shows_the_precision(monkeypatch):
    from vgen.status import engine_status

    monkeypatch.setenv("VGEN_DTYPE", "bf16")
    s = engine_status([])
    assert s["precision"] == "bf16" and s["dtype"] == "bfloat16" and s["precision_reason"] == "VGEN_DTYPE=bf16"
    monkeypatch.setenv("VGEN_DTYPE", "fp32")
    assert engine_status([])["precision"] == "fp32"
    assert engine_status([])["small_model_threads"] == 1  # tests run on the CPU


def test_a_vae_without_force_upcast_runs_bf16_with_fp32_at_its_boundaries():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, force_upcast=False)
    precision.apply_vae(vae, precision.named("bf16", torch.device("cpu")))
    assert vae.decoder.conv_in.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        z = vae.encode(torch.rand(1, 3, 32, 32)).latent_dist.sample(torch.Generator().manual_seed(0))
        out = vae.decode(z).sample
    assert z.dtype == out.dtype == torch.float32 and out.shape == (1, 3, 32, 32)


def test_the_real_micro_benchmark_gives_figures():
    for scale in precision.SCALES:
        figures = precision.measure(rounds=1, iterations=1, scale=scale)
        assert figures["fp32_ms"] > 0 and figures["bf16_ms"] > 0 and figures["bf16_speedup"] > 0
    assert precision.decide({"bf16_speedup": precision.MIN_SPEEDUP})[0] == "bf16"
    assert precision.decide({"bf16_speedup": 1.0})[0] == "fp32"


def test_openmp_waits_passively_unless_the_user_chose():
    assert config.passive_openmp({})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert config.passive_openmp({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    # adaptive threads keep OpenMP's default wait
    assert "OMP_WAIT_POLICY" not in config.passive_openmp({"VGEN_ADAPT_THREADS": "1"})


def test_cli_and_worker_set_the_wait_policy_before_torch_loads():
    from pathlib import Path

    vgen = Path(config.__file__).parent
    main = (vgen / "__main__.py").read_text()
    assert main.index("config.passive_openmp()") < main.index("from .cli import main")
    assert "config.passive_openmp(os.environ.copy())" in (vgen / "worker.py").read_text()


def test_busy_core_bench_measures_idle_and_busy_runs():
    """What each ``vgen bench --busy-core`` child runs (vgen.bench_busy), one repeat, 2 steps."""
    from vgen.bench_busy import busy_core, measure_here

    with busy_core() as proc:
        assert proc.poll() is None  # spinning
    assert proc.poll() is not None  # and gone after
    out = measure_here(repeats=1, steps=2)
    assert out["idle_seconds_per_image"] > 0 and out["busy_seconds_per_image"] > 0
    assert out["busy_over_idle"] > 0 and json.dumps(out)
