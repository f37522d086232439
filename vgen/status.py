"""What this engine runs: versions, device, threads, the default models and the models loaded now.

The app serves it as ``/status`` (a cheap request that does no engine work: a health check for
API users, and the bench's measure of the app's own round trip). The torch side is measured
where the jobs run (``engine_status``, sent by each engine worker when it starts); the web
server itself never imports torch, so it only adds ``base_status``.
"""

from __future__ import annotations

import os

from . import __version__, config
from .catalog import default_model


def base_status() -> dict:
    """What any process can tell without torch: vgen's version, CPUs and default models."""
    return {
        "vgen": __version__,
        "cpu_count": os.cpu_count(),
        "default_models": {task: default_model(task) for task in ("txt2img", "instruct")},
    }


def engine_status(loaded_models: list[str] | None = None) -> dict:
    """``base_status`` plus torch's version, the device, the precision (``precision``: fp32,
    bf16 or fp16, ``precision_reason``: why, and ``dtype``: the denoiser's torch dtype; see
    ``vgen.precision``) and threads of this process (``small_model_threads``: those of a small
    model's jobs, ``vgen.cpu_share.job_threads``), ``loaded_models`` (default: this process's
    model cache) and ``backend`` (``VGEN_BACKEND``: torch or openvino)."""
    import torch

    from .cpu_share import job_threads
    from .pipelines import model_cache, pick_device, pick_precision
    from .precision import describe

    device = pick_device()
    return {
        **base_status(),
        "torch": str(torch.__version__),  # a str: torch.__version__ is a TorchVersion
        "device": str(device),
        **describe(pick_precision(device)),
        "torch_threads": torch.get_num_threads(),
        # what a job of a model under 50 M parameters runs on (None: torch_threads)
        "small_model_threads": job_threads(device.type, 0),
        "loaded_models": model_cache().loaded() if loaded_models is None else loaded_models,
        # what runs a job's denoiser on a CPU (VGEN_BACKEND; vgen.openvino_backend)
        "backend": config.backend_setting(),
    }
