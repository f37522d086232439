"""Input components that check what a browser or API caller sends before Gradio uses it.

An API caller may send any JSON for any field. Gradio's own ``preprocess`` crashes on some wrong
types (a string for a whole-number field) with a message that says nothing, and silently accepts
others (a string for a checkbox): the ``Strict*`` components say which field and what it takes.
Bounds are not checked here: the engine's (``vgen.requests.check_inputs``) are the defence.
Uploaded images pass ``vgen.images``' checks (format allow-list, pixel cap from the header)
before Gradio decodes them (``SafeImage``, ``SafeImageEditor``).

Each class extends a Gradio component through its public extension points (``preprocess``,
``convert_and_format_image``, the ``@server`` function ``accept_blobs``) and is drawn in the
browser as the component it extends (``is_template``).
"""

from __future__ import annotations

import contextvars
import math
from typing import Any

import gradio as gr

from vgen.errors import VgenError

def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(component, payload: Any, kind: str):
    raise gr.Error(f"{component.label or 'a field'} must be {kind}, got {_shown(payload)}",
                   print_exception=False)


def _strict_number(component, payload: Any, whole: bool):
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        return None
    kind = "a whole number" if whole else "a number"
    if isinstance(payload, str):
        try:
            payload = float(payload)
        except ValueError:
            _refuse(component, payload, kind)
    if isinstance(payload, bool) or not isinstance(payload, (int, float)):
        _refuse(component, payload, kind)
    if isinstance(payload, float) and not math.isfinite(payload):  # NaN, infinity
        _refuse(component, payload, "a finite number")
    if whole:
        if payload != int(payload):
            _refuse(component, payload, kind)
        return int(payload)
    return float(payload)


class StrictNumber(gr.Number):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        return _strict_number(self, payload, whole=self.precision == 0)


class StrictSlider(gr.Slider):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        return _strict_number(self, payload, whole=False)


class StrictCheckbox(gr.Checkbox):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        if payload is None or isinstance(payload, bool):
            return payload
        _refuse(self, payload, "true or false")


class StrictTextbox(gr.Textbox):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        if payload is None or isinstance(payload, str):
            return payload
        _refuse(self, payload, "text")


class StrictDropdown(gr.Dropdown):
    is_template = True  # the browser draws it as the Gradio component it extends

    def preprocess(self, payload):
        if payload is not None and not isinstance(payload, str):
            _refuse(self, payload, "text")
        return super().preprocess(payload)

    def api_info(self) -> dict:
        """A picker that takes any typed value (a Hub repo id) is a string for the API and MCP,
        its choices examples, not an enum (which MCP clients would enforce)."""
        if self.allow_custom_value and not self.multiselect:
            return {"type": "string", "examples": [value for _, value in self.choices]}
        return super().api_info()

# --------------------------------------------------------------------------------------------


MAX_EDITOR_LAYERS = 16  # brush layers one edit may carry
MAX_PENDING_BLOBS = 32  # editor states sent ahead with accept_blobs and not yet used
_EDITOR_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "vgen_editor_notes", default=None)


class SafeImageEditor(gr.ImageEditor):
    """``gr.ImageEditor`` whose images go through ``vgen.images`` first.

    Gradio's own ``preprocess`` opens every background, layer and composite with any format
    PIL knows and converts it, so a decompression bomb or an odd format would be decoded before
    the engine sees it. Here the format allow-list and the pixel cap are checked from the header
    first; the picture (background, composite) is made upright, first frame, RGB on white (what
    the engine does to any input) and saved as PNG, layers keep their alpha; the notices (an
    animation's first frame) travel in the value's ``"notes"``. ``accept_blobs`` (a server
    function any client can call) is bounded: known kinds only, at most ``MAX_EDITOR_LAYERS``
    layers, at most ``MAX_PENDING_BLOBS`` pending editor states (oldest dropped).
    """

    is_template = True  # drawn by the browser as gr.ImageEditor

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        if file is None:
            return None
        from gradio import image_utils
        from gradio.data_classes import FileData

        from vgen.images import normalise, open_image

        source = file.path if isinstance(file, FileData) else bytes(file)
        try:
            image = open_image(source)
            if flatten_on_white:  # background / composite: the picture
                image, notes = normalise(image)
                sink = _EDITOR_NOTES.get()
                if sink is not None:
                    sink.extend(n for n in notes if n not in sink)
            else:  # a brush layer: where it is painted is its alpha
                image = image.convert("RGBA")
        except VgenError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return image_utils.format_image(image, self.type, self.GRADIO_CACHE, name="image",
                                        format="png")

    def preprocess(self, payload):
        notes: list[str] = []
        token = _EDITOR_NOTES.set(notes)
        try:
            value = super().preprocess(payload)
        finally:
            _EDITOR_NOTES.reset(token)
        if value is not None and notes:
            value["notes"] = notes
        return value

    @gr.components.base.server
    def accept_blobs(self, data):
        from fastapi import HTTPException

        fields = data.data if isinstance(getattr(data, "data", None), dict) else {}
        kind, index = fields.get("type"), fields.get("index")
        if kind not in ("background", "composite", "layer") or not data.files:
            raise HTTPException(400, "accept_blobs takes one background, composite or layer file")
        if kind == "layer" and index not in (None, "", "null"):
            try:
                number = int(index)
            except (TypeError, ValueError):
                raise HTTPException(400, f"layer index must be a number, got {index!r}") from None
            if not 0 <= number < MAX_EDITOR_LAYERS:
                raise HTTPException(400, f"layer index must be from 0 to {MAX_EDITOR_LAYERS - 1}")
        storage = self.blob_storage
        while len(storage) >= MAX_PENDING_BLOBS and fields.get("id") not in storage:
            try:
                storage.pop(next(iter(storage)))
            except (StopIteration, KeyError, RuntimeError):  # another thread got there first
                break
        return super().accept_blobs(data)


class SafeImage(gr.Image):
    """``gr.Image`` whose upload passes ``vgen.images``' checks (format allow-list, pixel cap
    read from the header) before Gradio's own ``preprocess`` decodes it. Use it, not
    ``gr.Image``, for every image a user can upload."""

    is_template = True  # drawn by the browser as gr.Image

    def preprocess(self, payload):
        path = getattr(payload, "path", None)
        if path:
            from vgen.images import open_image

            try:
                open_image(path)
            except VgenError as e:
                raise gr.Error(str(e), print_exception=False) from None
        return super().preprocess(payload)


# --------------------------------------------------------------------------------------------
# Jobs: the engine in a worker thread, progress and cancel
# --------------------------------------------------------------------------------------------

