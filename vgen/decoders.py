"""Fast decoding with a tiny autoencoder, and live step previews.

On a CPU the VAE decoder, not the UNet, is where most of a one-step model's time goes: at
512x512 the Stable Diffusion VAE decoder runs ~2.5 TFLOP of convolutions (FlopCounterMode),
3.7 times an SD 2.x UNet step (0.68 TFLOP; see ``python -m vgen bench``). TAESD (madebyollin,
"Tiny AutoEncoder for Stable Diffusion", https://github.com/madebyollin/taesd) is a distilled
autoencoder for the same latent space at ~6 % of that cost (0.14 TFLOP); diffusers loads it as
``AutoencoderTiny``.

* ``decoder="fast"`` puts the tiny autoencoder in place of the pipeline's VAE for that job
  (a per-job ``from_pipe`` view; the loaded model is untouched). It is used both ways for
  img2img and inpainting (the source is encoded by TAESD's encoder too). InstructPix2Pix
  conditions on the full VAE's unscaled latents of the source image, so there the full VAE
  still encodes the source and the tiny one only decodes the result (``decode_only``: the
  pipeline returns latents, ``decode_latents`` makes the images).
* Where no tiny autoencoder fits, "fast" honestly falls back to the model's own VAE and the
  result says why: a model with its own latent space (the embedded shapes model: a 0.7 M
  parameter VAE for 64x64 images, already small).
* The weights come from the Hub through :mod:`vgen.hub` (``madebyollin/taesd`` for SD 1.x/2.x,
  ``madebyollin/taesdxl`` for SDXL; ``VGEN_TAESD`` / ``VGEN_TAESDXL`` name another Hub repo or
  a local folder). When they cannot be fetched, a fast request fails with a clear message.
* On a CPU, the VAE decoder of a loaded model and TAESD's decoder are kept in channels-last
  (NHWC) memory format, measured faster for them (not for the UNet; see ``_channels_last``).
* Live previews: with a ``JobControl.preview`` sink, the latents are decoded by the tiny decoder
  after a denoising step (the model's own VAE when it is small), never after the last step and
  only while previews have cost at most ``PREVIEW_SHARE`` of the job's time so far.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import config, hub, precision
from .errors import FastDecoderUnavailableError, ModelError, VgenError

TINY_DECODERS = {  # latent space -> (default Hub repo, environment variable overriding it)
    "sd": ("madebyollin/taesd", "VGEN_TAESD"),
    "sdxl": ("madebyollin/taesdxl", "VGEN_TAESDXL"),
}
# scaling_factor of the VAEs whose latent space TAESD was distilled for.
_SCALING = {0.18215: "sd", 0.13025: "sdxl"}
PREVIEW_SHARE = 0.05  # previews may take at most this share of a job's time
# None in a job's first seconds: a quicker job is done before a preview would help, and sending
# one costs the app ~0.1 s of CPU (PNG, event, the browser fetching it; python -m vgen bench).
PREVIEW_AFTER_S = 2.0
OWN_VAE_PREVIEW_MAX_PARAMS = 10_000_000  # a model's own VAE this small is cheap enough to preview
FAILURE_RETRY_S = 300.0  # a failed tiny-decoder fetch is retried for previews after this long


@dataclass(frozen=True)
class TinyDecoder:
    ref: str  # the reference it was loaded from
    commit: str  # resolved Hub commit, or "local"
    module: Any  # diffusers.AutoencoderTiny on the model's device and dtype


@dataclass(frozen=True)
class DecoderUse:
    """What decoded a job's images: ``used`` is "full" or "fast"; ``label`` for people;
    ``note`` says why "fast" fell back ("" otherwise); ``metadata`` extra PNG fields."""

    used: str
    label: str
    note: str = ""
    metadata: dict | None = None


def latent_space(vae) -> str | None:
    """"sd" or "sdxl" when ``vae`` is the Stable Diffusion 1.x/2.x or SDXL autoencoder (by its
    config: AutoencoderKL, 4 latent channels, 8x down-sampling, that model's scaling factor),
    else None: then no TAESD decodes its latents."""
    if vae is None or type(vae).__name__ != "AutoencoderKL":
        return None
    c = vae.config
    if c.latent_channels != 4 or len(c.block_out_channels) != 4:
        return None
    if getattr(c, "latents_mean", None) is not None or getattr(c, "shift_factor", None):
        return None
    return _SCALING.get(round(float(c.scaling_factor), 5))


def tiny_decoder_ref(space: str) -> str:
    repo, env = TINY_DECODERS[space]
    return config.tiny_decoder_setting(env) or repo


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def fallback_reason(req, model) -> str:
    """Why "fast" cannot use a tiny autoencoder for ``req`` on ``model``; "" when it can."""
    vae = getattr(model.pipe, "vae", None)
    name = Path(model.ref).name if model.revision == "local" else model.ref
    if latent_space(vae) is None:
        if vae is None:
            return f"{name} has no VAE to replace"
        n = _params(vae)
        size = getattr(vae.config, "sample_size", None)
        small = (f", already small at {n / 1e6:.1f} M parameters"
                 if n < OWN_VAE_PREVIEW_MAX_PARAMS else f" ({n / 1e6:.0f} M parameters)")
        return (f"{name} has its own autoencoder{small}"
                f"{f' for {size}x{size} images' if isinstance(size, int) else ''}; no tiny "
                "decoder exists for its latent space, so its own VAE made this image")
    return ""


def _load(ref: str, model, progress) -> TinyDecoder:
    from diffusers import AutoencoderTiny

    resolved = hub.resolve(ref, prefer_fp16=model.dtype == torch.float16, progress=progress)
    config = resolved.path / "config.json"
    try:
        cls = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError):
        cls = None
    if cls != "AutoencoderTiny":
        raise FastDecoderUnavailableError(
            f"{ref} is not a tiny autoencoder (its config.json names {cls!r}, not AutoencoderTiny)")
    kwargs = dict(dtype=model.dtype, use_safetensors=True)
    if resolved.variant:
        kwargs["variant"] = resolved.variant
    module = AutoencoderTiny.from_pretrained(str(resolved.path), **kwargs)
    module = module.to(model.device).eval().requires_grad_(False)
    if model.device.type == "cpu":
        _channels_last(module.decoder)
    precision.apply_vae(module, precision.named(model.precision, model.device))  # bf16 on a CPU
    return TinyDecoder(ref, resolved.commit, module)


def _channels_last(module) -> None:
    """Weights in channels-last (NHWC) memory format: oneDNN's convolutions then run on NHWC
    activations without reordering them around every convolution. Measured with ``python -m
    vgen bench --ablations`` (CPU seconds, same inputs): TAESD's decoder 2.27 -> 1.79, the SD
    VAE decoder 29.9 -> 27.7, but the SD 2.x UNet 9.56 -> 10.09 (slower), so decoders only.
    Numerically the same convolutions (differences ~1e-5 of the [-1, 1] range)."""
    module.to(memory_format=torch.channels_last)


def prepare_model(model) -> None:
    """Once per loaded model on a CPU: its VAE decoder in channels-last (see ``_channels_last``).
    Under the model's lock, so no job is running through the weights as they change."""
    if model.device.type != "cpu" or getattr(model.pipe, "vae", None) is None:
        return
    with model.cache_lock:
        if model.decoders.get("_decoder_layout") == "channels_last":
            return
    vae = model.pipe.vae
    with model.lock:
        for part in (getattr(vae, "post_quant_conv", None), getattr(vae, "decoder", None)):
            if isinstance(part, torch.nn.Module):
                _channels_last(part)
        with model.cache_lock:
            model.decoders["_decoder_layout"] = "channels_last"


def tiny_decoder(model, space: str, progress: Callable | None = None,
                 retry: bool = True) -> TinyDecoder:
    """The tiny autoencoder for ``space`` on ``model``'s device, loaded once per model (kept in
    ``model.decoders``). A failure is remembered; ``retry=False`` re-raises a recent one
    without trying again (previews must not wait on an unreachable Hub every job)."""
    ref = tiny_decoder_ref(space)
    with model.cache_lock:
        hit = model.decoders.get(ref)
    if isinstance(hit, TinyDecoder):
        return hit
    if hit is not None and not retry and time.monotonic() - hit[1] < FAILURE_RETRY_S:
        raise hit[0]
    try:
        loaded = _load(ref, model, progress)
    except (VgenError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, VgenError) and not isinstance(e, ModelError):
            raise  # cancelled (CancelledError) or out of time: not a property of the decoder
        repo, env = TINY_DECODERS[space]
        err = FastDecoderUnavailableError(
            f"fast decoding needs the tiny autoencoder {ref} (TAESD), which could not be "
            f"fetched or loaded: {str(e).rstrip('.')}. Choose the full decoder, or, once, download {repo} with "
            f"network access (or set {env} to a local copy)."
        )
        with model.cache_lock:
            model.decoders[ref] = (err, time.monotonic())
        raise err from e
    with model.cache_lock:
        model.decoders[ref] = loaded
    return loaded


def components_for(req, model, progress: Callable | None = None) -> dict:
    """The components to swap into a job's view: ``{"vae": tiny}`` for a fast request that a
    tiny autoencoder serves both ways, else ``{}`` (see ``decode_only`` for instruct edits).
    Raises FastDecoderUnavailableError when it should serve but cannot be fetched."""
    if req.decoder != "fast" or req.task == "instruct" or fallback_reason(req, model):
        return {}
    return {"vae": tiny_decoder(model, latent_space(model.pipe.vae), progress).module}


def decode_only(req, model, progress: Callable | None = None) -> TinyDecoder | None:
    """For a fast instruct edit whose latents a tiny autoencoder serves: that decoder, which
    decodes the result while the full VAE still encodes the source (InstructPix2Pix conditions
    on its unscaled posterior mode); None otherwise. Fetched once per model, like
    ``components_for``."""
    if req.decoder != "fast" or req.task != "instruct" or fallback_reason(req, model):
        return None
    return tiny_decoder(model, latent_space(model.pipe.vae), progress)


def decode_latents(tiny: TinyDecoder, view, latents: torch.Tensor) -> list:
    """PIL images from a pipeline's final latents (``output_type="latent"``: already multiplied
    by the VAE's scaling factor, which is the space TAESD decodes)."""
    image = tiny.module.decode(latents.to(tiny.module.dtype), return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]
    return view.image_processor.postprocess(image, output_type="pil")


def _torch_module(vae):
    """The torch autoencoder behind a job view's ``vae``: itself, or what an OpenVINO stand-in
    (``vgen.openvino_backend``) stands in for."""
    return getattr(vae, "torch_module", vae)


def describe(req, model, view, decoder: TinyDecoder | None = None) -> DecoderUse:
    """What decoded (or will decode) ``view``'s images (``decoder``: a decode-only one)."""
    module = decoder.module if decoder is not None else _torch_module(getattr(view, "vae", None))
    with model.cache_lock:
        tiny = next((d for d in list(model.decoders.values())
                     if isinstance(d, TinyDecoder) and d.module is module), None)
    if tiny is not None:
        pinned = tiny.ref if tiny.commit == "local" else f"{tiny.ref}@{tiny.commit[:12]}"
        return DecoderUse("fast", f"fast: tiny autoencoder {pinned}",
                          metadata={"Decoder model": pinned})
    vae = _torch_module(getattr(view, "vae", None))
    label = f"full: {type(vae).__name__}" if vae is not None else "full"
    note = fallback_reason(req, model) if req.decoder == "fast" else ""
    return DecoderUse("full", label, note)


# ---- live previews --------------------------------------------------------------------------

def preview_decoder(model, view) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """latents -> image tensor in [-1, 1] for previews, or None when none is cheap: the tiny
    autoencoder when the model's latents are SD/SDXL ones and it is already loaded (see
    ``warm_previews``; nothing is fetched here), else the model's own VAE when it is small."""
    vae = getattr(view, "vae", None)
    if vae is None:
        return None
    if type(_torch_module(vae)).__name__ == "AutoencoderTiny":  # a fast job: its own decoder is the tiny one
        return lambda z: vae.decode(z.to(vae.dtype), return_dict=False)[0]
    space = latent_space(vae)
    if space is not None:
        with model.cache_lock:
            hit = model.decoders.get(tiny_decoder_ref(space))
        if not isinstance(hit, TinyDecoder):  # not fetched (warm_previews) or unavailable
            return None
        tiny = hit.module
        # TAESD decodes the latents as the UNet sees them (already multiplied by the scale).
        return lambda z: tiny.decode(z.to(tiny.dtype), return_dict=False)[0]
    if _params(vae) >= OWN_VAE_PREVIEW_MAX_PARAMS:
        return None
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    return lambda z: vae.decode(z.to(vae.dtype) / scale + shift, return_dict=False)[0]


class Previewer:
    """Decodes step latents into a PIL preview while previews stay within ``share`` of the
    job's time. Called from the step-end callback (see ``JobControl.step_end_callback``)."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], share: float | None = None,
                 quiet: Callable[[], Any] | None = None):
        self.decode = decode
        self.share = PREVIEW_SHARE if share is None else share
        self.quiet = quiet or contextlib.nullcontext  # e.g. PhaseTimer.excluded: not the image's decode
        self.started = time.perf_counter()
        self.spent = 0.0
        self.last_cost = 0.0
        self.shown = 0

    def due(self, step: int, total: int) -> bool:
        """Not after the last step (the final image follows at once), not in the first
        ``PREVIEW_AFTER_S``, and only while the previews so far plus the next one stay within
        the share of the time elapsed."""
        if step >= total:
            return False
        elapsed = time.perf_counter() - self.started
        return elapsed >= PREVIEW_AFTER_S and self.spent + self.last_cost <= self.share * elapsed

    def __call__(self, latents: torch.Tensor):
        from diffusers.image_processor import VaeImageProcessor

        t0 = time.perf_counter()
        with torch.inference_mode(), self.quiet():
            image = self.decode(latents[:1])
            pil = VaeImageProcessor().postprocess(image.float(), output_type="pil")[0]
        self.last_cost = time.perf_counter() - t0
        self.spent += self.last_cost
        self.shown += 1
        return pil


def previewer_for(model, view, quiet: Callable[[], Any] | None = None) -> Previewer | None:
    """A Previewer for ``view``'s job, its clock started now; None when no decoder is cheap."""
    decode = preview_decoder(model, view)
    return Previewer(decode, quiet=quiet) if decode is not None else None


def warm_previews(model) -> None:
    """Fetch the tiny decoder for previews before a job takes the model's lock (a download
    must not count against the job's time). Failures are remembered, not raised."""
    space = latent_space(getattr(model.pipe, "vae", None))
    if space is not None:
        try:
            tiny_decoder(model, space, retry=False)
        except ModelError:
            pass
