"""The whole UI: the tabs, the links between them, and the ``/status`` endpoint.

Tabs: **Text to Image** (with the prompt panel and the layout panel), **Edit**, **Features**
(per-word attention maps, map -> inpainting mask, denoising path, feature maps) and **Compare**
(one prompt and seed across models and settings). Named endpoints, for ``gradio_client`` and as
MCP tools: ``/generate``, ``/edit``, ``/attention``, ``/compare``, ``/expand``, ``/plan`` and
``/status``; every other event is private. Each tab module holds its endpoint function, which the UI and the API
share, and a ``build`` and a ``wire`` function.
"""

from __future__ import annotations

import gradio as gr

from . import handlers
from .components import EDIT_TASKS, T2I_TASKS, model_choices
from .tabs import compare, edit, features, text_to_image
from .tabs.text_to_image import pick_image


def server_status() -> dict:
    """What this server runs.

    Returns:
        status: vgen and torch versions, device, dtype, threads, CPUs, default models, models loaded, where jobs run and the queue's counts
    """
    from vgen.worker import EnginePool

    engine = handlers.engine()
    return {**engine.engine_status(),
            "engine": "worker process" if isinstance(engine, EnginePool) else "in process",
            "queue": handlers.fair_queue().stats()}


def send_to_edit(gallery_value, index, prompt):
    """Text to Image -> Edit: the selected (else first) image in the editor, and its prompt."""
    return pick_image(gallery_value, index), prompt, gr.Tabs(selected="edit")


def _picker_updates(*pickers):
    """Fresh cache marks for the model pickers (after a download, on page load)."""

    def refresh():
        return tuple(gr.update(choices=model_choices(tasks)) for tasks in pickers)

    return refresh


def _link_tabs(demo, tabs, t2i, ed, feats, comp) -> None:
    quick = dict(api_visibility="private", concurrency_limit=None)
    # The pickers' refresh is instant and happens behind the user's back (page load, after a
    # job): no loading overlay on four model pickers.
    silent = dict(quick, show_progress="hidden")
    features.link_text_to_image(feats, t2i, tabs)
    t2i.send_to_edit.click(send_to_edit, [t2i.gallery, t2i.selected, t2i.prompt],
                           [ed.editor, ed.prompt, tabs], **quick)
    # A job may have downloaded a model: every picker's cache marks are refreshed after one.
    pickers = [t2i.model, ed.model, feats.model, comp.model]
    refresh = _picker_updates(T2I_TASKS, EDIT_TASKS, T2I_TASKS, T2I_TASKS)
    for event in (t2i.event, ed.event, feats.event, comp.event):
        event.then(refresh, None, pickers, **silent)
    demo.load(refresh, None, pickers, **silent)


def build_demo() -> gr.Blocks:
    """The whole UI. Loads no model: errors (missing checkpoint, Hub unreachable) surface as
    gr.Error when a model is used."""
    with gr.Blocks(title="vgen", delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown("# vgen\nLanguage-driven image generation and editing with diffusion "
                    "models: the built-in shapes world offline, or any diffusers model "
                    "from the Hugging Face Hub.")
        with gr.Tabs() as tabs:
            t2i = text_to_image.build()
            ed = edit.build()
            feats = features.build()
            comp = compare.build()
        text_to_image.wire(t2i)
        edit.wire(ed)
        features.wire(feats, ed, tabs)
        compare.wire(comp)
        _link_tabs(demo, tabs, t2i, ed, feats, comp)
        # /status: no engine work and no engine slot, so it answers during a job (a health
        # check for API users, and the bench's app round trip).
        gr.api(server_status, api_name="status", concurrency_limit=None)
    return demo

