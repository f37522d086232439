"""The steps every task shares: resolve the model, fill defaults, validate, seed, run the
pipeline with progress and cancel, and stamp each image with its parameters."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import replace
from typing import Any

import torch

from . import decoders, openvino_backend, speed
from .catalog import default_model, defaults_for, model_defaults
from .jobs import JobControl
from .metadata import attach, format_parameters
from .pipelines import LoadedModel, ModelCache, model_cache, share, task_view
from .requests import (
    GenerateRequest,
    GenerationResult,
    Limits,
    Timings,
    check_inputs,
    with_model_defaults,
)
from .schedulers import make_scheduler, sampler_name
from .vocab import known_words, unknown_words


def resolve_seed(req: GenerateRequest, limits: Limits) -> GenerateRequest:
    """A seed of None or -1 draws a fresh one (reported in the result)."""
    if req.seed is None or req.seed == -1:
        return replace(req, seed=random.SystemRandom().randrange(0, 2**32 - limits.max_images))
    return req


def generators(seed: int, n: int) -> list[torch.Generator]:
    """Image ``i`` draws its noise from seed ``seed + i`` on the CPU, so it does not depend on
    the batch it was made in nor on the device."""
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]


def prepare(req: GenerateRequest, control: JobControl | None, cache: ModelCache | None,
            limits: Limits | None) -> tuple[GenerateRequest, LoadedModel, Any]:
    """Steps 1-4 of every task: validate, load, fill defaults, make a per-job pipeline."""
    limits = limits or Limits.from_env()
    ref = (req.model or "").strip() or default_model(req.task)
    req = replace(req, model=ref)
    # 1. Validate what can be validated before any download.
    check_inputs(resolve_seed(with_model_defaults(req, defaults_for(ref)), limits), limits)
    # 2. Load (or reuse) the model.
    model = (cache or model_cache()).get(ref, progress=control.download if control else None)
    # 3. Fill the model's real defaults, draw the seed, validate again.
    req = resolve_seed(with_model_defaults(req, model_defaults(model)), limits)
    check_inputs(req, limits)
    # 4. A view with the job's scheduler (schedulers keep per-run state) and, for the fast
    #    decoder, the tiny autoencoder as its VAE (fetched here, like the model, so a download
    #    does not count against the job's time; see vgen.decoders). Jobs on one model run one
    #    at a time under its lock, and every call restarts its scheduler (set_timesteps), so
    #    the view is kept for the next job with the same settings: from_pipe walks every
    #    module (.to), ~10-20 ms a job, a few percent of a small model's image.
    decoders.prepare_model(model)
    swap = decoders.components_for(req, model, progress=control.download if control else None)
    decoders.decode_only(req, model, progress=control.download if control else None)
    # VGEN_BACKEND=openvino: the UNet's, the text encoder's and TAESD's stand-ins.
    swap.update(openvino_backend.stand_ins_for(model, swap.get("vae")))
    key = ("job", req.task, req.scheduler, *sorted((k, id(v)) for k, v in swap.items()))
    view = model.views.get(key)
    if view is None:
        base = task_view(model, req.task)
        view = share(type(base), base, scheduler=make_scheduler(base.scheduler.config, req.scheduler),
                     **swap)
        view.set_progress_bar_config(disable=True)
        model.views[key] = view
    if control is not None and control.preview is not None:
        decoders.warm_previews(model)
    return req, model, view


def run(req: GenerateRequest, model: LoadedModel, view, call_kwargs: dict,
        control: JobControl | None, hooks=None) -> GenerationResult:
    """Run the pipeline and stamp the images; ``call_kwargs`` are the task's own arguments.

    ``hooks(view)``, if given, returns a context manager entered while this job holds the model,
    e.g. one that installs attention processors and restores the originals on exit, error or
    cancel (see ``vgen.attention``).

    ``call_kwargs`` may carry ``prompt_embeds`` (and ``negative_prompt_embeds``) encoded from
    ``req``'s prompts by ``view.encode_prompt``; the texts are then not passed again (diffusers
    takes one or the other). ``vgen.compare`` does this to encode a prompt once for many cells."""
    control = control or JobControl()
    text = {} if "prompt_embeds" in call_kwargs else {
        "prompt": req.prompt, "negative_prompt": req.negative_prompt or None}
    # A plain job on a Stable Diffusion pipeline reuses the text embeddings of a prompt the
    # model saw recently (identical pixels; vgen.speed). Jobs with hooks run as they are.
    reuse = bool(text) and hooks is None and speed.reuses_embeddings(view)
    tiny = decoders.decode_only(req, model)  # fetched by prepare
    decoder = decoders.describe(req, model, view, tiny)
    stand_ins = openvino_backend.stand_ins_of(view)
    with model.hold(control) as control:
        control.restart()  # the time limit counts this job's own work, not loading or waiting
        control.check()  # it may have been cancelled while waiting for the model
        used_before = openvino_backend.usage(stand_ins)  # this job's calls: after the lock
        t0 = time.perf_counter()
        with hooks(view) if hooks else contextlib.nullcontext(), torch.inference_mode(), \
                speed.PhaseTimer(view, model.device, (tiny.module,) if tiny else ()) as phases:
            previewer = (decoders.previewer_for(model, view, quiet=phases.excluded)
                         if control.preview is not None else None)
            if reuse:
                text = speed.encode_cached(model, view, req.prompt, req.negative_prompt, req.guidance)
            out = view(
                **text,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance,
                num_images_per_prompt=req.num_images,
                generator=generators(req.seed, req.num_images),
                callback_on_step_end=control.step_end_callback(req.steps, previewer),
                output_type="latent" if tiny else "pil",
                **call_kwargs,
            )
            pictures = decoders.decode_latents(tiny, view, out.images) if tiny else out.images
    seconds = time.perf_counter() - t0
    sampler = sampler_name(view.scheduler)
    seeds = tuple(req.seed + i for i in range(req.num_images))
    req = replace(req, decoder=decoder.used)  # what made the images, recorded in each PNG
    backend = openvino_backend.describe_use(stand_ins.get("unet"), used_before.get("unet"))
    stamp = {**(decoder.metadata or {}), "Precision": model.precision, **({"Backend": backend} if backend else {}),
             **({"Quantized": "denoiser int8"} if openvino_backend.ran_int8(stand_ins, used_before) else {})}
    images = tuple(attach(im, format_parameters(req, s, sampler, req.model, model.revision, stamp))
                   for im, s in zip(pictures, seeds))
    t = phases.times
    extras = vocabulary_extras(getattr(view, "tokenizer", None), req.prompt)
    extras.update(decoder=decoder.label, decoder_note=decoder.note,
                  negative_note=negative_prompt_note(view, req), backend=backend or "torch",
                  backend_note=openvino_backend.fallback_note(backend),
                  openvino_parts=openvino_backend.parts_on_openvino(stand_ins, used_before))
    return GenerationResult(
        images=images, seeds=seeds, request=req, model=req.model, revision=model.revision,
        sampler=sampler, timings=Timings(load_s=model.load_s, encode_s=t.text_s, denoise_s=t.unet_s,
                                         decode_s=t.decode_s, total_s=seconds),
        extras=extras, precision=model.precision,
    )


def negative_prompt_note(view, req) -> str:
    """Why the request's negative prompt changed nothing, when it did not: it is the
    unconditional branch of classifier-free guidance, and the pipeline runs none
    (``speed.guidance_batch``)."""
    if not req.negative_prompt or speed.guidance_batch(view, req.guidance):
        return ""
    if req.guidance <= 1:
        return f"The negative prompt had no effect: it takes guidance above 1 (this job ran at {req.guidance:g})."
    return (f"The negative prompt had no effect: {req.model} takes the guidance scale as an input "
            "and runs no unconditional branch for it to steer.")


def vocabulary_extras(tokenizer, prompt: str) -> dict:
    """``unknown_words`` of the prompt, and (only when there are some) the ``known_words`` of a
    small vocabulary, so a user learns what the model can read."""
    unknown = unknown_words(tokenizer, prompt)
    return {"unknown_words": unknown, "known_words": known_words(tokenizer) if unknown else []}
