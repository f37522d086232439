"""Text to image: ``generate(GenerateRequest) -> GenerationResult``; with ``req.layout``, on a
GLIGEN model, each object in its box (``vgen.grounded``)."""

from __future__ import annotations

from dataclasses import replace

from .catalog import layout_model
from .jobs import JobControl
from .pipelines import ModelCache
from .requests import GenerateRequest, GenerationResult, Limits
from .runner import prepare, run


def generate(req: GenerateRequest, control: JobControl | None = None,
             cache: ModelCache | None = None, limits: Limits | None = None,
             hooks=None) -> GenerationResult:
    """Generate ``req.num_images`` images; image ``i`` uses seed ``req.seed + i``.
    ``hooks``: see :func:`vgen.runner.run`. A layout for the embedded plain model is drawn by
    its grounded twin (:func:`vgen.catalog.layout_model`)."""
    if req.layout is not None:
        req = replace(req, model=layout_model(req.model))
    req, model, view = prepare(req, control, cache, limits)
    call = {"width": req.width, "height": req.height}
    if req.layout is None:
        return run(req, model, view, call, control, hooks)
    from .grounded import layout_call

    extra, control, hooks = layout_call(view, model, req, control, hooks)
    return run(req, model, view, {**call, **extra}, control, hooks)
