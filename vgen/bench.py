"""``python -m vgen bench``: how fast generation is on this machine, and where the time goes.

For each model of a suite, in one process, on identical components, prompt, seed, size and
steps, it times three variants:

* ``stock``: the diffusers pipeline called as its documentation shows (``pipe(prompt, ...)``) on
  a ``from_pipe`` copy sharing the engine's loaded components;
* ``vgen``: the engine (``vgen.generate`` / ``vgen.edit``) with the model's full VAE;
* ``vgen-fast``: the engine with the tiny autoencoder (TAESD, ``vgen.decoders``), where one fits;
* ``openvino-fast`` (SD-Turbo architecture, and the tiny SD model in the tiny suite; off with
  ``openvino=False``): FastSD CPU's recipe, optimum-intel's OpenVINO pipeline exported from the
  same folder with TAESD's decoder, in an environment of its own (``vgen.bench_openvino``: its pins
  conflict with vgen's), timed in its own process after the other three.

Runs are interleaved (stock, vgen, vgen-fast, stock, ...) so that a machine shared with other
work slows every variant alike; each figure is the median of ``repeats`` runs after one warm-up
run of each variant, each engine run with a prompt it has not seen before (so the engine's reuse of
text embeddings, measured separately under ``speedups``, does not flatter it). The split between text
encoder, UNet and decoder is measured with forward hooks (``vgen.speed.PhaseTimer``), the same
code for every variant. UNet FLOPs are counted once per model with
``torch.utils.flop_counter.FlopCounterMode`` (plus CPU flash attention, which it does not count
by itself) and divided by the UNet's time; the machine's peak is the best of several 2048x2048
matrix products in the model's dtype. Peak RSS is sampled from ``/proc/self/statm`` every 10 ms
while a variant runs.

Models are built at their published architectures with random weights (``vgen.archs``; speed does
not depend on the weights); the embedded shapes model is the real one. The TAESD used by
``vgen-fast`` is an ``AutoencoderTiny`` at TAESD's published architecture with random weights,
saved in Hub layout and loaded through ``vgen.hub`` (``VGEN_TAESD``/``VGEN_TAESDXL`` set to it),
unless those variables already name real weights.

Precision (``vgen.precision``): the engine's variants run in the model's precision
(``checks[].precision``: auto decides by the denoiser's size; ``conditions.precision`` is the
small models' verdict); stock always runs fp32, as diffusers' docs call it (under bf16 on fp32
copies of the denoiser and VAE), so ``checks[].stock_vs_vgen_psnr_db`` is bf16 against fp32 on
the same seed there (and 99 dB, identical, under fp32). ``--busy-core`` adds ``busy_core``: the
embedded model with one core taken by another process against idle, per thread policy
(``vgen.bench_busy``).

Also measured: ``app_overhead_ms`` (the same request through the launched ``app.py`` with
``gradio_client`` minus a direct engine call, medians; the client reuses one TLS context, as the
README's API section shows; ``app_overhead_default_client_ms`` is the same with gradio_client's
defaults; beside them ``status_request_ms``, the same app, queue and client for ``/status``,
which does no engine work: the part of the overhead that is Gradio's and the client's own) and
``cold_start_s`` (from starting ``python app.py`` to the first image received, embedded model).

JSON: ``runs`` (one record per model and variant: ``model``, ``variant``, ``size``, ``steps``,
``seconds_per_image``, ``text_seconds``, ``unet_seconds``, ``decode_seconds``, ``peak_rss_mb``,
``unet_gflops``), ``matmul_peak_gflops``, ``app_overhead_ms``, ``cold_start_s``; plus
``cpu_time`` (the same runs in CPU seconds of this process, which another process's load does
not inflate, and the UNet's share of the matmul peak per CPU second), ``speedups`` (what each
engine speedup measured here) and ``conditions`` (threads, device, versions, checks; ``openvino``:
the peer's environment, export and precision, ``vgen.bench_openvino``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from . import config
from .bench_measure import (
    RssSampler,
    Sample,
    ablations,
    capture_inputs,
    count_unet_flops,
    matmul_peak,
    median,
    pixels_equal,
    psnr,
    source_image,
    timed,
)
from .bench_models import model_folder, save_tiny_autoencoder
from .bench_openvino import CASES as OPENVINO_CASES
from .catalog import embedded_default
from .errors import InvalidRequestError

REPO_DIR = Path(__file__).resolve().parent.parent
# Prompts in the shapes vocabulary (the architectures' stand-in tokenizer reads the same words).
PROMPTS = (
    "a red circle to the left of a blue square",
    "two yellow triangles",
    "a large green square at the top",
    "a small pink circle and a blue triangle",
    "three red squares",
    "a blue circle above a yellow square",
    "a green triangle to the right of a red circle",
    "a large pink square at the bottom",
    "two small blue circles and a green square",
)
SEED = 1234


@dataclass(frozen=True)
class Case:
    """One model of a suite: ``key`` names how it is built (an arch of vgen.archs, ``tiny-sd``,
    or ``vgen-shapes``, the embedded model); None for size/steps/guidance: the model's default."""

    key: str
    model: str  # as written in the JSON
    task: str = "txt2img"  # or "instruct"
    size: int | None = None
    steps: int | None = None
    guidance: float | None = None


QUICK = (
    Case("sd-turbo", "stabilityai/sd-turbo", size=512, steps=1, guidance=0.0),
    Case("vgen-shapes", "vgen-shapes"),
    Case("vgen-shapes-distilled", "vgen-shapes-distilled"),
)
SUITES: dict[str, tuple[Case, ...]] = {
    # The published architectures shrunk (vgen.archs.tiny_configs): every code path in seconds.
    "tiny": (Case("tiny-sd", "tiny-sd (test config)", size=64, steps=2, guidance=0.0),
             Case("tiny-sdxl-turbo", "sdxl-turbo (tiny test config)", size=64, steps=1, guidance=0.0),
             Case("tiny-instruct-pix2pix", "instruct-pix2pix (tiny test config)", task="instruct",
                  size=64, steps=2, guidance=2.0)),
    "quick": QUICK,
    "full": QUICK + (
        Case("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", size=512, steps=25, guidance=7.5),
        Case("sdxl-turbo", "stabilityai/sdxl-turbo", size=512, steps=1, guidance=0.0),
        Case("instruct-pix2pix", "timbrooks/instruct-pix2pix", task="instruct", size=512, steps=20,
             guidance=7.5),
    ),
}
APP_STEPS = {"tiny": 2, "quick": None, "full": None}  # steps of the app-overhead request


def bench_case(case: Case, root: Path, repeats: int, peak_gflops: tuple[float, float], rss: RssSampler,
               log: Callable[[str], None], ablate: bool = False) -> dict:
    """Runs, CPU-time records, speedup measurements and checks of one model."""
    run = _setup_case(case, root, log)  # 1-2
    flops, inputs, watched = _warm_up(run, log, ablate)  # 3
    samples, max_diff = _timed_runs(run, repeats, rss, log)  # 4
    speedups = _speedups(run, samples, repeats)  # 5
    runs, cpu = _records(run, samples, flops.get("per_sample", 0.0), peak_gflops, rss)  # 6
    check = {"model": case.model, "unet_gflop_per_sample": round(flops.get("per_sample", 0.0) / 1e9, 2),
             "stock_vs_vgen_max_pixel_difference": max_diff,
             # stock runs fp32: under bf16 this is bf16 against fp32 on the same seed (issue #23)
             "precision": run.model.precision, "stock_vs_vgen_psnr_db": min(run.psnr),
             "vgen_fast": "run" if "vgen-fast" in run.variants else f"not run: {run.fast_note}"}
    if ablate:
        # vgen.decoders keeps both decoders in channels-last on a CPU, the UNet as it is.
        used = {"vae_decoder", "tiny_decoder"} if run.device.type == "cpu" else set()
        speedups["ablations"] = ablations(watched, inputs, repeats, ("tiny_decoder",), used, log)
    run.cache.clear()
    return {"runs": runs, "cpu": cpu, "speedups": {case.model: speedups}, "check": check,
            "flops_per_sample": flops.get("per_sample", 0.0),
            "setup": {"size": run.size, "steps": run.steps, "guidance": run.guidance}}


def _setup_case(case: Case, root: Path, log: Callable[[str], None]) -> SimpleNamespace:
    """Steps 1-2 of :func:`bench_case`: the model loaded, the stock pipeline beside it, the
    variants to time and ``call(variant, prompt)``, which runs one of them once."""
    from . import decoders, openvino_backend
    from .catalog import model_defaults
    from .edit import edit
    from .generate import generate
    from .pipelines import ModelCache, share
    from .requests import EditRequest, GenerateRequest

    # 1. Load through the engine; the stock pipeline shares its components (from_pipe).
    ref = model_folder(case, root, log)
    cache = ModelCache(max_models=1)
    model = cache.get(ref)
    device = model.device
    d = model_defaults(model)
    size = case.size or d.width
    steps = case.steps or d.steps
    guidance = d.guidance if case.guidance is None else case.guidance
    # The engine keeps the VAE decoder in channels-last on a CPU (vgen.decoders.prepare_model);
    # stock gets its own copy of the VAE as loaded, everything else is shared.
    # Under bf16 (vgen.precision) stock runs fp32, as diffusers' docs call it, on fp32 copies of
    # the denoiser, the VAE and the text encoders. pipelines.share, not from_pipe: from_pipe
    # converts the shared modules to fp32 in place.
    bf16 = model.precision == "bf16"

    def fp32(module):
        return copy.deepcopy(module).float() if bf16 and module is not None else module

    stock_vae = fp32(model.pipe.vae) if bf16 else copy.deepcopy(model.pipe.vae)
    stock_unet = fp32(model.pipe.unet)
    stock_texts = {name: fp32(getattr(model.pipe, name)) for name in ("text_encoder", "text_encoder_2")
                   if hasattr(model.pipe, name)}
    stock = share(type(model.pipe), model.pipe, vae=stock_vae, unet=stock_unet, **stock_texts)
    stock.set_progress_bar_config(disable=True)
    source = source_image(size) if case.task == "instruct" else None
    base = (EditRequest(prompt="", model=ref, mode="instruct", image=source, steps=steps, guidance=guidance,
                        image_guidance=d.image_guidance, seed=SEED, width=size, height=size)
            if case.task == "instruct" else
            GenerateRequest(prompt="", model=ref, steps=steps, guidance=guidance, seed=SEED, width=size,
                            height=size))
    engine = edit if case.task == "instruct" else generate
    # Under VGEN_BACKEND=openvino the engine's jobs call the stand-ins: time those.
    on_ov = openvino_backend.stand_ins_for(model)
    parts = SimpleNamespace(text_encoder=on_ov.get("text_encoder", model.pipe.text_encoder),
                            text_encoder_2=on_ov.get("text_encoder_2", getattr(model.pipe, "text_encoder_2", None)),
                            unet=on_ov.get("unet", model.pipe.unet), vae=on_ov.get("vae", model.pipe.vae))
    stock_parts = SimpleNamespace(**{**vars(parts), **stock_texts, "vae": stock_vae, "unet": stock_unet})

    # 2. Which variants: vgen-fast only where a tiny autoencoder fits (else it would be vgen).
    variants = ["stock", "vgen"]
    fast_note = decoders.fallback_reason(replace(base, decoder="fast"), model)
    if not fast_note:
        tiny = decoders.tiny_decoder(model, decoders.latent_space(model.pipe.vae)).module
        variants.append("vgen-fast")
    else:
        tiny = None
        log(f"{case.model}: no vgen-fast run: {fast_note}")
    if config.openvino_int8() and case.task != "instruct" and on_ov:
        # VGEN_OPENVINO_INT8=1: the denoiser's int8 IR, made first where missing (vgen.openvino_int8),
        # calibrated through the fast decoder where there is one (the UNet's inputs are the same).
        from .openvino_int8 import quantize

        quantize(replace(base, prompt="", decoder="full" if fast_note else "fast"), log=log, cache=cache)

    def call(variant: str, prompt: str) -> Sample:
        if variant == "stock":
            kw = dict(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator("cpu").manual_seed(SEED))
            if case.task == "instruct":
                kw.update(image=source, image_guidance_scale=base.image_guidance)
            else:
                kw.update(height=size, width=size)
            return timed(stock_parts, device, lambda: stock(**kw).images[0])
        req = replace(base, prompt=prompt, decoder="fast" if variant == "vgen-fast" else "full")
        p = parts
        if variant == "vgen-fast":  # TAESD as the job's VAE (under the OpenVINO backend, its stand-in)
            p = SimpleNamespace(**{**vars(parts), "vae": openvino_backend.stand_ins_for(model, tiny).get("vae", tiny)})
        return timed(p, device, lambda: engine(req, cache=cache).images[0])

    return SimpleNamespace(case=case, cache=cache, model=model, device=device, size=size, steps=steps,
                           guidance=guidance, stock_vae=stock_vae, stock_unet=stock_unet,
                           variants=variants, tiny=tiny,
                           fast_note=fast_note, call=call)


def _warm_up(run: SimpleNamespace, log: Callable[[str], None], ablate: bool) -> tuple[dict, dict, dict]:
    """Step 3: warm-up, one run of each variant; the stock one also counts the UNet's FLOPs
    (and, for the ablations, records the inputs of the UNet and of the decoders as stock runs
    them). Returns (flops, inputs, the watched modules)."""
    log(f"{run.case.model}: {run.size}x{run.size}, {run.steps} steps, guidance {run.guidance:g}: warm-up")
    flops: dict = {}
    inputs: dict = {}
    watched = {"unet": run.model.pipe.unet, "vae_decoder": run.stock_vae.decoder}
    if run.tiny is not None:
        watched["tiny_decoder"] = run.tiny.decoder
    with capture_inputs(watched, inputs) if ablate else contextlib.nullcontext():
        with count_unet_flops(run.stock_unet, flops):
            run.call("stock", PROMPTS[0])
        for v in run.variants[1:]:
            run.call(v, PROMPTS[0])
    return flops, inputs, watched


def _fresh_prompt(r: int, v: str) -> str:
    """A prompt no earlier run used (the engine would reuse its text embeddings): stock and
    vgen share one per repetition (their pixels are compared), vgen-fast has its own."""
    return f"{PROMPTS[1 + r % (len(PROMPTS) - 1)]} {r}{'f' if v == 'vgen-fast' else ''}"


def _timed_runs(run: SimpleNamespace, repeats: int, rss: RssSampler,
                log: Callable[[str], None]) -> tuple[dict[str, list[Sample]], float]:
    """Step 4: timed runs, interleaved, each repetition with a new prompt. Returns the samples
    per variant and the largest pixel difference between stock and vgen."""
    samples: dict[str, list[Sample]] = {v: [] for v in run.variants}
    max_diff, run.psnr = 0.0, []
    for r in range(repeats):
        images = {}
        for v in run.variants:
            with rss.measuring(f"{run.case.key}/{v}"):
                s = run.call(v, _fresh_prompt(r, v))
            samples[v].append(s)
            images[v] = s.image
            log(f"  {v:9s} run {r + 1}/{repeats}: {s.wall:7.2f} s (text {s.times.text_s:.2f}, "
                f"unet {s.times.unet_s:.2f}, decode {s.times.decode_s:.2f}; cpu {s.cpu:.2f} s)")
        max_diff = max(max_diff, pixels_equal(images["stock"], images["vgen"]))
        run.psnr.append(psnr(images["stock"], images["vgen"]))
    return samples, max_diff


def _speedups(run: SimpleNamespace, samples: dict[str, list[Sample]], repeats: int) -> dict:
    """Step 5: text-embedding reuse (the engine again with the last prompt, now cached) and
    the classifier-free-guidance batch."""
    from .pipelines import task_view

    speedups = {}
    reuse_variant = run.variants[-1]
    if run.case.task == "txt2img":
        from .speed import reuses_embeddings

        view = task_view(run.model, "txt2img")
        if reuses_embeddings(view):
            again = [run.call(reuse_variant, _fresh_prompt(repeats - 1, reuse_variant)) for _ in range(repeats)]
            new = samples[reuse_variant]
            speedups["text_embedding_reuse"] = {
                "variant": reuse_variant,
                "new_prompt_seconds": round(median([s.wall for s in new]), 4),
                "repeated_prompt_seconds": round(median([s.wall for s in again]), 4),
                "text_seconds_saved": round(median([s.times.text_s for s in new])
                                            - median([s.times.text_s for s in again]), 4),
                "text_cpu_seconds_saved": round(median([s.times.text_cpu_s for s in new])
                                                - median([s.times.text_cpu_s for s in again]), 4),
                "cpu_seconds_saved": round(median([s.cpu for s in new]) - median([s.cpu for s in again]), 4),
            }
    first = samples["stock"][0].times
    speedups["cfg_batch"] = {
        "guidance": run.guidance,
        "unet_samples_per_call": first.unet_samples / max(first.unet_calls, 1),
        "note": ("diffusers' own pipelines skip the classifier-free-guidance batch when guidance "
                 "<= 1 (do_classifier_free_guidance); the engine relies on that"),
    }
    return speedups


def _records(run: SimpleNamespace, samples: dict[str, list[Sample]], per_sample: float,
             peak_gflops: tuple[float, float], rss: RssSampler) -> tuple[list[dict], list[dict]]:
    """Step 6: the wall-time and CPU-time records of each variant."""
    runs, cpu = [], []
    for v in run.variants:
        ss = samples[v]
        unet_flops = [per_sample * s.times.unet_samples for s in ss]
        runs.append({
            "model": run.case.model, "variant": v, "size": f"{run.size}x{run.size}", "steps": run.steps,
            "seconds_per_image": round(median([s.wall for s in ss]), 4),
            "text_seconds": round(median([s.times.text_s for s in ss]), 4),
            "unet_seconds": round(median([s.times.unet_s for s in ss]), 4),
            "decode_seconds": round(median([s.times.decode_s for s in ss]), 4),
            "peak_rss_mb": round(rss.peaks.get(f"{run.case.key}/{v}", 0.0), 1),
            "unet_gflops": round(median([f / s.times.unet_s / 1e9 for f, s in zip(unet_flops, ss)
                                         if s.times.unet_s > 0] or [0.0]), 2),
        })
        unet_cpu_gflops = median([f / s.times.unet_cpu_s / 1e9 for f, s in zip(unet_flops, ss)
                                  if s.times.unet_cpu_s > 0] or [0.0])
        cpu.append({
            "model": run.case.model, "variant": v,
            "cpu_seconds_per_image": round(median([s.cpu for s in ss]), 4),
            "text_cpu_seconds": round(median([s.times.text_cpu_s for s in ss]), 4),
            "unet_cpu_seconds": round(median([s.times.unet_cpu_s for s in ss]), 4),
            "decode_cpu_seconds": round(median([s.times.decode_cpu_s for s in ss]), 4),
            "unet_gflops_per_cpu_second": round(unet_cpu_gflops, 2),
            "unet_share_of_matmul_peak": round(unet_cpu_gflops / peak_gflops[1], 3) if peak_gflops[1] else None,
        })
    return runs, cpu


# ---- the command ----------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(**values: str):
    """Set ``values`` in this process's environment (the engine and the launched app read them)
    and restore what was there on exit."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        for k in values:
            if k in saved:
                os.environ[k] = saved[k]
            else:
                os.environ.pop(k, None)


def _table(result: dict) -> str:
    peak = result["matmul_peak_gflops"]
    stock = {r["model"]: r["seconds_per_image"] for r in result["runs"] if r["variant"] == "stock"}
    lines = [f"{'model':44s} {'variant':13s} {'s/image':>8s} {'vs stock':>8s} {'text':>6s} {'unet':>7s} "
             f"{'decode':>7s} {'RSS MB':>7s} {'UNet GF/s':>9s} {'of peak':>7s}"]
    for r in result["runs"]:
        if r["seconds_per_image"] is None:  # a peer that could not run (bench_openvino)
            lines.append(f"{r['model'][:44]:44s} {r['variant']:13s} not run: {r.get('error', '')[:200]}")
            continue
        ratio = stock[r["model"]] / r["seconds_per_image"] if r["seconds_per_image"] else 0.0
        lines.append(f"{r['model'][:44]:44s} {r['variant']:13s} {r['seconds_per_image']:8.2f} {ratio:7.2f}x "
                     f"{r['text_seconds']:6.2f} {r['unet_seconds']:7.2f} {r['decode_seconds']:7.2f} "
                     f"{r['peak_rss_mb']:7.0f} {r['unet_gflops']:9.1f} "
                     f"{r['unet_gflops'] / peak:6.0%}")
    lines.append(f"matmul peak {peak:.1f} GFLOP/s (wall) / {result['cpu_time']['matmul_peak_gflops_per_cpu_second']:.1f} "
                 "per CPU second; app overhead "
                 + (f"{result['app_overhead_ms']:.0f} ms (gradio_client's defaults: "
                    f"{result['conditions']['app']['app_overhead_default_client_ms']:.0f} ms)"
                    if result["app_overhead_ms"] is not None else "not measured")
                 + "; cold start "
                 + (f"{result['cold_start_s']:.1f} s" if result["cold_start_s"] is not None else "not measured"))
    for c in result["cpu_time"]["runs"]:
        if c["cpu_seconds_per_image"] is None:
            continue
        lines.append(f"  cpu: {c['model'][:40]:40s} {c['variant']:13s} {c['cpu_seconds_per_image']:8.2f} s/image, "
                     f"UNet {c['unet_gflops_per_cpu_second']:.1f} GFLOP per CPU s "
                     f"({c['unet_share_of_matmul_peak'] or 0:.0%} of peak)")
    return "\n".join(lines)


def run_bench(suite: str = "quick", repeats: int = 3, work: Path | None = None, app: bool = True,
              models: list[str] | None = None, log: Callable[[str], None] = print,
              ablate: bool = False, max_steps: int | None = None, busy: bool = False,
              openvino: bool = True, openvino_precision: str | None = None) -> dict:
    """Run ``suite`` and return the result (see the module docstring for its layout).
    ``max_steps`` caps the steps of the published architectures (a shorter full suite on a CPU:
    their per-image figures are then for that many steps); the embedded model keeps its default.
    ``busy``: also the embedded model with one core busy against idle (``vgen.bench_busy``).
    ``openvino``: the ``openvino-fast`` peer where it applies (``vgen.bench_openvino``), in
    ``openvino_precision`` (``bench_openvino.PRECISIONS``) or, None, OpenVINO's default."""
    from .bench_app import bench_app
    from .bench_busy import run_policies
    from .pipelines import pick_device, pick_dtype

    from .bench_openvino import PRECISIONS

    if openvino_precision not in (None, *PRECISIONS):
        raise InvalidRequestError(f"openvino_precision must be one of {', '.join(PRECISIONS)} (or unset: "
                                  f"OpenVINO's default), got {openvino_precision!r}")
    if suite not in SUITES:
        raise InvalidRequestError(f"suite must be one of {', '.join(SUITES)}, got {suite!r}")
    if repeats < 3:
        raise InvalidRequestError(f"repeats must be at least 3 (a median of 3 or more), got {repeats}")
    cases = [c for c in SUITES[suite] if not models or c.key in models]
    if models and not cases:
        raise InvalidRequestError(f"none of {models} is in suite {suite} ({', '.join(c.key for c in SUITES[suite])})")
    if max_steps is not None:
        if max_steps < 1:
            raise InvalidRequestError(f"max_steps must be at least 1, got {max_steps}")
        cases = [replace(c, steps=min(c.steps, max_steps)) if c.steps else c for c in cases]
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="vgen-bench-")) if own_work else Path(work).resolve()
    root = work / "models"
    root.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    dtype = pick_dtype(device)
    # The TAESD stand-ins (random weights, published architecture) unless real ones are named.
    env = {"VGEN_MODEL_ROOTS": os.pathsep.join(filter(None, [config.model_roots_text(), str(root)]))}
    taesd_source = {}
    for var, name in (("VGEN_TAESD", "taesd"), ("VGEN_TAESDXL", "taesdxl")):
        if config.tiny_decoder_setting(var):
            taesd_source[var] = config.tiny_decoder_setting(var)
            continue
        folder = root / (name + ("-tiny" if suite == "tiny" else ""))
        if not (folder / "config.json").is_file():
            save_tiny_autoencoder(folder, tiny=suite == "tiny")
        env[var] = str(folder)
        taesd_source[var] = f"{folder} (random weights, {'test' if suite == 'tiny' else 'TAESD'} architecture)"
    try:
        with _environ(**env), RssSampler() as rss:
            peak = matmul_peak(device, dtype)
            log(f"{dtype} {device}, {torch.get_num_threads()} threads: matmul peak {peak[0]:.1f} GFLOP/s "
                f"({peak[1]:.1f} per CPU second)")
            runs, cpu, speedups, checks, peers = [], [], {}, [], []
            for case in cases:
                out = bench_case(case, root, repeats, peak, rss, log, ablate)
                if openvino and case.key in OPENVINO_CASES:
                    peer = _openvino_peer(case, root, repeats, out, peak, log, openvino_precision)
                    out["runs"].append(peer["run"])
                    out["cpu"].append(peer["cpu"])
                    peers.append(peer["conditions"])
                runs += out["runs"]
                cpu += out["cpu"]
                speedups.update(out["speedups"])
                checks.append(out["check"])
            app_out = bench_app(APP_STEPS[suite], repeats, work, log) if app else {}
            busy_out = run_policies(repeats, log, steps=APP_STEPS[suite]) if busy else None
    finally:
        if own_work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return _result(suite, repeats, max_steps, device, dtype, peak, runs, cpu, speedups, checks, app_out,
                   busy_out, taesd_source, peers if openvino else "not run (--no-openvino)")


def _openvino_peer(case: Case, root: Path, repeats: int, out: dict, peak: tuple[float, float],
                   log: Callable[[str], None], precision: str | None) -> dict:
    """The ``openvino-fast`` run of ``case`` (``vgen.bench_openvino``), after ``bench_case``
    returned ``out``: same folder, TAESD, size, steps, guidance, seed and thread count; the
    prompts stock and vgen got."""
    import gc

    from .bench_openvino import run_peer

    gc.collect()  # the case's models, released by bench_case, out of memory before the peer loads its own
    prompts = [_fresh_prompt(r, "openvino-fast") for r in range(repeats)]
    return run_peer(case, model_folder(case, root, log), config.tiny_decoder_setting("VGEN_TAESD"),
                    out["setup"], prompts, SEED, torch.get_num_threads(), out["flops_per_sample"],
                    peak[1], log, precision)


def _result(suite: str, repeats: int, max_steps: int | None, device, dtype, peak: tuple[float, float],
            runs: list, cpu: list, speedups: dict, checks: list, app_out: dict, busy_out, taesd_source: dict,
            openvino) -> dict:
    """The bench's JSON (module docstring): the runs, the CPU-time records and the conditions."""
    import diffusers

    from .pipelines import pick_precision

    result = {
        "runs": runs,
        "matmul_peak_gflops": round(peak[0], 2),
        "app_overhead_ms": app_out.get("app_overhead_ms"),
        "cold_start_s": app_out.get("cold_start_s"),
        "cpu_time": {"matmul_peak_gflops_per_cpu_second": round(peak[1], 2), "runs": cpu,
                     "app": app_out.get("cpu")},
        "speedups": speedups,
        "busy_core": busy_out,
        "conditions": {
            "suite": suite, "repeats": repeats, "max_steps": max_steps, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "precision": pick_precision(device).name, "precision_reason": pick_precision(device).reason,
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": config.omp_num_threads(),
            "OMP_WAIT_POLICY": config.omp_wait_policy(), "VGEN_ADAPT_THREADS": config.adapt_threads(),
            "VGEN_BACKEND": config.backend_setting(),
            "VGEN_OPENVINO_INT8": config.openvino_int8(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "weights": "random at the published architectures "
            "(vgen.archs), except the embedded models", "tiny_autoencoders": taesd_source,
            "app": ({"requests": f"embedded {embedded_default()}, steps " + str(APP_STEPS[suite] or "default"),
                     **{k: v for k, v in app_out.items() if k.endswith("_ms") and k != "app_overhead_ms"}}
                    if app_out else "not measured (--no-app)"),
            "checks": checks,
            "openvino": openvino,
        },
    }
    return result


def main(args) -> int:
    """``python -m vgen bench``: ``args`` has suite, json, repeats, work, no_app, models."""
    result = run_bench(args.suite, repeats=args.repeats, work=args.work, app=not args.no_app,
                       models=args.models, log=lambda m: print(m, flush=True),
                       ablate=getattr(args, "ablations", False), max_steps=getattr(args, "max_steps", None),
                       busy=getattr(args, "busy_core", False), openvino=not getattr(args, "no_openvino", False),
                       openvino_precision=getattr(args, "openvino_precision", None))
    print(_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
