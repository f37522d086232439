"""Draw a layout: text to image on a GLIGEN model (Li et al. 2023, "GLIGEN: Open-Set Grounded
Text-to-Image Generation") with each object of a ``vgen.layout.Layout`` in its box.

vgen runs the grounded model as a plain ``StableDiffusionPipeline`` on the GLIGEN pipeline's
components and gives its UNet the grounding through the public
``cross_attention_kwargs={"gligen": {"boxes", "positive_embeddings", "masks"}}`` interface,
built exactly as ``StableDiffusionGLIGENPipeline`` builds it (phrases encoded together, the
text encoder's pooled output; the unconditional half of classifier-free guidance masked out).
Its scheduled sampling (``gligen_scheduled_sampling_beta``: the fusers run for the first
``beta`` of the steps) is a step observer that switches the fusers' public ``enabled`` flag, and
restores it when the job ends. The pixels equal the GLIGEN pipeline's for the same inputs
(``tests/test_grounded_generate.py``). Running inside vgen's own call gives the layout
everything a text-to-image job has (progress, Stop, previews, the time limit, attention maps,
metadata) and lets layout guidance (``vgen.layout_guidance``) move the early latents.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import InvalidRequestError
from .layout import Layout

MAX_OBJS = 30  # StableDiffusionGLIGENPipeline's max_objs


def takes_layout(pipe) -> bool:
    """Whether the pipeline's UNet has GLIGEN's gated layers and position net."""
    unet = getattr(pipe, "unet", None)
    return (unet is not None and getattr(unet, "position_net", None) is not None
            and str(getattr(unet.config, "attention_type", "")).startswith("gated"))


def check_layout_model(layout: Layout | None, ref: str, pipe) -> None:
    """A layout for a model without GLIGEN layers is an error that says which models take one."""
    if layout is not None and not takes_layout(pipe):
        raise InvalidRequestError(
            f"{ref} takes no layout: layouts are drawn by GLIGEN models (vgen-shapes-grounded "
            "offline, or a Hub GLIGEN checkpoint such as masterful/gligen-1-4-generation-text-box); "
            "pick one of those or leave the layout out")


@torch.no_grad()
def grounding_inputs(view, layout: Layout, batch: int, cfg: bool) -> dict:
    """The UNet's ``gligen`` inputs for ``batch`` images of one layout: boxes (B', 30, 4),
    phrase embeddings (B', 30, D), masks (B', 30); B' = 2 * batch with classifier-free
    guidance, whose unconditional half has its masks at zero."""
    device, dtype = view.unet.device, view.text_encoder.dtype
    n = min(len(layout), MAX_OBJS)
    boxes = torch.zeros(MAX_OBJS, 4, device=device, dtype=dtype)
    emb = torch.zeros(MAX_OBJS, view.unet.config.cross_attention_dim, device=device, dtype=dtype)
    masks = torch.zeros(MAX_OBJS, device=device, dtype=dtype)
    if n:
        inputs = view.tokenizer(layout.phrases[:n], padding=True, return_tensors="pt").to(device)
        emb[:n] = view.text_encoder(**inputs).pooler_output  # (n, D)
        boxes[:n] = torch.tensor(layout.boxes[:n], device=device, dtype=dtype)
        masks[:n] = 1
    boxes = boxes.unsqueeze(0).expand(batch, -1, -1).clone()
    emb = emb.unsqueeze(0).expand(batch, -1, -1).clone()
    masks = masks.unsqueeze(0).expand(batch, -1).clone()
    if cfg:
        boxes, emb, masks = torch.cat([boxes] * 2), torch.cat([emb] * 2), torch.cat([masks] * 2)
        masks[:batch] = 0
    return {"boxes": boxes, "positive_embeddings": emb, "masks": masks}


def _fusers(unet) -> list:
    from diffusers.models.attention import GatedSelfAttentionDense

    return [m for m in unet.modules() if isinstance(m, GatedSelfAttentionDense)]


class ScheduledSampling:
    """GLIGEN's scheduled sampling as a step observer: the fusers run for the first
    ``int(beta * steps)`` steps (the pipeline's rule), then only the base model.
    ``with ScheduledSampling(...)`` enables them for the job and restores them after."""

    def __init__(self, unet, beta: float, steps: int):
        self.fusers = _fusers(unet)
        self.grounded_steps = int(beta * steps)

    def __enter__(self) -> "ScheduledSampling":
        self.saved = [m.enabled for m in self.fusers]
        self._set(self.grounded_steps > 0)
        return self

    def __exit__(self, *exc) -> bool:
        for m, e in zip(self.fusers, self.saved):
            m.enabled = e
        return False

    def _set(self, enabled: bool) -> None:
        for m in self.fusers:
            m.enabled = enabled

    def on_step(self, pipe, i: int, t, kwargs: dict) -> None:
        if i + 1 == self.grounded_steps:  # the next step is the first without grounding
            self._set(False)


@dataclass
class GroundedCall:
    """What a layout adds to a text-to-image call: the UNet's grounding, the observers (scheduled
    sampling first, then layout guidance) and the hooks that restore the model."""

    call_kwargs: dict
    observers: list
    hooks: object  # hooks(view) -> context manager


def prepare_layout_call(model, view, req, beta: float) -> GroundedCall:
    """Steps of a layout job (``req.layout``, ``req.layout_guidance`` filled in), before the
    pipeline runs; ``beta``: the model's ``gligen_scheduled_sampling_beta``. Call holding
    ``model.lock``.

    1. scheduled sampling over the request's steps;
    2. the grounding inputs for every image (both halves under classifier-free guidance), left
       out when no step is grounded (beta 0: the position net would run every step for nothing);
    3. the prompt's embeddings, from the model's embedding cache (encoded once for the
       pipeline call and layout guidance alike);
    4. layout guidance on them and the conditional half of the grounding.
    """
    from . import speed
    from .attention import prompt_tokens
    from .layout_guidance import GUIDED_ITERATIONS, GUIDED_STEPS, LayoutGuidance

    layout = req.layout
    sampling = ScheduledSampling(view.unet, beta, req.steps)  # 1.
    cfg = speed.guidance_batch(view, req.guidance)
    gligen = (grounding_inputs(view, layout, req.num_images, cfg)  # 2.
              if sampling.grounded_steps > 0 else None)
    with torch.inference_mode():  # 3.
        text = speed.encode_cached(model, view, req.prompt, req.negative_prompt, req.guidance)
    cond = text["prompt_embeds"].repeat(req.num_images, 1, 1)  # (B, T, D)
    half = {k: v[-req.num_images:] for k, v in gligen.items()} if gligen else None  # 4.
    guidance = LayoutGuidance(view.unet, prompt_tokens(view.tokenizer, req.prompt), layout, cond,
                              strength=req.layout_guidance or 0.0, steps=GUIDED_STEPS,
                              iterations=GUIDED_ITERATIONS, gligen=half)

    @contextlib.contextmanager
    def hooks(_view):
        with sampling:
            yield

    # The embeddings go to the call too: a job with hooks does not look in the cache itself.
    call = {**text, **({"cross_attention_kwargs": {"gligen": gligen}} if gligen else {})}
    return GroundedCall(call, [sampling, guidance], hooks)


def layout_call(view, model, req, control, hooks):
    """What a layout job adds to its text-to-image call: ``(call kwargs, control, hooks)``, for
    :func:`vgen.generate.generate` and Compare's cells alike. A model without GLIGEN layers
    raises InvalidRequestError ("... takes no layout ...")."""
    from .attention import combine_hooks, with_step_observers
    from .catalog import model_defaults

    check_layout_model(req.layout, req.model, view)
    with model.hold():
        grounded = prepare_layout_call(model, view, req, model_defaults(model).gligen_beta)
    # After the job's own observers (Features capture, denoising path): they close step i
    # before layout guidance runs the UNet again.
    control = with_step_observers(control, *grounded.observers, last=True)
    return grounded.call_kwargs, control, combine_hooks(grounded.hooks, hooks)
