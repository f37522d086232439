"""The ``plan`` axis of a comparison (issue #22): the plain pipeline beside the planned one.

An ``on`` cell is drawn as ``python -m vgen generate PROMPT --plan --seed S`` draws: the planner
(``vgen.plan``) writes a layout for the cell's prompt with the cell's seed, and a GLIGEN model
draws each object in its box. A cell on no model or on the embedded plain ``vgen-shapes`` is
moved to ``vgen-shapes-grounded`` (the planned pipeline; the plain model takes no layout), so
``plan=off,on`` puts the plain model beside planner + grounded model, both judged by the shapes
analyzer. A cell on any other model keeps it (a GLIGEN model from the Hub draws the layout; one
without GLIGEN layers is an error cell saying so). An ``off`` cell is drawn as given.

Import is torch-free (:mod:`vgen.compare` uses :func:`planned_cell` to build the grid in the web
server); planning and drawing load the engine when called (:mod:`vgen.compare_run`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from .catalog import planned_model
from .errors import CancelledError
from .requests import GenerateRequest

logger = logging.getLogger(__name__)

WHILE = "while planning layouts"


def planned_cell(cell: GenerateRequest) -> GenerateRequest:
    """A ``plan=on`` cell on the model that draws its layout (the layout itself is planned
    when the grid runs, :func:`plan_layouts`)."""
    return replace(cell, model=planned_model(cell.model))


def plan_note(request: GenerateRequest) -> str | None:
    """``planned layout on vgen-shapes-grounded`` for a cell drawn from a planned layout."""
    if request.layout_plan is None:
        return None
    from .compare import short_model_name

    return f"planned layout on {short_model_name(request.model or '')}"


def plan_layouts(grid, wanted, planner: str | None, control, clock):
    """The grid with every wanted cell's layout planned: ``(grid, seconds, errors, load_s)``.

    ``wanted``: the ``(row, col)`` of the ``plan=on`` cells. A layout is planned once per
    distinct (prompt, seed, planner) and reused; its seconds go to the first cell that used it
    and count against the grid's time limit (``clock``, :class:`vgen.compare_run._Clock`).
    ``load_s``: importing the planner's libraries, timed apart as loading (seconds cold, against
    ~0.3 s a plan); reading the small planner itself is in its first plan, since ``vgen.plan``
    loads it inside ``plan``. Stop is honoured between plans. A prompt the planner cannot lay
    out (or a planner that cannot be loaded) fails only the cells that needed it: ``errors``
    maps them to the reason, shown as error cells."""
    grid = [list(row) for row in grid]
    if not wanted:
        return tuple(tuple(row) for row in grid), {}, {}, 0.0
    t0 = time.perf_counter()
    _import_planner_libraries()
    load_s = time.perf_counter() - t0

    done: dict[tuple, object] = {}  # key -> (layout, layout_plan), or why there is none
    seconds: dict[tuple[int, int], float] = {}
    errors: dict[tuple[int, int], str] = {}
    for r, c in wanted:
        cell = grid[r][c]
        if control.cancel.is_set():
            raise CancelledError(f"the comparison was cancelled {WHILE}")
        key = (cell.prompt, cell.seed, planner)
        if key not in done:
            clock.remaining(WHILE)  # past the time limit: raises before planning more
            t0 = time.perf_counter()
            done[key] = _plan_one(cell, planner)
            seconds[(r, c)] = time.perf_counter() - t0
            clock.work_s += seconds[(r, c)]
        if isinstance(done[key], str):
            errors[(r, c)] = done[key]
        else:
            layout, record = done[key]
            grid[r][c] = replace(cell, layout=layout, layout_plan=record)
    return tuple(tuple(row) for row in grid), seconds, errors, load_s


def _import_planner_libraries() -> None:
    """What ``vgen.plan`` imports to load a planner (transformers' lazy model classes), so
    that importing it is not counted as planning."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: F401

    from . import plan  # noqa: F401
    from .shapes import planner, train_edit  # noqa: F401


def _plan_one(cell: GenerateRequest, planner: str | None):
    """``(layout, layout_plan)`` for one cell, or the reason the planner gave none."""
    from .errors import PlanParseError
    from .plan import with_planned_layout

    try:
        planned = with_planned_layout(cell, planner=planner)
    except PlanParseError as e:
        return f"the planner wrote no layout that parses for {cell.prompt!r}: {_short(e)}"
    except CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - a planner that cannot load fails its cells only
        logger.info("compare: planning failed: %s: %s", type(e).__name__, e)
        return f"the layout could not be planned: {type(e).__name__}: {_short(e)}"
    return planned.layout, planned.layout_plan


def _short(e: Exception, n: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= n else text[: n - 3] + "..."
