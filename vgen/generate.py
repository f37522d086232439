"""Text to image: ``generate(GenerateRequest) -> GenerationResult``."""

from __future__ import annotations

from .jobs import JobControl
from .pipelines import ModelCache
from .requests import GenerateRequest, GenerationResult, Limits
from .runner import prepare, run


def generate(req: GenerateRequest, control: JobControl | None = None,
             cache: ModelCache | None = None, limits: Limits | None = None,
             hooks=None) -> GenerationResult:
    """Generate ``req.num_images`` images; image ``i`` uses seed ``req.seed + i``.
    ``hooks``: see :func:`vgen.runner.run`."""
    req, model, view = prepare(req, control, cache, limits)
    return run(req, model, view, {"width": req.width, "height": req.height}, control, hooks)
