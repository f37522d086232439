"""The layout panel of Text to Image: a language model plans the picture as objects in boxes
(``vgen.plan``), the user picks a variant and edits its boxes in a table, and Generate draws the
table's layout on a grounded (GLIGEN) model; the results can be shown with their boxes. Its
endpoint is ``/plan``. Layouts are drawn here with PIL (no torch in the UI)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from vgen.catalog import EMBEDDED_GROUNDED_MODEL, layout_model
from vgen.layout import Layout
from vgen.layout_maps import draw_text, fit_text, text_length

from .. import results
from ..forms import LAYOUT_COLUMNS, layout_rows, layout_value, plan_request
from ..handlers import Progress, endpoint, run_job, skip, ui_error
from ..inputs import StrictCheckbox, StrictDropdown, StrictNumber, StrictSlider

CANVAS = 320  # px: a layout is drawn this wide (the 64x64 world enlarged 5x)
# The planned variants: one picture of tiles (a gallery crops, and overflows a phone's width),
# up to four a row, each with its number and seed below; a click on one picks it.
TILE, GAP, CAPTION, TILES_PER_ROW = 200, 14, 34, 4
CHOSEN = (249, 115, 22)  # the picked variant's frame (Gradio's orange)
TABLE_DIGITS = 3  # the table shows coordinates to 1/1000 (an unedited one is the planner's own)
DEFAULT_VARIANTS = 3
EMPTY_TABLE = "The table is empty: Plan fills it, or add a row (+) per object and type it."
SHOW_BOXES_INFO = "each result's layout drawn over a copy (the results and their downloads stay clean)"
NO_BOXES = ("⚠ no boxes to show: these results were drawn without a layout (plan one, or "
            "turn \"Plan the layout\" on with a grounded model)")
# The colour a phrase names (the shapes world's colours), else the palette's by position.
COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 220),
           "yellow": (230, 190, 0), "orange": (245, 130, 20), "purple": (148, 80, 200),
           "pink": (230, 100, 180), "cyan": (0, 170, 200), "brown": (140, 86, 60),
           "black": (30, 30, 30), "white": (235, 235, 235), "gray": (127, 127, 127),
           "grey": (127, 127, 127)}
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (23, 190, 207)]


def is_grounded(model: str | None) -> bool:
    """Whether a model draws layouts: the embedded grounded model, a name that says GLIGEN, or
    the embedded plain model (the default offline), whose layouts its grounded twin draws
    (``vgen.catalog.layout_model``): so a first visit plans the picture, and the plain model
    is one click away (untick "Plan the layout")."""
    ref = (model or "").strip().split("@")[0].rstrip("/")
    return (Path(ref).name == EMBEDDED_GROUNDED_MODEL or "gligen" in ref.lower()
            or layout_model(model) == EMBEDDED_GROUNDED_MODEL)


# ---- /plan ------------------------------------------------------------------------------------


def plan_answer(result, seconds: float) -> dict:
    """A PlanResult as the endpoint's JSON (also what the panel keeps of it)."""
    return {"layouts": [layout.to_dict() for layout in result.layouts],
            "seeds": list(result.seeds), "planner": result.planner, "revision": result.revision,
            "temperature": result.temperature, "prompt": result.prompt, "texts": list(result.texts),
            "skipped_seeds": list(result.skipped_seeds), "seconds": round(seconds, 3)}


def plan_job(prompt, planner, seed, num_variants, temperature, progress, request, *,
             n_outputs: int, finish, status=None):
    """The engine job of a plan (the worker's ``plan`` kind), for ``/plan`` and for a Generate
    that plans first; ``finish(answer)`` makes the outputs."""
    req = plan_request(prompt, planner, seed, num_variants, temperature)
    return run_job("plan", lambda: req, progress, request, n_outputs=n_outputs,
                   finish=lambda job: finish(plan_answer(job.result, job.seconds())),
                   status=status)


@endpoint
async def plan_layouts(prompt: str, planner: str | None = None, seed: float | None = 0,
                       num_variants: float = DEFAULT_VARIANTS, temperature: float | None = 0.7,
                       request: gr.Request = None, progress=gr.Progress()):
    """Plan the picture: a language model writes layouts (objects in boxes) for a prompt; pass one to /generate's layout.

    Parameters:
        prompt: what the picture shows
        planner: a layout planner (Hub repo id or local folder); empty for the embedded vgen-shapes-planner
        seed: variant i uses seed + i (a variant the planner writes unparsably moves on to the next free seed)
        num_variants: how many layouts (1-16)
        temperature: sampling temperature from 0 to 2 (0: greedy)
    Returns:
        plan: {"layouts": [{"objects": [{"phrase": ..., "box": [x0, y0, x1, y1]}, ...], "background": ""}, ...], "seeds": the seed of each layout, "planner", "revision", "temperature", "prompt", "texts": what the planner wrote, "skipped_seeds", "seconds"}; boxes are fractions of the image (0-1) from its top left
    """
    async for out in plan_job(prompt, planner, seed, num_variants, temperature, progress,
                              request, n_outputs=1, finish=lambda answer: (answer,)):
        yield out


def recorded_plan(plan: dict | None, layout: Layout | None):
    """The LayoutPlan to record with a generation: only when the layout is one the planner wrote,
    unchanged (a table edited afterwards was not made by the planner)."""
    from vgen.requests import LayoutPlan

    if layout is None or not isinstance(plan, dict):
        return None
    for i, data in enumerate(plan.get("layouts") or []):
        try:
            if Layout.from_dict(data) == layout:
                return LayoutPlan(planner=plan["planner"], revision=plan.get("revision") or "",
                                  seed=plan["seeds"][i], temperature=plan.get("temperature"))
        except (ValueError, KeyError, IndexError, TypeError):
            return None
    return None


# ---- drawing ----------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def colour_of(phrase: str, index: int) -> tuple[int, int, int]:
    words = phrase.lower().replace(",", " ").split()
    for word in words:
        if word in COLOURS:
            return COLOURS[word]
    return PALETTE[index % len(PALETTE)]


def _light(rgb) -> bool:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b > 160


def _blank(width: int, height: int):
    """A white canvas with a light grid at eighths: where 0.25, 0.5, 0.75 lie."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for k in range(1, 8):
        shade = (200, 200, 200) if k % 2 == 0 else (232, 232, 232)
        draw.line([(k * width / 8, 0), (k * width / 8, height)], fill=shade)
        draw.line([(0, k * height / 8), (width, k * height / 8)], fill=shade)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(150, 150, 150))
    return image


def draw_layout(layout: Layout | None, base=None, width: int = CANVAS, legend: bool = True):
    """The layout's boxes, numbered, over ``base`` (a result, enlarged; boxes unfilled) or a
    blank canvas (boxes tinted), with a legend below: number, colour, phrase."""
    from PIL import Image, ImageDraw

    objects = layout.objects if layout is not None else ()
    if base is not None:
        height = max(1, round(width * base.height / base.width))
        small = base.width < width
        picture = base.convert("RGB").resize((width, height), Image.NEAREST if small
                                             else Image.LANCZOS)
    else:
        height = width
        picture = _blank(width, height)
    font, line = _font(max(12, width // 20)), max(12, width // 20) + 8
    # A tile (no legend) is shown small, three or four side by side: larger numbers.
    tag_font = font if legend else _font(max(12, width // 9))
    below = 12 + line * len(objects) if legend and objects else 0
    canvas = Image.new("RGBA", (width, height + below), "white")
    canvas.paste(picture, (0, 0))
    tint = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    tint_draw, thick = ImageDraw.Draw(tint), max(2, width // 110)
    for i, o in enumerate(objects):
        x0, y0, x1, y1 = o.pixel_box(width, height)
        if base is None:
            tint_draw.rectangle([x0, y0, x1, y1], fill=(*colour_of(o.phrase, i), 60))
    canvas = Image.alpha_composite(canvas, tint)
    draw = ImageDraw.Draw(canvas)
    for i, o in enumerate(objects):
        colour = colour_of(o.phrase, i)
        x0, y0, x1, y1 = o.pixel_box(width - 1, height - 1)
        edge = tuple(int(c * 0.6) for c in colour) if _light(colour) else colour
        # A dark hairline outside the box keeps it visible on any picture.
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(20, 20, 20), width=1)
        draw.rectangle([x0, y0, x1, y1], outline=edge, width=thick)
        _tag(draw, str(i + 1), x0, y0, colour, tag_font, width, height)
        if below:
            _legend_line(draw, i, o.phrase, colour, font, height + 4 + i * line, width, line)
    return canvas.convert("RGB")


def _tag(draw, text, x, y, colour, font, width, height) -> None:
    """The object's number in a filled square at its box's top-left corner (inside the picture)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 8, bottom - top + 6
    x, y = min(max(0, x), width - w), min(max(0, y), height - h)
    draw.rectangle([x, y, x + w, y + h], fill=colour)
    ink = (0, 0, 0) if _light(colour) else (255, 255, 255)
    draw.text((x + 4 - left, y + 3 - top), text, fill=ink, font=font)


def _legend_line(draw, i, phrase, colour, font, y, width, line) -> None:
    size = line - 8
    draw.rectangle([6, y + 3, 6 + size, y + 3 + size], fill=colour, outline=(60, 60, 60))
    # Cut with an ellipsis to fit (a legend line is never cropped), written with readable
    # spaces (the default font's ran the words together).
    label = fit_text(draw, f"{i + 1}  {phrase}", font, width - size - 20)
    draw_text(draw, (size + 14, y + 1), label, font, (20, 20, 20))


# ---- the panel's events -----------------------------------------------------------------------


def variant_choices(plan: dict) -> list[tuple[str, int]]:
    return [(f"{i + 1} · seed {s} · {len(data['objects'])} object"
             f"{'s' if len(data['objects']) != 1 else ''}", i)
            for i, (s, data) in enumerate(zip(plan["seeds"], plan["layouts"]))]


def _grid(n: int) -> tuple[int, int]:
    columns = max(1, min(n, TILES_PER_ROW))
    return columns, -(-n // columns)


def draw_variants(plan: dict, chosen: int):
    """Every planned layout as a tile (no legend: the phrases are in the table), the chosen one
    framed."""
    from PIL import Image, ImageDraw

    layouts = [Layout.from_dict(d) for d in plan["layouts"]]
    columns, rows = _grid(len(layouts))
    image = Image.new("RGB", (GAP + columns * (TILE + GAP),
                              GAP + rows * (TILE + CAPTION + GAP)), "white")
    draw, font = ImageDraw.Draw(image), _font(22)
    for i, (layout, seed) in enumerate(zip(layouts, plan["seeds"])):
        x, y = GAP + i % columns * (TILE + GAP), GAP + i // columns * (TILE + CAPTION + GAP)
        image.paste(draw_layout(layout, width=TILE, legend=False), (x, y))
        if i == chosen:
            draw.rectangle([x - 6, y - 6, x + TILE + 5, y + TILE + CAPTION - 2], outline=CHOSEN,
                           width=4)
        label = f"{i + 1} · seed {seed}"
        draw_text(draw, (x + (TILE - text_length(draw, label, font)) / 2, y + TILE + 4), label,
                  font, (20, 20, 20))
    return image


def tile_at(n: int, x: float, y: float) -> int | None:
    """The variant whose tile (with its caption) holds pixel (x, y) of ``draw_variants``."""
    columns, rows = _grid(n)
    c, r = int((x - GAP / 2) // (TILE + GAP)), int((y - GAP / 2) // (TILE + CAPTION + GAP))
    i = r * columns + c
    return i if 0 <= c < columns and 0 <= r < rows and i < n else None


def show_plan(plan: dict | None):
    """A /plan answer in the panel: its variants drawn, the picker, the first variant in the
    table, the info line; it also becomes the panel's state."""
    if not plan or not plan.get("layouts"):
        return skip(5)
    info = (f"**{plan['planner']}** · revision `{(plan['revision'] or '?')[:12]}` · seeds "
            f"{plan['seeds'][0]}–{plan['seeds'][-1]} · temperature {plan['temperature']:g} · "
            f"{plan['seconds']:.1f} s")
    if plan.get("skipped_seeds"):
        info += (" · unparsable, skipped: seeds "
                 + ", ".join(str(s) for s in plan["skipped_seeds"]))
    return (draw_variants(plan, 0), gr.update(choices=variant_choices(plan), value=0),
            layout_rows(Layout.from_dict(plan["layouts"][0]), TABLE_DIGITS), info, plan)


def pick_variant(index, plan):
    """A variant picked: framed in the drawing, and its layout in the table (replacing any
    edits)."""
    if not plan or not isinstance(index, int) or not 0 <= index < len(plan["layouts"]):
        return gr.skip(), gr.skip()
    return (draw_variants(plan, index),
            layout_rows(Layout.from_dict(plan["layouts"][index]), TABLE_DIGITS))


def select_canvas(plan, evt: gr.SelectData):
    """A click on the variants' drawing: the variant under it is picked."""
    index = evt.index
    i = tile_at(len(plan["layouts"]), *index[:2]) if plan and isinstance(index, (list, tuple)) \
        else None
    if i is None:
        return gr.skip(), gr.skip(), gr.skip()
    return (i, *pick_variant(i, plan))


def planned_layout(plan: dict | None, layout: Layout | None) -> Layout | None:
    """The table's layout, or the planner's own when the table shows one of its variants
    unedited (the table rounds to ``TABLE_DIGITS``): so an unedited plan is drawn, and
    recorded, exactly as planned."""
    if layout is None or not isinstance(plan, dict):
        return layout
    for data in plan.get("layouts") or []:
        try:
            exact = Layout.from_dict(data)
        except ValueError:
            return layout
        if exact.rounded(TABLE_DIGITS) == layout:
            return exact
    return layout


def show_table(rows):
    """The table's layout drawn as it stands, and a line that says what is wrong with it."""
    try:
        layout = layout_value(rows)
    except ValueError as e:
        return gr.skip(), f"✖ {e}"
    if layout is None:
        return None, EMPTY_TABLE
    n = len(layout)
    return draw_layout(layout), f"{n} object{'s' if n != 1 else ''}: Generate draws this layout."


def on_model(model):
    """A grounded model picked: planning on and the panel open; another model: planning off."""
    grounded = is_grounded(model)
    return grounded, gr.update(open=True) if grounded else gr.skip()


def restore_layout(path: str | None):
    """The layout a PNG was drawn with back in the table (planning on); nothing for others."""
    if not path:
        return skip(3)
    from vgen.images import open_image
    from vgen.metadata import read_parameters, request_from_parameters

    try:
        layout = request_from_parameters(read_parameters(open_image(path))).layout
    except (ValueError, KeyError):
        return skip(3)  # restore_parameters reports it
    if layout is None:
        return False, gr.skip(), gr.skip()
    return True, gr.update(open=True), layout_rows(layout)  # unrounded: drawn as it was


def recorded_layout(path: str):
    """(whether ``path`` is a PNG vgen recorded its parameters in, the layout it was drawn from
    or None)."""
    from vgen.images import open_image
    from vgen.metadata import read_parameters, request_from_parameters

    try:
        return True, request_from_parameters(read_parameters(open_image(path))).layout
    except Exception:  # noqa: BLE001 - a preview, a foreign PNG: nothing recorded
        return False, None


def image_layout(path: str):
    """The layout recorded in a result PNG (None: drawn without one, or not a vgen PNG)."""
    return recorded_layout(path)[1]


def result_overlays(gallery_value, show: bool):
    """"Show boxes": each result that was drawn from a layout, with that layout (read from the
    PNG itself) over it. A copy: the gallery's files, what Download gives, stay clean. Results
    drawn without a layout have no boxes: the checkbox's note says so (it was silent)."""
    if not show or not gallery_value:
        return gr.update(value=None, visible=False), gr.update(info=SHOW_BOXES_INFO)
    out, plain = [], 0
    for item in gallery_value:
        path, caption = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        recorded, layout = recorded_layout(path) if path else (False, None)
        plain += recorded and layout is None  # a preview (nothing recorded) is not yet plain
        if layout is not None:
            from PIL import Image

            with Image.open(path) as image:
                out.append((draw_layout(layout, base=image), caption or ""))
    info = NO_BOXES if plain and not out else SHOW_BOXES_INFO
    return gr.update(value=out or None, visible=bool(out)), gr.update(info=info)


# ---- Generate with the panel ------------------------------------------------------------------


def planning_line(p: Progress) -> tuple:
    """Generate's info line while it plans the layout first (gallery, info, notice, answer)."""
    text = "Planning the layout" if p.text.startswith(("loading", "starting")) else \
        p.text[:1].upper() + p.text[1:]
    return (None if p.first else gr.skip(), f"{results.RUNNING} {text} · {p.seconds:.0f} s",
            "" if p.first else gr.skip(), gr.skip())


async def layout_to_draw(enabled, table, plan, prompt, planner, seed, num_variants, temperature,
                         progress, request, found: list):
    """Generate's layout: none with planning off; the table's; or, with an empty table, a fresh
    plan's first variant (the plan is yielded for the panel to show). ``found`` gets
    (layout JSON, the plan it came from)."""
    if not enabled:
        found.append(("", None))
        return
    layout = planned_layout(plan, layout_value(table))
    if layout is not None:
        found.append((layout.to_json(), plan))
        return
    answers: list = []

    def finish(answer: dict) -> tuple:  # the plan goes to the panel (its answer's .change)
        answers.append(answer)
        return gr.skip(), gr.skip(), gr.skip(), answer

    async for out in plan_job(prompt, planner, seed, num_variants, temperature, progress,
                              request, n_outputs=4, status=planning_line, finish=finish):
        yield out
    first = Layout.from_dict(answers[0]["layouts"][0])
    found.append((first.to_json(), answers[0]))


def failed(e: BaseException) -> tuple:
    return None, results.failed_line(ui_error(e)), "", gr.skip()


# ---- build and wire ---------------------------------------------------------------------------


@dataclass
class LayoutPanel:
    accordion: gr.Accordion
    enabled: gr.Checkbox  # "Plan the layout": Generate draws the table's layout
    planner: gr.Dropdown
    variants: gr.Number
    temperature: gr.Slider
    plan: gr.Button
    canvases: gr.Image  # the planned variants drawn (a click picks one)
    picker: gr.Radio
    table: gr.Dataframe  # the layout Generate draws (phrase, x0, y0, x1, y1)
    drawing: gr.Image  # the table's layout drawn
    check: gr.Markdown  # what the table holds, or what is wrong with it
    info: gr.Markdown  # what made the plan
    answer: gr.JSON  # the /plan endpoint's answer (hidden: the panel shows it)
    state: gr.State  # the last plan (plain dict: the answer)
    event: object = None

    def generate_inputs(self) -> list:
        """What Generate takes from the panel, in ``layout_to_draw``'s order."""
        return [self.enabled, self.table, self.state, self.planner, self.variants,
                self.temperature]


def build(model: str | None) -> LayoutPanel:
    from vgen.plan import DEFAULT_PLANNER, DEFAULT_TEMPERATURE, MAX_VARIANTS

    grounded = is_grounded(model)
    with gr.Accordion("Layout · objects in boxes (grounded models)", open=grounded) as accordion:
        gr.Markdown("A planner writes the prompt as objects in boxes; a grounded model "
                    f"(`{EMBEDDED_GROUNDED_MODEL}`, GLIGEN) draws each object in its box. "
                    "Plan, pick a variant, edit the table (x and y from 0 to 1, from the top "
                    "left; add or delete rows), then Generate.")
        enabled = StrictCheckbox(label="Plan the layout", value=grounded, elem_id="t2i-plan-on",
                                 info="Generate draws the table's layout (an empty table: "
                                 "it plans first)")
        with gr.Row(equal_height=True):
            planner = StrictDropdown(choices=[DEFAULT_PLANNER], value=DEFAULT_PLANNER,
                                     allow_custom_value=True, label="Planner", scale=3,
                                     elem_classes=["vgen-model"])
            plan = gr.Button("Plan", scale=1, elem_id="t2i-plan")
        with gr.Row():
            variants = StrictNumber(label=f"Variants (1-{MAX_VARIANTS})", value=DEFAULT_VARIANTS,
                                    precision=0, minimum=1, maximum=MAX_VARIANTS)
            temperature = StrictSlider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05,
                                       label="Temperature (planner)")
        # No label: an image's label is drawn over its top-left corner.
        canvases = gr.Image(label="Planned layouts", show_label=False, type="pil", format="png",
                            interactive=False, buttons=[], elem_id="t2i-plan-variants")
        picker = gr.Radio(choices=[], label="Variant (or click its drawing)", type="value",
                          elem_id="t2i-plan-picker")
        table = gr.Dataframe(headers=list(LAYOUT_COLUMNS), datatype=["str"] + ["number"] * 4,
                             # Rows can be added and deleted, columns not ((n, "fixed"):
                             # Gradio 6.31 has no column_limits yet).
                             column_count=(len(LAYOUT_COLUMNS), "fixed"), row_count=1,
                             type="array", interactive=True, label="Layout to draw",
                             # Number columns as wide as their numbers, the phrase 30 %: on
                             # a phone (with components.CSS's smaller cells) it all fits.
                             column_widths=["30%", "auto", "auto", "auto", "auto"],
                             wrap=True, show_row_numbers=True, elem_id="t2i-layout-table")
        check = gr.Markdown(EMPTY_TABLE, elem_id="t2i-layout-check")
        # No label: an image's label is drawn over its top-left corner (a box's number).
        drawing = gr.Image(label="The layout to draw", show_label=False, type="pil",
                           format="png", interactive=False, height=380, buttons=[],
                           elem_id="t2i-layout-drawing", elem_classes=["vgen-enlarge"])
        info = gr.Markdown(elem_id="t2i-plan-info")
        answer = gr.JSON(visible=False, label="plan")
    return LayoutPanel(accordion, enabled, planner, variants, temperature, plan, canvases, picker,
                       table, drawing, check, info, answer, gr.State(None))


def wire(x: LayoutPanel, prompt: gr.Textbox, seed: gr.Number, model: gr.Dropdown,
         restore_file: gr.File) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
    # The one /plan endpoint; its answer (also what a Generate that plans first sends) is shown
    # by the panel. Seed: the tab's own (variant i: seed + i).
    x.event = x.plan.click(plan_layouts, [prompt, x.planner, seed, x.variants, x.temperature],
                           x.answer, api_name="plan", concurrency_limit=None,
                           trigger_mode="once", show_progress_on=x.info)
    x.answer.change(show_plan, x.answer, [x.canvases, x.picker, x.table, x.info, x.state],
                    **quick)
    x.picker.input(pick_variant, [x.picker, x.state], [x.canvases, x.table], **quick)
    x.canvases.select(select_canvas, x.state, [x.picker, x.canvases, x.table], **quick)
    x.table.change(show_table, x.table, [x.drawing, x.check], **quick)
    model.input(on_model, model, [x.enabled, x.accordion], **quick)
    restore_file.upload(restore_layout, restore_file, [x.enabled, x.accordion, x.table], **quick)
