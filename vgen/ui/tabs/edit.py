"""The Edit tab (img2img, inpaint, instruct) and its endpoint ``/edit``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from vgen.catalog import default_model, entry_for
from vgen.requests import EDIT_MODES

from .. import results
from ..components import (EDIT_TASKS, decoder_radio, gallery, limits, model_dropdown,
                          scheduler_choices, zero_means_default)
from ..forms import DEFAULT_SCHEDULER, DEFAULT_STRENGTH, edit_request, source_and_mask
from ..handlers import api_only, endpoint, run_job, ui_error
from ..inputs import (SafeImageEditor, StrictCheckbox, StrictDropdown, StrictNumber,
                      StrictSlider, StrictTextbox)
from .text_to_image import pick_image, selected_index

STRENGTH_MODES = ("img2img", "inpaint")  # the modes that use the strength slider
# The brush's radius in image pixels. Gradio's "auto" is 25 whatever the image (about 40 % of a
# 64-pixel picture per stroke); 3 paints a stroke of ~10 % of the shapes world's 64 pixels (the
# brush menu's slider goes to 100 for large photos). The colours are translucent, so the
# picture shows through the mask while it is painted (any paint counts as mask).
BRUSH_RADIUS = 3
BRUSH_COLORS = [("#ff3df5", 0.55), ("#ffffff", 0.55), ("#000000", 0.55)]


@endpoint
async def edit_image(
    image: str | None,
    prompt: str,
    mode: str = "img2img",
    mask: str | None = None,
    strength: float = DEFAULT_STRENGTH,
    image_guidance: float | None = None,
    negative_prompt: str | None = None,
    model: str | None = None,
    steps: float | None = None,
    guidance: float | None = None,
    seed: float | None = 0,
    randomize_seed: bool = True,
    width: float | None = None,
    height: float | None = None,
    num_images: float = 1,
    scheduler: str = DEFAULT_SCHEDULER,
    decoder: str = "full",
    request: gr.Request = None,
    progress=gr.Progress(),
):
    """Edit an image: img2img (SDEdit), instruct (InstructPix2Pix) or inpaint (with a mask).

    Parameters:
        image: the source image file (PNG, JPEG, WebP, BMP, GIF or TIFF)
        prompt: the instruction (instruct) or a description of the result (img2img, inpaint)
        mode: img2img, instruct or inpaint
        mask: inpaint only: a mask image, white (or opaque, for RGBA) where to repaint
        strength: img2img and inpaint: how much of the schedule is re-run (0.01-1)
        image_guidance: instruct: how closely to keep the source image; None for the model's default (1.5 unless its card says)
        negative_prompt: what to avoid (empty for none)
        model: Hub repo id or local model folder; empty for the mode's default model (instruct: the embedded editor)
        steps: denoising steps; None for the model's default
        guidance: classifier-free guidance scale; None for the model's default
        seed: seed of the first image (image i uses seed + i); ignored when randomize_seed is true
        randomize_seed: draw a fresh seed
        width: working width, a multiple of 8; None with height None: the source's aspect at the model's size
        height: working height, a multiple of 8; None: as for width
        num_images: how many images
        scheduler: "model default" or a sampler key (dpm++2m, euler, euler-a, ddim, unipc, lcm, ...)
        decoder: "full" (the model's VAE) or "fast" (TAESD for SD and SDXL latents; the source is still encoded in full)
    Returns:
        gallery: PNG files with their parameters, captioned "seed N"
        info: the line that says what made the edit (model, mode, strength or image guidance, seeds, decoder)
        notice: words the model does not know, and what the input checks noticed (an animation's first frame)
    """

    def build():
        source, source_mask = source_and_mask(image, mask, mode)  # the editor's value, or files
        return edit_request(source, source_mask, prompt, mode, strength, image_guidance,
                            negative_prompt, model, steps, guidance, seed, randomize_seed,
                            width, height, num_images, scheduler, decoder)

    try:
        job = run_job("edit", build, progress, request, n_outputs=4, finish=finished,
                      status=progress_line)
        async with contextlib.aclosing(job) as outputs:  # closed: the engine stops first
            async for out in outputs:
                yield out
    except Exception as e:  # noqa: BLE001 - shown, then raised (Stop is not an Exception)
        # The info line says why there is no edit (the message also comes as gr.Error), so the
        # previous edit's line and results do not stay on screen.
        yield None, results.failed_line(ui_error(e)), "", None
        raise


def progress_line(p) -> tuple:
    """While the edit runs: Text to Image's progress line; the last edit's results (and so its
    LastEdit: nothing to inspect) are cleared when it starts."""
    return (*results.running(p), None if p.first else gr.skip())


@dataclass(frozen=True)
class LastEdit:
    """The edit whose results are on screen, as it ran (defaults filled in, its seeds), kept
    per session so "Inspect this edit" inspects that edit, not what the form says now."""

    request: Any  # vgen.requests.EditRequest
    seeds: tuple[int, ...]

    def for_image(self, index) -> Any:
        """The request of one of its images (image i has seed i): one image, that seed."""
        i = index if isinstance(index, int) and 0 <= index < len(self.seeds) else 0
        return replace(self.request, seed=self.seeds[i], num_images=1)


def finished(job) -> tuple:
    """Gallery, info line, notice, and the edit as it ran (a ``gr.State``: not in the API)."""
    return (*results.outputs(job), LastEdit(job.result.request, tuple(job.result.seeds)))


def mode_model(mode: str, model: str | None):
    """The model to switch to when ``mode`` changes (``gr.skip()``: keep it): the mode's
    default model in place of one that cannot do the mode (a curated model of other tasks, or
    the other task's default model)."""
    ref = (model or "").strip() or default_model()
    entry = entry_for(ref)
    tasks = entry.tasks if entry is not None else None
    if mode == "instruct":
        if ref == default_model() or (tasks is not None and "instruct" not in tasks):
            return default_model("instruct")  # the embedded editor when it is here
    elif ref == default_model("instruct") or tasks == ("instruct",):
        return default_model()
    return gr.skip()


def on_mode_change(mode: str, model: str | None, strength=None, memory: dict | None = None):
    """A new mode: the slider that matters for it, a model that can do it, and the strength
    this mode had last (each mode keeps its own: 0.3 left from img2img made inpaint do
    nothing). ``memory`` (a ``gr.State``) holds the mode shown and each mode's strength."""
    memory = dict(memory or {})
    previous = memory.get("mode", "img2img")
    if strength is not None and previous in STRENGTH_MODES:
        memory[previous] = strength
    memory["mode"] = mode
    if mode in STRENGTH_MODES:
        strength_update = gr.update(visible=True, value=memory.get(mode, DEFAULT_STRENGTH))
    else:
        strength_update = gr.update(visible=False)
    return (mode_model(mode, model), strength_update, gr.update(visible=mode == "instruct"),
            memory)


@dataclass
class EditTab:
    editor: gr.ImageEditor
    prompt: gr.Textbox
    mode: gr.Radio
    strength: gr.Slider
    image_guidance: gr.Slider
    negative_prompt: gr.Textbox
    model: gr.Dropdown
    steps: gr.Number
    guidance: gr.Number
    seed: gr.Number
    randomize_seed: gr.Checkbox
    width: gr.Number
    height: gr.Number
    num_images: gr.Number
    scheduler: gr.Dropdown
    decoder: gr.Radio
    edit: gr.Button
    stop: gr.Button
    gallery: gr.Gallery
    selected: gr.State
    reuse: gr.Button
    inspect: gr.Button  # -> the Features tab, with this edit's attention maps
    info: gr.Markdown
    notice: gr.Markdown
    # edit_image's mask in the UI: None, or the mask "Use as mask" attached to the picture it
    # put in the editor (features.mask_editor_value); painted strokes are the editor's layers.
    attached_mask: gr.State
    api_image: gr.File  # the /edit endpoint's image, mask, image guidance and model
    api_mask: gr.File
    api_image_guidance: gr.Number
    api_model: gr.Textbox
    last_edit: gr.State  # the LastEdit whose results are shown (None: nothing to inspect)
    modes: gr.State  # the mode shown and each mode's strength (on_mode_change)
    event: Any = None

    def settings(self) -> list:
        """edit_image's inputs after the image (the mask slot is the UI's empty mask)."""
        return [self.prompt, self.mode, self.attached_mask, self.strength, self.image_guidance,
                self.negative_prompt, self.model, self.steps, self.guidance, self.seed,
                self.randomize_seed, self.width, self.height, self.num_images, self.scheduler,
                self.decoder]

    def outputs(self) -> list:
        """edit_image's outputs: gallery, info line, notice, then the LastEdit state."""
        return [self.gallery, self.info, self.notice, self.last_edit]


def build() -> EditTab:
    lim = limits()
    with gr.Tab("Edit", id="edit"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                editor = SafeImageEditor(
                    label="Image (inpaint: paint where to repaint; brush size in the brush "
                    "menu)", type="filepath", format="png", sources=["upload", "clipboard"],
                    height=520, elem_id="edit-editor", elem_classes=["vgen-pixelated"],
                    brush=gr.Brush(default_size=BRUSH_RADIUS, colors=BRUSH_COLORS,
                                   default_color=BRUSH_COLORS[0], color_mode="defaults"),
                    eraser=gr.Eraser(default_size=BRUSH_RADIUS),
                )
                prompt = StrictTextbox(label="Instruction / prompt", lines=2,
                                       placeholder="img2img / inpaint: describe the result; "
                                       "instruct: say what to change")
                mode = gr.Radio(choices=list(EDIT_MODES), value="img2img", label="Mode",
                                info="img2img redraws the whole picture; inpaint repaints only "
                                "the painted area; instruct follows an instruction")
                with gr.Row():
                    edit = gr.Button("Edit", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                model = model_dropdown(EDIT_TASKS)
                with gr.Accordion("Settings · 0 = the model's default (size: the source's "
                                  "aspect)", open=True):
                    strength = StrictSlider(0.01, 1.0, value=DEFAULT_STRENGTH, step=0.01,
                                            label="Strength",
                                            info="how much of the image is redrawn")
                    image_guidance = StrictSlider(0.0, 10.0, value=0.0, step=0.1,
                                                  label="Image guidance", visible=False,
                                                  info="how closely to keep the source image "
                                                  "(0: the model's default)")
                    with gr.Row():
                        steps = StrictNumber(label="Steps", value=None, precision=0)
                        guidance = StrictNumber(label="Guidance", value=None, step=0.5)
                    with gr.Row():
                        seed = StrictNumber(label="Seed", value=0, precision=0)
                        randomize = StrictCheckbox(label="Randomize seed", value=True)
                    with gr.Row():
                        width = StrictNumber(label="Width", value=None, precision=0, step=8)
                        height = StrictNumber(label="Height", value=None, precision=0, step=8)
                    negative = StrictTextbox(label="Negative prompt", lines=1)
                    with gr.Row():
                        num_images = StrictNumber(label=f"Images (1-{lim.max_images})", value=1,
                                                  precision=0)
                        scheduler = StrictDropdown(label="Scheduler", choices=scheduler_choices(),
                                                   value=DEFAULT_SCHEDULER)
                    decoder = decoder_radio()
            with gr.Column(scale=6):
                edited = gallery("Edited", "edit-gallery")
                selected = gr.State(None)
                with gr.Row():
                    reuse = gr.Button("Edit this result further", size="sm")
                    inspect = gr.Button("Inspect this edit → Features", size="sm")
                info = gr.Markdown(label="info", elem_id="edit-info")
                notice = gr.Markdown(label="notice", elem_id="edit-notice")
        # The /edit endpoint's own inputs: a plain image file, an optional mask file, an image
        # guidance that may be None (the slider cannot), and a model that may be empty (the
        # mode's default model; the picker always names one).
        api_image = gr.File(label="image", visible=False, type="filepath")
        api_mask = gr.File(label="mask", visible=False, type="filepath")
        api_image_guidance = StrictNumber(label="image guidance", value=None, visible=False)
        api_model = StrictTextbox(label="model", value="", visible=False)
        # Inside the tab: a component made between two tabs, right in gr.Tabs, made the next
        # tabs' buttons appear twice once shown.
        attached_mask, last_edit, modes = gr.State(None), gr.State(None), gr.State({"mode": "img2img"})
    return EditTab(editor, prompt, mode, strength, image_guidance, negative, model, steps,
                   guidance, seed, randomize, width, height, num_images, scheduler, decoder, edit,
                   stop, edited, selected, reuse, inspect, info, notice, attached_mask,
                   api_image, api_mask, api_image_guidance, api_model, last_edit, modes)


async def stopped(info: str | None, request: gr.Request = None) -> tuple:
    """Stop pressed: as in Text to Image (while an edit ran, no result stays and the info line
    says it stopped; with none running nothing changes); nothing is left to inspect."""
    out = await results.stopped(info, request)
    return (*out, None if out[0] is None else gr.skip())


def refused(info: str | None) -> tuple:
    """The edit's inputs were refused before it ran: Text to Image's line, nothing to inspect."""
    out = results.refused(info)
    return (*out, None if out[0] is None else gr.skip())


def wire(e: EditTab) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
    inputs = [e.editor, *e.settings()]
    # The progress is the info line's (``results.running``), as in Text to Image.
    e.event = e.edit.click(
        edit_image, inputs, e.outputs(), api_visibility="private", concurrency_limit=None,
        trigger_mode="once", show_progress="hidden",
        js=zero_means_default(inputs, [e.image_guidance, e.steps, e.guidance, e.width,
                                       e.height], reveal=e.gallery.elem_id),
    )
    e.event.failure(refused, e.info, e.outputs(), **quick)
    e.stop.click(fn=None, cancels=[e.event])  # first: see text_to_image.wire
    e.stop.click(stopped, e.info, e.outputs(), **quick)
    # The /edit endpoint: the same function, with files for the image and the mask.
    api = [e.api_image, e.prompt, e.mode, e.api_mask, e.strength, e.api_image_guidance,
           e.negative_prompt, e.api_model, *e.settings()[7:]]
    api_only(edit_image, api, e.outputs()[:3], "edit")  # without the LastEdit state
    e.mode.change(on_mode_change, [e.mode, e.model, e.strength, e.modes],
                  [e.model, e.strength, e.image_guidance, e.modes], **quick)
    e.gallery.select(selected_index, None, e.selected, **quick)
    e.gallery.change(lambda: None, None, e.selected, **quick)
    e.reuse.click(pick_image, [e.gallery, e.selected], e.editor, **quick)
