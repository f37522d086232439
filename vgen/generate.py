"""Text to image: ``generate(GenerateRequest) -> GenerationResult``; with ``req.layout``, on a
GLIGEN model, each object in its box (``vgen.grounded``)."""

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
    call = {"width": req.width, "height": req.height}
    if req.layout is None:
        return run(req, model, view, call, control, hooks)
    from .attention import combine_hooks, with_step_observers
    from .catalog import model_defaults
    from .grounded import check_layout_model, prepare_layout_call

    check_layout_model(req.layout, req.model, view)
    with model.lock:
        grounded = prepare_layout_call(view, req, model_defaults(model).gligen_beta)
    # After the job's own observers (Features capture, denoising path): they close step i
    # before layout guidance runs the UNet again.
    control = with_step_observers(control, *grounded.observers, last=True)
    return run(req, model, view, {**call, **grounded.call_kwargs}, control,
               combine_hooks(grounded.hooks, hooks))
