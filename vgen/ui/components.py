"""Component builders the tabs share: the model pickers, result galleries, the decoder and
scheduler choices, and the browser-side "0 = the model's default" adapter."""

from __future__ import annotations

import json
import logging
from typing import Sequence

import gradio as gr

from vgen.catalog import CATALOG, default_model, entry_for
from vgen.errors import VgenError
from vgen.requests import EDIT_MODES, Limits

from .forms import DEFAULT_SCHEDULER
from .inputs import StrictDropdown

logger = logging.getLogger("vgen.ui")

T2I_TASKS = ("txt2img",)
EDIT_TASKS = EDIT_MODES

EXAMPLE_PROMPTS = [
    "a red circle to the left of a blue square",
    "two yellow triangles and a green square",
    "a large purple circle at the top",
    "a small green triangle below an orange circle",
]

HUB_POINTER = (
    "The built-in **vgen-shapes** models draw coloured shapes on a 64×64 canvas and know "
    "about 40 words (colours, shapes, sizes, counts, positions). For anything else pick a Hub "
    "model in **Model**, e.g. `stabilityai/sd-turbo`, or type any diffusers repo id "
    "(`org/name` or `org/name@revision`); it is downloaded on first use."
)

# Small images (the 64x64 shapes world) are shown enlarged and crisp; files keep native pixels.
# Results fit their panel: Gradio's gallery makes each of its 2 columns a square as wide as the
# column, so one result was drawn 636 px tall in a 560 px panel and a batch of 4 hid half its
# second row. Here an item is at most the panel's height (one or two results), half of it
# (three or four: two rows), and five or more take four columns (two rows). ``cqh`` is a
# percentage of the scrolling area's height (a size container, so only for a gallery of fixed
# height: ``gallery``'s class ``vgen-results``).
# Model pickers: the typed value stops short of the dropdown's arrow (it ran under it).
CSS = """
.vgen-pixelated img, .vgen-pixelated canvas { image-rendering: pixelated; }
.vgen-gallery .thumbnail-item img, .vgen-gallery .preview img { image-rendering: pixelated; }
.vgen-results .grid-wrap { container-type: size; }
.vgen-results .grid-container { justify-content: center; }
.vgen-results .grid-container > .gallery-item {
  width: 100%; max-width: calc(100cqh - 3rem); justify-self: center; }
.vgen-results .grid-container:has(> .gallery-item:nth-child(3)) > .gallery-item {
  max-width: calc(50cqh - 2rem); }
.vgen-results .grid-container:has(> .gallery-item:nth-child(5)) {
  grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
/* The seed caption under its picture, not over it: Gradio lays it over the thumbnail's bottom
   right corner, where on a phone it hid part of a shape of a 64x64 result. */
.vgen-results .thumbnail-lg { display: flex; flex-direction: column; }
.vgen-results .thumbnail-lg img { flex: 1 1 0; min-height: 0; }
.vgen-results .thumbnail-lg .caption-label { position: static; align-self: flex-end; max-width: 100%;
  border: none; background: none; opacity: 1; padding: 2px 4px 0; }
/* A phone: the panel is as tall as it is wide (not 560 px of mostly empty space). */
@media (max-width: 640px) {
  .vgen-results { height: auto !important; }
  .vgen-results .grid-wrap { height: calc(100vw - 2rem) !important; } }
.vgen-model .secondary-wrap { padding-right: 1.5rem; }
.vgen-model .secondary-wrap input { text-overflow: ellipsis; }
/* Small pictures (the 64x64 world) are drawn enlarged: Gradio's scale-down never enlarges. */
.vgen-enlarge .image-frame img { object-fit: contain; }
/* The layout table on a phone: smaller cells, so that it fits the screen instead of scrolling
   sideways. Gradio sizes its "auto" columns from these cells (the number columns then fit their
   numbers) and the phrase column to 30 % (layout_panel.build). */
@media (max-width: 640px) {
  #t2i-layout-table th, #t2i-layout-table td, #t2i-layout-table .body-cell,
  #t2i-layout-table .row-number-cell { font-size: 12px !important; }
  #t2i-layout-table td, #t2i-layout-table .body-cell { padding: 0 !important; }
  #t2i-layout-table .cell-wrap { padding: 3px 4px !important; }
  #t2i-layout-table .row-number-header, #t2i-layout-table .row-number-cell {
    width: 28px !important; min-width: 28px !important; flex: 0 0 28px !important;
    padding: 2px !important; } }
"""

DEFAULT_INFO = "0 = the model's default"  # the Number fields where 0 means "model default"


def is_cached(ref: str) -> bool:
    try:
        from vgen import hub

        return bool(hub.is_cached(ref))
    except Exception:  # noqa: BLE001 - a mark in a label: never worth an error
        return False


def cache_mark(ref: str) -> str:
    return " · ✓ cached" if is_cached(ref) else " · ⤓ downloads on first use"


def model_choices(tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    """(label, reference) pairs: the default model, then the curated models for ``tasks``;
    each label says whether the model is already on this machine."""
    default = default_model()
    # An embedded model (a bare name: a folder under checkpoints/) cannot be downloaded: it is
    # offered only when its folder is here (vgen-shapes-edit exists once trained).
    refs = [default] + [e.ref for e in CATALOG if set(e.tasks) & set(tasks) and e.ref != default
                        and ("/" in e.ref or is_cached(e.ref))]
    choices = []
    for ref in refs:
        entry = entry_for(ref)
        name = entry.label if entry is not None else ref
        if ref == default:
            name += " · default"
        choices.append((name + cache_mark(ref), ref))
    return choices


def model_dropdown(tasks: tuple[str, ...], value: str | None = None) -> gr.Dropdown:
    return StrictDropdown(
        choices=model_choices(tasks), value=value or default_model(), allow_custom_value=True,
        label="Model", elem_classes=["vgen-model"],
        info="Pick one, or type a Hub repo id (org/name[@revision]) or a local model folder.",
    )


def lm_choices() -> list[tuple[str, str]]:
    """(label, reference): the default LM, then the curated ones, with cache marks."""
    from vgen.expand import LM_CATALOG, default_lm

    default = default_lm()
    labels = {e.ref: e.label for e in LM_CATALOG}
    refs = [default] + [e.ref for e in LM_CATALOG if e.ref != default]
    return [(labels.get(ref, ref) + (" · default" if ref == default else "") + cache_mark(ref),
             ref) for ref in refs]


def gallery(label: str, elem_id: str, **kw) -> gr.Gallery:
    return gr.Gallery(
        label=label, elem_id=elem_id,
        elem_classes=["vgen-gallery", "vgen-results", "vgen-pixelated"],
        columns=2, height=560, object_fit="contain", format="png", type="filepath",
        interactive=False, buttons=["download", "fullscreen"], **kw,
    )


def decoder_radio() -> gr.Radio:
    return gr.Radio(
        choices=[("full VAE", "full"), ("fast (tiny autoencoder)", "fast")], value="full",
        label="Decoder", info="fast: TAESD decodes Stable Diffusion / SDXL latents in a fraction "
        "of the time (slightly softer); other models use their own VAE")


def scheduler_choices() -> list[str]:
    from vgen.schedulers import SCHEDULERS

    return [DEFAULT_SCHEDULER, *SCHEDULERS]


def limits() -> Limits:
    try:
        return Limits.from_env()
    except VgenError as e:
        logger.warning("%s; using the default limits for the UI hints", e)
        return Limits()


def zero_means_default(inputs: Sequence, fields: Sequence, reveal: str | None = None) -> str:
    """Browser-side JavaScript for an event whose ``inputs`` include number ``fields`` where the
    UI shows 0 for "the model's default": it sends those zeros as null (None), the API's
    "default". So one function serves the UI and the API, and an API caller's 0 stays an error.
    (Gradio passes an event's ``js`` the input values and sends what it returns to ``fn``.)

    ``reveal``: the elem_id of the event's results. When they are out of sight (a phone, where
    they lie below the settings) they are scrolled into view as the job starts, once; Gradio's
    ``scroll_to_output`` would scroll back at every progress update of a streaming event."""
    positions = [i for i, c in enumerate(inputs) if any(c is f for f in fields)]
    scroll = ""
    if reveal:
        scroll = ("const el = document.getElementById(" + json.dumps(reveal) + "); "
                  "if (el) { const r = el.getBoundingClientRect(); "
                  "if (r.top > window.innerHeight * 0.6 || r.bottom < 0) "
                  "el.scrollIntoView({block: 'start'}); } ")
    return ("(...args) => { " + scroll + "const zero = new Set(" + json.dumps(positions) + "); "
            "return args.slice(0, " + str(len(inputs)) + ").map("
            "(v, i) => zero.has(i) && v === 0 ? null : v); }")
