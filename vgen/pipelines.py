"""Loading pipelines: one bounded, locked LRU cache of loaded models, and task views over them.

A model is loaded once (even when two requests ask for it at the same moment) and every task
of that model (text-to-image, img2img, inpainting) is a ``from_pipe`` view sharing its
components, so nothing is loaded twice. The device is chosen automatically (CUDA when present,
else the CPU; ``VGEN_DEVICE`` overrides) and the precision by ``vgen.precision`` (fp16 on CUDA;
on a CPU bf16 where it is measured faster, else fp32; ``VGEN_DTYPE`` overrides).

Views are made with :func:`share`, not ``from_pipe``: ``DiffusionPipeline.from_pipe`` ends with
``.to(dtype=float32)`` unless told a dtype, which converted the shared modules in place (an fp16
model on CUDA, or a bf16 denoiser, became fp32 at the first job).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import config, hub, precision
from .catalog import default_model
from .cpu_share import job_threads, threads_limited
from .errors import UnsupportedModelError

TASKS = ("txt2img", "img2img", "inpaint", "instruct")


def pick_device() -> torch.device:
    name = config.device_setting()
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_precision(device: torch.device) -> precision.Precision:
    """The precision models on ``device`` run in (``vgen.precision.choose``)."""
    return precision.choose(device)


def pick_dtype(device: torch.device) -> torch.dtype:
    """The denoiser's compute dtype on ``device`` (bf16, fp16 or fp32)."""
    return pick_precision(device).compute_dtype


@dataclass
class LoadedModel:
    """A loaded pipeline plus where it came from; ``views`` caches its task pipelines.

    ``lock`` serialises the jobs that run on this model: on 2 CPU cores (or one GPU) two jobs at
    once are no faster than one after the other, and a job that swaps attention processors to
    look inside the model (the Features tab) must never see another user's job pass through."""

    ref: str
    resolved: hub.ResolvedModel
    pipe: object
    device: torch.device
    dtype: torch.dtype  # what it loaded in: the latents' dtype (fp32 for bf16 on a CPU)
    load_s: float
    views: dict
    precision: str = "fp32"  # fp32 / bf16 / fp16: what the denoiser computes in (vgen.precision)
    threads: int | None = None  # compute threads its jobs are held to (vgen.cpu_share.job_threads)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Per-model caches of vgen.decoders (tiny decoders, or why one is unavailable) and
    # vgen.speed (text embeddings of recent prompts); ``cache_lock`` guards both.
    decoders: dict = field(default_factory=dict)
    embeddings: OrderedDict = field(default_factory=OrderedDict)
    cache_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def revision(self) -> str:
        return self.resolved.commit

    @contextlib.contextmanager
    def hold(self, control=None):
        """This model for one job's computation: its lock, and its jobs' thread count (so an
        encoding done apart, as Compare's, matches the one a job does itself). Yields the job's
        ``control`` (a ``vgen.jobs.JobControl``) as the job must use it: one that does not
        adapt the thread count when the model fixes it."""
        with self.lock, threads_limited(self.threads):
            yield control.keeping_threads(self.threads) if control is not None else None


def _is_instruct(pipe) -> bool:
    return "InstructPix2Pix" in type(pipe).__name__


def load_pipeline(resolved: hub.ResolvedModel, device: torch.device, dtype: torch.dtype):
    """Load a diffusers pipeline from a resolved folder: safetensors only, no remote code."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    # Engine callers show their own progress; the libraries' bars and notices are noise here.
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    kwargs = dict(dtype=dtype, use_safetensors=True)
    if resolved.variant:
        kwargs["variant"] = resolved.variant
    try:
        pipe = DiffusionPipeline.from_pretrained(str(resolved.path), **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise UnsupportedModelError(
            f"{resolved.ref} could not be loaded as a diffusers pipeline: {e}"
        ) from e
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is None:
        raise UnsupportedModelError(f"{resolved.ref} is not a diffusion pipeline vgen can run")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def share(cls, pipe, **components):
    """A ``cls`` pipeline on ``pipe``'s components, ``components`` replacing some (e.g. a job's
    scheduler or VAE): diffusers' documented ``cls(**pipe.components)``, plus the pipeline
    options ``cls`` takes from ``pipe``'s config (``requires_safety_checker``...). What
    ``cls.from_pipe(pipe, **components)`` builds, without its final ``.to(dtype=float32)``,
    which converts every shared module in place."""
    expected, optional = cls._get_signature_keys(cls)
    parts = {k: v for k, v in pipe.components.items() if k in expected}
    parts.update({k: v for k, v in components.items() if k in expected})
    for k in set(getattr(cls, "_optional_components", []) or []) & expected - parts.keys():
        parts[k] = None
    options = {k: pipe.config[k] for k in optional if k in pipe.config and k not in parts}
    view = cls(**parts, **options)
    name = pipe.config.get("_name_or_path")
    if name is not None:
        view.register_to_config(_name_or_path=name)
    return view


def task_view(model: LoadedModel, task: str):
    """The pipeline for ``task`` sharing ``model``'s components (``from_pipe``)."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
    )

    if task not in TASKS:
        raise UnsupportedModelError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task in model.views:
        return model.views[task]
    pipe = model.pipe
    if _is_instruct(pipe) != (task == "instruct"):
        if task == "instruct":
            raise UnsupportedModelError(
                f"{model.ref} is not an instruction-editing model; for the instruct mode pick an "
                "InstructPix2Pix model (vgen-shapes-edit offline, or timbrooks/instruct-pix2pix)"
            )
        raise UnsupportedModelError(
            f"{model.ref} is an instruction-editing model and only supports the instruct mode; "
            f"pick a text-to-image model for {task}"
        )
    if task == "instruct":
        view = pipe
    elif task == "txt2img" and "GLIGEN" in type(pipe).__name__:
        # A GLIGEN model draws text to image through the plain pipeline; its grounding goes to
        # the UNet's cross_attention_kwargs (vgen.grounded). The auto pipelines map no GLIGEN.
        from diffusers import StableDiffusionPipeline

        view = share(StableDiffusionPipeline, pipe)
    else:
        auto = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image,
                "inpaint": AutoPipelineForInpainting}[task]
        try:
            view = auto.from_pipe(pipe)
        except (ValueError, KeyError) as e:
            raise UnsupportedModelError(f"{model.ref} does not support {task}: {e}") from e
    view.set_progress_bar_config(disable=True)
    model.views[task] = view
    return view


class ModelCache:
    """Bounded LRU of loaded models, safe across threads; one load per model at a time.

    ``loader(resolved, device, dtype)`` builds what a model holds in ``LoadedModel.pipe``: a
    diffusers pipeline by default; ``vgen.expand`` passes one that loads a causal LM."""

    def __init__(self, max_models: int | None = None, loader: Callable | None = None):
        self.max_models = max_models or config.model_cache_size()
        self._loader = loader
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    def get(self, reference: str | None = None,
            progress: Callable[[hub.DownloadProgress], None] | None = None) -> LoadedModel:
        ref = (reference or "").strip() or default_model()
        device = pick_device()
        prec = pick_precision(device)
        dtype = prec.load_dtype
        parsed = hub.parse_reference(ref)  # validate before touching the network
        key = (str(parsed), str(device), prec.name)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # a second request for the same model waits here, then hits the cache
            with self._lock:
                if key in self._models:
                    return self._models[key]
            t0 = time.perf_counter()
            resolved = hub.resolve(parsed, prefer_fp16=dtype == torch.float16, progress=progress)
            pipe = (self._loader or load_pipeline)(resolved, device, dtype)
            if self._loader is None:
                # auto on a CPU decides by the denoiser's size (both verdicts load in fp32)
                prec = precision.choose(device, precision.scale_of(pipe))
                precision.apply(pipe, prec)
            model = LoadedModel(str(parsed), resolved, pipe, device, dtype,
                                time.perf_counter() - t0, {},
                                precision=prec.name if self._loader is None else precision.name_of(dtype),
                                threads=job_threads(device.type, precision.network_params(pipe)))
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return model

    def loaded(self) -> list[str]:
        with self._lock:
            return [m.ref for m in self._models.values()]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


_CACHE: ModelCache | None = None
_CACHE_LOCK = threading.Lock()


def model_cache() -> ModelCache:
    """The process-wide model cache (the only global state of the engine)."""
    global _CACHE
    with _CACHE_LOCK:
        if _CACHE is None:
            _CACHE = ModelCache()
        return _CACHE
