"""The Features tab: per-word attention maps, map -> inpainting mask, the denoising path and
feature maps of an image. Its endpoint is ``/attention``.

The maps come back from the engine's worker as ``vgen.attention_maps.AttentionMaps`` (numpy),
so re-rendering them for another word, step range or opacity happens here without torch. An
inspection drawn from a layout also shows each object's phrase attention against its box (the
"Boxes" view, ``features_boxes``)."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from vgen.requests import BACKBONES, FeaturesRequest

from ..components import EXAMPLE_PROMPTS, T2I_TASKS, model_dropdown, zero_means_default
from ..forms import inspect_request, load_image, model_ref
from ..handlers import api_only, cache_dir, endpoint, run_job
from ..inputs import SafeImage, StrictCheckbox, StrictNumber, StrictSlider, StrictTextbox
from . import features_boxes
from .layout_panel import image_layout


FILMSTRIP_COLUMNS = 5  # a 20-step path in 4 readable rows rather than one squeezed strip
DISPLAY_PX = 256  # small pictures (the 64-pixel shapes world) are shown at least this large


def enlarged(image):
    """``image`` scaled by a whole factor (nearest neighbour: crisp pixels) to at least
    ``DISPLAY_PX`` on its longer side; larger images stay as they are. For what only the page
    shows (the word's overlay); files that are results keep their native pixels."""
    if image is None:
        return None
    factor = DISPLAY_PX // max(image.size)
    if factor < 2:
        return image
    from PIL import Image

    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


@dataclass
class Inspected:
    """What one Inspect run left for re-rendering (kept per session in a ``gr.State``)."""

    maps: Any  # vgen.attention_maps.AttentionMaps
    image: Any  # PIL image the maps belong to
    path: str  # the image's PNG file (with its generation parameters)
    info: str  # what made it, for the tab's info line
    layout: Any = None  # vgen.layout.Layout the image was drawn from (the Boxes view), or None


def _inspected(job) -> tuple:
    """The outputs of a finished inspect job: image file, grid, filmstrip, word keys, the
    layout objects' figures (None without a layout), state."""
    from vgen.viz import filmstrip

    out = job.result
    r, maps = out.result, out.maps
    image = r.images[0]
    task = getattr(r.request, "mode", "txt2img")
    res = ", ".join(f"{h}x{w}" for h, w in maps.resolutions)
    info = (f"**{r.model}** · {task} · seed {r.seeds[0]} · {maps.num_steps} steps · "
            f"attention at {res} · {job.seconds():.1f} s")
    layout = getattr(r.request, "layout", None)
    state = Inspected(maps, image, job.files[0][0], info, layout)
    frames = out.path[0] if out.path else None
    strip = filmstrip(frames, columns=min(len(frames), FILMSTRIP_COLUMNS)) if frames else None
    return (state.path, maps.grid(image), strip, maps.word_keys(),
            features_boxes.boxes_answer(maps, layout), state)


@endpoint
async def inspect_attention(prompt: str, model: str | None = None, seed: float | None = 0,
                            steps: float | None = None, negative_prompt: str | None = None,
                            layout: str | None = "", request: gr.Request = None,
                            progress=gr.Progress()):
    """Text to image with its per-word cross-attention maps and its denoising path (with a layout: each object's phrase attention against its box).

    Parameters:
        prompt: what to draw
        model: Hub repo id (org/name[@revision]) or local model folder; empty for the default model
        seed: the seed; None for a fresh one
        steps: denoising steps; None for the model's default
        negative_prompt: what to avoid (empty for none)
        layout: objects in boxes as JSON, as /generate takes it ({"objects": [{"phrase": "a red circle", "box": [x0, y0, x1, y1]}, ...], "background": ""}, 0-1 from the top left), for a grounded model such as vgen-shapes-grounded; empty for none
    Returns:
        image: the PNG with its generation parameters
        grid: the image and one attention overlay per word
        filmstrip: the predicted clean image after each denoising step, in rows
        words: the word keys ("<index>:<word>")
        boxes: with a layout, per object {"phrase", "box", "words": the prompt words its phrase names, "missing": its words the prompt lacks, "inside": the share of those words' attention inside its box (null: none in the prompt), "box_area": the box's share of the picture}; null without one
    """
    req = inspect_request(prompt, model, seed, steps, negative_prompt, layout)
    async for out in run_job("inspect", lambda: req, progress, request, n_outputs=6,
                             finish=_inspected):
        yield out


@endpoint
async def inspect_edit(last_edit, index, request: gr.Request = None, progress=gr.Progress()):
    """The Edit tab's "Inspect this edit": the edit whose results are shown there (``last_edit``,
    the Edit tab's ``LastEdit``), for its selected (else first) image, with its per-word
    attention maps and denoising path."""
    if last_edit is None:
        raise gr.Error("There is no edit to inspect yet: run an edit first.",
                       print_exception=False)
    req = last_edit.for_image(index)
    async for out in run_job("inspect", lambda: req, progress, request, n_outputs=6,
                             finish=_inspected):
        yield out


def cleared() -> tuple:
    """An inspection is coming: the old maps, words, boxes and info line go (they belong to
    another image), so the page never shows one image's maps under another's prompt."""
    return (None, None, None, None, None, None, gr.update(choices=[], value=None), None, "",
            *features_boxes.hidden())


def to_features(last_edit):
    """"Inspect this edit": refuse at once when there is none, else the Features tab, cleared."""
    if last_edit is None:
        raise gr.Error("There is no edit to inspect yet: run an edit first.",
                       print_exception=False)
    return (gr.Tabs(selected="features"), *cleared())


def word_choices(maps, include_special: bool = False) -> list[tuple[str, str]]:
    """(label, key) pairs for the word picker: the word, or the key when a word repeats."""
    keys = maps.word_keys()
    if include_special:
        extra = [k for k in maps.keys(True) if k not in maps.keys(False)]
        keys = [k for k in extra if k.startswith("-1:")] + keys + \
               [k for k in extra if not k.startswith("-1:")]
    words = [k.split(":", 1)[1] for k in keys]
    return [(w if words.count(w) == 1 else k, k) for w, k in zip(words, keys)]


def _filters(first, last, resolutions) -> dict:
    a, b = int(first or 0), int(last or 0)
    return dict(step_range=(min(a, b), max(a, b)),
                resolutions=list(resolutions) if resolutions else None)


def default_word(maps) -> str | None:
    keys = maps.word_keys()
    return keys[-1] if keys else None  # the last word is usually the noun


def show_inspection(state: Inspected | None, include_special, opacity):
    """A new inspection: the word picker, step sliders, resolutions, the default word's
    overlay and the info line."""
    if state is None:
        return (gr.skip(),) * 6
    maps, n = state.maps, state.maps.num_steps
    key = default_word(maps)
    overlay = enlarged(maps.overlay(state.image, key, float(opacity))) if key else None
    res = [f"{h}x{w}" for h, w in maps.resolutions]
    return (gr.update(choices=word_choices(maps, bool(include_special)), value=key),
            gr.update(maximum=max(1, n - 1), value=0, interactive=n > 1),
            gr.update(maximum=max(1, n - 1), value=n - 1, interactive=n > 1),
            gr.update(choices=res, value=res), overlay, state.info)


def render_maps(state: Inspected | None, key, first, last, resolutions, opacity):
    """Overlay of the chosen word and the small-multiples grid, from the stored maps. With no
    word picked the overlay stays as it is: a new inspection's controls change together, and a
    render triggered by its resolutions before its word arrived cleared the word's overlay
    (regression: test_features_shows_small_pictures_enlarged_and_the_path_in_rows)."""
    if state is None:
        return None, None
    filters = _filters(first, last, resolutions)
    grid = state.maps.grid(state.image, opacity=float(opacity), **filters)
    if not key:
        return gr.skip(), grid
    return enlarged(state.maps.overlay(state.image, key, float(opacity), **filters)), grid


def render_boxes(state: Inspected | None, first, last, resolutions, opacity):
    """The Boxes view under the tab's step range, resolutions and opacity (hidden when the
    inspection has no layout)."""
    if state is None:
        return features_boxes.hidden()
    return features_boxes.boxes_view(state.maps, state.image, state.layout, opacity,
                                     **_filters(first, last, resolutions))


def show_boxes(state: Inspected | None, opacity):
    """A new inspection's Boxes view: every step and resolution (the sliders may still hold
    the last inspection's range)."""
    if state is None:
        return features_boxes.hidden()
    return features_boxes.boxes_view(state.maps, state.image, state.layout, opacity)


def update_word_choices(state: Inspected | None, include_special: bool, key):
    if state is None:
        return gr.skip()
    choices = word_choices(state.maps, bool(include_special))
    keys = [k for _, k in choices]
    return gr.update(choices=choices, value=key if key in keys else default_word(state.maps))


MASK_RGBA = (255, 61, 245, 140)  # the Edit tab's brush colour, translucent: the picture shows


def mask_editor_value(image, mask) -> tuple[dict, dict]:
    """What "Use as mask" puts in the Edit tab: (the ImageEditor's value, the attached mask).

    Gradio 6.31's image editor does not draw a layer the server sets ("No draw texture found
    for layer"), so a mask sent as a layer would be applied but not seen. Instead the editor's
    picture is ``image`` with the mask tinted in the brush's translucent colour, and the
    attached mask (a ``gr.State`` of the Edit tab: the tinted picture, the clean one and the
    mask, as PNG files in Gradio's cache folder) tells the edit to use the clean picture and
    this mask whenever the editor still shows that picture (``forms.source_and_mask``)."""
    from PIL import Image

    background = image.convert("RGB")
    mask = mask.convert("L").resize(background.size, Image.NEAREST).point(
        lambda v: 255 if v > 127 else 0)
    tint = Image.new("RGBA", background.size, MASK_RGBA[:3] + (0,))
    tint.putalpha(mask.point(lambda v: MASK_RGBA[3] if v else 0))
    shown = Image.alpha_composite(background.convert("RGBA"), tint).convert("RGB")
    folder = Path(tempfile.mkdtemp(prefix="vgen-mask-", dir=cache_dir()))
    paths = {}
    for name, im in (("shown", shown), ("source", background), ("mask", mask)):
        paths[name] = str(folder / f"{name}.png")
        im.save(paths[name], format="PNG")
    return {"background": paths["shown"], "layers": [], "composite": None}, paths


def use_as_mask(state: Inspected | None, key, threshold, first, last, resolutions):
    """The chosen word's map, thresholded, as an inpainting mask on the image in the Edit tab:
    (editor value, attached mask, mode, the inspected prompt for the instruction box, the Edit
    tab)."""
    if state is None or not key:
        raise gr.Error("Inspect an image and pick a word first.", print_exception=False)
    mask = state.maps.to_mask(key, float(threshold), **_filters(first, last, resolutions))
    if mask.getbbox() is None:
        raise gr.Error("The mask is empty at this threshold: lower it.", print_exception=False)
    value, attached = mask_editor_value(state.image, mask)
    return value, attached, "inpaint", state.maps.prompt, gr.Tabs(selected="edit")


@endpoint
async def show_features(image_path, backbone, model, prompt, request: gr.Request = None,
                        progress=gr.Progress()):
    """Feature views of an image: (image, caption) pairs, a PCA view and the strongest
    channels per layer (rendered by the engine's worker)."""
    if not image_path:
        raise gr.Error("Add an image first (or use the inspected one).", print_exception=False)
    if backbone not in BACKBONES:
        raise gr.Error(f"backbone must be one of {', '.join(BACKBONES)}", print_exception=False)

    def build():
        return FeaturesRequest(load_image(image_path), backbone, model_ref(model), prompt or "")

    async for out in run_job("feature_views", build, progress, request, n_outputs=1,
                             finish=lambda job: (job.result,)):
        yield out


def inspect_latest(prompt, model, gallery_value, index):
    """Text to Image -> Features: the prompt, model, seed and layout (JSON, "" for none: read
    from the PNG) of the selected (else first) result, and the Features tab."""
    seed, layout = gr.skip(), ""
    if gallery_value:
        i = index if isinstance(index, int) and 0 <= index < len(gallery_value) else 0
        item = gallery_value[i]
        path = item[0] if isinstance(item, (tuple, list)) else item
        caption = item[1] if isinstance(item, (tuple, list)) and len(item) > 1 else None
        m = re.fullmatch(r"seed (\d+)", caption or "")
        if m:
            seed = int(m.group(1))
        drawn = image_layout(path) if isinstance(path, str) and path else None
        layout = drawn.to_json() if drawn is not None else ""
    return prompt, model, seed, layout, gr.Tabs(selected="features")


def inspect_generated(prompt, negative_prompt, model, steps, gallery_value, index):
    """Text to Image -> Features: the settings of the selected (else first) result (its layout
    too, so a layout result shows its Boxes), the Features tab, and the last inspection cleared
    (the new one starts at once)."""
    prompt, model, seed, layout, tabs = inspect_latest(prompt, model, gallery_value, index)
    return (prompt, negative_prompt, model, steps, seed, layout, tabs, *cleared())


@dataclass
class FeaturesTab:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    model: gr.Dropdown
    seed: gr.Number
    steps: gr.Number
    layout: gr.Textbox  # the layout JSON to draw (grounded models), "" for none
    inspect: gr.Button
    stop: gr.Button
    image: gr.Image
    info: gr.Markdown
    word: gr.Radio
    special: gr.Checkbox
    opacity: gr.Slider
    first: gr.Slider
    last: gr.Slider
    resolutions: gr.CheckboxGroup
    overlay: gr.Image
    filmstrip: gr.Image
    grid: gr.Image
    threshold: gr.Slider
    to_mask: gr.Button
    feat_image: gr.Image
    use_inspected: gr.Button
    backbone: gr.Radio
    show: gr.Button
    views: gr.Gallery
    keys: gr.JSON  # an output of the /attention endpoint
    boxes: gr.JSON  # an output of the /attention endpoint: the layout objects' figures
    boxes_info: gr.Markdown  # the Boxes view: its table of figures
    boxes_view: gr.Image  # the Boxes view: one overlay per layout object
    state: gr.State
    event: Any = None
    edit_event: Any = None

    def inputs(self) -> list:
        """The /attention endpoint's inputs, in its parameters' order."""
        return [self.prompt, self.model, self.seed, self.steps, self.negative_prompt,
                self.layout]

    def outputs(self) -> list:
        """The outputs of an inspection (the /attention endpoint's, then the state)."""
        return [self.image, self.grid, self.filmstrip, self.keys, self.boxes, self.state]

    def cleared(self) -> list:
        """What ``cleared`` empties: the last inspection's pictures, words, boxes, state, info."""
        return [self.image, self.grid, self.filmstrip, self.keys, self.boxes, self.state,
                self.word, self.overlay, self.info, self.boxes_view, self.boxes_info]

    def controls(self) -> list:
        """What ``show_inspection`` fills."""
        return [self.word, self.first, self.last, self.resolutions, self.overlay, self.info]


def _picture(label, elem_id, **kw):
    # vgen-enlarge: drawn to fill its box (the 64-pixel picture would otherwise stay 64 px).
    return gr.Image(label=label, elem_id=elem_id, type="filepath", format="png",
                    interactive=False, elem_classes=["vgen-pixelated", "vgen-enlarge"], **kw)


def _build_inspector() -> dict:
    c: dict = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            c["prompt"] = StrictTextbox(label="Prompt to inspect", lines=2,
                                        placeholder=EXAMPLE_PROMPTS[0])
            c["negative_prompt"] = StrictTextbox(label="Negative prompt", lines=1,
                                                 placeholder="what to avoid (optional)")
            with gr.Row():
                c["inspect"] = gr.Button("Inspect", variant="primary", scale=3)
                c["stop"] = gr.Button("Stop", variant="stop", scale=1)
            c["model"] = model_dropdown(T2I_TASKS)
            with gr.Row():
                c["seed"] = StrictNumber(label="Seed", value=0, precision=0)
                c["steps"] = StrictNumber(label="Steps (0 = model default)", value=None,
                                          precision=0)
            c["layout"] = StrictTextbox(
                label="Layout (JSON, for a grounded model; empty for none)", lines=2, value="",
                elem_id="features-layout", placeholder=features_boxes.LAYOUT_HELP,
                info="objects in boxes, x and y from 0 to 1 from the top left, as /generate "
                "takes it; Text to Image's \"Inspect in Features\" fills it in")
            c["image"] = _picture("Image", "features-image", height=DISPLAY_PX + 64)
            c["info"] = gr.Markdown(elem_id="features-info")
        with gr.Column(scale=6):
            c["word"] = gr.Radio(label="Word", choices=[], elem_id="features-word")
            c["overlay"] = _picture("Attention of the word", "features-overlay",
                                    height=DISPLAY_PX + 64)
            with gr.Row():
                c["threshold"] = StrictSlider(0.0, 1.0, value=0.5, step=0.05,
                                              label="Mask threshold")
                c["to_mask"] = gr.Button("Use as mask → Edit (inpaint)", variant="secondary")
            with gr.Accordion("Map settings", open=False):
                with gr.Row():
                    c["special"] = StrictCheckbox(label="Show special tokens", value=False)
                    c["opacity"] = StrictSlider(0.0, 1.0, value=0.6, step=0.05,
                                                label="Overlay opacity")
                with gr.Row():
                    c["first"] = StrictSlider(0, 1, value=0, step=1, label="First step")
                    c["last"] = StrictSlider(0, 1, value=1, step=1, label="Last step")
                c["resolutions"] = gr.CheckboxGroup(label="Attention resolutions", choices=[])
    # Full width: the small multiples and the denoising path in rows of FILMSTRIP_COLUMNS.
    c["grid"] = _picture("Every word", "features-grid")
    c.update(features_boxes.build())  # shown when the inspection has a layout
    c["filmstrip"] = _picture("Denoising path (the predicted clean image after each step)",
                              "features-filmstrip")
    return c


def _build_feature_maps() -> dict:
    c: dict = {}
    with gr.Accordion("Feature maps of an image", open=False):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4):
                c["feat_image"] = SafeImage(label="Image", type="filepath", format="png",
                                            sources=["upload", "clipboard"],
                                            elem_classes=["vgen-pixelated"], height=256)
                c["use_inspected"] = gr.Button("Use the inspected image", size="sm")
                c["backbone"] = gr.Radio(choices=list(BACKBONES), value="unet", label="Backbone",
                                         info="unet / vae: the generator picked above "
                                         "(offline); vgg16: ImageNet CNN, weights from the Hub")
                c["show"] = gr.Button("Show features")
            with gr.Column(scale=6):
                c["views"] = gr.Gallery(label="PCA-to-RGB and strongest channels per layer",
                                        columns=2, height=520, object_fit="contain",
                                        format="png", interactive=False,
                                        elem_classes=["vgen-gallery", "vgen-pixelated"])
    return c


def build() -> FeaturesTab:
    with gr.Tab("Features", id="features"):
        c = _build_inspector()
        c.update(_build_feature_maps())
        c["keys"] = gr.JSON(visible=False, label="words")
        c["boxes"] = gr.JSON(visible=False, label="boxes")
        c["state"] = gr.State(None)
    return FeaturesTab(**c)


def _show(f: FeaturesTab, event) -> None:
    """A finished inspection fills the tab's controls and, with a layout, its Boxes view."""
    quick = dict(api_visibility="private", concurrency_limit=None)
    event.success(show_inspection, [f.state, f.special, f.opacity], f.controls(), **quick)
    event.success(endpoint(show_boxes), [f.state, f.opacity], [f.boxes_view, f.boxes_info],
                  **quick)


def wire(f: FeaturesTab, edit, tabs) -> None:
    """``edit``: the Edit tab (its "Inspect this edit" and the mask's target editor)."""
    quick = dict(api_visibility="private", concurrency_limit=None)
    inputs = f.inputs()
    # inspect_attention is the Inspect button's and the /attention endpoint's (the API's
    # without the tab's state); then the tab's controls.
    f.event = gr.on(
        triggers=[f.inspect.click, f.prompt.submit], fn=inspect_attention, inputs=inputs,
        outputs=f.outputs(), api_visibility="private", concurrency_limit=None,
        trigger_mode="once", show_progress_on=f.image, js=zero_means_default(inputs, [f.steps]),
    )
    api_only(inspect_attention, inputs, f.outputs()[:-1], "attention")
    _show(f, f.event)
    # Edit tab -> Features: the edit on screen (its LastEdit), inspected; the tab is shown and
    # cleared first.
    f.edit_event = edit.inspect.click(
        endpoint(to_features), edit.last_edit, [tabs, *f.cleared()], **quick,
    ).success(
        inspect_edit, [edit.last_edit, edit.selected], f.outputs(), api_visibility="private",
        concurrency_limit=None, show_progress_on=f.image,
    )
    _show(f, f.edit_event)
    f.stop.click(fn=None, cancels=[f.event, f.edit_event])
    filters = [f.state, f.word, f.first, f.last, f.resolutions, f.opacity]
    gr.on(triggers=[f.word.change, f.first.release, f.last.release, f.resolutions.change,
                    f.opacity.release], fn=endpoint(render_maps), inputs=filters,
          outputs=[f.overlay, f.grid], **quick)
    gr.on(triggers=[f.first.release, f.last.release, f.resolutions.change, f.opacity.release],
          fn=endpoint(render_boxes), inputs=[f.state, f.first, f.last, f.resolutions, f.opacity],
          outputs=[f.boxes_view, f.boxes_info], **quick)
    f.special.change(update_word_choices, [f.state, f.special, f.word], f.word, **quick)
    # The Edit tab is shown first and the editor filled after: a layer given to an editor that
    # is not drawn yet is not shown in the browser.
    pending = gr.State(None)
    f.to_mask.click(endpoint(use_as_mask),
                    [f.state, f.word, f.threshold, f.first, f.last, f.resolutions],
                    [pending, edit.attached_mask, edit.mode, edit.prompt, tabs], **quick
                    ).success(lambda value: value, pending, edit.editor, **quick)
    f.use_inspected.click(lambda path: path, f.image, f.feat_image, **quick)
    f.show.click(show_features, [f.feat_image, f.backbone, f.model, f.prompt], f.views,
                 api_visibility="private", concurrency_limit=None)


def link_text_to_image(f: FeaturesTab, t2i, tabs) -> None:
    """Text to Image's "Inspect in Features": its prompt, negative prompt, model, steps and the
    selected result's seed and layout go to the Features tab, which is shown cleared and inspects at once
    (so it never shows the maps of an earlier image under the new prompt)."""
    quick = dict(api_visibility="private", concurrency_limit=None)
    inputs = f.inputs()
    event = t2i.inspect.click(
        inspect_generated,
        [t2i.prompt, t2i.negative_prompt, t2i.model, t2i.steps, t2i.gallery, t2i.selected],
        [f.prompt, f.negative_prompt, f.model, f.steps, f.seed, f.layout, tabs, *f.cleared()],
        **quick,
    ).success(
        inspect_attention, inputs, f.outputs(), api_visibility="private",
        concurrency_limit=None, show_progress_on=f.image,
        js=zero_means_default(inputs, [f.steps]),
    )
    _show(f, event)
    f.stop.click(fn=None, cancels=[event])
