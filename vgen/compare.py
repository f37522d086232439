"""Compare: one prompt and one seed across models and settings, side by side.

An X/Y plot in the manner of AUTOMATIC1111's "X/Y/Z plot" script: a :class:`CompareRequest`
is a base :class:`~vgen.requests.GenerateRequest` plus one or two :class:`Axis` (a parameter
and a list of values). :func:`expand` turns it into a grid of ordinary requests that differ
only in the axes' parameters and share one seed, so only the thing under test changes;
:func:`compare` runs them and returns a :class:`CompareResult` (per cell: the request as run,
the image with its ``parameters`` text, the seconds it took, and, for the embedded shapes
model, the shapes analyzer's strict pass/fail with per-column and per-row pass rates: the
same rule ``python -m vgen eval shapes`` scores by).

Running a grid costs what running its cells one by one costs, minus repeated work:

1. cells are grouped by model and each model is loaded once (the engine's ``ModelCache``);
2. within a model, cells with the same prompt and negative prompt share one text encoding
   (``encode_prompt`` once, ``prompt_embeds``/``negative_prompt_embeds`` to every cell; for
   Stable Diffusion pipelines, whose ``encode_prompt`` is exactly what their ``__call__`` runs,
   so a cell's pixels are identical to the same request generated alone; other pipelines
   encode per cell);
3. progress, cancel and the time limit of one :class:`~vgen.jobs.JobControl` span the grid.

Parameters an axis can vary: ``model``, ``guidance``, ``steps``, ``scheduler``, ``size``
(``WxH``), ``negative_prompt``, ``prompt`` (whole prompt variants) and ``expand`` (language-
model prompt expansion on/off, :mod:`vgen.expand`: an ``on`` cell's prompt is first rewritten by
the language model with the cell's seed, exactly as ``python -m vgen generate PROMPT --expand
--seed S`` does, and the image records how its prompt was made). The number of cells is
capped by ``VGEN_MAX_COMPARE_CELLS`` (default 16).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

from .errors import CancelledError, InvalidRequestError
from .jobs import JobControl, TimeLimitError
from .requests import EditRequest, GenerateRequest, GenerationResult, Limits, _env_int, check_inputs

if TYPE_CHECKING:  # torch loads with the engine: the app's server lists the axes without it
    from .pipelines import ModelCache

MAX_CELLS_ENV = "VGEN_MAX_COMPARE_CELLS"
DEFAULT_MAX_CELLS = 16
PARAMETERS = ("model", "guidance", "steps", "scheduler", "size", "negative_prompt", "prompt",
              "expand")
ALIASES = {"cfg": "guidance", "cfg_scale": "guidance", "sampler": "scheduler",
           "negative": "negative_prompt", "negative prompt": "negative_prompt",
           "neg": "negative_prompt", "prompts": "prompt", "models": "model"}
TEXT_PARAMETERS = ("prompt", "negative_prompt")  # values separated by "|" (prompts hold commas)
MODEL_DEFAULT = "default"  # scheduler value: the model's own scheduler
_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}


def max_cells() -> int:
    """The cell cap (``VGEN_MAX_COMPARE_CELLS``, default 16): every cell is a full generation."""
    n = _env_int(MAX_CELLS_ENV, DEFAULT_MAX_CELLS)
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
    if param == "expand":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(param, value, "expand is on or off")
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
    if param == "expand":
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
    """``req`` with one axis value set (``expand`` changes nothing here: an ``on`` cell's
    prompt is rewritten when the grid runs, see :func:`compare`)."""
    if param == "size":
        return replace(req, width=value[0], height=value[1])
    if param in ("model", "guidance", "steps", "scheduler", "negative_prompt", "prompt"):
        return replace(req, **{param: value})
    if param == "expand":
        return req
    raise InvalidRequestError(f"the {param} axis is not supported")


# ---- the request --------------------------------------------------------------------------

@dataclass(frozen=True)
class CompareRequest:
    """A base request and the axes along which its cells differ: ``x`` (columns) and an
    optional ``y`` (rows). Every cell uses the base's seed (one is drawn for the grid when the
    base has none). ``attention``: also record each cell's cross-attention maps (DAAM, see
    :mod:`vgen.attention`) so a word's map can be shown in every cell. ``lm``: the language
    model of an ``expand`` axis (None: ``vgen.expand.default_lm()``)."""

    base: GenerateRequest
    x: Axis
    y: Axis | None = None
    attention: bool = False
    lm: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.base, GenerateRequest) or isinstance(self.base, EditRequest):
            raise InvalidRequestError("a comparison's base is a text-to-image GenerateRequest")
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

        base = {k: v for k, v in asdict(self.base).items() if k != "expansion"}  # made when run
        return {"base": base, "x": self.x.to_json(),
                "y": self.y.to_json() if self.y is not None else None,
                "attention": self.attention, "lm": self.lm}

    @classmethod
    def from_json(cls, data: dict) -> "CompareRequest":
        from .requests import request_fields

        if not isinstance(data, dict) or not isinstance(data.get("base"), dict) or "x" not in data:
            raise InvalidRequestError("a comparison is recorded as {'base': {...}, 'x': {...}, 'y': ...}")
        names = set(request_fields(GenerateRequest)) - {"expansion"}  # made when run
        base = GenerateRequest(**{k: v for k, v in data["base"].items() if k in names})
        y = data.get("y")
        return cls(base, Axis.from_json(data["x"]), Axis.from_json(y) if y else None,
                   bool(data.get("attention", False)), data.get("lm"))


def expand(req: CompareRequest, limits: Limits | None = None) -> tuple[tuple[GenerateRequest, ...], ...]:
    """The grid of ordinary requests, ``rows[y][x]``, all with one seed (drawn here when the
    base has none). Every cell is validated before anything runs (bounds as for a single
    request, each model reference, the cell cap), so a bad value in the last cell fails at once
    with a message naming it. A cell on an ``expand=on`` value is listed with its prompt as
    typed: :func:`compare` has the language model rewrite it first."""
    return tuple(tuple(cell for cell, _ in row) for row in _grid(req, limits))


def _grid(req: CompareRequest, limits: Limits | None = None):
    """:func:`expand`'s grid with, per cell, whether its prompt is to be expanded."""
    from .catalog import default_model, defaults_for
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
            cell, wants = base, False
            for axis, value in ((y_axis, yv), (req.x, xv)):
                if axis is not None:
                    cell = apply(cell, axis.param, value)
                    wants = wants or (axis.param == "expand" and value)
            row.append((cell, wants))
        rows.append(tuple(row))
    checked: set[str] = set()
    for r, row in enumerate(rows):
        for c, (cell, wants) in enumerate(row):
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


def _expand_request(cell: GenerateRequest, lm: str | None):
    from .expand import DEFAULT_TEMPERATURE, ExpandRequest

    # As `python -m vgen generate --expand`: the image's seed is the expansion's seed.
    return ExpandRequest(prompt=cell.prompt, lm=lm, seed=cell.seed, temperature=DEFAULT_TEMPERATURE)


def _check_expansion(cell: GenerateRequest, lm: str | None, limits: Limits) -> None:
    from .expand import check_expand_request
    from .hub import parse_reference

    checked = check_expand_request(_expand_request(cell, lm), limits)
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
    result: GenerationResult = field(compare=False, repr=False)
    score: CellScore | None = None  # shapes model and a prompt of its grammar only
    maps: Any = field(default=None, compare=False, repr=False)  # AttentionMaps when asked
    shared_embeddings: bool = False  # the text encoding came from an earlier cell


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

    @staticmethod
    def _rate(cells) -> float | None:
        scores = [c.score.passed for c in cells if c.score is not None]
        return sum(scores) / len(scores) if scores else None

    def column_pass_rates(self) -> tuple[float | None, ...]:
        """Per column (x value): the share of its scored cells that passed (None: none scored)."""
        return tuple(self._rate([row[c] for row in self.cells]) for c in range(self.cols))

    def row_pass_rates(self) -> tuple[float | None, ...]:
        return tuple(self._rate(row) for row in self.cells)

    def pass_rate(self) -> float | None:
        return self._rate(self.flat())

    def summary(self) -> dict:
        """JSON-ready: the request, and per cell its seed, seconds, score and parameters."""
        return {
            "request": self.request.to_json(),
            "x_labels": list(self.x_labels),
            "y_labels": list(self.y_labels) if self.request.y is not None else [],
            "cells": [[{"row": c.row, "col": c.col, "seed": c.request.seed,
                        "seconds": round(c.seconds, 3),
                        "passed": None if c.score is None else c.score.passed,
                        "reason": None if c.score is None else c.score.reason,
                        "parameters": c.image.info.get("parameters", "")}
                       for c in row] for row in self.cells],
            "column_pass_rates": list(self.column_pass_rates()),
            "row_pass_rates": list(self.row_pass_rates()) if self.request.y is not None else [],
            "pass_rate": self.pass_rate(),
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_s, 3),
            "text_encodings": self.encodings,
        }


# ---- scoring ------------------------------------------------------------------------------

def is_shapes_model(ref: str) -> bool:
    """Whether ``ref`` names the embedded shapes model (``checkpoints/vgen-shapes``), whose
    world the shapes analyzer can check exactly."""
    from .catalog import EMBEDDED_MODEL
    from .hub import parse_reference

    try:
        mine, embedded = parse_reference(ref), parse_reference(EMBEDDED_MODEL)
    except Exception:  # the embedded model is missing, or ref is not local
        return False
    return mine.is_local and mine.local_path == embedded.local_path


def score_cell(image, request: GenerateRequest) -> CellScore | None:
    """The analyzer's strict pass/fail when the cell's model is the shapes model and its prompt
    is a sentence of the shapes grammar; None otherwise (nothing to check against)."""
    from .shapes.analyzer import score
    from .shapes.captions import ParseError, parse

    if not is_shapes_model(request.model or ""):
        return None
    try:
        description = parse(request.prompt)
    except ParseError:
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

    with model.lock, torch.inference_mode():
        pe, ne = view.encode_prompt(
            prompt=req.prompt, device=view._execution_device, num_images_per_prompt=1,
            do_classifier_free_guidance=True, negative_prompt=req.negative_prompt or None)
    return {"prompt_embeds": pe, "negative_prompt_embeds": ne}


def _plan(grid: tuple[tuple[GenerateRequest, ...], ...]) -> list[tuple[int, int]]:
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
    ``on_cell(cell, done, total)`` is called after each cell."""
    from .attention import AttentionCapture, with_step_observers
    from .catalog import default_model, defaults_for, model_defaults
    from .pipelines import model_cache
    from .runner import prepare, run

    t_start = time.perf_counter()
    limits = limits or Limits.from_env()
    control = control or JobControl()
    cache = cache or model_cache()
    # 1. Expand and validate every cell before any work; one seed for all.
    flagged = _grid(req, limits)
    seed = flagged[0][0][0].seed
    req = replace(req, base=replace(req.base, seed=seed))
    clock = _Clock(control)
    # 2. Cells of an expand=on value: the language model writes their prompt first (once per
    #    distinct prompt; the seed is the grid's), so the rest of the run sees ordinary requests.
    grid, extra_s, load_s = _expand_prompts(flagged, req.lm, control, clock, limits)
    plan = _plan(grid)

    # A model's default steps: the catalog's until it is loaded, then its own (an uncatalogued
    # model's card can recommend them: catalog.card_defaults), and the grid's total follows.
    default_steps: dict[str, int] = {}

    def planned_steps(cell: GenerateRequest) -> int:
        ref = (cell.model or "").strip() or default_model()
        if cell.steps is not None:
            return cell.steps
        return default_steps.get(ref) or defaults_for(ref).steps

    total_steps = sum(planned_steps(grid[r][c]) for r, c in plan)
    done_steps, encodings = 0, 0
    embeddings: dict[tuple, dict] = {}
    out: dict[tuple[int, int], Cell] = {}
    loaded: set[str] = set()
    for n, (r, c) in enumerate(plan):
        cell = grid[r][c]
        ref = (cell.model or "").strip() or default_model()
        # 3. Cancel between cells too (a cancelled grid never starts its next cell).
        if control.cancel.is_set():
            raise CancelledError(f"the comparison was cancelled after {n} of {len(plan)} cells")
        # 4. Load each model once (timed apart: loading is not a cell's work).
        if ref not in loaded:
            t0 = time.perf_counter()
            default_steps[ref] = model_defaults(cache.get(ref, progress=control.download)).steps
            load_s += time.perf_counter() - t0
            loaded.add(ref)
            total_steps = done_steps + sum(planned_steps(grid[i][j]) for i, j in plan[n:])
        # 5. A per-cell control: grid-wide progress, shared cancel, the grid's remaining time.
        offset = done_steps

        def progress(step: int, total: int, offset=offset) -> None:
            if control.progress is not None:
                control.progress(min(offset + step, total_steps), total_steps)

        cell_control = replace(control, progress=progress,
                               time_limit_s=clock.remaining(f"after {n} of {len(plan)} cells"))
        capture = AttentionCapture(cell.prompt, 1) if req.attention else None
        if capture is not None:
            cell_control = with_step_observers(cell_control, capture)
        t0 = time.perf_counter()
        try:
            # 6. The cell as a single request would run; the prompt encoded once per group.
            cell_req, model, view = prepare(cell, cell_control, cache, limits)
            kwargs = {"width": cell_req.width, "height": cell_req.height}
            shared = False
            if _reuses_embeddings(view):
                key = (model.ref, str(model.device), cell_req.prompt, cell_req.negative_prompt)
                shared = key in embeddings
                if not shared:
                    embeddings[key] = _encode(view, model, cell_req)
                    encodings += 1
                kwargs.update(embeddings[key])
            else:
                encodings += 1
            result = run(cell_req, model, view, kwargs, cell_control, capture)
        except TimeLimitError:
            raise clock.timeout(f"after {n} of {len(plan)} cells") from None
        except CancelledError:
            raise CancelledError(
                f"the comparison was cancelled after {n} of {len(plan)} cells") from None
        seconds = time.perf_counter() - t0 + extra_s.pop((r, c), 0.0)
        clock.work_s += time.perf_counter() - t0
        done_steps += planned_steps(cell)
        image = result.images[0]
        maps = capture.result(image.size) if capture is not None else None
        # 7. Score against the prompt when the shapes analyzer can.
        out[(r, c)] = Cell(r, c, result.request, image, seconds, result,
                           score_cell(image, result.request), maps, shared)
        if on_cell is not None:
            on_cell(out[(r, c)], n + 1, len(plan))
    cells = tuple(tuple(out[(r, c)] for c in range(len(grid[r]))) for r in range(len(grid)))
    return CompareResult(req, cells, time.perf_counter() - t_start, load_s, encodings)


@dataclass
class _Clock:
    """The grid's time limit: the work of all cells (and expansions) so far, against
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
            f"{where}; use fewer values, fewer steps or a smaller size")


def _expand_prompts(flagged, lm: str | None, control: JobControl, clock: _Clock, limits: Limits):
    """The grid with every ``expand=on`` cell's prompt written by the language model (and its
    ``expansion`` record, as ``generate --expand`` makes); the seconds each expansion took, on
    the first cell that used it; and the seconds spent loading the language model."""
    grid = [[cell for cell, _ in row] for row in flagged]
    wanted = [(r, c) for r, row in enumerate(flagged) for c, (_, on) in enumerate(row) if on]
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
                done[key] = expand_prompt(_expand_request(cell, lm), step_control, limits=limits)
            except TimeLimitError:
                raise clock.timeout("while expanding prompts") from None
            wall = time.perf_counter() - t0
            clock.work_s += done[key].seconds
            load_s += max(0.0, wall - done[key].seconds)  # loading the language model
            extra_s[(r, c)] = done[key].seconds
        result = done[key]
        grid[r][c] = replace(cell, prompt=result.variants[0], expansion=result.expansion(0))
    return tuple(tuple(row) for row in grid), extra_s, load_s
