"""The Compare tab: one prompt and seed across models and settings, side by side
(``vgen.compare``, ``vgen.compare_grid``). Its endpoint is ``/compare``."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from vgen.compare import PARAMETERS
from vgen.errors import InvalidRequestError, VgenError
from vgen.requests import GenerateRequest

from ..components import EXAMPLE_PROMPTS, T2I_TASKS, model_dropdown, zero_means_default
from ..forms import model_ref, opt_float, opt_int, text
from ..handlers import api_only, cache_dir, endpoint, run_job
from ..inputs import StrictCheckbox, StrictDropdown, StrictNumber, StrictTextbox

NO_AXIS = "none"
# Example values of each parameter an axis can vary (the values box's placeholder).
AXIS_HINTS = {
    "guidance": "1, 4, 7",
    "steps": "4, 10, 20",
    "scheduler": "default, euler, dpm++2m, unipc",
    "size": "64x64, 96x64",
    "model": "vgen-shapes-distilled, vgen-shapes   (the distilled student and its teacher)",
    "negative_prompt": "| red | blue   (text values are separated by |; empty = none)",
    "prompt": "a red circle | a blue square | two green triangles   (separated by |)",
    "expand": "off, on   (language-model prompt expansion, with the cell's seed)",
    "plan": "off, on   (plan a layout with the cell's seed; drawn on vgen-shapes-grounded)",
}
# What the values box is set to when an axis is switched to a parameter (model: the picker's).
AXIS_VALUES = {
    "guidance": "1, 4, 7",
    "steps": "5, 20",
    "scheduler": "default, euler, dpm++2m",
    "size": "64x64, 96x64",
    "negative_prompt": " | a blue square",
    "prompt": " | ".join(EXAMPLE_PROMPTS[:2]),
    "expand": "off, on",
    "plan": "off, on",
}


@dataclass
class Compared:
    """What one comparison left in the session: the result and its files (for re-rendering the
    grid with a word's attention maps, and for showing a clicked cell)."""

    result: Any  # vgen.compare.CompareResult
    files: list[str]  # the cells' PNGs (with their parameters), row by row
    grid: str  # the labelled grid PNG (the whole comparison in its metadata)
    zip: str  # the cells as PNGs with their parameters, plus comparison.json


def compare_request(prompt, x_param, x_values, y_param=NO_AXIS, y_values="", negative_prompt=None,
                    model=None, seed=None, steps=None, guidance=None, attention=False):
    """A ``vgen.compare.CompareRequest`` from UI values (seed None or -1: one drawn for all)."""
    from vgen.compare import Axis, CompareRequest, split_values

    base = GenerateRequest(prompt=text(prompt), negative_prompt=text(negative_prompt),
                           model=model_ref(model), steps=opt_int(steps, "steps"),
                           guidance=opt_float(guidance, "guidance"), seed=opt_int(seed, "seed"))
    if not x_param or x_param == NO_AXIS:
        raise InvalidRequestError(f"pick the x axis' parameter: one of {', '.join(PARAMETERS)}")
    x = Axis(x_param, tuple(split_values(x_param, text(x_values))))
    y = None
    if y_param and y_param != NO_AXIS:
        y = Axis(y_param, tuple(split_values(y_param, text(y_values))))
    return CompareRequest(base, x, y, attention=bool(attention))


def cell_axes(result, cell) -> list[str]:
    """``["guidance 4", "steps 20"]``: the cell's place in the grid."""
    req = result.request
    parts = [f"{req.x.param} {result.x_labels[cell.col]}"]
    if req.y is not None:
        parts.append(f"{req.y.param} {result.y_labels[cell.row]}")
    return parts


def cell_caption(result, cell) -> str:
    """``guidance 4 · steps 20 · 0.31 s · PASS``; a cell that could not run says ``error``; a
    cell drawn from a planned layout says on which model (``planned layout on ...``)."""
    from vgen.compare_plan import plan_note

    parts = cell_axes(result, cell)
    if cell.error is not None:  # the whole reason is on the tile and in the cell's info
        short = cell.error if len(cell.error) <= 60 else cell.error[:59] + "…"
        return " · ".join([*parts, "error: " + short])
    note = plan_note(cell.request)
    parts += [note] if note else []
    parts.append(f"{cell.seconds:.2f} s")
    if cell.score is not None:
        parts.append("PASS" if cell.score.passed else "FAIL")
    return " · ".join(parts)


def _compared(job) -> tuple:
    """The grid PNG, the cells and the ZIP of one finished comparison, in Gradio's cache folder
    (run off the event loop: encoding 16 large PNGs takes a while)."""
    from vgen.compare_grid import cells_zip, grid_image
    from vgen.metadata import png_bytes

    result = job.result
    folder = Path(tempfile.mkdtemp(prefix="vgen-compare-", dir=cache_dir()))
    grid = folder / "vgen-compare-grid.png"
    grid.write_bytes(png_bytes(grid_image(result)))
    archive = folder / "vgen-compare-cells.zip"
    archive.write_bytes(cells_zip(result))
    state = Compared(result, [path for path, _ in job.files], str(grid), str(archive))
    gallery = [(path, cell_caption(result, cell)) for path, cell in zip(state.files, result.flat())]
    return state.grid, gallery, result.summary(), state.zip, state


@endpoint
async def compare_grid(
    prompt: str,
    x_param: str = "guidance",
    x_values: str = "1, 4, 7",
    y_param: str = NO_AXIS,
    y_values: str = "",
    negative_prompt: str | None = None,
    model: str | None = None,
    seed: float | None = 0,
    steps: float | None = None,
    guidance: float | None = None,
    attention: bool = False,
    request: gr.Request = None,
    progress=gr.Progress(),
):
    """Compare: the same prompt and seed across the values of one or two parameters.

    Parameters:
        prompt: the base prompt (ignored when an axis is "prompt")
        x_param: the parameter along the columns: guidance, steps, scheduler, size, model, negative_prompt, prompt, expand or plan (off/on: a planned layout drawn on vgen-shapes-grounded)
        x_values: its values separated by commas ("1, 4, 7", "64x64, 96x64", "off, on"); prompts separated by "|"
        y_param: the parameter along the rows, or "none"
        y_values: its values, written as x_values are
        negative_prompt: the base negative prompt (empty for none)
        model: the base model, a Hub repo id (org/name[@revision]) or local folder; empty for the default model
        seed: the seed of every cell; None or -1 for one drawn for the whole grid
        steps: base denoising steps; None for the model's default
        guidance: base guidance scale; None for the model's default
        attention: also record every cell's cross-attention maps (the grid can then show a word's map)
    Returns:
        grid: the labelled grid PNG (the whole comparison as JSON in its "vgen-compare" text chunk)
        cells: PNG files with their parameters, captioned "<x> · <y> · seconds · PASS/FAIL" (or the cell's error)
        summary: request, per-cell seed, seconds, verdict and error, pass counts over judged cells per column and row
        zip: the cells as PNGs with their parameters, plus comparison.json
    """
    req = compare_request(prompt, x_param, x_values, y_param, y_values, negative_prompt,
                          model, seed, steps, guidance, attention)

    async for out in run_job("compare", lambda: req, progress, request, n_outputs=5,
                             finish=_compared):
        yield out


def tally_text(tally) -> str:
    """A pass rate over judged cells only, with how many were judged; ``–`` when none was."""
    if not tally.judged:
        return "–"
    return f"{tally.rate:.0%} ({tally.passed}/{tally.judged} judged)"


def _errors_text(result) -> str:
    errors = result.errors
    if not errors:
        return ""
    reasons = list(dict.fromkeys(c.error for c in errors))
    return (f"\n\n**{len(errors)} of {len(result.flat())} cells could not run** (grey tiles): "
            + "; ".join(reasons))


def compare_scores(result) -> str:
    """Markdown: the run in one line and, for the shapes model, PASS/FAIL per cell with the
    pass rates per column and row over the judged cells (the strict rule of ``python -m vgen
    eval shapes``); cells that could not run, and why."""
    req = result.request
    head_line = (f"**{result.rows}×{result.cols} cells** · seed {req.base.seed} · "
                 f"{result.seconds:.1f} s in all ({result.load_s:.1f} s loading) · "
                 f"{result.encodings} text encoding{'s' if result.encodings != 1 else ''}")
    if not result.scored:
        return head_line + _errors_text(result) + (
            "\n\nScores appear when the model is an embedded **vgen-shapes** model (or, with "
            "plan on, **vgen-shapes-grounded**) and the prompt is a sentence of its world "
            "(e.g. “" + EXAMPLE_PROMPTS[0] + "”).")

    def esc(s):
        return str(s).replace("|", "\\|")

    def mark(c):
        if c.error is not None:
            return "error"
        if c.score is None:
            return "– not judged"
        return "✓ pass" if c.score.passed else "✗ fail"

    head = [esc(f"{req.y.param} \\ {req.x.param}" if req.y is not None else req.x.param),
            *map(esc, result.x_labels), "row pass"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = result.row_tallies()
    for r, row in enumerate(result.cells):
        lines.append("| " + " | ".join([esc(result.y_labels[r]) if req.y is not None else "",
                                         *map(mark, row), tally_text(rows[r])]) + " |")
    lines.append("| **column pass** | " + " | ".join(map(tally_text, result.column_tallies()))
                 + f" | **{tally_text(result.tally())}** |")
    return head_line + _errors_text(result) + "\n\n" + "\n".join(lines)


def show_comparison(state: Compared | None):
    """A finished comparison: the scores, the word picker (when maps were recorded) and the
    download buttons; the selected cell is cleared."""
    if state is None:
        return (gr.skip(),) * 6
    from vgen.compare_grid import attention_words

    words = attention_words(state.result)
    return (compare_scores(state.result),
            gr.update(choices=[""] + words, value="", visible=bool(words)),
            gr.update(value=state.grid, interactive=True),
            gr.update(value=state.zip, interactive=True), None, "")


def show_compare_cell(state: Compared | None, evt: gr.SelectData):
    """A clicked cell full size, with its parameters and (shapes model) the analyzer's verdict."""
    if state is None or not isinstance(evt.index, int) or not 0 <= evt.index < len(state.files):
        return None, ""
    cell = state.result.flat()[evt.index]
    caption = f"**{cell_caption(state.result, cell)}**"
    if cell.error is not None:
        caption = f"**{' · '.join(cell_axes(state.result, cell))}** — not run: {cell.error}"
    elif cell.score is not None:
        caption += f" — analyzer: {cell.score.reason}"
    caption += "\n\n```\n" + cell.image.info.get("parameters", "") + "\n```"
    return state.files[evt.index], caption


def compare_word(state: Compared | None, word: str | None):
    """The grid with ``word``'s cross-attention map over every cell (none: the plain grid)."""
    if state is None:
        return gr.skip()
    if not word:
        return state.grid
    from vgen.compare_grid import grid_image
    from vgen.metadata import png_bytes

    data = png_bytes(grid_image(state.result, word=word))
    name = f"vgen-compare-attention-{hashlib.sha256(word.encode()).hexdigest()[:12]}.png"
    path = Path(state.grid).with_name(name)
    path.write_bytes(data)
    return str(path)


def axis_values(param: str | None, model: str | None = None) -> str:
    """What the values box holds when its axis is set to ``param``: that parameter's example
    values; for ``model`` the base model first, then the others the model picker offers."""
    if not param or param == NO_AXIS:
        return ""
    if param == "model":
        from ..components import model_choices

        refs = [model_ref(model), *(ref for _, ref in model_choices(T2I_TASKS))]
        return ", ".join(dict.fromkeys(r for r in refs if r))
    return AXIS_VALUES.get(param, "")


def compare_axis_hint(param: str | None, model: str | None = None):
    """A changed axis: its parameter's example values in the values box (the old values were
    another parameter's), and its hint as the placeholder; no axis: an empty, locked box."""
    return gr.update(value=axis_values(param, model), placeholder=AXIS_HINTS.get(param or "", ""),
                     interactive=param != NO_AXIS)


@dataclass
class CompareTab:
    prompt: gr.Textbox
    x_param: gr.Dropdown
    x_values: gr.Textbox
    y_param: gr.Dropdown
    y_values: gr.Textbox
    negative_prompt: gr.Textbox
    model: gr.Dropdown
    seed: gr.Number
    steps: gr.Number
    guidance: gr.Number
    attention: gr.Checkbox
    run: gr.Button
    stop: gr.Button
    grid: gr.Image
    word: gr.Dropdown
    scores: gr.Markdown
    download_grid: gr.DownloadButton
    download_zip: gr.DownloadButton
    gallery: gr.Gallery
    cell: gr.Image
    cell_info: gr.Markdown
    summary: gr.JSON  # an output of the /compare endpoint
    zip_file: gr.File  # an output of the /compare endpoint
    state: gr.State
    event: Any = None

    def inputs(self) -> list:
        return [self.prompt, self.x_param, self.x_values, self.y_param, self.y_values,
                self.negative_prompt, self.model, self.seed, self.steps, self.guidance,
                self.attention]


def _build_form(cap: int | None) -> dict:
    c: dict = {}
    c["prompt"] = StrictTextbox(label="Prompt", lines=2, value=EXAMPLE_PROMPTS[0],
                                placeholder=EXAMPLE_PROMPTS[0])
    with gr.Row():
        c["run"] = gr.Button("Run comparison", variant="primary", scale=3)
        c["stop"] = gr.Button("Stop", variant="stop", scale=1)
    with gr.Row():
        c["x_param"] = StrictDropdown(label="X axis (columns)", choices=list(PARAMETERS),
                                      value="guidance", scale=1)
        c["x_values"] = StrictTextbox(label="X values", value="1, 4, 7", scale=2,
                                      placeholder=AXIS_HINTS["guidance"])
    with gr.Row():
        c["y_param"] = StrictDropdown(label="Y axis (rows)", choices=[NO_AXIS, *PARAMETERS],
                                      value="steps", scale=1)
        c["y_values"] = StrictTextbox(label="Y values", value="5, 20", scale=2,
                                      placeholder=AXIS_HINTS["steps"])
    gr.Markdown("Every cell uses the same seed, so only the axes change. Values are "
                "separated by commas; prompts and negative prompts by `|`."
                + (f" At most {cap} cells." if cap else ""))
    c["model"] = model_dropdown(T2I_TASKS)
    with gr.Accordion("Base settings · 0 = the model's default", open=False):
        c["negative_prompt"] = StrictTextbox(label="Negative prompt", lines=1)
        with gr.Row():
            c["seed"] = StrictNumber(label="Seed (-1: draw one)", value=0, precision=0)
            c["steps"] = StrictNumber(label="Steps", value=None, precision=0)
            c["guidance"] = StrictNumber(label="Guidance", value=None, step=0.5)
    c["attention"] = StrictCheckbox(label="Record attention maps (then pick a word to see its "
                                    "map in every cell)", value=False)
    return c


def _build_results() -> dict:
    c: dict = {}
    # The grid's title row is its top: Gradio's label badge would sit on it, so the label is
    # a heading above the image instead (the label stays the image's accessible name).
    gr.Markdown("**Grid**", elem_id="compare-grid-heading")
    c["grid"] = gr.Image(label="Grid", show_label=False, elem_id="compare-grid", type="filepath",
                         format="png", interactive=False, elem_classes=["vgen-pixelated"],
                         buttons=["download", "fullscreen"])
    c["word"] = StrictDropdown(label="Attention of the word (in every cell)", choices=[""],
                               value="", visible=False, elem_id="compare-word")
    c["scores"] = gr.Markdown(elem_id="compare-scores")
    with gr.Row():
        c["download_grid"] = gr.DownloadButton("Download grid (PNG)", interactive=False, size="sm")
        c["download_zip"] = gr.DownloadButton("Download cells (ZIP)", interactive=False, size="sm")
    c["gallery"] = gr.Gallery(label="Cells (click one)", elem_id="compare-gallery",
                              elem_classes=["vgen-gallery", "vgen-pixelated"], columns=4,
                              height=420, object_fit="contain", format="png", type="filepath",
                              interactive=False, buttons=["download", "fullscreen"])
    with gr.Row(equal_height=False):
        c["cell"] = gr.Image(label="Selected cell", type="filepath", format="png",
                             interactive=False, elem_classes=["vgen-pixelated"], height=320,
                             scale=1)
        c["cell_info"] = gr.Markdown(elem_id="compare-cell-info")
    return c


def build() -> CompareTab:
    from vgen.compare import max_cells

    try:
        cap = max_cells()
    except VgenError:
        cap = None
    with gr.Tab("Compare", id="compare"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                c = _build_form(cap)
            with gr.Column(scale=7):
                c.update(_build_results())
        c["summary"] = gr.JSON(visible=False, label="summary")
        c["zip_file"] = gr.File(visible=False, label="cells")
        c["state"] = gr.State(None)
    return CompareTab(**c)


def wire(c: CompareTab) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None)
    inputs = c.inputs()
    # compare_grid is the Run button's and the /compare endpoint's (the API's without the
    # tab's state); then the tab's own displays.
    outputs = [c.grid, c.gallery, c.summary, c.zip_file, c.state]
    c.event = c.run.click(
        compare_grid, inputs, outputs, api_visibility="private", concurrency_limit=None,
        trigger_mode="once",
        show_progress_on=c.grid, js=zero_means_default(inputs, [c.steps, c.guidance]),
        scroll_to_output=True,  # on a phone the grid is far below the Run button
    )
    api_only(compare_grid, inputs, outputs[:-1], "compare")
    c.event.success(show_comparison, c.state, [c.scores, c.word, c.download_grid,
                                               c.download_zip, c.cell, c.cell_info], **quick)
    c.stop.click(fn=None, cancels=[c.event])
    c.gallery.select(show_compare_cell, c.state, [c.cell, c.cell_info], **quick)
    c.word.change(endpoint(compare_word), [c.state, c.word], c.grid, **quick)
    # .input: the user's own change (a value set by the app keeps what the box holds).
    c.x_param.input(compare_axis_hint, [c.x_param, c.model], c.x_values, **quick)
    c.y_param.input(compare_axis_hint, [c.y_param, c.model], c.y_values, **quick)
