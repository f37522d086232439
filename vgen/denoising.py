"""The denoising path: the model's predicted clean image (x0) after every step, decoded.

A forward hook on the UNet (PyTorch's public ``register_forward_hook``, removed on exit) sees
each call's noisy input and output. The output is combined as the pipeline combines it
(classifier-free guidance: ``uncond + g * (text - uncond)``; InstructPix2Pix:
``uncond + g * (text - image) + g_img * (image - uncond)``; guidance rescale when set), then
turned into x0 with the scheduler's ``alphas_cumprod`` at that timestep and its
``prediction_type``:

* epsilon: ``x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a)``
* v_prediction: ``x0 = sqrt(a) * x_t - sqrt(1 - a) * v``
* sample: ``x0 = output``

``x_t`` is the UNet's input after ``scheduler.scale_model_input``, which for sigma-based
schedulers (Euler, ...) is ``x / sqrt(sigma^2 + 1)``, the variance-preserving latent the
formulas expect. The last call of each step is kept (Heun-style solvers call the UNet twice),
and the latents are decoded with the pipeline's VAE when the job ends; decoding costs about
one VAE decode per step, so the path is opt-in.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def alpha_bar(scheduler, t) -> float:
    """``alphas_cumprod`` at (possibly fractional) timestep ``t``, interpolated in log-sigma
    (the inverse of diffusers' ``_sigma_to_t``; exact at integer timesteps)."""
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise RuntimeError(f"{type(scheduler).__name__} has no alphas_cumprod; the denoising path needs a "
                           "DDPM-family scheduler")
    ac = ac.detach().double().cpu()
    t = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
    t = min(max(t, 0.0), len(ac) - 1.0)
    lo = int(np.floor(t))
    hi = min(lo + 1, len(ac) - 1)
    if hi == lo or t == lo:
        return float(ac[lo])
    log_sigma = lambda a: 0.5 * np.log((1 - a) / a)  # noqa: E731
    s = (1 - (t - lo)) * log_sigma(float(ac[lo])) + (t - lo) * log_sigma(float(ac[hi]))
    return float(1 / (1 + np.exp(2 * s)))


def predicted_x0(sample: torch.Tensor, output: torch.Tensor, a: float, prediction_type: str) -> torch.Tensor:
    sa, s1 = a ** 0.5, (1 - a) ** 0.5
    if prediction_type == "epsilon":
        return (sample - s1 * output) / sa
    if prediction_type == "v_prediction":
        return sa * sample - s1 * output
    if prediction_type == "sample":
        return output
    raise RuntimeError(f"unknown prediction_type {prediction_type!r}")


class DenoisingPath:
    """Records x0 per step while a pipeline runs; ``hooks(view)`` and ``on_step`` as
    :class:`vgen.attention.AttentionCapture`. After the job, ``frames[i]`` is image ``i``'s
    list of decoded x0 images, one per step."""

    def __init__(self, num_images: int = 1, instruct: bool = False, decode: bool = True):
        self.num_images = max(1, int(num_images))
        self.instruct = instruct
        self.decode = decode
        self.latents: list[torch.Tensor] = []  # per step: (images, C, h, w) float32, CPU
        self.frames: list[list[Image.Image]] | None = None
        self._pending: torch.Tensor | None = None
        self._view = None
        self._hook = None

    def __call__(self, view) -> "DenoisingPath":
        if getattr(view, "unet", None) is None:
            raise RuntimeError("the denoising path needs a UNet pipeline")
        self._view = view
        return self

    def __enter__(self) -> "DenoisingPath":
        self._hook = self._view.unet.register_forward_hook(self._after_unet, with_kwargs=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if exc_type is None and self.decode and self.latents:
            self.frames = self.decode_frames()
        return False

    def _guided(self, out: torch.Tensor) -> torch.Tensor:
        view = self._view
        chunks = out.shape[0] // self.num_images if out.shape[0] % self.num_images == 0 else 1
        if chunks == 1:
            return out
        g = float(getattr(view, "guidance_scale", 1.0))
        if self.instruct and chunks == 3:
            text, image, uncond = out.chunk(3)
            ig = float(getattr(view, "image_guidance_scale", 1.0))
            return uncond + g * (text - image) + ig * (image - uncond)
        uncond, text = out.chunk(2)
        guided = uncond + g * (text - uncond)
        rescale = float(getattr(view, "guidance_rescale", 0.0) or 0.0)
        if rescale > 0:
            std_text = text.std(dim=list(range(1, text.ndim)), keepdim=True)
            std_cfg = guided.std(dim=list(range(1, guided.ndim)), keepdim=True)
            rescaled = guided * (std_text / std_cfg)
            guided = rescale * rescaled + (1 - rescale) * guided
        return guided

    def _after_unet(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        out = output[0] if isinstance(output, tuple) else output.sample
        guided = self._guided(out.float())
        x_t = sample[: guided.shape[0], : guided.shape[1]].float()  # latents (not mask/image channels)
        scheduler = self._view.scheduler
        a = alpha_bar(scheduler, t)
        self._pending = predicted_x0(x_t, guided, a, scheduler.config.prediction_type).cpu()
        return None

    def on_step(self, pipe, i: int, t, callback_kwargs: dict) -> None:
        if self._pending is not None:
            self.latents.append(self._pending)
            self._pending = None

    @torch.inference_mode()
    def decode_frames(self, batch: int = 8) -> list[list[Image.Image]]:
        vae = self._view.vae
        scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
        device = next(vae.parameters()).device
        flat = torch.cat(self.latents)  # (steps * images, C, h, w)
        images = []
        for i in range(0, flat.shape[0], batch):
            z = flat[i:i + batch].to(device=device, dtype=vae.dtype) / scale + shift
            x = vae.decode(z, return_dict=False)[0].float().cpu()
            x = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            images += [Image.fromarray(a) for a in x]
        n = self.num_images
        return [[images[s * n + i] for s in range(len(self.latents))] for i in range(n)]
