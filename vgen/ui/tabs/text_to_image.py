"""The Text to Image tab and its endpoint ``/generate`` (with the prompt panel, ``/expand``, and
the layout panel, ``/plan``)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from vgen.catalog import default_model
from vgen.errors import InvalidRequestError
from vgen.requests import EditRequest

from .. import results
from ..components import (DEFAULT_INFO, EXAMPLE_PROMPTS, HUB_POINTER, T2I_TASKS, decoder_radio,
                          gallery, limits, model_dropdown, scheduler_choices, zero_means_default)
from ..forms import DEFAULT_SCHEDULER, generate_request
from ..handlers import api_only, endpoint, run_job, skip, ui_error
from ..inputs import StrictCheckbox, StrictDropdown, StrictNumber, StrictTextbox
from . import layout_panel, prompt_panel


@endpoint
async def generate_images(
    prompt: str,
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
    expansion: dict | None = None,
    layout: str | None = "",
    layout_plan: dict | None = None,
    request: gr.Request = None,
    progress=gr.Progress(),
):
    """Text to image: draw what the prompt describes (with a layout: each object in its box).

    Parameters:
        prompt: what to draw
        negative_prompt: what to avoid (empty for none)
        model: Hub repo id (org/name[@revision]) or local model folder; empty for the default model
        steps: denoising steps; None for the model's default
        guidance: classifier-free guidance scale; None for the model's default
        seed: seed of the first image (image i uses seed + i); ignored when randomize_seed is true
        randomize_seed: draw a fresh seed
        width: image width, a multiple of 8; None for the model's default
        height: image height, a multiple of 8; None for the model's default
        num_images: how many images (seeds seed, seed + 1, ...)
        scheduler: "model default" or a sampler key (dpm++2m, euler, euler-a, ddim, unipc, lcm, ...)
        decoder: "full" (the model's VAE) or "fast" (TAESD for SD and SDXL latents; other models say so)
        layout: objects in boxes as JSON, {"objects": [{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...], "background": ""} with x, y from 0 to 1 from the top left (e.g. a layout from /plan); drawn by a grounded (GLIGEN) model such as vgen-shapes-grounded; empty for none
    Returns:
        gallery: PNG files with their generation parameters in the "parameters" text chunk, captioned "seed N" (live previews while it runs)
        info: the line that says what made the images (model, revision, sampler, size, steps, seeds, decoder, seconds)
        notice: words the model does not know, or a size larger than the one it was trained at
    """
    try:
        req = generate_request(prompt, negative_prompt, model, steps, guidance, seed,
                               randomize_seed, width, height, num_images, scheduler, decoder,
                               layout)
        # The prompt may have been written by a language model (the Expand panel's record),
        # and the layout by the planner (the layout panel's last plan).
        req = replace(req, expansion=prompt_panel.recorded_expansion(expansion, prompt),
                      layout_plan=layout_panel.recorded_plan(layout_plan, req.layout))
        job = run_job("generate", lambda: req, progress, request, n_outputs=3,
                      finish=results.outputs, previews=True, status=results.running)
        async with contextlib.aclosing(job) as outputs:  # closed: the engine stops first
            async for out in outputs:
                yield out
    except Exception as e:  # noqa: BLE001 - shown, then raised (Stop is not an Exception)
        # The info line says why there is no image (the message also comes as gr.Error), so
        # neither the preview nor the previous job's line stays on screen.
        yield None, results.failed_line(ui_error(e)), ""
        raise


@endpoint
async def generate_in_tab(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                          width, height, num_images, scheduler, decoder, expansion, plan_layout,
                          table, plan, planner, num_variants, temperature,
                          request: gr.Request = None, progress=gr.Progress()):
    """The tab's Generate: ``generate_images`` (/generate) with the layout panel's layout, or
    none with "Plan the layout" off; an empty table is planned first (the panel shows the
    plan: the fourth output). The seed of a plan is the tab's."""
    found: list = []
    try:
        async with contextlib.aclosing(layout_panel.layout_to_draw(
                plan_layout, table, plan, prompt, planner, seed, num_variants, temperature,
                progress, request, found)) as planning:
            async for out in planning:
                yield out
    except Exception as e:  # noqa: BLE001 - shown, then raised, as generate_images does
        yield layout_panel.failed(e)
        raise
    layout, planned = found[0]
    job = generate_images(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                          width, height, num_images, scheduler, decoder, expansion, layout,
                          planned, request=request, progress=progress)
    async with contextlib.aclosing(job) as outputs:  # closed: the engine stops first
        async for out in outputs:
            yield (*out, gr.skip())


def restore_parameters(path: str | None):
    """Text to Image fields from the ``parameters`` chunk of a PNG made by vgen (or A1111)."""
    if not path:
        return skip(10)
    from vgen.images import open_image
    from vgen.metadata import read_parameters, request_from_parameters

    try:
        req = request_from_parameters(read_parameters(open_image(path)))
    except KeyError as e:
        raise InvalidRequestError(f"the parameters text is incomplete ({e} is missing)") from None
    name = Path(path).name
    if isinstance(req, EditRequest):
        gr.Info(f"Restored the settings of {name}. It was made by an edit ({req.mode}); its "
                "source image is not stored, so only the shared settings were restored.")
    else:
        gr.Info(f"Restored the settings of {name}: prompt, model, {req.steps} steps, "
                + (f"seed {req.seed}" if req.seed is not None else "a random seed")
                + (f", {req.width}×{req.height}" if req.width and req.height else "") + ".")
    return (
        req.prompt, req.negative_prompt, req.model or default_model(), req.steps, req.guidance,
        req.seed if req.seed is not None else gr.skip(), req.seed is None, req.width, req.height,
        req.scheduler or DEFAULT_SCHEDULER,
    )


def selected_index(evt: gr.SelectData):
    return evt.index


def pick_image(gallery_value, index):
    """The selected (else first) image of a gallery, for the editor."""
    if not gallery_value:
        raise gr.Error("There is no result to edit yet: generate an image first.",
                       print_exception=False)
    i = index if isinstance(index, int) and 0 <= index < len(gallery_value) else 0
    item = gallery_value[i]
    return item[0] if isinstance(item, (tuple, list)) else item


@dataclass
class TextToImageTab:
    prompt: gr.Textbox
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
    generate: gr.Button
    stop: gr.Button
    gallery: gr.Gallery
    selected: gr.State
    send_to_edit: gr.Button
    inspect: gr.Button  # "Inspect in Features"
    info: gr.Markdown
    notice: gr.Markdown
    restore_file: gr.File
    expand: prompt_panel.PromptPanel
    layout: layout_panel.LayoutPanel
    show_boxes: gr.Checkbox
    overlays: gr.Gallery  # the results with their boxes ("Show boxes"): copies
    api_layout: gr.Textbox  # /generate's layout JSON (hidden: the tab's comes from the panel)
    event: Any = None

    def settings(self) -> list:
        """The first inputs of ``generate_images`` (the API's, up to ``decoder``)."""
        return [self.prompt, self.negative_prompt, self.model, self.steps, self.guidance,
                self.seed, self.randomize_seed, self.width, self.height, self.num_images,
                self.scheduler, self.decoder]

    def inputs(self) -> list:
        """The inputs of ``generate_in_tab`` (the tab's Generate), in its order."""
        return [*self.settings(), self.expand.record, *self.layout.generate_inputs()]

    def outputs(self) -> list:
        return [self.gallery, self.info, self.notice]


def build() -> TextToImageTab:
    lim = limits()
    with gr.Tab("Text to Image", id="t2i"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                prompt = StrictTextbox(label="Prompt", lines=2, autofocus=True,
                                       placeholder=EXAMPLE_PROMPTS[0])
                negative = StrictTextbox(label="Negative prompt", lines=1,
                                         placeholder="what to avoid (optional)")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", scale=3)
                    stop = gr.Button("Stop", variant="stop", scale=1)
                model = model_dropdown(T2I_TASKS)
                layout = layout_panel.build(model.value)
                expand = prompt_panel.build()
                with gr.Accordion("Settings · 0 = the model's default", open=True):
                    with gr.Row():
                        steps = StrictNumber(label="Steps", value=None, precision=0,
                                             info=DEFAULT_INFO)
                        guidance = StrictNumber(label="Guidance", value=None, step=0.5,
                                                info=DEFAULT_INFO)
                    with gr.Row():
                        width = StrictNumber(label="Width", value=None, precision=0, step=8,
                                             info=DEFAULT_INFO + " (a multiple of 8)")
                        height = StrictNumber(label="Height", value=None, precision=0, step=8,
                                              info=DEFAULT_INFO + " (a multiple of 8)")
                    with gr.Row():
                        seed = StrictNumber(label="Seed", value=0, precision=0)
                        randomize = StrictCheckbox(label="Randomize seed", value=True)
                    with gr.Row():
                        num_images = StrictNumber(label=f"Images (1-{lim.max_images})", value=1,
                                                  precision=0)
                        scheduler = StrictDropdown(label="Scheduler", choices=scheduler_choices(),
                                                   value=DEFAULT_SCHEDULER)
                    decoder = decoder_radio()
                with gr.Accordion("Restore parameters from a vgen PNG", open=False):
                    restore_file = gr.File(label="Drop a PNG made by vgen", file_types=[".png"],
                                           type="filepath", elem_id="t2i-restore")
            with gr.Column(scale=6):
                results_gallery = gallery("Results", "t2i-gallery")
                show_boxes = StrictCheckbox(label="Show boxes", value=False,
                                            elem_id="t2i-show-boxes",
                                            info=layout_panel.SHOW_BOXES_INFO)
                # Each copy is taller than wide (its legend below): shown whole ("contain"),
                # sized as the results are (``vgen-results``: each fits the panel).
                overlays = gr.Gallery(label="Results with their boxes", visible=False,
                                      columns=2, height=420, object_fit="contain", format="png",
                                      interactive=False, buttons=["fullscreen"],
                                      elem_id="t2i-overlays",
                                      elem_classes=["vgen-gallery", "vgen-results"])
                selected = gr.State(None)
                send = gr.Button("Send to Edit", size="sm")
                inspect_button = gr.Button("Inspect in Features", size="sm")
                info = gr.Markdown(label="info", elem_id="t2i-info")
                notice = gr.Markdown(label="notice", elem_id="t2i-notice")
        gr.Examples(examples=[[p] for p in EXAMPLE_PROMPTS], inputs=[prompt],
                    label="Shapes-world prompts for the built-in model", cache_examples=False,
                    api_visibility="private")
        gr.Markdown(HUB_POINTER)
        api_layout = StrictTextbox(label="layout", value="", visible=False)
    return TextToImageTab(prompt, negative, model, steps, guidance, seed, randomize, width,
                          height, num_images, scheduler, decoder, generate, stop,
                          results_gallery, selected, send, inspect_button, info, notice,
                          restore_file, expand, layout, show_boxes, overlays, api_layout)


def wire(t: TextToImageTab) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
    inputs = t.inputs()
    defaults_js = zero_means_default(inputs, [t.steps, t.guidance, t.width, t.height],
                                     reveal=t.gallery.elem_id)
    # Generate: /generate's function with the layout panel's layout (engine slots: the fair
    # queue). Its progress is the info line's (``results.running``): Gradio's own display would
    # empty at every preview and restart its timer (a generator's every yield ends its "pending"
    # state). The fourth output: a plan made first, for the panel.
    outputs = [*t.outputs(), t.layout.answer]
    t.event = gr.on(
        triggers=[t.generate.click, t.prompt.submit], fn=generate_in_tab, inputs=inputs,
        outputs=outputs, api_visibility="private", concurrency_limit=None, trigger_mode="once",
        show_progress="hidden", js=defaults_js,
    )
    # The /generate endpoint: the same function; the layout is JSON text ("" for none).
    api_only(generate_images, [*t.settings(), t.expand.record, t.api_layout, gr.State(None)],
             t.outputs(), "generate")
    generating = prompt_panel.wire(t.expand, t.prompt, generate_in_tab, inputs, outputs,
                                   t.gallery, t.restore_file, defaults_js)
    layout_panel.wire(t.layout, t.prompt, t.seed, t.model, t.restore_file)
    for trigger in (t.gallery.change, t.show_boxes.change):
        trigger(layout_panel.result_overlays, [t.gallery, t.show_boxes],
                [t.overlays, t.show_boxes], **quick)
    # Inputs refused before the endpoint ran (it says why itself otherwise).
    for event in (t.event, generating):
        event.failure(results.refused, t.info, t.outputs(), **quick)
    # Stop: the cancel first (the browser runs a trigger's events in order), then the line,
    # sent once the job has ended (results.stopped).
    t.stop.click(fn=None, cancels=[t.event, generating])
    t.stop.click(results.stopped, t.info, t.outputs(), **quick)
    t.gallery.select(selected_index, None, t.selected, **quick)
    t.gallery.change(lambda: None, None, t.selected, **quick)
    t.restore_file.upload(
        endpoint(restore_parameters), t.restore_file,
        [t.prompt, t.negative_prompt, t.model, t.steps, t.guidance, t.seed, t.randomize_seed,
         t.width, t.height, t.scheduler], **quick,
    )
