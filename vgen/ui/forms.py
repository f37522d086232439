"""UI values -> the engine's typed requests (``vgen.requests``), and uploaded files -> checked images.

Every endpoint turns its arguments into a request here and nowhere else; the engine's
``check_inputs`` then validates it. ``None`` (an empty field) means the model's default. The
browser's "0 = the model's default" is turned into ``None`` before it reaches the server
(``components.zero_means_default``), so an API caller's 0 is still the engine's error.
"""

from __future__ import annotations

import contextvars
from typing import Any

from vgen.errors import InvalidRequestError
from vgen.requests import EditRequest, GenerateRequest

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
                     width, height, num_images, scheduler, decoder="full") -> GenerateRequest:
    return GenerateRequest(
        **_common_fields(prompt, negative_prompt, model, steps, guidance, seed, randomize_seed,
                         num_images, scheduler),
        width=opt_int(width, "width"), height=opt_int(height, "height"),
        decoder="full" if decoder is None else decoder,
    )


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


def inspect_request(prompt, model, seed, steps, negative_prompt=None) -> GenerateRequest:
    """A text-to-image request for the Features tab (seed None: a fresh one)."""
    return GenerateRequest(prompt=text(prompt), negative_prompt=text(negative_prompt),
                           model=model_ref(model), seed=opt_int(seed, "seed"),
                           steps=opt_int(steps, "steps"))


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
