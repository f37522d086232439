"""The Edit tab (img2img, inpaint, instruct) and its endpoint ``/edit``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from vgen.catalog import default_model, entry_for
from vgen.requests import EDIT_MODES

from .. import results
from ..components import (EDIT_TASKS, decoder_radio, gallery, limits, model_dropdown,
                          scheduler_choices, zero_means_default)
from ..forms import DEFAULT_SCHEDULER, DEFAULT_STRENGTH, edit_request, source_and_mask
from ..handlers import api_only, endpoint, run_job
from ..inputs import (SafeImageEditor, StrictCheckbox, StrictDropdown, StrictNumber,
                      StrictSlider, StrictTextbox)
from .text_to_image import pick_image, selected_index


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
        mode: img2img | instruct | inpaint
        mask: inpaint only: a mask image, white (or opaque, for RGBA) where to repaint
        strength: img2img / inpaint: how much of the schedule is re-run (0.01-1)
        image_guidance: instruct: how closely to keep the source image; None for the model's
            default (its card's image_guidance_scale, else 1.5)
        negative_prompt: what to avoid (empty for none)
        model: Hub repo id or local model folder; empty for the mode's default model (instruct:
            the embedded editor vgen-shapes-edit when it is here, else timbrooks/instruct-pix2pix)
        steps: denoising steps; None for the model's default
        guidance: classifier-free guidance scale; None for the model's default
        seed: seed of the first image (image i uses seed + i); ignored when randomize_seed
        randomize_seed: draw a fresh seed
        width: working width, a multiple of 8; None (with height None): the source's aspect
            at the model's native size
        height: working height, a multiple of 8; None: as for width
        num_images: how many images
        scheduler: "model default" or a sampler key
        decoder: "full" (the model's VAE) or "fast" (TAESD decodes Stable Diffusion / SDXL
            latents; instruct edits still encode the source with the full VAE)
    Returns:
        gallery of PNG files with their parameters, an info line (it names the decoder), and a
        vocabulary notice
    """

    def build():
        source, source_mask = source_and_mask(image, mask, mode)  # the editor's value, or files
        return edit_request(source, source_mask, prompt, mode, strength, image_guidance,
                            negative_prompt, model, steps, guidance, seed, randomize_seed,
                            width, height, num_images, scheduler, decoder)

    async for out in run_job("edit", build, progress, request, n_outputs=3,
                             finish=results.outputs):
        yield out


def on_mode_change(mode: str, model: str | None):
    """Show the slider that matters for the mode; swap an unsuitable curated model."""
    entry = entry_for((model or "").strip() or default_model())
    new_model = gr.skip()
    if entry is not None:
        if mode == "instruct" and "instruct" not in entry.tasks:
            new_model = default_model("instruct")  # the embedded editor when it is here
        elif mode != "instruct" and entry.tasks == ("instruct",):
            new_model = default_model()
    return (new_model, gr.update(visible=mode != "instruct"),
            gr.update(visible=mode == "instruct"))


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
    no_mask: gr.State  # the UI's mask is drawn in the editor: edit_image's mask stays None
    api_image: gr.File  # the /edit endpoint's image, mask, image guidance and model
    api_mask: gr.File
    api_image_guidance: gr.Number
    api_model: gr.Textbox
    event: Any = None

    def settings(self) -> list:
        """edit_image's inputs after the image (the mask slot is the UI's empty mask)."""
        return [self.prompt, self.mode, self.no_mask, self.strength, self.image_guidance,
                self.negative_prompt, self.model, self.steps, self.guidance, self.seed,
                self.randomize_seed, self.width, self.height, self.num_images, self.scheduler,
                self.decoder]

    def outputs(self) -> list:
        return [self.gallery, self.info, self.notice]


def build() -> EditTab:
    lim = limits()
    with gr.Tab("Edit", id="edit"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                editor = SafeImageEditor(
                    label="Image (inpaint: paint where to repaint)", type="filepath",
                    format="png", sources=["upload", "clipboard"], height=520,
                    elem_id="edit-editor", elem_classes=["vgen-pixelated"],
                    brush=gr.Brush(colors=["#ffffff", "#ff3df5", "#000000"],
                                   default_color="#ff3df5", color_mode="defaults"),
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
    return EditTab(editor, prompt, mode, strength, image_guidance, negative, model, steps,
                   guidance, seed, randomize, width, height, num_images, scheduler, decoder, edit,
                   stop, edited, selected, reuse, inspect, info, notice, gr.State(None),
                   api_image, api_mask, api_image_guidance, api_model)


def stopped():
    """Stop pressed: no stale result line stays, and the info line says so."""
    return gr.skip(), "⏹ Stopped: no edit was finished.", ""


def wire(e: EditTab) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None)
    inputs = [e.editor, *e.settings()]
    e.event = e.edit.click(
        edit_image, inputs, e.outputs(), api_visibility="private", concurrency_limit=None,
        trigger_mode="once", show_progress_on=e.gallery,
        js=zero_means_default(inputs, [e.image_guidance, e.steps, e.guidance, e.width,
                                       e.height]),
    )
    e.stop.click(stopped, None, e.outputs(), cancels=[e.event], **quick)
    # The /edit endpoint: the same function, with files for the image and the mask.
    api = [e.api_image, e.prompt, e.mode, e.api_mask, e.strength, e.api_image_guidance,
           e.negative_prompt, e.api_model, *e.settings()[7:]]
    api_only(edit_image, api, e.outputs(), "edit")
    e.mode.change(on_mode_change, [e.mode, e.model], [e.model, e.strength, e.image_guidance],
                  **quick)
    e.gallery.select(selected_index, None, e.selected, **quick)
    e.gallery.change(lambda: None, None, e.selected, **quick)
    e.reuse.click(pick_image, [e.gallery, e.selected], e.editor, **quick)
