"""What this engine runs: versions, device, threads, the default models and the models loaded now.

The app serves it as ``/status`` (a cheap request that does no engine work: a health check for
API users, and the bench's measure of the app's own round trip)."""

from __future__ import annotations

import os

import torch

from . import __version__
from .catalog import default_model
from .pipelines import model_cache, pick_device, pick_dtype


def engine_status(loaded_models: list[str] | None = None) -> dict:
    """``loaded_models``: what the engine that runs the jobs holds, when that is not this
    process's model cache (the app's engine worker processes)."""
    device = pick_device()
    return {
        "vgen": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "dtype": str(pick_dtype(device)).replace("torch.", ""),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "default_models": {task: default_model(task) for task in ("txt2img", "instruct")},
        "loaded_models": model_cache().loaded() if loaded_models is None else loaded_models,
    }
