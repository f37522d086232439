"""Command line of layout planning (wired into ``vgen.cli``):

* ``python -m vgen plan PROMPT [--planner REF] [--seed S] [--num N] [--temperature T]`` prints
  N layouts as JSON, one a line (variant ``i`` uses seed ``S + i``; the planner and the seeds
  go to stderr, so stdout is only the layouts);
* ``python -m vgen generate PROMPT --plan [--planner REF]`` plans first (with the image seed)
  and draws the layout on the grounded model (``--model`` to pick another GLIGEN model);
  ``--layout FILE.json`` draws a layout written by hand. The PNG records the layout.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .errors import VgenError


def add_layout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", action="store_true",
                   help="plan a layout with the planner first and draw it (default model: "
                        "vgen-shapes-grounded)")
    p.add_argument("--planner", default=None,
                   help="the layout planner (default: the embedded vgen-shapes-planner)")
    p.add_argument("--layout", default=None, metavar="FILE.json",
                   help='draw this layout: {"objects": [{"phrase": ..., "box": [x0, y0, x1, y1]}]}')
    p.add_argument("--layout-guidance", type=float, default=None,
                   help="layout guidance step size (0: off; default: the model's)")


def add_plan_parser(sub) -> None:
    x = sub.add_parser("plan", help="plan a layout for a prompt; one layout (JSON) a line")
    x.add_argument("prompt")
    x.add_argument("--planner", default=None, help="default: the embedded vgen-shapes-planner")
    x.add_argument("--seed", type=int, default=0, help="variant i uses seed+i")
    x.add_argument("--num", type=int, default=1, help="number of layouts")
    x.add_argument("--temperature", type=float, default=None, help="sampling temperature (0.7)")
    x.set_defaults(func=cmd_plan)


def cmd_plan(a: argparse.Namespace) -> int:
    from .plan import DEFAULT_TEMPERATURE, PlanRequest, plan

    temperature = DEFAULT_TEMPERATURE if a.temperature is None else a.temperature
    result = plan(PlanRequest(a.prompt, planner=a.planner, seed=a.seed, num_variants=a.num,
                              temperature=temperature))
    print(f"{result.planner} (revision {result.revision[:12]}), seeds "
          f"{', '.join(map(str, result.seeds))}", file=sys.stderr)
    for layout in result.layouts:
        print(layout.to_json())
    return 0


def apply_layout(a: argparse.Namespace, req):
    """``req`` with the layout the options ask for (none, a file, or planned)."""
    from .layout import Layout

    if a.plan and a.layout:
        raise VgenError("give --plan or --layout FILE.json, not both")
    if a.layout_guidance is not None:
        req = replace(req, layout_guidance=a.layout_guidance)
    if a.layout:
        path = Path(a.layout)
        if not path.is_file():
            raise VgenError(f"--layout: no file {path}")
        return replace(req, layout=Layout.from_json(path.read_text(encoding="utf-8")))
    if a.plan:
        from .plan import with_planned_layout

        return with_planned_layout(req, planner=a.planner)
    return req
