"""Running a comparison (``vgen.compare.CompareRequest``): every cell as a single request would
run, minus repeated work (see :mod:`vgen.compare` for the steps), scored by the shapes analyzer
where it applies. Loads the engine (torch) when called.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from .catalog import is_model
from .compare import Cell, CellScore, CompareRequest, CompareResult, expand_grid, expand_request
from .compare_plan import plan_layouts
from .errors import CancelledError, CaptionParseError, InvalidRequestError
from .jobs import JobControl, TimeLimitError
from .requests import GenerateRequest, Limits

if TYPE_CHECKING:
    from .pipelines import ModelCache

logger = logging.getLogger(__name__)


# ---- scoring ------------------------------------------------------------------------------

def is_shapes_model(ref: str) -> bool:
    """Whether ``ref`` names an embedded shapes model (``checkpoints/vgen-shapes``, its distilled
    student, or the grounded ``vgen-shapes-grounded`` that draws the same world from a layout),
    whose pictures the shapes analyzer can check exactly (``eval plan`` scores the grounded one
    so too)."""
    from .catalog import EMBEDDED_GROUNDED_MODEL, is_plain_shapes_model

    return is_plain_shapes_model(ref) or is_model(ref, EMBEDDED_GROUNDED_MODEL)


def score_cell(image, request: GenerateRequest) -> CellScore | None:
    """The analyzer's strict pass/fail when the cell's model is the shapes model and its prompt
    is a sentence of the shapes grammar; None otherwise (nothing to check against)."""
    from .shapes.analyzer import score
    from .shapes.captions import parse

    if not is_shapes_model(request.model or ""):
        return None
    try:
        description = parse(request.prompt)
    except CaptionParseError:
        return None
    s = score(image, description)
    return CellScore(s.passed, s.reason)


# ---- running ------------------------------------------------------------------------------

def _reuses_embeddings(view) -> bool:
    """Stable Diffusion (1.x/2.x) pipelines: their ``__call__`` encodes with exactly
    ``encode_prompt(prompt, device, n, cfg, negative_prompt)``, so calling it first and passing
    the tensors gives identical pixels (tests/test_compare.py checks it)."""
    from diffusers import StableDiffusionPipeline

    return isinstance(view, StableDiffusionPipeline) and hasattr(view, "encode_prompt")


def _encode(view, model, req: GenerateRequest) -> dict:
    """``prompt_embeds`` and ``negative_prompt_embeds`` of ``req``'s prompts, encoded as the
    pipeline's own call does (negative always encoded, so cells of any guidance can share it)."""
    import torch

    with model.hold(), torch.inference_mode():
        pe, ne = view.encode_prompt(
            prompt=req.prompt, device=view._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=req.negative_prompt or None)
    return {"prompt_embeds": pe, "negative_prompt_embeds": ne}


def _run_order(grid: tuple[tuple[GenerateRequest, ...], ...]) -> list[tuple[int, int]]:
    """Run order: cells grouped by model (in order of first appearance), then by prompt and
    negative prompt, so a model is loaded and a prompt encoded once."""
    from .catalog import default_model

    order = [(r, c) for r in range(len(grid)) for c in range(len(grid[r]))]
    first: dict[Any, int] = {}
    for i, (r, c) in enumerate(order):
        cell = grid[r][c]
        first.setdefault(("m", (cell.model or "").strip() or default_model()), i)
        first.setdefault(("p", (cell.model or "").strip() or default_model(),
                          cell.prompt, cell.negative_prompt), i)

    def key(rc):
        cell = grid[rc[0]][rc[1]]
        ref = (cell.model or "").strip() or default_model()
        return (first[("m", ref)], first[("p", ref, cell.prompt, cell.negative_prompt)])

    return sorted(order, key=key)  # stable: grid order within a group


def compare(req: CompareRequest, control: JobControl | None = None,
            cache: ModelCache | None = None, limits: Limits | None = None,
            on_cell: Callable[[Cell, int, int], None] | None = None) -> CompareResult:
    """Run every cell of ``req``; returns the grid. ``control``: progress is reported over the
    whole grid (step ``k`` of the sum of all cells' steps), Stop cancels the grid within one
    denoising step, and the time limit bounds the grid's own work (loading not counted).
    ``on_cell(cell, done, total)`` is called after each cell. A model that cannot be loaded
    (not on the Hub, offline, not a model folder), a layout the planner cannot write or a
    layout on a model without GLIGEN layers fails only its own cells: they come back as error
    cells (``Cell.error``, a grey tile saying why) and the other cells still run."""
    from .catalog import default_model, defaults_for, model_defaults
    from .pipelines import model_cache

    t_start = time.perf_counter()
    limits = limits or Limits.from_env()
    control = control or JobControl()
    cache = cache or model_cache()
    # 1. Expand and validate every cell before any work; one seed for all.
    flagged = expand_grid(req, limits)
    seed = flagged[0][0][0].seed
    req = replace(req, base=replace(req.base, seed=seed))
    clock = _Clock(control)
    # 2. Cells of an expand=on value: the language model writes their prompt first; then cells
    #    of a plan=on value get their layout, so the rest of the run sees ordinary requests.
    grid, extra_s, load_s, unplanned = _prompts_and_layouts(req, flagged, control, clock, limits)
    order = _run_order(grid)

    # A model's default steps: the catalog's until it is loaded, then its own (an uncatalogued
    # model's card can recommend them: catalog.card_defaults), and the grid's total follows.
    default_steps: dict[str, int] = {}

    def planned_steps(r: int, c: int) -> int:
        cell = grid[r][c]
        ref = (cell.model or "").strip() or default_model()
        if ref in shared.failed or (r, c) in unplanned:
            return 0
        if cell.steps is not None:
            return cell.steps
        return default_steps.get(ref) or defaults_for(ref).steps

    shared = _Shared()
    total_steps = sum(planned_steps(r, c) for r, c in order)
    done_steps = 0
    out: dict[tuple[int, int], Cell] = {}
    for n, (r, c) in enumerate(order):
        cell = grid[r][c]
        ref = (cell.model or "").strip() or default_model()
        where = f"after {n} of {len(order)} cells"
        # 3. Cancel between cells too (a cancelled grid never starts its next cell).
        if control.cancel.is_set():
            raise CancelledError(f"the comparison was cancelled {where}")
        # 4. Load each model once (timed apart: loading is not a cell's work). A model that
        #    cannot be loaded makes its cells error cells; the other models' cells still run.
        #    A cell with no layout (the planner wrote none) loads nothing.
        if (r, c) not in unplanned and ref not in shared.loaded and ref not in shared.failed:
            t0 = time.perf_counter()
            model = _load(ref, cache, control, shared)
            if model is not None:
                default_steps[ref] = model_defaults(model).steps
            load_s += time.perf_counter() - t0
            total_steps = done_steps + sum(planned_steps(i, j) for i, j in order[n:])
        reason = unplanned.get((r, c)) or shared.failed.get(ref)
        if reason is not None:
            out[(r, c)] = _error_cell(r, c, cell, reason)
            if control.progress is not None:  # the total shrank: the bar stays true
                control.progress(done_steps, total_steps)
            if on_cell is not None:
                on_cell(out[(r, c)], n + 1, len(order))
            continue
        # 5-7. The cell, with grid-wide progress from where the grid is.
        out[(r, c)] = _run_cell(req, r, c, cell, control, cache, limits, clock, shared, where,
                                offset=done_steps, total_steps=total_steps,
                                extra_s=extra_s.pop((r, c), 0.0))
        done_steps += planned_steps(r, c)
        if on_cell is not None:
            on_cell(out[(r, c)], n + 1, len(order))
    cells = tuple(tuple(out[(r, c)] for c in range(len(grid[r]))) for r in range(len(grid)))
    return CompareResult(req, _size_error_tiles(cells), time.perf_counter() - t_start, load_s,
                         shared.encodings)


@dataclass
class _Shared:
    """What cells of one grid share: the models loaded so far, the text encodings by model,
    device and prompts, and how many encodings were computed."""

    loaded: set = field(default_factory=set)
    failed: dict = field(default_factory=dict)  # model reference -> why it could not be loaded
    embeddings: dict = field(default_factory=dict)
    encodings: int = 0


def _load(ref: str, cache: ModelCache, control: JobControl, shared: _Shared):
    """The loaded model, or None with the reason in ``shared.failed`` (Stop and the time limit
    still end the grid)."""
    try:
        model = cache.get(ref, progress=control.download)
    except (CancelledError, TimeLimitError):
        raise
    except Exception as e:  # noqa: BLE001 - any load failure is that model's cells' error
        if control.cancel.is_set():  # a download stopped by Stop, whatever it raised
            raise CancelledError("the comparison was cancelled while loading a model") from None
        text = " ".join(str(e).split()) or type(e).__name__
        text = text if len(text) <= 300 else text[:297] + "..."
        logger.info("compare: %s could not be loaded: %s: %s", ref, type(e).__name__, text)
        shared.failed[ref] = f"{ref} could not be loaded: {text}"
        return None
    shared.loaded.add(ref)
    return model


def _error_cell(r: int, c: int, cell: GenerateRequest, reason: str) -> Cell:
    """A cell that could not run: a grey tile (sized at the end, :func:`_size_error_tiles`)
    whose ``parameters`` text says why."""
    from .compare_grid import error_tile

    size = (cell.width, cell.height) if cell.width and cell.height else None
    image = error_tile(size or (64, 64), reason)
    image.info["parameters"] = f"{cell.prompt}\nNot generated: {reason}"
    return Cell(r, c, cell, image, 0.0, None, error=reason)


def _size_error_tiles(cells):
    """Error tiles of no given size take the first image's size, so the grid stays even."""
    from .compare_grid import error_tile

    good = [c for row in cells for c in row if c.error is None]
    if not good:
        return cells
    size = good[0].image.size

    def fixed(c: Cell) -> Cell:
        if c.error is None or (c.request.width and c.request.height):
            return c
        image = error_tile(size, c.error)
        image.info["parameters"] = c.image.info["parameters"]
        return replace(c, image=image)

    return tuple(tuple(fixed(c) for c in row) for row in cells)


def _run_cell(req: CompareRequest, r: int, c: int, cell: GenerateRequest, control: JobControl,
              cache: ModelCache, limits: Limits, clock: "_Clock", shared: _Shared, where: str, *,
              offset: int, total_steps: int, extra_s: float) -> Cell:
    """Steps 5-7 of :func:`compare` for one cell: its own control, the run (the prompt encoded
    once per group; a layout drawn as ``generate`` draws it), its score."""
    from .attention import AttentionCapture, with_step_observers
    from .runner import prepare, run

    # 5. A per-cell control: grid-wide progress, shared cancel, the grid's remaining time.
    def progress(step: int, total: int) -> None:
        if control.progress is not None:
            control.progress(min(offset + step, total_steps), total_steps)

    cell_control = replace(control, progress=progress, time_limit_s=clock.remaining(where))
    capture = AttentionCapture(cell.prompt, 1) if req.attention else None
    if capture is not None:
        cell_control = with_step_observers(cell_control, capture)
    t0 = time.perf_counter()
    try:
        # 6. The cell as a single request would run; the prompt encoded once per group.
        cell_req, model, view = prepare(cell, cell_control, cache, limits)
        kwargs = {"width": cell_req.width, "height": cell_req.height}
        hooks = capture
        if cell_req.layout is not None:
            from .grounded import layout_call

            try:
                grounding, cell_control, hooks = layout_call(view, model, cell_req, cell_control,
                                                             capture)
            except InvalidRequestError as e:  # a model without GLIGEN layers: its cells only
                return _error_cell(r, c, cell, str(e))
            kwargs.update(grounding)
        reused = False
        if _reuses_embeddings(view):
            key = (model.ref, str(model.device), cell_req.prompt, cell_req.negative_prompt)
            reused = key in shared.embeddings
            if not reused:
                shared.embeddings[key] = _encode(view, model, cell_req)
                shared.encodings += 1
            kwargs.update(shared.embeddings[key])
        else:
            shared.encodings += 1
        result = run(cell_req, model, view, kwargs, cell_control, hooks)
    except TimeLimitError:
        raise clock.timeout(where) from None
    except CancelledError:
        raise CancelledError(f"the comparison was cancelled {where}") from None
    seconds = time.perf_counter() - t0 + extra_s
    clock.work_s += time.perf_counter() - t0
    image = result.images[0]
    maps = capture.result(image.size) if capture is not None else None
    # 7. Score against the prompt when the shapes analyzer can.
    return Cell(r, c, result.request, image, seconds, result, score_cell(image, result.request), maps, reused)


@dataclass
class _Clock:
    """The grid's time limit: the work of all cells (and expansions and plans) so far, against
    ``control.time_limit_s``; each step gets what is left (the engine restarts a control's
    clock when it holds the model, so loading is never counted)."""

    control: JobControl
    work_s: float = 0.0

    def remaining(self, where: str) -> float | None:
        if self.control.time_limit_s is None:
            return None
        left = self.control.time_limit_s - self.work_s
        if left <= 0:
            raise self.timeout(where)
        return left

    def timeout(self, where: str) -> TimeLimitError:
        return TimeLimitError(
            f"the comparison ran past its time limit of {self.control.time_limit_s:.0f} s "
            f"{where}; use fewer values, fewer steps or a smaller size",
            limit_s=self.control.time_limit_s)


def _expand_prompts(flagged, lm: str | None, control: JobControl, clock: _Clock, limits: Limits):
    """The grid with every ``expand=on`` cell's prompt written by the language model (and its
    ``expansion`` record, as ``generate --expand`` makes); the seconds each expansion took, on
    the first cell that used it; and the seconds spent loading the language model."""
    grid = [[cell for cell, _, _ in row] for row in flagged]
    wanted = [(r, c) for r, row in enumerate(flagged) for c, (_, on, _) in enumerate(row) if on]
    if not wanted:
        return tuple(tuple(row) for row in grid), {}, 0.0
    from .expand import expand as expand_prompt

    done: dict[tuple, Any] = {}
    extra_s: dict[tuple[int, int], float] = {}
    load_s = 0.0
    for i, (r, c) in enumerate(wanted):
        cell = grid[r][c]
        if control.cancel.is_set():
            raise CancelledError("the comparison was cancelled while expanding prompts")
        key = (cell.prompt, cell.seed)
        if key not in done:
            step_control = replace(control, progress=None,
                                   time_limit_s=clock.remaining("while expanding prompts"))
            t0 = time.perf_counter()
            try:
                done[key] = expand_prompt(expand_request(cell, lm), step_control, limits=limits)
            except TimeLimitError:
                raise clock.timeout("while expanding prompts") from None
            wall = time.perf_counter() - t0
            clock.work_s += done[key].seconds
            load_s += max(0.0, wall - done[key].seconds)  # loading the language model
            extra_s[(r, c)] = done[key].seconds
        result = done[key]
        grid[r][c] = replace(cell, prompt=result.variants[0], expansion=result.expansion(0))
    return tuple(tuple(row) for row in grid), extra_s, load_s


def _prompts_and_layouts(req: CompareRequest, flagged, control: JobControl, clock: _Clock,
                         limits: Limits):
    """Step 2 of :func:`compare`: expand=on prompts written, then plan=on layouts planned (an
    expanded prompt is what is planned, as ``generate --expand --plan`` does). Returns the grid,
    each cell's seconds of that work (on the first cell that used it), the seconds loading the
    language model, and the cells the planner gave no layout, with why."""
    grid, extra_s, load_s = _expand_prompts(flagged, req.lm, control, clock, limits)
    wanted = [(r, c) for r, row in enumerate(flagged) for c, (_, _, on) in enumerate(row) if on]
    grid, plan_s, unplanned, planner_load_s = plan_layouts(grid, wanted, req.planner, control, clock)
    for rc, seconds in plan_s.items():
        extra_s[rc] = extra_s.get(rc, 0.0) + seconds
    return grid, extra_s, load_s + planner_load_s, unplanned
