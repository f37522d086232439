"""The engine's precision policy: what the denoiser computes in, chosen once per machine.

``VGEN_DTYPE`` (``vgen.config.dtype_setting``):

* ``auto`` (the default): on CUDA fp16 (the whole pipeline, as before); on a CPU **bf16 where it
  is measured faster**, else fp32; any other device fp32. The CPU's verdict comes from a small
  micro-benchmark at two scales of op shapes, as small ops and large ones gain differently from
  matrix units: one call of a UNet at the embedded model's architecture (``small``: random
  weights, its convolutions, norms, attention and feed-forward products at its widths, batch 2)
  and one of the first two levels of SD-Turbo's (``large``), fp32 against bf16 weights in
  channels-last, interleaved, by wall and by CPU time; at each scale bf16 is chosen only when it
  is at least ``MIN_SPEEDUP`` faster, so no model becomes slower than fp32 because of it. A
  model runs at its denoiser's scale (:func:`scale_of`). It runs once per
  machine (CPU model and flags, torch version, threads) and is cached in
  ``<user cache dir>/precision.json`` (``vgen.config.user_cache_dir``); a CPU without bf16
  instructions (``avx512_bf16``/``amx_bf16``, as torch reports them) is fp32 without measuring.
* ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``: forced.

How bf16 runs on a CPU (``Precision.mixed``): the pipeline loads in fp32, then the denoiser's
weights become bf16 in channels-last; a forward pre-hook casts its floating inputs to bf16 (not
the timestep, which the UNet embeds in fp32 itself) and a forward hook casts its output back to
fp32, so the latents and the scheduler's arithmetic stay fp32. A VAE runs in bf16 the same way,
``force_upcast`` or not (it guards float16's range, which bf16 does not lack; :func:`apply_vae`).
A text encoder's transformer layers (CLIP's ``encoder``) run in bf16 the same way,
while its embedding tables and final layer norm stay fp32 (:func:`apply_text_encoder`): diffusers
casts the prompt embeddings to ``text_encoder.dtype``, which transformers reads off the first
floating parameter (the token embedding), and creates the latents in the embeddings' dtype, so the
embeddings, the latents and the scheduler's arithmetic stay fp32.

Forced fp16 (or bf16 on CUDA) loads the whole pipeline in that dtype, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import config
from .cpu_share import SMALL_PARAMS, job_threads, threads_limited
from .errors import ModelError

logger = logging.getLogger("vgen.precision")

MIN_SPEEDUP = 1.15  # bf16 must beat fp32 by this much at the micro-benchmark to be chosen
BENCH_VERSION = 4  # bump when the micro-benchmark changes: older verdicts are measured again
NAMES = {"float32": "fp32", "fp32": "fp32", "float16": "fp16", "fp16": "fp16",
         "bfloat16": "bf16", "bf16": "bf16"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """What a model runs in: ``name`` (``fp32``/``bf16``/``fp16``: what ``/status``, the result
    and the PNG say), the dtype the pipeline loads in, the denoiser's compute dtype, whether the
    bf16-on-CPU policy applies (``mixed``), and why it was chosen."""

    name: str
    load_dtype: torch.dtype
    compute_dtype: torch.dtype
    mixed: bool
    reason: str


def choose(device: torch.device, scale: str = "small") -> Precision:
    """The precision for models on ``device`` (see the module docstring) whose denoiser is of
    ``scale`` (:func:`scale_of`; only auto on a CPU tells the scales apart). A bad
    ``VGEN_DTYPE`` raises ModelError naming the allowed values."""
    setting = config.dtype_setting()
    if setting != "auto":
        name = NAMES.get(setting)
        if name is None:
            raise ModelError(f"VGEN_DTYPE={setting!r} is not one of auto, float32, bfloat16, float16 "
                             "(or fp32, bf16, fp16)")
        return _make(name, device, f"VGEN_DTYPE={setting}")
    if device.type == "cuda":
        return _make("fp16", device, "auto: fp16 on CUDA")
    if device.type != "cpu":
        return _make("fp32", device, f"auto: fp32 on {device.type}")
    verdict = cpu_verdict()["scales"][scale]
    return _make(verdict["choice"], device, "auto: " + verdict["reason"])


def named(name: str, device: torch.device, reason: str = "") -> Precision:
    """The Precision called ``name`` (``fp32``/``bf16``/``fp16``) on ``device``."""
    return _make(name, device, reason)


def _make(name: str, device: torch.device, reason: str) -> Precision:
    dtype = DTYPES[name]
    mixed = name == "bf16" and device.type == "cpu"
    return Precision(name, torch.float32 if mixed else dtype, dtype, mixed, reason)


# ---- applying bf16 on a CPU -------------------------------------------------------------------

_MARK = "_vgen_precision"
_KEEP = frozenset({"timestep", "time_ids"})  # embedded in fp32 by the model itself


def _cast(value, dtype: torch.dtype, name: str = ""):
    if name in _KEEP:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):  # added_cond_kwargs, diffusers/transformers output classes
        out = value if hasattr(value, "to_tuple") else type(value)()
        for k, v in list(value.items()):
            out[k] = _cast(v, dtype, k)
        return out
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def run_in(module: torch.nn.Module, dtype: torch.dtype = torch.bfloat16,
           outputs: torch.dtype = torch.float32, timestep_arg: int | None = None) -> torch.nn.Module:
    """``module``'s weights in ``dtype`` (convolutions' channels-last), its floating inputs cast
    to the weights' dtype and its floating outputs to ``outputs`` (forward hooks). The timestep
    (keyword ``timestep``, or positional ``timestep_arg`` of a denoiser) is left alone.
    Idempotent."""
    if getattr(module, _MARK, None) == dtype:
        return module
    torch.nn.Module.to(module, dtype=dtype)  # not diffusers' .to, which warns about fp32 modules
    for m in module.modules():  # channels-last weights: oneDNN's fast path for convolutions
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)

    def pre(mod, args, kwargs):
        # The weights' dtype now, not ``dtype``: a caller that converted the module (diffusers'
        # ``from_pipe`` does, to fp32) gets consistent inputs instead of a dtype error.
        now = next(mod.parameters()).dtype
        args = tuple(a if i == timestep_arg else _cast(a, now) for i, a in enumerate(args))
        return args, {k: _cast(v, now, k) for k, v in kwargs.items()}

    def post(mod, args, kwargs, output):
        return _cast(output, outputs)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True)
    object.__setattr__(module, _MARK, dtype)
    return module


def apply_vae(vae, precision: Precision) -> None:
    """An autoencoder under ``precision``: with ``mixed``, its encoder and decoder parts
    (``encoder``, ``quant_conv``, ``post_quant_conv``, ``decoder``: what ``encode``/``decode``
    run) in bf16 with fp32 at their boundaries. ``config.force_upcast`` does not keep it in fp32
    here: diffusers sets it for float16, whose range SD's VAE activations overflow (NaN images in
    SDXL); bfloat16 has float32's exponent range, and what it loses is precision, which the
    bench's PSNR against fp32 checks (``checks[].stock_vs_vgen_psnr_db``)."""
    if vae is None or not precision.mixed:
        return
    for part in ("encoder", "quant_conv", "post_quant_conv", "decoder"):
        m = getattr(vae, part, None)
        if isinstance(m, torch.nn.Module):
            run_in(m, precision.compute_dtype)


def apply_text_encoder(encoder, precision: Precision) -> bool:
    """A text encoder under ``precision``: with ``mixed``, its transformer layers
    (CLIP's ``encoder``, under ``text_model`` where the model has one) in bf16 with fp32 at their boundaries; the embedding
    tables, the final layer norm and a projection stay fp32. Only where the encoder's first
    floating parameter lies outside those layers, so that ``encoder.dtype`` (what diffusers casts
    the prompt embeddings to) stays fp32; another layout is left alone. Returns whether applied."""
    layers = getattr(getattr(encoder, "text_model", encoder), "encoder", None)
    if not precision.mixed or not isinstance(encoder, torch.nn.Module) or not isinstance(layers, torch.nn.Module):
        return False
    first = next((p for p in encoder.parameters() if p.is_floating_point()), None)
    if first is None or any(first is p for p in layers.parameters()):
        return False
    run_in(layers, precision.compute_dtype)
    return True


def apply(pipe, precision: Precision):
    """A loaded pipeline (in ``precision.load_dtype``) under ``precision``: with ``mixed``, the
    denoiser in bf16 (fp32 at its boundaries), the VAE as :func:`apply_vae` says and the text
    encoders' layers as :func:`apply_text_encoder` says; the scheduler stays fp32. Returns
    ``pipe``."""
    if not precision.mixed:
        return pipe
    for name in ("unet", "transformer"):
        m = getattr(pipe, name, None)
        if isinstance(m, torch.nn.Module):
            run_in(m, precision.compute_dtype, timestep_arg=1)
    apply_vae(getattr(pipe, "vae", None), precision)
    for name in ("text_encoder", "text_encoder_2"):
        apply_text_encoder(getattr(pipe, name, None), precision)
    return pipe


def name_of(dtype) -> str:
    """``bf16``/``fp16``/``fp32`` for a torch dtype (anything else: ``fp32``)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


# ---- the CPU's verdict ------------------------------------------------------------------------

_VERDICT: dict | None = None
_VERDICT_LOCK = threading.Lock()


def _cpu_identity() -> tuple[str, str]:
    """(model name, flags) of this CPU from /proc/cpuinfo, else what ``platform`` tells."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.strip()
            if model and flags:
                break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def machine_key() -> str:
    """What the verdict depends on: CPU model and flags, torch version, threads, bench version."""
    model, flags = _cpu_identity()
    text = "|".join([model, " ".join(sorted(flags.split())), str(torch.__version__),
                     str(torch.get_num_threads()), str(BENCH_VERSION)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> Path:
    return Path(config.user_cache_dir()) / "precision.json"


def _has_bf16_instructions() -> bool | None:
    """Whether torch sees AVX512-BF16 or AMX on this CPU; None when it cannot tell."""
    probes = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(p) for p in probes):
        return None
    try:
        return any(bool(p()) for p in probes)
    except Exception:  # a private probe: any failure means "cannot tell"
        return None


# The embedded vgen-shapes UNet's architecture (checkpoints/vgen-shapes/unet/config.json): the
# engine's typical op shapes, with their real mix of convolutions, norms, attention and the
# per-op overhead that decides small models' speed (a bench of bare convolutions and matrix
# products said bf16 1.3-1.5x faster on an AVX512-BF16 EPYC where this whole UNet is 1.0x).
EMBEDDED_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(64, 128, 128), down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3, cross_attention_dim=128, attention_head_dim=4,
    norm_num_groups=16)
TOKENS = 32  # the embedded text encoder's context
# The first two levels of an SD 2.x / SD-Turbo UNet (widths 320 and 640, linear projections,
# OpenCLIP-H's 1024-wide context, 77 tokens) at 32x32 latents, batch 1: the op shapes of the
# published architectures, where matrix units pay, while the embedded model's small ops may not
# (the README's "On an Intel Xeon with AMX" has the figures).
LARGE_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(320, 640), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=1024,
    attention_head_dim=(5, 10), use_linear_projection=True)
SCALES = {  # scale: (UNet config, batch, latent side, tokens, context width)
    "small": (EMBEDDED_UNET, 2, 16, TOKENS, 128),
    "large": (LARGE_UNET, 1, 32, 77, 1024),
}
LARGE_PARAMS = SMALL_PARAMS  # a denoiser with at least this many parameters runs at the large verdict


def network_params(pipe) -> int:
    """Parameters of what a job of ``pipe`` runs at every step: its denoiser (UNet or
    transformer), the language model of a loaded LM (``vgen.expand.LoadedLM``), or ``pipe``
    itself when it is a module (a planner's LM); 0 if none."""
    for m in (pipe, *(getattr(pipe, name, None) for name in ("unet", "transformer", "model"))):
        if isinstance(m, torch.nn.Module):
            return sum(p.numel() for p in m.parameters())
    return 0


def scale_of(pipe) -> str:
    """``large`` for a pipeline whose denoiser (UNet or transformer) has at least
    ``LARGE_PARAMS`` parameters (SD 1.5's UNet has 860 M, the embedded model's 7 M), else
    ``small``."""
    return "large" if network_params(pipe) >= LARGE_PARAMS else "small"


def _unet_calls(scale: str = "small"):
    """fp32 and bf16 (:func:`run_in`) copies of a random-weight UNet at ``SCALES[scale]``, each
    as a function running one denoising call."""
    import copy

    from diffusers import UNet2DConditionModel

    arch, batch, side, tokens, width = SCALES[scale]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch).eval().requires_grad_(False)
    bf16 = run_in(copy.deepcopy(unet), torch.bfloat16, timestep_arg=1)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, side, side, generator=g)
    context = torch.randn(batch, tokens, width, generator=g)
    t = torch.tensor(500)
    return {name: (lambda m=m: m(sample, t, context, return_dict=False))
            for name, m in (("fp32", unet), ("bf16", bf16))}


def measure(rounds: int = 4, iterations: int = 2, scale: str = "small") -> dict:
    """The micro-benchmark: one UNet call in fp32 and in bf16, rounds interleaved after a warm-up
    of each, the best round of each in wall time and in CPU time (a busy machine's slow moments
    drop out, and CPU time is not inflated by other processes); ``bf16_speedup`` is the smaller
    of the two ratios, so bf16 counts as faster only when it is by both. About 20 UNet calls
    at ``scale``, plus building the UNet."""
    with torch.inference_mode():
        fns = _unet_calls(scale)
        wall = {k: float("inf") for k in fns}
        cpu = dict(wall)
        for fn in fns.values():
            fn()
        for r in range(rounds):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(iterations):
                    fns[k]()
                wall[k] = min(wall[k], (time.perf_counter() - t0) / iterations)
                cpu[k] = min(cpu[k], (time.process_time() - c0) / iterations)
    return {"fp32_ms": round(wall["fp32"] * 1e3, 3), "bf16_ms": round(wall["bf16"] * 1e3, 3),
            "fp32_cpu_ms": round(cpu["fp32"] * 1e3, 3), "bf16_cpu_ms": round(cpu["bf16"] * 1e3, 3),
            "bf16_speedup": round(min(wall["fp32"] / wall["bf16"], cpu["fp32"] / cpu["bf16"]), 3)}


def decide(figures: dict, scale: str = "small") -> tuple[str, str]:
    """(choice, reason) from :func:`measure`'s figures at ``scale``."""
    s = figures["bf16_speedup"]
    shapes = f"the {scale} denoisers' op shapes"
    if s >= MIN_SPEEDUP:
        return "bf16", f"bf16, measured {s:.2f}x faster than fp32 on this CPU at {shapes}"
    return "fp32", (f"fp32, bf16 measured {s:.2f}x of fp32's speed on this CPU at {shapes} "
                    f"(bf16 needs at least {MIN_SPEEDUP:.2f}x)")


def _measured_verdict(scale: str) -> dict:
    """:func:`measure` at ``scale`` (twice when too close to call) and :func:`decide`, on the
    threads that a job of a model at that scale runs on (``vgen.cpu_share.job_threads``)."""
    threads = job_threads("cpu", 0 if scale == "small" else LARGE_PARAMS)
    with threads_limited(threads):
        figures = measure(scale=scale)
        if abs(figures["bf16_speedup"] / MIN_SPEEDUP - 1) < 0.1:  # too close to call: again
            again = measure(scale=scale)
            if again["bf16_speedup"] < figures["bf16_speedup"]:
                figures = again
            figures["measured_twice"] = True
        figures["threads"] = torch.get_num_threads()
    choice, reason = decide(figures, scale)
    return {**figures, "choice": choice, "reason": reason}


def cpu_verdict(refresh: bool = False) -> dict:
    """This machine's verdict, ``{"choice": "bf16"|"fp32", "reason", ...figures}``: from this
    process's memo, else the cache file, else measured now (about a second) and cached.
    ``refresh`` measures again."""
    global _VERDICT
    with _VERDICT_LOCK:
        if _VERDICT is not None and not refresh:
            return _VERDICT
        key = machine_key()
        path = cache_path()
        try:
            cached = json.loads(path.read_text())
            if not isinstance(cached, dict):
                cached = {}
        except (OSError, ValueError):
            cached = {}
        hit = cached.get(key)
        if not refresh and isinstance(hit, dict) and all(
                (hit.get("scales") or {}).get(k, {}).get("choice") in ("bf16", "fp32") for k in SCALES):
            _VERDICT = {**hit, "cached": True}
            return _VERDICT
        model, _ = _cpu_identity()
        verdict = {"cpu": model, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
                   "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if _has_bf16_instructions() is False:
            reason = "fp32, this CPU has no bf16 instructions (avx512_bf16 or amx_bf16, as torch sees it)"
            scales = {scale: {"choice": "fp32", "reason": reason} for scale in SCALES}
        else:
            scales = {scale: _measured_verdict(scale) for scale in SCALES}
        # choice/reason: the small scale's (the embedded default model's), as /status shows
        verdict.update(choice=scales["small"]["choice"], reason=scales["small"]["reason"], scales=scales)
        cached[key] = verdict
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=2) + "\n")
            os.replace(tmp, path)
        except OSError as e:  # a read-only home: decide again next time, never fail a job
            logger.warning("could not cache the precision verdict in %s: %s", path, e)
        _VERDICT = {**verdict, "cached": False}
        return _VERDICT


def describe(p: Precision) -> dict:
    """What ``/status`` shows."""
    return {"precision": p.name, "precision_reason": p.reason,
            "dtype": str(p.compute_dtype).replace("torch.", "")}


def main(argv: list[str] | None = None) -> int:
    """``python -m vgen.precision [--refresh]``: this machine's verdict (``--refresh``: measure
    again, e.g. on a quiet machine), as JSON."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    print(json.dumps({**cpu_verdict(refresh="--refresh" in args), "cache": str(cache_path()),
                      "key": machine_key()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
