"""``python -m vgen bench``: how fast generation is on this machine, and where the time goes.

For each model of a suite, in one process, on identical components, prompt, seed, size and
steps, it times three variants:

* ``stock``: the diffusers pipeline called as its documentation shows (``pipe(prompt, ...)``) on
  a ``from_pipe`` copy sharing the engine's loaded components;
* ``vgen``: the engine (``vgen.generate`` / ``vgen.edit``) with the model's full VAE;
* ``vgen-fast``: the engine with the tiny autoencoder (TAESD, ``vgen.decoders``), where one fits.

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
engine speedup measured here) and ``conditions`` (threads, device, versions, checks).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from .errors import InvalidRequestError
from .speed import PhaseTimer, PhaseTimes

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


# ---- models ---------------------------------------------------------------------------------

def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A tiny Stable-Diffusion-shaped text-to-image pipeline (64x64) whose VAE has SD's latent
    space by config (4 levels, 4 latent channels, scaling factor 0.18215), so the tiny
    autoencoder applies to it; random weights, Hub layout."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .archs import _stand_in_tokenizer
    from .shapes.train import fix_tokenizer_class

    torch.manual_seed(seed)
    tok = _stand_in_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)
    sched = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                             beta_end=0.012, timestep_spacing="trailing")
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    fix_tokenizer_class(Path(folder))
    return Path(folder)


def save_tiny_autoencoder(folder: Path, tiny: bool = False, seed: int = 0) -> Path:
    """An ``AutoencoderTiny`` with random weights in Hub layout: TAESD's published architecture
    (diffusers' defaults are TAESD's config.json), or with ``tiny`` a 8-channel one for tests."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    kw = dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
              num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4) if tiny else {}
    AutoencoderTiny(**kw).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def _model_folder(case: Case, root: Path, log: Callable[[str], None]) -> str:
    """The model reference of ``case``, building (or reusing) its folder under ``root``."""
    if case.key == "vgen-shapes":
        return "vgen-shapes"
    folder = root / case.key
    if not (folder / "model_index.json").is_file():
        t0 = time.perf_counter()
        from .archs import save_arch

        if case.key == "tiny-sd":
            save_tiny_sd(folder)
        elif case.key.startswith("tiny-"):
            save_arch(case.key.removeprefix("tiny-"), folder, tiny=True)
        else:
            save_arch(case.key, folder)
        log(f"built {case.model} with random weights in {time.perf_counter() - t0:.0f} s")
    return str(folder)


# ---- measuring ------------------------------------------------------------------------------

def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> tuple[float, float]:
    """Best (wall, CPU-time) GFLOP/s of an n x n matrix product: what this machine's BLAS
    reaches in ``dtype`` with the current thread settings."""
    g = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    flops = 2 * n ** 3
    best_wall = best_cpu = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, max(time.process_time() - c0, 1e-9))
    return flops / best_wall / 1e9, flops / best_cpu / 1e9


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # a high-water mark


class RssSampler:
    """Samples this process's RSS every ``period`` s and keeps the peak per active label."""

    def __init__(self, period: float = 0.01):
        self.period = period
        self.label: str | None = None
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vgen-bench-rss", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            label = self.label
            if label is not None:
                self.peaks[label] = max(self.peaks.get(label, 0.0), _rss_mb())

    @contextlib.contextmanager
    def measuring(self, label: str):
        self.label = label
        self.peaks[label] = max(self.peaks.get(label, 0.0), _rss_mb())
        try:
            yield
        finally:
            self.peaks[label] = max(self.peaks[label], _rss_mb())
            self.label = None

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _sdpa_cpu_mapping() -> dict:
    """FlopCounterMode has no formula for CPU flash attention; it is the same count as SDPA's."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    cpu = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    ref = flop_registry.get(aten._scaled_dot_product_flash_attention)
    ref = getattr(ref, "__wrapped__", ref)  # FlopCounterMode wraps custom formulas itself
    return {cpu: ref} if cpu is not None and ref is not None and cpu not in flop_registry else {}


@contextlib.contextmanager
def count_unet_flops(unet: torch.nn.Module, out: dict):
    """Counts the FLOPs of ``unet``'s forward calls made inside; ``out["per_sample"]`` is set
    on exit (FLOPs of one latent through the UNet once)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping())
    state = {"flops": 0, "samples": 0, "before": 0}

    def pre(mod, args, kwargs):
        state["before"] = counter.get_total_flops()
        x = args[0] if args else kwargs.get("sample")
        state["samples"] += int(x.shape[0])

    def post(mod, args, kwargs, output):
        state["flops"] += counter.get_total_flops() - state["before"]

    handles = [unet.register_forward_pre_hook(pre, with_kwargs=True),
               unet.register_forward_hook(post, with_kwargs=True)]
    try:
        with counter:
            yield
    finally:
        for h in handles:
            h.remove()
        out["per_sample"] = state["flops"] / max(state["samples"], 1)


@dataclass
class Sample:
    wall: float
    cpu: float
    times: PhaseTimes
    image: Any


def _timed(parts, device, call: Callable[[], Any]) -> Sample:
    """Run ``call`` with the phases of ``parts`` (an object with text_encoder/unet/vae) timed."""
    with PhaseTimer(parts, device) as pt:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        image = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Sample(wall, cpu, pt.times, image)


def _median(values) -> float:
    return float(statistics.median(values))


def _source_image(size: int):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse([size // 4, size // 4, 3 * size // 4, 3 * size // 4], fill="red")
    return im


def _pixels_equal(a, b) -> float:
    import numpy as np

    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


@contextlib.contextmanager
def capture_inputs(modules: dict[str, torch.nn.Module], out: dict):
    """Record the (args, kwargs) of each module's first forward call made inside."""
    handles = []
    for name, m in modules.items():
        def pre(mod, args, kwargs, name=name):
            out.setdefault(name, (args, kwargs))
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _channels_last(x):
    return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x


def _cpu_seconds(fn: Callable[[], Any]) -> float:
    c0 = time.process_time()
    fn()
    return time.process_time() - c0


def ablations(modules: dict[str, torch.nn.Module], inputs: dict, repeats: int, compile_modules: tuple[str, ...],
              used_by_vgen: set[str], log: Callable[[str], None]) -> dict:
    """Layout and compilation, measured on the model's own modules and inputs (CPU seconds,
    medians, interleaved): the module as loaded (contiguous) against channels-last (what the
    engine uses for decoders on a CPU), and ``torch.compile`` (inductor, not used by the engine)
    for ``compile_modules``, with the CPU time of its first, compiling call. A module the engine
    already keeps in channels-last is measured on a contiguous copy."""
    from torch.utils._pytree import tree_map

    out = {}
    with torch.inference_mode():
        for name, m in modules.items():
            if name not in inputs:
                continue
            used = name in used_by_vgen
            if not all(p.is_contiguous() for p in m.parameters()):
                m = copy.deepcopy(m).to(memory_format=torch.contiguous_format)
            args, kwargs = inputs[name]
            cl_args, cl_kwargs = tree_map(_channels_last, args), tree_map(_channels_last, kwargs)
            base, cl = [], []
            m(*args, **kwargs)
            for _ in range(repeats):
                base.append(_cpu_seconds(lambda: m(*args, **kwargs)))
                m.to(memory_format=torch.channels_last)
                try:
                    cl.append(_cpu_seconds(lambda: m(*cl_args, **cl_kwargs)))
                finally:
                    m.to(memory_format=torch.contiguous_format)
            out[f"channels_last/{name}"] = {"cpu_seconds": round(_median(base), 4),
                                            "with_cpu_seconds": round(_median(cl), 4),
                                            "speedup": round(_median(base) / _median(cl), 3),
                                            "used_by_vgen": used}
            log(f"  ablation channels-last {name}: {_median(base):.3f} -> {_median(cl):.3f} CPU s")
            if name in compile_modules:
                try:
                    compiled = torch.compile(m)
                    first = _cpu_seconds(lambda: compiled(*args, **kwargs))
                    comp = [_cpu_seconds(lambda: compiled(*args, **kwargs)) for _ in range(repeats)]
                except Exception as e:  # no compiler, unsupported op, ...: say so
                    out[f"torch_compile/{name}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                out[f"torch_compile/{name}"] = {"cpu_seconds": round(_median(base), 4),
                                                "with_cpu_seconds": round(_median(comp), 4),
                                                "speedup": round(_median(base) / _median(comp), 3),
                                                "first_call_cpu_seconds": round(first, 1),
                                                "used_by_vgen": False}
                log(f"  ablation torch.compile {name}: {_median(base):.3f} -> {_median(comp):.3f} CPU s "
                    f"after a first call of {first:.0f} CPU s")
    return out


def bench_case(case: Case, root: Path, repeats: int, peak_gflops: tuple[float, float], rss: RssSampler,
               log: Callable[[str], None], ablate: bool = False) -> dict:
    """Runs, CPU-time records, speedup measurements and checks of one model."""
    from . import decoders
    from .catalog import model_defaults
    from .edit import edit
    from .generate import generate
    from .pipelines import ModelCache, task_view
    from .requests import EditRequest, GenerateRequest

    # 1. Load through the engine; the stock pipeline shares its components (from_pipe).
    ref = _model_folder(case, root, log)
    cache = ModelCache(max_models=1)
    model = cache.get(ref)
    device = model.device
    d = model_defaults(model)
    size = case.size or d.width
    steps = case.steps or d.steps
    guidance = d.guidance if case.guidance is None else case.guidance
    # The engine keeps the VAE decoder in channels-last on a CPU (vgen.decoders.prepare_model);
    # stock gets its own copy of the VAE as loaded, everything else is shared.
    stock_vae = copy.deepcopy(model.pipe.vae)
    stock = type(model.pipe).from_pipe(model.pipe, vae=stock_vae)
    stock.set_progress_bar_config(disable=True)
    source = _source_image(size) if case.task == "instruct" else None
    base = (EditRequest(prompt="", model=ref, mode="instruct", image=source, steps=steps, guidance=guidance,
                        image_guidance=d.image_guidance, seed=SEED, width=size, height=size)
            if case.task == "instruct" else
            GenerateRequest(prompt="", model=ref, steps=steps, guidance=guidance, seed=SEED, width=size,
                            height=size))
    engine = edit if case.task == "instruct" else generate
    parts = SimpleNamespace(text_encoder=model.pipe.text_encoder,
                            text_encoder_2=getattr(model.pipe, "text_encoder_2", None),
                            unet=model.pipe.unet, vae=model.pipe.vae)
    stock_parts = SimpleNamespace(**{**vars(parts), "vae": stock_vae})

    # 2. Which variants: vgen-fast only where a tiny autoencoder fits (else it would be vgen).
    variants = ["stock", "vgen"]
    fast_note = decoders.fallback_reason(replace(base, decoder="fast"), model)
    if not fast_note:
        tiny = decoders.tiny_decoder(model, decoders.latent_space(model.pipe.vae)).module
        variants.append("vgen-fast")
    else:
        tiny = None
        log(f"{case.model}: no vgen-fast run: {fast_note}")

    def call(variant: str, prompt: str) -> Sample:
        if variant == "stock":
            kw = dict(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance,
                      generator=torch.Generator("cpu").manual_seed(SEED))
            if case.task == "instruct":
                kw.update(image=source, image_guidance_scale=base.image_guidance)
            else:
                kw.update(height=size, width=size)
            return _timed(stock_parts, device, lambda: stock(**kw).images[0])
        req = replace(base, prompt=prompt, decoder="fast" if variant == "vgen-fast" else "full")
        p = parts if variant != "vgen-fast" else SimpleNamespace(**{**vars(parts), "vae": tiny})
        return _timed(p, device, lambda: engine(req, cache=cache).images[0])

    # 3. Warm-up, one run of each; the stock one also counts the UNet's FLOPs (and, for the
    #    ablations, records the inputs of the UNet and of the decoders as stock runs them).
    log(f"{case.model}: {size}x{size}, {steps} steps, guidance {guidance:g}: warm-up")
    flops: dict = {}
    inputs: dict = {}
    watched = {"unet": model.pipe.unet, "vae_decoder": stock_vae.decoder}
    if tiny is not None:
        watched["tiny_decoder"] = tiny.decoder
    with capture_inputs(watched, inputs) if ablate else contextlib.nullcontext():
        with count_unet_flops(model.pipe.unet, flops):
            call("stock", PROMPTS[0])
        for v in variants[1:]:
            call(v, PROMPTS[0])

    # 4. Timed runs, interleaved, each repetition with a new prompt.
    samples: dict[str, list[Sample]] = {v: [] for v in variants}
    max_diff = 0.0
    def fresh(r: int, v: str) -> str:
        """A prompt no earlier run used (the engine would reuse its text embeddings): stock and
        vgen share one per repetition (their pixels are compared), vgen-fast has its own."""
        return f"{PROMPTS[1 + r % (len(PROMPTS) - 1)]} {r}{'f' if v == 'vgen-fast' else ''}"

    for r in range(repeats):
        images = {}
        for v in variants:
            with rss.measuring(f"{case.key}/{v}"):
                s = call(v, fresh(r, v))
            samples[v].append(s)
            images[v] = s.image
            log(f"  {v:9s} run {r + 1}/{repeats}: {s.wall:7.2f} s (text {s.times.text_s:.2f}, "
                f"unet {s.times.unet_s:.2f}, decode {s.times.decode_s:.2f}; cpu {s.cpu:.2f} s)")
        max_diff = max(max_diff, _pixels_equal(images["stock"], images["vgen"]))

    # 5. Text-embedding reuse: the engine again with the last prompt (now cached).
    speedups = {}
    reuse_variant = variants[-1]
    if case.task == "txt2img":
        from .speed import reuses_embeddings

        view = task_view(model, "txt2img")
        if reuses_embeddings(view):
            again = [call(reuse_variant, fresh(repeats - 1, reuse_variant)) for _ in range(repeats)]
            new = samples[reuse_variant]
            speedups["text_embedding_reuse"] = {
                "variant": reuse_variant,
                "new_prompt_seconds": round(_median([s.wall for s in new]), 4),
                "repeated_prompt_seconds": round(_median([s.wall for s in again]), 4),
                "text_seconds_saved": round(_median([s.times.text_s for s in new])
                                            - _median([s.times.text_s for s in again]), 4),
                "text_cpu_seconds_saved": round(_median([s.times.text_cpu_s for s in new])
                                                - _median([s.times.text_cpu_s for s in again]), 4),
                "cpu_seconds_saved": round(_median([s.cpu for s in new]) - _median([s.cpu for s in again]), 4),
            }
    first = samples["stock"][0].times
    speedups["cfg_batch"] = {
        "guidance": guidance,
        "unet_samples_per_call": first.unet_samples / max(first.unet_calls, 1),
        "note": ("diffusers' own pipelines skip the classifier-free-guidance batch when guidance "
                 "<= 1 (do_classifier_free_guidance); the engine relies on that"),
    }

    # 6. Records.
    per_sample = flops.get("per_sample", 0.0)
    runs, cpu = [], []
    for v in variants:
        ss = samples[v]
        unet_flops = [per_sample * s.times.unet_samples for s in ss]
        runs.append({
            "model": case.model, "variant": v, "size": f"{size}x{size}", "steps": steps,
            "seconds_per_image": round(_median([s.wall for s in ss]), 4),
            "text_seconds": round(_median([s.times.text_s for s in ss]), 4),
            "unet_seconds": round(_median([s.times.unet_s for s in ss]), 4),
            "decode_seconds": round(_median([s.times.decode_s for s in ss]), 4),
            "peak_rss_mb": round(rss.peaks.get(f"{case.key}/{v}", 0.0), 1),
            "unet_gflops": round(_median([f / s.times.unet_s / 1e9 for f, s in zip(unet_flops, ss)
                                          if s.times.unet_s > 0] or [0.0]), 2),
        })
        unet_cpu_gflops = _median([f / s.times.unet_cpu_s / 1e9 for f, s in zip(unet_flops, ss)
                                   if s.times.unet_cpu_s > 0] or [0.0])
        cpu.append({
            "model": case.model, "variant": v,
            "cpu_seconds_per_image": round(_median([s.cpu for s in ss]), 4),
            "text_cpu_seconds": round(_median([s.times.text_cpu_s for s in ss]), 4),
            "unet_cpu_seconds": round(_median([s.times.unet_cpu_s for s in ss]), 4),
            "decode_cpu_seconds": round(_median([s.times.decode_cpu_s for s in ss]), 4),
            "unet_gflops_per_cpu_second": round(unet_cpu_gflops, 2),
            "unet_share_of_matmul_peak": round(unet_cpu_gflops / peak_gflops[1], 3) if peak_gflops[1] else None,
        })
    check = {"model": case.model, "unet_gflop_per_sample": round(per_sample / 1e9, 2),
             "stock_vs_vgen_max_pixel_difference": max_diff,
             "vgen_fast": "run" if "vgen-fast" in variants else f"not run: {fast_note}"}
    if ablate:
        # vgen.decoders keeps both decoders in channels-last on a CPU, the UNet as it is.
        used = {"vae_decoder", "tiny_decoder"} if device.type == "cpu" else set()
        speedups["ablations"] = ablations(watched, inputs, repeats, ("tiny_decoder",), used, log)
    cache.clear()
    return {"runs": runs, "cpu": cpu, "speedups": {case.model: speedups}, "check": check}


# ---- the app --------------------------------------------------------------------------------

def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) another process and its children have used so far: the app's
    own and its engine workers' (``vgen/worker.py``), live or exited (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, and cutime, cstime: children already waited for
    total = sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or the child ended meanwhile
            continue
        for child in children:
            try:
                total += process_cpu_s(int(child))
            except OSError:
                pass
    return total


def bench_app(steps: int | None, repeats: int, work: Path, log: Callable[[str], None]) -> dict:
    """Cold start and per-request overhead of the app, embedded model (``vgen-shapes``).

    Two ``gradio_client`` clients take turns with the direct engine call: one as the README's API
    section builds it, with one TLS context reused for all its HTTP calls (``ssl_verify=``), and
    one with gradio_client's defaults, which make each HTTP call (3-4 per request) load the CA
    bundle into a new TLS context even for a plain-HTTP URL (httpx builds one per client;
    encode/httpx#3627): ~21 ms of client CPU each here. ``app_overhead_ms`` is the first;
    ``app_overhead_default_client_ms`` the second."""
    import httpx
    from gradio_client import Client

    from .generate import generate
    from .launch import launched_app
    from .pipelines import ModelCache
    from .requests import GenerateRequest

    env = {"VGEN_DEFAULT_MODEL": "vgen-shapes", "HF_HUB_OFFLINE": "1"}
    kw = dict(model="", seed=SEED, randomize_seed=False, api_name="/generate")
    if steps is not None:
        kw["steps"] = steps
    cache = ModelCache(max_models=1)
    direct_req = GenerateRequest(prompt="", model="vgen-shapes", steps=steps, seed=SEED)
    with launched_app(env, work) as app:
        clients = {"reused_tls": Client(app.url, verbose=False, download_files=str(work / "downloads"),
                                        ssl_verify=httpx.create_ssl_context()),
                   "default_client": Client(app.url, verbose=False, download_files=str(work / "downloads-d"))}
        clients["reused_tls"].predict(PROMPTS[0], **kw)
        cold = time.perf_counter() - app.started
        cold_cpu = process_cpu_s(app.pid)
        log(f"app: cold start (process start to first image, embedded model) {cold:.1f} s "
            f"({cold_cpu:.1f} CPU s in the app process)")
        clients["default_client"].predict(PROMPTS[0], **kw)
        generate(replace(direct_req, prompt=PROMPTS[0]), cache=cache)  # warm the direct path too
        # Wall time, and CPU time of both processes (the app's and this one, where the clients
        # run), which the machine's other load does not inflate.
        app_s = {name: [] for name in clients}
        app_cpu = {name: [] for name in clients}
        direct_s, direct_cpu = [], []
        rounds = max(3 * repeats, 9)  # this VM's run-to-run spread is ~±100 ms per request
        for r in range(rounds):
            prompt = PROMPTS[1 + r % (len(PROMPTS) - 1)]
            for name, client in clients.items():
                t0, c0, a0 = time.perf_counter(), time.process_time(), process_cpu_s(app.pid)
                client.predict(prompt, **kw)
                app_s[name].append(time.perf_counter() - t0)
                app_cpu[name].append(time.process_time() - c0 + process_cpu_s(app.pid) - a0)
            t0, c0 = time.perf_counter(), time.process_time()
            generate(replace(direct_req, prompt=prompt), cache=cache)
            direct_s.append(time.perf_counter() - t0)
            direct_cpu.append(time.process_time() - c0)
        # The floor: the same app, queue and clients for a request that does no engine work.
        floor_s = {name: [] for name in clients}
        for _ in range(rounds):
            for name, client in clients.items():
                t0 = time.perf_counter()
                client.predict(api_name="/status")
                floor_s[name].append(time.perf_counter() - t0)
        for client in clients.values():
            client.close()
    direct, direct_c = _median(direct_s) * 1000, _median(direct_cpu) * 1000
    ms = {name: {"request": _median(app_s[name]) * 1000, "overhead": _median(app_s[name]) * 1000 - direct,
                 "overhead_cpu": _median(app_cpu[name]) * 1000 - direct_c,
                 "request_cpu": _median(app_cpu[name]) * 1000, "status": _median(floor_s[name]) * 1000}
          for name in clients}
    for name, label in (("reused_tls", "client reusing its TLS context"), ("default_client", "default client")):
        m = ms[name]
        log(f"app ({label}): {m['request']:.0f} ms per request through gradio_client, {direct:.0f} ms "
            f"direct: overhead {m['overhead']:.0f} ms ({m['overhead_cpu']:.0f} ms of CPU time); a request "
            f"without engine work (/status) takes {m['status']:.0f} ms")
    r, d = ms["reused_tls"], ms["default_client"]
    return {"cold_start_s": round(cold, 2), "app_overhead_ms": round(r["overhead"], 1),
            "app_request_ms": round(r["request"], 1),
            "direct_request_ms": round(direct, 1),
            "status_request_ms": round(r["status"], 1),
            "app_overhead_default_client_ms": round(d["overhead"], 1),
            "app_request_default_client_ms": round(d["request"], 1),
            "status_request_default_client_ms": round(d["status"], 1),
            "cpu": {"cold_start_cpu_s": round(cold_cpu, 2), "app_overhead_cpu_ms": round(r["overhead_cpu"], 1),
                    "app_request_cpu_ms": round(r["request_cpu"], 1),
                    "direct_request_cpu_ms": round(direct_c, 1),
                    "app_overhead_default_client_cpu_ms": round(d["overhead_cpu"], 1),
                    "app_request_default_client_cpu_ms": round(d["request_cpu"], 1)}}


# ---- the command ----------------------------------------------------------------------------

@contextlib.contextmanager
def _environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _table(result: dict) -> str:
    peak = result["matmul_peak_gflops"]
    stock = {r["model"]: r["seconds_per_image"] for r in result["runs"] if r["variant"] == "stock"}
    lines = [f"{'model':44s} {'variant':9s} {'s/image':>8s} {'vs stock':>8s} {'text':>6s} {'unet':>7s} "
             f"{'decode':>7s} {'RSS MB':>7s} {'UNet GF/s':>9s} {'of peak':>7s}"]
    for r in result["runs"]:
        ratio = stock[r["model"]] / r["seconds_per_image"] if r["seconds_per_image"] else 0.0
        lines.append(f"{r['model'][:44]:44s} {r['variant']:9s} {r['seconds_per_image']:8.2f} {ratio:7.2f}x "
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
        lines.append(f"  cpu: {c['model'][:40]:40s} {c['variant']:9s} {c['cpu_seconds_per_image']:8.2f} s/image, "
                     f"UNet {c['unet_gflops_per_cpu_second']:.1f} GFLOP per CPU s "
                     f"({c['unet_share_of_matmul_peak'] or 0:.0%} of peak)")
    return "\n".join(lines)


def run_bench(suite: str = "quick", repeats: int = 3, work: Path | None = None, app: bool = True,
              models: list[str] | None = None, log: Callable[[str], None] = print,
              ablate: bool = False, max_steps: int | None = None) -> dict:
    """Run ``suite`` and return the result (see the module docstring for its layout).
    ``max_steps`` caps the steps of the published architectures (a shorter full suite on a CPU:
    their per-image figures are then for that many steps); the embedded model keeps its default."""
    from .pipelines import pick_device, pick_dtype

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
    work = Path(tempfile.mkdtemp(prefix="vgen-bench-")) if own_work else Path(work)
    root = work / "models"
    root.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    dtype = pick_dtype(device)
    # The TAESD stand-ins (random weights, published architecture) unless real ones are named.
    env = {"VGEN_MODEL_ROOTS": os.pathsep.join(filter(None, [os.environ.get("VGEN_MODEL_ROOTS"), str(root)]))}
    taesd_source = {}
    for var, name in (("VGEN_TAESD", "taesd"), ("VGEN_TAESDXL", "taesdxl")):
        if os.environ.get(var, "").strip():
            taesd_source[var] = os.environ[var]
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
            runs, cpu, speedups, checks = [], [], {}, []
            for case in cases:
                out = bench_case(case, root, repeats, peak, rss, log, ablate)
                runs += out["runs"]
                cpu += out["cpu"]
                speedups.update(out["speedups"])
                checks.append(out["check"])
            app_out = bench_app(APP_STEPS[suite], repeats, work, log) if app else {}
    finally:
        if own_work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    import diffusers

    result = {
        "runs": runs,
        "matmul_peak_gflops": round(peak[0], 2),
        "app_overhead_ms": app_out.get("app_overhead_ms"),
        "cold_start_s": app_out.get("cold_start_s"),
        "cpu_time": {"matmul_peak_gflops_per_cpu_second": round(peak[1], 2), "runs": cpu,
                     "app": app_out.get("cpu")},
        "speedups": speedups,
        "conditions": {
            "suite": suite, "repeats": repeats, "max_steps": max_steps, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "weights": "random at the published architectures "
            "(vgen.archs), except the embedded vgen-shapes", "tiny_autoencoders": taesd_source,
            "app": ({"requests": "embedded vgen-shapes, steps " + str(APP_STEPS[suite] or "default"),
                     **{k: v for k, v in app_out.items() if k.endswith("_ms") and k != "app_overhead_ms"}}
                    if app_out else "not measured (--no-app)"),
            "checks": checks,
        },
    }
    return result


def main(args) -> int:
    """``python -m vgen bench``: ``args`` has suite, json, repeats, work, no_app, models."""
    result = run_bench(args.suite, repeats=args.repeats, work=args.work, app=not args.no_app,
                       models=args.models, log=lambda m: print(m, flush=True),
                       ablate=getattr(args, "ablations", False), max_steps=getattr(args, "max_steps", None))
    print(_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
