"""Compare: one prompt and one seed across models and settings, side by side.

An X/Y plot in the manner of AUTOMATIC1111's "X/Y/Z plot" script: a :class:`CompareRequest`
is a base :class:`~vgen.requests.GenerateRequest` plus one or two :class:`Axis` (a parameter
and a list of values). :func:`expand` turns it into a grid of ordinary requests that differ
only in the axes' parameters and share one seed, so only the thing under test changes;
:func:`vgen.compare_run.compare` runs them and returns a :class:`CompareResult` (per cell: the
request as run, the image with its ``parameters`` text, the seconds it took, and, for the
embedded shapes models (plain and grounded), the shapes analyzer's strict pass/fail with
per-column and per-row pass rates: the same rule ``python -m vgen eval shapes`` scores by;
rates and counts are over judged cells only). A cell whose model cannot be loaded is an error
cell; the rest of the grid still runs.

Running a grid costs what running its cells one by one costs, minus repeated work:

1. cells are grouped by model and each model is loaded once (the engine's ``ModelCache``);
2. within a model, cells with the same prompt and negative prompt share one text encoding
   (``encode_prompt`` once, ``prompt_embeds``/``negative_prompt_embeds`` to every cell; for
   Stable Diffusion pipelines, whose ``encode_prompt`` is exactly what their ``__call__`` runs,
   so a cell's pixels are identical to the same request generated alone; other pipelines
   encode per cell);
3. progress, cancel and the time limit of one :class:`~vgen.jobs.JobControl` span the grid.

Parameters an axis can vary: ``model``, ``guidance``, ``steps``, ``scheduler``, ``size``
(``WxH``), ``negative_prompt``, ``prompt`` (whole prompt variants), ``expand`` (language-
model prompt expansion on/off, :mod:`vgen.expand`: an ``on`` cell's prompt is first rewritten by
the language model with the cell's seed, exactly as ``python -m vgen generate PROMPT --expand
--seed S`` does, and the image records how its prompt was made) and ``plan`` (on/off: an ``on``
cell's layout is planned with its seed and drawn by a GLIGEN model, as ``generate PROMPT --plan``
does; :mod:`vgen.compare_plan`). The number of cells is capped by ``VGEN_MAX_COMPARE_CELLS``
(default 16).

This module holds what a comparison is and what it returns (axes, :class:`CompareRequest`,
:func:`expand`, :class:`CompareResult`), torch-free: the web server builds requests and renders
results that come back pickled from the engine's worker. Running one is
:func:`vgen.compare_run.compare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from . import config
from .errors import InvalidRequestError
from .requests import EditRequest, GenerateRequest, GenerationResult, Limits, check_inputs

MAX_CELLS_ENV = config.MAX_COMPARE_CELLS_ENV  # named in messages
DEFAULT_MAX_CELLS = 16
PARAMETERS = ("model", "guidance", "steps", "scheduler", "size", "negative_prompt", "prompt",
              "expand", "plan")
SWITCHES = ("expand", "plan")  # on/off axes: what happens to a cell, not one of its fields
ALIASES = {"cfg": "guidance", "cfg_scale": "guidance", "sampler": "scheduler",
           "negative": "negative_prompt", "negative prompt": "negative_prompt",
           "neg": "negative_prompt", "prompts": "prompt", "models": "model"}
TEXT_PARAMETERS = ("prompt", "negative_prompt")  # values separated by "|" (prompts hold commas)
MODEL_DEFAULT = "default"  # scheduler value: the model's own scheduler
# Request fields a cell gets when the grid runs (expand=on, plan=on), never from the base.
MADE_WHEN_RUN = ("expansion", "layout", "layout_plan")
_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}


def max_cells() -> int:
    """The cell cap (``VGEN_MAX_COMPARE_CELLS``, default 16): every cell is a full generation."""
    n = config.max_compare_cells(DEFAULT_MAX_CELLS)
    if n < 1:
        raise InvalidRequestError(f"{MAX_CELLS_ENV} must be at least 1, got {n}")
    return n


# ---- axes ---------------------------------------------------------------------------------

def _bad(param: str, value: Any, allowed: str) -> InvalidRequestError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return InvalidRequestError(f"{param} value {shown} is not valid: {allowed}")


def _coerce(param: str, value: Any) -> Any:
    """One axis value in its typed form (text from the CLI, the UI or JSON, or already typed)."""
    if param == "model":
        if not isinstance(value, str) or not value.strip():
            raise _bad(param, value, "a model is a Hub repo id (org/name[@revision]) or a local folder")
        return value.strip()
    if param == "guidance":
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise _bad(param, value, "guidance is a number such as 1, 3.5 or 7") from None
        if not math.isfinite(number):
            raise _bad(param, value, "guidance must be a finite number")
        return number
    if param == "steps":
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            whole = int(number)
        except (TypeError, ValueError, OverflowError):
            raise _bad(param, value, "steps is a whole number such as 4 or 20") from None
        if number != whole:
            raise _bad(param, value, "steps is a whole number such as 4 or 20")
        return whole
    if param == "scheduler":
        from .schedulers import SCHEDULERS

        if value is None or (isinstance(value, str) and value.strip().lower() in
                             (MODEL_DEFAULT, "model default", "none", "")):
            return None
        if not isinstance(value, str) or value.strip() not in SCHEDULERS:
            raise _bad(param, value, f"schedulers are {MODEL_DEFAULT}, {', '.join(SCHEDULERS)}")
        return value.strip()
    if param == "size":
        if isinstance(value, (tuple, list)) and len(value) == 2:
            w, h = value
        elif isinstance(value, str):
            parts = value.strip().lower().split("x")
            if len(parts) == 1:
                parts = parts * 2
            if len(parts) != 2:
                raise _bad(param, value, "a size looks like 512x512 (WxH) or 512 (square)")
            w, h = parts
        else:
            raise _bad(param, value, "a size looks like 512x512 (WxH) or 512 (square)")
        try:
            if isinstance(w, bool) or isinstance(h, bool):
                raise ValueError
            w, h = int(str(w).strip()), int(str(h).strip())
        except ValueError:
            raise _bad(param, value, "a size looks like 512x512 (WxH) or 512 (square)") from None
        return (w, h)
    if param == "negative_prompt":
        if not isinstance(value, str):
            raise _bad(param, value, "a negative prompt is text (empty for none)")
        return value.strip()
    if param == "prompt":
        if not isinstance(value, str) or not value.strip():
            raise _bad(param, value, "a prompt variant is non-empty text")
        return value.strip()
    if param in SWITCHES:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(param, value, f"{param} is on or off")
    raise AssertionError(param)


def canonical_parameter(name: Any) -> str:
    """The parameter an axis name stands for (aliases such as ``cfg`` accepted)."""
    if not isinstance(name, str):
        raise InvalidRequestError(f"an axis parameter is text, one of {', '.join(PARAMETERS)}")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, ALIASES.get(key.replace("_", " "), key))
    if key not in PARAMETERS:
        raise InvalidRequestError(
            f"unknown axis parameter {name!r}; axes can vary: {', '.join(PARAMETERS)}")
    return key


@dataclass(frozen=True)
class Axis:
    """One parameter and the values it takes along an axis of the grid.

    Values may be given as text (``"7"``, ``"512x768"``, ``"default"``) or typed; they are
    stored typed (floats, ints, ``(w, h)`` tuples, ``None`` for the model's own scheduler).
    An invalid parameter or value, no values, or a value listed twice raise
    :class:`~vgen.errors.InvalidRequestError`."""

    param: str
    values: tuple

    def __post_init__(self) -> None:
        param = canonical_parameter(self.param)
        raw = self.values
        if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
            raise InvalidRequestError(f"the values of the {param} axis must be a list")
        values = tuple(_coerce(param, v) for v in raw)
        if not values:
            raise InvalidRequestError(f"the {param} axis has no values; give at least one")
        seen: list = []
        for v in values:
            if v in seen:
                raise InvalidRequestError(
                    f"the {param} axis lists {format_value(param, v)!r} twice; each value once")
            seen.append(v)
        # Frozen: the typed form replaces the given one once, here.
        object.__setattr__(self, "param", param)
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return len(self.values)

    def labels(self) -> tuple[str, ...]:
        return tuple(format_value(self.param, v) for v in self.values)

    def to_json(self) -> dict:
        return {"param": self.param, "values": [json_value(self.param, v) for v in self.values]}

    @classmethod
    def from_json(cls, data: dict) -> "Axis":
        if not isinstance(data, dict) or "param" not in data or "values" not in data:
            raise InvalidRequestError("an axis is recorded as {'param': ..., 'values': [...]}")
        return cls(data["param"], tuple(data["values"]))


def format_value(param: str, value: Any) -> str:
    """How a value reads in labels and text (``size`` as ``WxH``, no scheduler as default)."""
    if param == "size":
        return f"{value[0]}x{value[1]}"
    if param == "scheduler":
        return MODEL_DEFAULT if value is None else value
    if param == "guidance":
        return f"{value:g}"
    if param in SWITCHES:
        return "on" if value else "off"
    if param == "model":
        return short_model_name(value)
    if param == "negative_prompt" and not value:
        return "(none)"
    return str(value)


def json_value(param: str, value: Any) -> Any:
    return f"{value[0]}x{value[1]}" if param == "size" else value


def short_model_name(ref: str) -> str:
    """A model reference as a label: a local folder by its name, a Hub id as it is."""
    text = str(ref).rstrip("/")
    if text.startswith(("/", ".", "~", "checkpoints")):
        return text.rsplit("/", 1)[-1]
    return text


def split_values(param: str, text: str) -> list[str]:
    """Values from text: ``|`` (or new lines) between prompt variants, which hold commas;
    commas between every other parameter's values (``|`` works there too)."""
    param = canonical_parameter(param)
    if not isinstance(text, str):
        raise InvalidRequestError(f"the values of the {param} axis must be text, got {text!r}")
    if param in TEXT_PARAMETERS:
        parts = [p.strip() for p in text.replace("\n", "|").split("|")]
        if param == "prompt":
            parts = [p for p in parts if p]
        elif len(parts) > 1 and all(p == "" for p in parts[1:]) and parts[-1] == "":
            parts = parts[:-1]  # a trailing "|"
    else:
        parts = [p.strip() for p in text.replace("|", ",").split(",") if p.strip()]
    if not parts:
        sep = "|" if param in TEXT_PARAMETERS else ","
        raise InvalidRequestError(
            f"the {param} axis has no values; list them separated by {sep!r}")
    return parts


def parse_axis(text: str) -> Axis:
    """``"guidance=1,3,7"``, ``"model=vgen-shapes,stabilityai/sd-turbo"``,
    ``"prompt=a red circle|a blue square"`` -> :class:`Axis`."""
    if not isinstance(text, str) or "=" not in text:
        raise InvalidRequestError(
            f"an axis looks like PARAMETER=V1,V2,... (e.g. guidance=1,3,7), got {text!r}; "
            f"parameters: {', '.join(PARAMETERS)}")
    name, _, values = text.partition("=")
    param = canonical_parameter(name)
    return Axis(param, tuple(split_values(param, values)))


def apply(req: GenerateRequest, param: str, value: Any) -> GenerateRequest:
    """``req`` with one axis value set (``expand`` and ``plan`` change nothing here: an ``on``
    cell's prompt is rewritten, or its layout planned, when the grid runs)."""
    if param == "size":
        return replace(req, width=value[0], height=value[1])
    if param in ("model", "guidance", "steps", "scheduler", "negative_prompt", "prompt"):
        return replace(req, **{param: value})
    if param in SWITCHES:
        return req
    raise InvalidRequestError(f"the {param} axis is not supported")


# ---- the request --------------------------------------------------------------------------

@dataclass(frozen=True)
class CompareRequest:
    """A base request and the axes along which its cells differ: ``x`` (columns) and an
    optional ``y`` (rows). Every cell uses the base's seed (one is drawn for the grid when the
    base has none). ``attention``: also record each cell's cross-attention maps (DAAM, see
    :mod:`vgen.attention`) so a word's map can be shown in every cell. ``lm``: the language
    model of an ``expand`` axis (None: ``vgen.expand.default_lm()``); ``planner``: the layout
    planner of a ``plan`` axis (None: ``vgen.plan.DEFAULT_PLANNER``)."""

    base: GenerateRequest
    x: Axis
    y: Axis | None = None
    attention: bool = False
    lm: str | None = None
    planner: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, GenerateRequest) or isinstance(self.base, EditRequest):
            raise InvalidRequestError("a comparison's base is a text-to-image GenerateRequest")
        if self.base.layout is not None or self.base.layout_plan is not None:
            raise InvalidRequestError("a comparison's base takes no layout; a plan=on,off axis "
                                      "plans one per cell")
        if not isinstance(self.x, Axis) or not (self.y is None or isinstance(self.y, Axis)):
            raise InvalidRequestError("the axes of a comparison are Axis values (x, and y or None)")
        if self.y is not None and self.y.param == self.x.param:
            raise InvalidRequestError(
                f"both axes vary {self.x.param}; a parameter can be on one axis only "
                "(put all its values on x)")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (len(self.y) if self.y is not None else 1, len(self.x))

    @property
    def num_cells(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def to_json(self) -> dict:
        from dataclasses import asdict

        base = {k: v for k, v in asdict(self.base).items() if k not in MADE_WHEN_RUN}
        return {"base": base, "x": self.x.to_json(),
                "y": self.y.to_json() if self.y is not None else None,
                "attention": self.attention, "lm": self.lm, "planner": self.planner}

    @classmethod
    def from_json(cls, data: dict) -> "CompareRequest":
        from .requests import request_fields

        if not isinstance(data, dict) or not isinstance(data.get("base"), dict) or "x" not in data:
            raise InvalidRequestError("a comparison is recorded as {'base': {...}, 'x': {...}, 'y': ...}")
        names = set(request_fields(GenerateRequest)) - set(MADE_WHEN_RUN)
        base = GenerateRequest(**{k: v for k, v in data["base"].items() if k in names})
        y = data.get("y")
        return cls(base, Axis.from_json(data["x"]), Axis.from_json(y) if y else None,
                   bool(data.get("attention", False)), data.get("lm"), data.get("planner"))


def expand(req: CompareRequest, limits: Limits | None = None) -> tuple[tuple[GenerateRequest, ...], ...]:
    """The grid of ordinary requests, ``rows[y][x]``, all with one seed (drawn here when the
    base has none). Every cell is validated before anything runs (bounds as for a single
    request, each model reference, the cell cap), so a bad value in the last cell fails at once
    with a message naming it. A cell on an ``expand=on`` value is listed with its prompt as
    typed: :func:`vgen.compare_run.compare` has the language model rewrite it first; one on a
    ``plan=on`` value on the model that draws its layout, which the run plans first."""
    return tuple(tuple(cell for cell, _, _ in row) for row in expand_grid(req, limits))


def expand_grid(req: CompareRequest, limits: Limits | None = None):
    """:func:`expand`'s grid with, per cell, whether its prompt is to be expanded and whether
    its layout is to be planned: ``(cell, expand, plan)``; a ``plan`` cell is already on the
    model that draws its layout (:func:`vgen.compare_plan.planned_cell`)."""
    from .catalog import default_model, defaults_for
    from .compare_plan import planned_cell
    from .errors import InvalidModelReferenceError
    from .hub import parse_reference
    from .requests import with_model_defaults
    from .runner import resolve_seed

    limits = limits or Limits.from_env()
    cap = max_cells()
    if req.num_cells > cap:
        rows, cols = req.shape
        raise InvalidRequestError(
            f"the comparison has {rows}x{cols} = {req.num_cells} cells; at most {cap} are allowed "
            f"({MAX_CELLS_ENV}); use fewer values")
    if req.base.num_images != 1:
        raise InvalidRequestError(
            f"a comparison makes one image per cell; the base asks for {req.base.num_images}")
    base = resolve_seed(req.base, limits)  # one seed for every cell
    y_axis = req.y
    rows = []
    for yv in (y_axis.values if y_axis is not None else (None,)):
        row = []
        for xv in req.x.values:
            cell, on = base, set()
            for axis, value in ((y_axis, yv), (req.x, xv)):
                if axis is not None:
                    cell = apply(cell, axis.param, value)
                    on |= {axis.param} if axis.param in SWITCHES and value else set()
            # After both axes: a model axis on the other one decides what a plan is drawn on.
            cell = planned_cell(cell) if "plan" in on else cell
            row.append((cell, "expand" in on, "plan" in on))
        rows.append(tuple(row))
    checked: set[str] = set()
    for r, row in enumerate(rows):
        for c, (cell, wants, _) in enumerate(row):
            where = _where(req, r, c)
            ref = (cell.model or "").strip() or default_model()
            try:
                if ref not in checked:
                    parse_reference(ref)
                    checked.add(ref)
                check_inputs(with_model_defaults(replace(cell, model=ref), defaults_for(ref)), limits)
                if wants:
                    _check_expansion(cell, req.lm, limits)
            except (InvalidRequestError, InvalidModelReferenceError) as e:
                raise type(e)(f"{where}: {e}") from None
    return tuple(rows)


def expand_request(cell: GenerateRequest, lm: str | None):
    from .expand import DEFAULT_TEMPERATURE, ExpandRequest

    # As `python -m vgen generate --expand`: the image's seed is the expansion's seed.
    return ExpandRequest(prompt=cell.prompt, lm=lm, seed=cell.seed, temperature=DEFAULT_TEMPERATURE)


def _check_expansion(cell: GenerateRequest, lm: str | None, limits: Limits) -> None:
    from .expand import check_expand_request
    from .hub import parse_reference

    checked = check_expand_request(expand_request(cell, lm), limits)
    parse_reference(checked.lm)


def _where(req: CompareRequest, row: int, col: int) -> str:
    text = f"cell {req.x.param}={req.x.labels()[col]}"
    if req.y is not None:
        text += f", {req.y.param}={req.y.labels()[row]}"
    return text


# ---- results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CellScore:
    """The shapes analyzer's strict verdict on one cell (``vgen.shapes.analyzer.score``)."""

    passed: bool
    reason: str


@dataclass(frozen=True)
class Cell:
    row: int
    col: int
    request: GenerateRequest  # as run: the model's defaults filled in, the seed drawn
    image: Any  # PIL image, its ``parameters`` text in ``.info``
    seconds: float  # this cell's own work: encoding (when not shared), denoising, decoding
    result: GenerationResult | None = field(compare=False, repr=False)  # None: error
    score: CellScore | None = None  # shapes model and a prompt of its grammar only
    maps: Any = field(default=None, compare=False, repr=False)  # AttentionMaps when asked
    shared_embeddings: bool = False  # the text encoding came from an earlier cell
    # Why the cell could not run (its model could not be loaded); then ``result`` is None and
    # ``image`` a grey tile saying so: one bad model costs its own cells, not the grid.
    error: str | None = None


@dataclass(frozen=True)
class Tally:
    """Pass counts of some cells: only judged cells (those the analyzer scored) count."""

    passed: int
    judged: int
    cells: int

    @property
    def rate(self) -> float | None:
        return self.passed / self.judged if self.judged else None

    def to_json(self) -> dict:
        return {"passed": self.passed, "judged": self.judged, "cells": self.cells}


@dataclass(frozen=True)
class CompareResult:
    """The grid as run: ``cells[row][col]``; ``request`` has the seed that was used."""

    request: CompareRequest
    cells: tuple[tuple[Cell, ...], ...]
    seconds: float  # the whole comparison, wall clock, loading included
    load_s: float  # of which loading models
    encodings: int  # text encodings computed (cells that shared one did not encode)

    @property
    def rows(self) -> int:
        return len(self.cells)

    @property
    def cols(self) -> int:
        return len(self.cells[0]) if self.cells else 0

    def flat(self) -> list[Cell]:
        return [c for row in self.cells for c in row]

    @property
    def images(self) -> tuple:
        """Every cell's image, row by row."""
        return tuple(c.image for c in self.flat())

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(c.request.seed for c in self.flat())

    @property
    def x_labels(self) -> tuple[str, ...]:
        return self.request.x.labels()

    @property
    def y_labels(self) -> tuple[str, ...]:
        return self.request.y.labels() if self.request.y is not None else ("",)

    @property
    def scored(self) -> bool:
        return any(c.score is not None for c in self.flat())

    @property
    def errors(self) -> list[Cell]:
        """The cells that could not run (see :attr:`Cell.error`)."""
        return [c for c in self.flat() if c.error is not None]

    @staticmethod
    def _tally(cells) -> Tally:
        scores = [c.score.passed for c in cells if c.score is not None]
        return Tally(sum(scores), len(scores), len(cells))

    def column_tallies(self) -> tuple[Tally, ...]:
        """Per column (x value): how many of its cells were judged and how many passed."""
        return tuple(self._tally([row[c] for row in self.cells]) for c in range(self.cols))

    def row_tallies(self) -> tuple[Tally, ...]:
        return tuple(self._tally(row) for row in self.cells)

    def tally(self) -> Tally:
        return self._tally(self.flat())

    def column_pass_rates(self) -> tuple[float | None, ...]:
        """Per column (x value): the share of its judged cells that passed (None: none judged)."""
        return tuple(t.rate for t in self.column_tallies())

    def row_pass_rates(self) -> tuple[float | None, ...]:
        return tuple(t.rate for t in self.row_tallies())

    def pass_rate(self) -> float | None:
        return self.tally().rate

    def summary(self) -> dict:
        """JSON-ready: the request, and per cell its seed, seconds, score (or error) and
        parameters; pass rates and counts over judged cells only, per column, row and grid."""
        has_y = self.request.y is not None
        return {
            "request": self.request.to_json(),
            "x_labels": list(self.x_labels),
            "y_labels": list(self.y_labels) if has_y else [],
            "cells": [[{"row": c.row, "col": c.col, "seed": c.request.seed,
                        "model": c.request.model, "seconds": round(c.seconds, 3),
                        "passed": None if c.score is None else c.score.passed,
                        "reason": None if c.score is None else c.score.reason,
                        "error": c.error,
                        "parameters": c.image.info.get("parameters", "")}
                       for c in row] for row in self.cells],
            "column_pass_rates": list(self.column_pass_rates()),
            "row_pass_rates": list(self.row_pass_rates()) if has_y else [],
            "pass_rate": self.pass_rate(),
            "column_passes": [t.to_json() for t in self.column_tallies()],
            "row_passes": [t.to_json() for t in self.row_tallies()] if has_y else [],
            "passes": self.tally().to_json(),
            "errors": len(self.errors),
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_s, 3),
            "text_encodings": self.encodings,
        }
