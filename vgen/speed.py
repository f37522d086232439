"""Where a generation's time goes, and reuse of text embeddings across requests.

``PhaseTimer`` splits a pipeline call into text encoder, UNet (denoiser) and VAE decoder time
with ``torch.nn.Module`` forward pre-hooks and hooks (public PyTorch extension points; the
handles are removed on exit). On CUDA it synchronises at each boundary so the times are the
kernels' own. The engine fills :class:`vgen.requests.Timings` with it, and ``vgen.bench`` times
the stock diffusers call with the same code, so both are measured the same way.

``encode_cached`` reuses a model's text embeddings for a prompt it has seen recently (a user
re-rolling seeds sends the same prompt again and again): it calls the pipeline's own
``encode_prompt`` exactly as its ``__call__`` would, so the pixels are identical, and keeps the
last few results per loaded model.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

EMBEDDINGS_KEPT = 16  # per loaded model; one SD 2.x prompt is 77x1024 floats (~0.3 MB)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PhaseTimes:
    """Seconds spent in each part of one (or several) pipeline calls, plus how many samples
    went through the denoiser (a classifier-free-guidance step counts 2 per image)."""

    text_s: float = 0.0
    unet_s: float = 0.0
    decode_s: float = 0.0
    unet_calls: int = 0
    unet_samples: int = 0
    # CPU seconds of this process in each part (all threads): unlike wall time, not inflated
    # when other processes share the cores, so efficiency can be measured on a busy machine.
    text_cpu_s: float = 0.0
    unet_cpu_s: float = 0.0
    decode_cpu_s: float = 0.0


def _text_modules(pipe) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
            if isinstance(m, torch.nn.Module)]


def _denoiser(pipe) -> torch.nn.Module | None:
    for name in ("unet", "transformer"):
        m = getattr(pipe, name, None)
        if isinstance(m, torch.nn.Module):
            return m
    return None


def _decode_modules(pipe) -> list[torch.nn.Module]:
    """What ``vae.decode`` runs: ``post_quant_conv`` (AutoencoderKL) and ``decoder`` (both
    AutoencoderKL and AutoencoderTiny). ``vae.decode`` itself is a method, not a forward."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return []
    return [m for m in (getattr(vae, "post_quant_conv", None), getattr(vae, "decoder", None))
            if isinstance(m, torch.nn.Module)]


def _batch(args, kwargs) -> int:
    x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1


@dataclass
class PhaseTimer:
    """Context manager: ``with PhaseTimer(pipe) as t: pipe(...)``; then ``t.times``.

    Nested calls of one module (none in diffusers' models) would be counted once, from the
    outermost entry."""

    pipe: object
    device: torch.device | None = None
    decoders: tuple = ()  # autoencoders decoding outside the pipeline's call (vgen.decoders.decode_only)
    times: PhaseTimes = field(default_factory=PhaseTimes)
    _handles: list = field(default_factory=list)
    _paused: int = 0

    @contextlib.contextmanager
    def excluded(self):
        """Calls made inside are not counted (e.g. a live preview through the job's own VAE)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _watch(self, module: torch.nn.Module, phase: str) -> None:
        state = {"depth": 0, "t0": 0.0, "c0": 0.0, "counted": False}

        def pre(mod, args, kwargs):
            if state["depth"] == 0:
                state["counted"] = not self._paused
            if state["depth"] == 0 and state["counted"]:
                _sync(self.device)
                state["t0"], state["c0"] = time.perf_counter(), time.process_time()
                if phase == "unet":
                    self.times.unet_calls += 1
                    self.times.unet_samples += _batch(args, kwargs)
            state["depth"] += 1

        def post(mod, args, kwargs, output):
            state["depth"] -= 1
            if state["depth"] == 0 and state["counted"]:
                _sync(self.device)
                wall, cpu = time.perf_counter() - state["t0"], time.process_time() - state["c0"]
                setattr(self.times, f"{phase}_s", getattr(self.times, f"{phase}_s") + wall)
                setattr(self.times, f"{phase}_cpu_s", getattr(self.times, f"{phase}_cpu_s") + cpu)

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))

    def __enter__(self) -> "PhaseTimer":
        for m in _text_modules(self.pipe):
            self._watch(m, "text")
        unet = _denoiser(self.pipe)
        if unet is not None:
            self._watch(unet, "unet")
        for m in _decode_modules(self.pipe) + [d.decoder for d in self.decoders]:
            self._watch(m, "decode")
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# ---- text embeddings of repeated prompts ------------------------------------------------------

def reuses_embeddings(view) -> bool:
    """Stable Diffusion 1.x/2.x text-to-image pipelines: their ``__call__`` encodes with exactly
    ``encode_prompt(prompt, device, n, cfg, negative_prompt)`` and accepts the tensors back, so
    passing cached ones gives identical pixels (tests/test_bench.py checks it)."""
    from diffusers import StableDiffusionPipeline

    return type(view) is StableDiffusionPipeline


def guidance_batch(view, guidance: float) -> bool:
    """Whether ``view``'s call runs the unconditional branch of classifier-free guidance: diffusers'
    own rule (``do_classifier_free_guidance``), off at guidance <= 1 and for a UNet that takes the
    guidance scale as an input (``time_cond_proj_dim``: LCM models, ``vgen-shapes-distilled``)."""
    unet = getattr(view, "unet", None)
    return guidance > 1 and getattr(getattr(unet, "config", None), "time_cond_proj_dim", None) is None


def encode_cached(model, view, prompt: str, negative_prompt: str, guidance: float) -> dict:
    """``prompt_embeds`` (and ``negative_prompt_embeds`` when classifier-free guidance is on) for
    ``view``'s call, from the model's cache or encoded now. Call while holding ``model.lock``,
    inside ``torch.inference_mode()``."""
    cfg = guidance_batch(view, guidance)
    key = (type(view).__name__, prompt, negative_prompt if cfg else None, cfg)
    with model.cache_lock:
        hit = model.embeddings.get(key)
        if hit is not None:
            model.embeddings.move_to_end(key)
            return dict(hit)
    pe, ne = view.encode_prompt(prompt=prompt, device=view._execution_device, num_images_per_prompt=1,
                                do_classifier_free_guidance=cfg, negative_prompt=negative_prompt or None)
    out = {"prompt_embeds": pe}
    if cfg:
        out["negative_prompt_embeds"] = ne
    with model.cache_lock:
        model.embeddings[key] = out
        model.embeddings.move_to_end(key)
        while len(model.embeddings) > EMBEDDINGS_KEPT:
            model.embeddings.popitem(last=False)
    return dict(out)
