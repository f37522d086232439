"""UI values -> the engine's typed requests (``vgen.requests``), and uploaded files -> checked images.

Every endpoint turns its arguments into a request here and nowhere else; the engine's
``check_inputs`` then validates it. ``None`` (an empty field) means the model's default. The
browser's "0 = the model's default" is turned into ``None`` before it reaches the server
(``components.zero_means_default``), so an API caller's 0 is still the engine's error.
"""

from __future__ import annotations

import contextvars
from typing import Any

from vgen.errors import InvalidLayoutError, InvalidRequestError
from vgen.layout import MAX_OBJECTS, Layout, LayoutObject, parse_layout
from vgen.requests import EditRequest, GenerateRequest, LayoutPlan

DEFAULT_SCHEDULER = "model default"
DEFAULT_STRENGTH = 0.75

# Notices about the input images of the job running in this context (e.g. "the image is
# animated; its first frame was used"). Each job's worker thread runs in its own context copy.
_INPUT_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "vgen_input_notes", default=None)


def opt_int(value: Any, name: str) -> int | None:
    """None (an empty field) means the model's default; numbers become ints."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
        whole = int(number)
    except (TypeError, ValueError, OverflowError):  # text, NaN, infinity
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}") from None
    if number != whole:
        raise InvalidRequestError(f"{name} must be a whole number, got {value!r}")
    return whole


def opt_float(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}") from None


def text(value: Any) -> str:
    return value if value is not None else ""


def model_ref(value: Any) -> str | None:
    return (value or "").strip() or None


def _common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                   num_images, scheduler) -> dict:
    n = opt_int(num_images, "number of images")
    return dict(
        prompt=text(prompt), negative_prompt=text(negative_prompt), model=model_ref(model),
        steps=opt_int(steps, "steps"), guidance=opt_float(guidance, "guidance"),
        seed=None if randomize_seed else opt_int(seed, "seed"),
        num_images=1 if n is None else n,
        scheduler=None if not scheduler or scheduler == DEFAULT_SCHEDULER else scheduler,
    )


def generate_request(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                     width, height, num_images, scheduler, decoder="full", layout=None,
                     layout_plan: LayoutPlan | None = None) -> GenerateRequest:
    """``layout``: any form ``layout_value`` takes (None or "": a plain generation)."""
    drawn = layout_value(layout)
    return GenerateRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=opt_int(width, "width"), height=opt_int(height, "height"),
        decoder="full" if decoder is None else decoder,
        layout=drawn, layout_plan=layout_plan if drawn is not None else None,
    )


def plan_request(prompt, planner, seed, num_variants, temperature):
    """A layout-planning request (``vgen.plan``). A variant the planner writes unparsably moves
    on to the next seeds: a user gets a layout, and ``seeds`` says which seed made it."""
    from vgen.plan import DEFAULT_TEMPERATURE, PlanRequest

    s, n = opt_int(seed, "seed"), opt_int(num_variants, "number of variants")
    t, ref = opt_float(temperature, "temperature"), model_ref(planner)
    if ref is not None:
        # The web's defence: the planner loads any folder it is given, so a reference must pass
        # the model rules (a Hub id, a name under checkpoints/, a folder in an allowed root).
        from vgen.hub import parse_reference

        parse_reference(ref)
    return PlanRequest(prompt=text(prompt), planner=ref,
                       seed=0 if s is None else s, num_variants=1 if n is None else n,
                       temperature=DEFAULT_TEMPERATURE if t is None else t,
                       on_unparsable="next_seed")


# ---- layouts: the API's JSON and the UI's table -> a Layout ------------------------------------

LAYOUT_COLUMNS = ("phrase", "x0", "y0", "x1", "y1")
MAX_TABLE_ROWS = 4 * MAX_OBJECTS  # blank rows included; more filled ones than 30: Layout says so


def layout_value(value: Any) -> Layout | None:
    """A layout from the API's JSON text, its dict, a Layout, or the UI's table (rows of
    phrase, x0, y0, x1, y1); None, "" and a table with no filled row mean no layout."""
    if isinstance(value, list) or hasattr(value, "to_numpy"):  # rows, or a pandas DataFrame
        return table_layout(value)
    if isinstance(value, dict) and "data" in value and "objects" not in value:
        return table_layout(value["data"])  # the Dataframe's own {"headers", "data"} form
    return parse_layout(value)


def _blank(cell: Any) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip()) or cell != cell  # NaN


def _coordinate(cell: Any, row: int, column: str) -> float:
    # A table's cells may arrive as text (a typed value). The range is checked here so that the
    # message names the column (Layout's would say box[2]).
    value = None
    if isinstance(cell, str):
        try:
            value = float(cell)
        except ValueError:
            pass
    elif isinstance(cell, (int, float)) and not isinstance(cell, bool):
        value = float(cell)
    if value is None or not 0.0 <= value <= 1.0:  # NaN too
        raise InvalidLayoutError(f"layout table, row {row}: {column} must be a number from 0 "
                                 f"to 1 (a fraction of the image), got {cell!r}",
                                 f"row {row}.{column}")
    return value


def table_layout(rows: Any) -> Layout | None:
    """The layout in the table: one object per filled row (blank rows are skipped); an error
    names the row (counted from 1, as the table shows them) and the column."""
    if hasattr(rows, "to_numpy"):
        rows = rows.to_numpy().tolist()
    rows = rows or []
    if len(rows) > MAX_TABLE_ROWS:  # before reading them (a hand-made request's table)
        raise InvalidLayoutError(f"layout table: {len(rows)} rows; a layout has at most "
                                 f"{MAX_OBJECTS} objects", "rows")
    objects = []
    for n, cells in enumerate(rows, start=1):
        if not isinstance(cells, (list, tuple)):
            raise InvalidLayoutError(f"layout table, row {n}: not a row of cells", f"row {n}")
        cells = list(cells)[:len(LAYOUT_COLUMNS)]
        cells += [None] * (len(LAYOUT_COLUMNS) - len(cells))
        if all(_blank(c) for c in cells):
            continue
        phrase = "" if _blank(cells[0]) else str(cells[0])
        box = []
        for column, cell in zip(LAYOUT_COLUMNS[1:], cells[1:]):
            if _blank(cell):
                raise InvalidLayoutError(f"layout table, row {n}: {column} is empty (a number "
                                         "from 0 to 1)", f"row {n}.{column}")
            box.append(_coordinate(cell, n, column))
        try:
            objects.append(LayoutObject(phrase, tuple(box)))
        except InvalidLayoutError as e:  # "layout phrase: ..." or "layout box: ...": the row's
            detail = str(e).removeprefix("layout ").removeprefix("box: ")
            detail = detail.replace("phrase: ", "phrase ", 1)
            raise InvalidLayoutError(f"layout table, row {n}: {detail}",
                                     f"row {n}.{e.field}") from None
    return Layout(tuple(objects)) if objects else None


def layout_rows(layout: Layout | None, digits: int = 6) -> list[list]:
    """A layout as the table's rows, coordinates rounded to ``digits`` (6 keep a planner's boxes
    exact: it writes pixels of 64, multiples of 1/64; they drop float noise)."""
    if layout is None:
        return []
    return [[o.phrase, *o.box] for o in layout.rounded(digits).objects]


def edit_request(image, mask, prompt, mode, strength, image_guidance, negative_prompt, model,
                 steps, guidance, seed, randomize_seed, width, height, num_images,
                 scheduler, decoder="full") -> EditRequest:
    s = opt_float(strength, "strength")
    return EditRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=opt_int(width, "width"), height=opt_int(height, "height"),
        image=image, mask=mask, mode=mode or "img2img",
        strength=DEFAULT_STRENGTH if s is None else s,
        image_guidance=opt_float(image_guidance, "image guidance"),
        decoder="full" if decoder is None else decoder,
    )


def inspect_request(prompt, model, seed, steps, negative_prompt=None,
                    layout=None) -> GenerateRequest:
    """A text-to-image request for the Features tab (seed None: a fresh one); ``layout``: any
    form ``layout_value`` takes (None or "": none), checked as /generate's is."""
    return GenerateRequest(prompt=text(prompt), negative_prompt=text(negative_prompt),
                           model=model_ref(model), seed=opt_int(seed, "seed"),
                           steps=opt_int(steps, "steps"), layout=layout_value(layout))


# ---- uploaded files -> checked images ------------------------------------------------------


def collect_notes(sink: list[str]) -> None:
    """Notices found while loading this job's images go to ``sink`` (call in the job's context)."""
    _INPUT_NOTES.set(sink)


def note(*notes: str) -> None:
    sink = _INPUT_NOTES.get()
    if sink is not None:
        sink.extend(n for n in notes if n not in sink)


def load_image(path: str | None, kind: str = "image"):
    """A checked, normalised image from an uploaded file (None stays None); what the checks
    noticed (first frame of an animation, unreadable EXIF) goes to the job's notice."""
    if not path:
        return None
    from vgen.images import normalise, open_image

    image, notes = normalise(open_image(str(path)), kind)
    note(*notes)
    return image


def editor_image_and_mask(editor: dict | None, mode: str):
    """Source image and inpainting mask from a gr.ImageEditor value (file paths).

    Inpainting repaints the background wherever any brush layer is painted (any alpha); the
    other modes edit the composite, so brush strokes act as a sketch on the picture."""
    if not editor:
        return None, None
    note(*(editor.get("notes") or []))  # found by SafeImageEditor when the upload came in
    background, composite = editor.get("background"), editor.get("composite")
    if mode == "inpaint":
        source = load_image(background or composite)
    else:
        source = load_image(composite or background)
    mask = None
    if mode == "inpaint":
        from PIL import ImageChops

        for layer in editor.get("layers") or []:
            alpha = load_image(layer, kind="mask")  # RGBA layers give their alpha channel
            mask = alpha if mask is None else ImageChops.lighter(mask, alpha.resize(mask.size))
        if mask is not None:
            mask = mask.point(lambda v: 255 if v > 0 else 0)
            if mask.getbbox() is None:  # nothing painted
                mask = None
    return source, mask


def source_and_mask(image: str | dict | None, mask: str | dict | None, mode: str):
    """The edit's source image and mask: from two files (the API), or from the image editor's
    value (the UI) with the mask "Use as mask" attached (a dict of files, see
    ``tabs.features.mask_editor_value``): while the editor still shows the tinted picture it
    made, the clean picture is the source and that mask, with any strokes painted since, the
    mask."""
    if not isinstance(image, dict):
        return load_image(image), load_image(mask, "mask")
    source, painted = editor_image_and_mask(image, mode)
    if not isinstance(mask, dict) or source is None or not _same_picture(source, mask["shown"]):
        return source, painted
    source = load_image(mask["source"])
    if mode != "inpaint":
        return source, None
    attached = load_image(mask["mask"], "mask")
    if painted is not None:
        from PIL import ImageChops

        attached = ImageChops.lighter(attached, painted.resize(attached.size))
    return source, attached


def _same_picture(image, path: str) -> bool:
    """Whether ``image`` is the picture in ``path`` (the browser's editor sends it back re-encoded:
    equal size and, on average, within one level)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as shown:
        if shown.size != image.size:
            return False
        a = np.asarray(shown.convert("RGB"), dtype=np.int16)
    b = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float(np.abs(a - b).mean()) < 1.0
