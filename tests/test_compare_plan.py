"""The Compare ``plan`` axis (issue #22; vgen.compare_plan): the grid (which model an ``on``
cell is drawn on, bad values), a ``plan=off,on`` grid on the embedded models (the plain model
beside planner + grounded model, both scored, the layout in the ``on`` PNG, pixels as
``generate`` draws the same request), one plan per prompt and seed, planning's errors, Stop and
time limit, the command line and the tab."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from vgen.catalog import EMBEDDED_GROUNDED_MODEL, EMBEDDED_MODEL
from vgen.compare import Axis, CompareRequest, expand, parse_axis, split_values
from vgen.errors import CancelledError, InvalidRequestError, PlanParseError
from vgen.jobs import JobControl, TimeLimitError
from vgen.layout import Layout
from vgen.requests import GenerateRequest, LayoutPlan

PROMPT = "a red circle to the left of a blue square"
STEPS = 4


# ---- the grid (no model runs) ---------------------------------------------------------------

def test_plan_values_are_on_and_off():
    assert parse_axis("plan=off,on").values == (False, True)
    assert parse_axis("plan=off,on").labels() == ("off", "on")
    assert Axis("plan", (True, "no")).values == (True, False)  # typed or text


@pytest.mark.parametrize("text, match", [
    ("plan=maybe", "plan value 'maybe' is not valid: plan is on or off"),
    ("plan=on,yes", "lists 'on' twice"),
    ("plan=", "has no values"),
])
def test_bad_plan_values_say_what_is_allowed(text, match):
    with pytest.raises(InvalidRequestError, match=match):
        parse_axis(text)


def test_an_on_cell_is_drawn_by_the_grounded_model_unless_it_names_another():
    base = GenerateRequest(PROMPT, seed=5, steps=STEPS)
    off, on = expand(CompareRequest(base, parse_axis("plan=off,on")))[0]
    assert off == base and on == replace(base, model=EMBEDDED_GROUNDED_MODEL)
    assert on.layout is None  # planned when the grid runs
    rows = expand(CompareRequest(base, parse_axis("plan=off,on"),
                                 parse_axis(f"model={EMBEDDED_MODEL},{EMBEDDED_GROUNDED_MODEL}")))
    assert [[c.model for c in row] for row in rows] == [
        [EMBEDDED_MODEL, EMBEDDED_GROUNDED_MODEL], [EMBEDDED_GROUNDED_MODEL] * 2]
    # The model axis on x and plan on y: the same (the switch follows both axes).
    cols = expand(CompareRequest(base, parse_axis(f"model={EMBEDDED_MODEL}"), parse_axis("plan=on,off")))
    assert [row[0].model for row in cols] == [EMBEDDED_GROUNDED_MODEL, EMBEDDED_MODEL]


def test_the_request_round_trips_and_takes_no_base_layout():
    req = CompareRequest(GenerateRequest(PROMPT, seed=1), parse_axis("plan=off,on"),
                         parse_axis("steps=2,4"), planner="my-planner")
    assert CompareRequest.from_json(req.to_json()) == req
    layout = Layout.from_json('{"objects": [{"phrase": "a red circle", "box": [0.1, 0.1, 0.5, 0.5]}]}')
    with pytest.raises(InvalidRequestError, match="base takes no layout"):
        CompareRequest(GenerateRequest(PROMPT, layout=layout), parse_axis("plan=off,on"))


# ---- planning, with the planner stubbed (no image model runs) -------------------------------

class _Planner:
    """Stands in for ``vgen.plan.with_planned_layout``: one fixed layout, every call counted."""

    LAYOUT = Layout.from_json('{"objects": [{"phrase": "a red circle", "box": [0.1, 0.3, 0.4, 0.6]}]}')

    def __init__(self, sleep_s: float = 0.0, fail: bool = False):
        self.calls: list[tuple[str, int]] = []
        self.sleep_s, self.fail = sleep_s, fail

    def __call__(self, req, planner=None, temperature=0.7):
        self.calls.append((req.prompt, req.seed))
        time.sleep(self.sleep_s)
        if self.fail:
            raise PlanParseError("no box here", "a red [ 1 2")
        return replace(req, layout=self.LAYOUT, layout_plan=LayoutPlan("stub", "", req.seed, 0.7))


def _plan_only(req: CompareRequest, control: JobControl | None = None):
    """The grid after expansion and planning (the run's step 2), with no image drawn."""
    from vgen.compare import expand_grid
    from vgen.compare_plan import plan_layouts
    from vgen.compare_run import _Clock

    flagged = expand_grid(req)
    control = control or JobControl()
    wanted = [(r, c) for r, row in enumerate(flagged) for c, (_, _, on) in enumerate(row) if on]
    return plan_layouts(tuple(tuple(cell for cell, _, _ in row) for row in flagged), wanted,
                        req.planner, control, _Clock(control))


def test_one_plan_per_prompt_and_seed(monkeypatch):
    stub = _Planner()
    monkeypatch.setattr("vgen.plan.with_planned_layout", stub)
    req = CompareRequest(GenerateRequest(PROMPT, seed=7), parse_axis("plan=on,off"),
                         parse_axis("steps=2,3"))
    grid, seconds, errors, _ = _plan_only(req)
    assert stub.calls == [(PROMPT, 7)] and not errors  # two on cells, one plan
    assert grid[0][0].layout == grid[1][0].layout == _Planner.LAYOUT
    assert grid[0][1].layout is None and grid[1][1].layout is None  # off cells as given
    assert list(seconds) == [(0, 0)]  # the plan's time on the first cell that used it
    two = CompareRequest(GenerateRequest("", seed=7), parse_axis("prompt=a red circle|a blue square"),
                         parse_axis("plan=on"))
    _plan_only(two)
    assert stub.calls[1:] == [("a red circle", 7), ("a blue square", 7)]


def test_a_prompt_the_planner_cannot_lay_out_fails_its_cells_only(monkeypatch):
    from vgen.compare_run import compare

    monkeypatch.setattr("vgen.plan.with_planned_layout", _Planner(fail=True))
    result = compare(CompareRequest(GenerateRequest(PROMPT, model=EMBEDDED_MODEL, seed=2, steps=2),
                                    parse_axis("plan=off,on")))
    off, on = result.cells[0]
    assert off.error is None and off.score is not None
    assert on.error.startswith("the planner wrote no layout that parses") and on.result is None
    assert len(result.errors) == 1 and "Not generated: the planner" in on.image.info["parameters"]


def test_stop_and_the_time_limit_reach_planning(monkeypatch):
    stub = _Planner(sleep_s=0.3)
    monkeypatch.setattr("vgen.plan.with_planned_layout", stub)
    req = CompareRequest(GenerateRequest("", seed=1), parse_axis("prompt=a red circle|a blue square"),
                         parse_axis("plan=on"))
    stopped = JobControl()
    stopped.cancel.set()
    with pytest.raises(CancelledError, match="cancelled while planning layouts"):
        _plan_only(req, stopped)
    assert stub.calls == []
    with pytest.raises(TimeLimitError, match="time limit .* while planning layouts"):
        _plan_only(req, JobControl(time_limit_s=0.2))  # the second plan starts past the limit
    assert len(stub.calls) == 1


# ---- the embedded models: plain beside planned ----------------------------------------------

@pytest.fixture(scope="module")
def off_on():
    from vgen.compare_run import compare

    return compare(CompareRequest(GenerateRequest(PROMPT, model=EMBEDDED_MODEL, seed=3, steps=STEPS),
                                  parse_axis("plan=off,on")))


def test_plain_beside_planned_on_the_embedded_models(off_on):
    from vgen.compare_grid import heading_labels, summary_text
    from vgen.generate import generate

    assert (off_on.rows, off_on.cols) == (1, 2)
    off, on = off_on.cells[0]
    assert off.request.model == EMBEDDED_MODEL and off.request.layout is None
    assert "Layout:" not in off.image.info["parameters"]
    assert on.request.model == EMBEDDED_GROUNDED_MODEL and on.error is None
    assert on.request.layout is not None and on.request.layout_plan.seed == 3
    assert "Layout:" in on.image.info["parameters"]
    assert f"Model: {EMBEDDED_GROUNDED_MODEL}" in on.image.info["parameters"]
    # Both pipelines judged by the analyzer, so the columns' pass rates compare them.
    assert off.score is not None and on.score is not None
    assert off_on.column_tallies()[1].judged == 1
    # The on cell is what `generate` draws for the same request (its layout included).
    alone = generate(on.request).images[0]
    assert np.array_equal(np.asarray(alone), np.asarray(on.image))
    # It says which model drew it: heading, summary, text table.
    assert heading_labels(off_on, "x") == ["off", f"on · {EMBEDDED_GROUNDED_MODEL}"]
    cells = off_on.summary()["cells"][0]
    assert [c["model"] for c in cells] == [EMBEDDED_MODEL, EMBEDDED_GROUNDED_MODEL]
    assert f"planned layout on {EMBEDDED_GROUNDED_MODEL}" in summary_text(off_on)


def test_the_tab_offers_plan_and_captions_the_planned_cell(off_on):
    from vgen.compare import PARAMETERS
    from vgen.ui.tabs.compare import cell_caption, compare_axis_hint, compare_request

    assert "plan" in PARAMETERS  # the axis pickers' choices
    update = compare_axis_hint("plan")
    assert Axis("plan", tuple(split_values("plan", update["value"]))).values == (False, True)
    assert "vgen-shapes-grounded" in update["placeholder"]
    assert compare_request(PROMPT, "plan", "off, on").x.values == (False, True)
    off, on = off_on.cells[0]
    assert f"planned layout on {EMBEDDED_GROUNDED_MODEL}" in cell_caption(off_on, on)
    assert "planned" not in cell_caption(off_on, off)


def test_a_model_without_gligen_layers_makes_its_on_cell_an_error(tiny_env, monkeypatch):
    from vgen.compare_run import compare

    monkeypatch.setattr("vgen.plan.with_planned_layout", _Planner())
    tiny = str(tiny_env["txt2img"])
    result = compare(CompareRequest(GenerateRequest("a red circle", model=tiny, seed=1, steps=2),
                                    parse_axis("plan=off,on")))
    off, on = result.cells[0]
    assert off.error is None and on.request.model == tiny
    assert "takes no layout" in on.error


def test_cli_compare_with_a_plan_axis(tmp_path, capsys):
    from vgen.cli import main
    from vgen.compare_grid import request_from_grid

    out = tmp_path / "grid.png"
    assert main(["compare", PROMPT, "--x", "plan=off,on", "--model", EMBEDDED_MODEL,
                 "--steps", "2", "--seed", "4", "--out", str(out)]) == 0
    assert request_from_grid(out).x.values == (False, True)
    text = capsys.readouterr().out
    assert "2 cells in" in text and f"planned layout on {EMBEDDED_GROUNDED_MODEL}" in text


def test_the_plan_switch_is_torch_free():
    """The server builds plan grids (vgen.compare imports vgen.compare_plan) without torch."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, vgen.compare, vgen.compare_plan, vgen.compare_grid; "
            "assert 'torch' not in sys.modules, 'torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr

