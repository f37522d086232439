"""Speed work (issue 7): the bench command, fast decoding with a tiny autoencoder (TAESD), live
previews, reuse of text embeddings, and batch generation split across processes by accelerate.

Tiny random models only; no timing assertions (the bench's figures are checked for shape and
sense, not speed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgen import decoders
from vgen.bench_models import save_tiny_autoencoder, save_tiny_sd
from vgen.generate import generate
from vgen.jobs import JobControl
from vgen.metadata import parse_parameters, request_from_parameters
from vgen.pipelines import ModelCache
from vgen.requests import GenerateRequest

REPO = Path(__file__).resolve().parent.parent
PROMPT = "two yellow triangles"


@pytest.fixture(scope="module")
def speed_models(tmp_path_factory):
    """A tiny SD-shaped model (SD latent space by config) and a tiny AutoencoderTiny, in one root."""
    root = tmp_path_factory.mktemp("speed-models")
    return {"root": root, "sd": save_tiny_sd(root / "tiny-sd"),
            "taesd": save_tiny_autoencoder(root / "taesd", tiny=True)}


@pytest.fixture
def speed_env(speed_models, monkeypatch):
    """The tiny models allowed, the tiny autoencoder as the SD one (VGEN_TAESD, a local folder)."""
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(speed_models["root"]))
    monkeypatch.setenv("VGEN_TAESD", str(speed_models["taesd"]))
    return speed_models


def _request(model: Path, **kw) -> GenerateRequest:
    kw = {"steps": 2, "guidance": 0.0, "seed": 3, **kw}
    return GenerateRequest(prompt=PROMPT, model=str(model), **kw)


# ---- the bench command ----------------------------------------------------------------------

def test_the_tiny_suite_runs_end_to_end_and_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "VGEN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    for name in ("VGEN_TAESD", "VGEN_TAESDXL", "VGEN_DEFAULT_MODEL"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "vgen", "bench", "--suite", "tiny", "--json", str(out),
                           "--work", str(tmp_path / "work"), "--no-openvino"],  # the peer: test_bench_openvino.py
                          cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"runs", "matmul_peak_gflops", "app_overhead_ms", "cold_start_s"} <= set(data)
    keys = {"model", "variant", "size", "steps", "seconds_per_image", "text_seconds", "unet_seconds",
            "decode_seconds", "peak_rss_mb", "unet_gflops"}
    # SD and SDXL latents decode fast with their TAESD; InstructPix2Pix keeps its full VAE
    assert [(r["model"].split(" ")[0], r["variant"]) for r in data["runs"]] == [
        ("tiny-sd", "stock"), ("tiny-sd", "vgen"), ("tiny-sd", "vgen-fast"),
        ("sdxl-turbo", "stock"), ("sdxl-turbo", "vgen"), ("sdxl-turbo", "vgen-fast"),
        ("instruct-pix2pix", "stock"), ("instruct-pix2pix", "vgen"), ("instruct-pix2pix", "vgen-fast")]
    for r in data["runs"]:
        assert set(r) == keys
        assert r["size"] == "64x64" and r["steps"] == (1 if r["model"].startswith("sdxl") else 2)
        assert r["seconds_per_image"] > 0 and r["unet_seconds"] > 0 and r["peak_rss_mb"] > 0
        assert r["unet_gflops"] > 0
        # the parts are inside the whole
        assert r["text_seconds"] + r["unet_seconds"] + r["decode_seconds"] <= r["seconds_per_image"] * 1.05
    assert data["matmul_peak_gflops"] > 0
    assert data["cold_start_s"] > 0 and isinstance(data["app_overhead_ms"], float)
    assert data["conditions"]["app"]["status_request_ms"] > 0  # the app's own round trip
    # and the same with gradio_client's defaults (a new TLS context per HTTP call)
    assert isinstance(data["conditions"]["app"]["app_overhead_default_client_ms"], float)
    for check in data["conditions"]["checks"]:
        # same weights, same pixels (the engine's channels-last VAE decoder may round one level apart)
        assert check["stock_vs_vgen_max_pixel_difference"] <= 1, check
        assert check["unet_gflop_per_sample"] > 0
    assert [c["vgen_fast"] for c in data["conditions"]["checks"]] == ["run"] * 3
    assert "text_embedding_reuse" in data["speedups"]["tiny-sd (test config)"]
    assert "stock" in proc.stdout and "vgen-fast" in proc.stdout  # the table


# ---- fast decoding --------------------------------------------------------------------------

def test_fast_decode_loads_taesd_from_the_hub_and_names_it(speed_models, local_hub, local_hub_env,
                                                          monkeypatch):
    """decoder="fast" fetches madebyollin/taesd through vgen.hub (here a loopback Hub mirror)."""
    commit = local_hub.add_repo("madebyollin/taesd", from_dir=speed_models["taesd"])
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(speed_models["root"]))
    monkeypatch.delenv("VGEN_TAESD", raising=False)
    cache = ModelCache(max_models=1)
    full = generate(_request(speed_models["sd"]), cache=cache)
    fast = generate(_request(speed_models["sd"], decoder="fast"), cache=cache)
    assert fast.images[0].size == full.images[0].size == (64, 64)
    assert not np.array_equal(np.asarray(fast.images[0]), np.asarray(full.images[0]))  # another decoder
    assert fast.request.decoder == "fast" and full.request.decoder == "full"
    assert "madebyollin/taesd" in fast.extras["decoder"] and fast.extras["decoder_note"] == ""
    p = parse_parameters(fast.parameters[0])
    assert p["Decoder"] == "fast" and p["Decoder model"] == f"madebyollin/taesd@{commit[:12]}"
    assert request_from_parameters(fast.parameters[0]).decoder == "fast"
    assert parse_parameters(full.parameters[0])["Decoder"] == "full"
    assert "Decoder model" not in parse_parameters(full.parameters[0])
    assert fast.timings.decode_s > 0 and fast.timings.denoise_s > 0


def test_fast_decode_of_an_instruct_edit_decodes_with_taesd_and_encodes_with_the_vae(
        speed_env, tmp_path):
    """InstructPix2Pix conditions on the full VAE's unscaled latents of the source, so a fast
    edit keeps the full VAE as its encoder and decodes the result with the tiny autoencoder."""
    from vgen.archs import save_arch
    from vgen.edit import edit
    from vgen.requests import EditRequest

    folder = save_arch("instruct-pix2pix", speed_env["root"] / "tiny-ip2p", tiny=True)
    cache = ModelCache(max_models=1)
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    results = {d: edit(EditRequest(prompt="make it blue", model=str(folder), mode="instruct", steps=2,
                                   guidance=2.0, seed=0, image=source, decoder=d), cache=cache)
               for d in ("full", "fast")}
    fast, full = results["fast"], results["full"]
    assert fast.images[0].size == full.images[0].size == (64, 64)
    assert not np.array_equal(np.asarray(fast.images[0]), np.asarray(full.images[0]))
    assert fast.extras["decoder"].startswith("fast: tiny autoencoder") and fast.extras["decoder_note"] == ""
    assert parse_parameters(fast.parameters[0])["Decoder"] == "fast"
    assert fast.timings.decode_s > 0
    assert type(cache.get(str(folder)).pipe.vae).__name__ == "AutoencoderKL"  # the model is untouched


def test_fast_decode_without_the_weights_is_a_clear_error(speed_models, tmp_path, monkeypatch):
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(speed_models["root"]))
    monkeypatch.delenv("VGEN_TAESD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(decoders.FastDecoderUnavailableError,
                       match=r"madebyollin/taesd.*could not be fetched.*full decoder"):
        generate(_request(speed_models["sd"], decoder="fast"), cache=ModelCache(max_models=1))


def test_a_model_with_its_own_latent_space_says_its_own_vae_decoded(tiny_env):
    """The shapes-style tiny model (2-level VAE, own scaling): no tiny decoder fits, so "fast"
    decodes with the model's own VAE and the image says "full", with the reason."""
    r = generate(_request(tiny_env["txt2img"], decoder="fast"))
    assert r.images[0].size == (64, 64)
    assert r.request.decoder == "full"
    assert "own autoencoder" in r.extras["decoder_note"] and "already small" in r.extras["decoder_note"]
    assert parse_parameters(r.parameters[0])["Decoder"] == "full"


def test_the_cli_takes_the_decoder(speed_env, tmp_path):
    from vgen.cli import main

    out = tmp_path / "a.png"
    assert main(["generate", PROMPT, "--model", str(speed_env["sd"]), "--steps", "2", "--guidance", "0",
                 "--seed", "1", "--decoder", "fast", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (64, 64)
        assert parse_parameters(im.info["parameters"])["Decoder"] == "fast"


# ---- live previews and text embeddings -----------------------------------------------------

def test_previews_come_from_the_tiny_decoder_between_steps(speed_env, monkeypatch):
    monkeypatch.setattr(decoders, "PREVIEW_AFTER_S", 0.0)  # the tiny model is done in well under 0.5 s
    monkeypatch.setattr(decoders, "PREVIEW_SHARE", 1e9)  # and its steps are too quick for the share
    seen = []
    control = JobControl(preview=lambda step, total, image: seen.append((step, total, image.size)))
    r = generate(_request(speed_env["sd"], steps=4), control=control, cache=ModelCache(max_models=1))
    assert r.request.decoder == "full"  # previews do not change what decodes the image
    assert seen == [(1, 4, (64, 64)), (2, 4, (64, 64)), (3, 4, (64, 64))]  # none after the last step


def test_repeated_prompts_reuse_text_embeddings_with_identical_pixels(speed_env):
    import torch

    cache = ModelCache(max_models=1)
    first = generate(_request(speed_env["sd"]), cache=cache)
    again = generate(_request(speed_env["sd"]), cache=cache)
    assert first.timings.encode_s > 0 and again.timings.encode_s == 0  # the text encoder did not run
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    model = cache.get(str(speed_env["sd"]))
    stock = type(model.pipe).from_pipe(model.pipe)  # what diffusers alone gives for the request
    image = stock(PROMPT, num_inference_steps=2, guidance_scale=0.0, height=64, width=64,
                  generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(again.images[0]))


# ---- the app ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def speed_app(speed_models, tmp_path_factory):
    from vgen.launch import launched_app

    work = tmp_path_factory.mktemp("speed-app")
    env = {"VGEN_DEFAULT_MODEL": str(speed_models["sd"]), "VGEN_MODEL_ROOTS": str(speed_models["root"]),
           "VGEN_TAESD": str(speed_models["taesd"]), "VGEN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": str(work / "hf")}
    with launched_app(env, work) as app:
        yield app


def test_fast_decode_through_the_app(speed_app, tmp_path):
    from gradio_client import Client

    client = Client(speed_app.url, verbose=False, download_files=str(tmp_path))
    for decoder in ("fast", "full"):
        gallery, info, _ = client.predict(PROMPT, model="", steps=2, guidance=0, seed=5,
                                          randomize_seed=False, decoder=decoder, api_name="/generate")
        with Image.open(gallery[0]["image"]) as im:
            assert im.size == (64, 64)
            assert parse_parameters(im.info["parameters"])["Decoder"] == decoder
        assert ("tiny autoencoder" in info) == (decoder == "fast"), info


def test_the_app_shows_live_previews_in_the_gallery(monkeypatch, tmp_path):
    """The handler yields each preview the engine sends (JobControl.preview) into the gallery,
    with the progress line; an engine stand-in sends one, then fails, so only the app's
    plumbing is under test."""
    import asyncio
    import threading

    from vgen.errors import InvalidRequestError
    from vgen.ui import handlers
    from vgen.ui.tabs import text_to_image

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    shown = threading.Event()

    class Engine:
        def run(self, kind, request, control):
            assert request.decoder == "fast"
            control.preview(1, 2, Image.new("RGB", (64, 64), "red"))
            shown.wait(30)
            raise InvalidRequestError("stopped after the preview")

    handlers.configure(Engine())

    async def scenario():
        outs = []
        try:
            async for out in text_to_image.generate_images("a red circle", decoder="fast"):
                outs.append(out)
                if isinstance(out[0], list):
                    shown.set()
        except Exception as e:  # gr.Error with the engine's message
            return outs, e
        return outs, None

    try:
        outs, error = asyncio.run(scenario())
    finally:
        handlers.configure()
    (path, caption), = next(out[0] for out in outs if isinstance(out[0], list))
    assert caption == "preview · step 1/2"
    with Image.open(path) as im:
        assert im.size == (64, 64) and im.getpixel((0, 0)) == (255, 0, 0)
    assert "stopped after the preview" in str(error)
    # The info line said so, and the preview did not stay.
    assert outs[-1][0] is None and "stopped after the preview" in outs[-1][1]


# ---- batch generation across processes --------------------------------------------------------

def test_accelerate_splits_a_prompts_file_across_two_cpu_processes(speed_env, tmp_path):
    assert shutil.which("accelerate"), "accelerate (requirements.txt) installs the launcher"
    from vgen.batch import generate_file

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two yellow triangles\na red circle\na blue square\n")
    base = GenerateRequest(prompt="", model=str(speed_env["sd"]), steps=2, guidance=0.0, seed=7)
    single = generate_file(prompts, tmp_path / "one", base)  # what one process writes
    env = {**os.environ, "VGEN_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vgen", "generate",
           "--prompts-file", str(prompts), "--out-dir", str(tmp_path / "two"), "--model", str(speed_env["sd"]),
           "--steps", "2", "--guidance", "0", "--seed", "7"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "process 1/2: wrote 2 images" in proc.stdout and "process 2/2: wrote 1 images" in proc.stdout
    written = sorted((tmp_path / "two").iterdir())
    assert [p.name for p in written] == [p.name for p in single] == ["0000.png", "0001.png", "0002.png"]
    for a, b in zip(single, written):
        with Image.open(a) as x, Image.open(b) as y:
            assert x.info["parameters"] == y.info["parameters"]
            assert np.array_equal(np.asarray(x), np.asarray(y))
