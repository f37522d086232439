"""Image editing: ``edit(EditRequest) -> GenerationResult``.

Modes: ``img2img`` (SDEdit, Meng et al. 2022: re-noise to ``strength`` and denoise toward the
prompt), ``inpaint`` (repaint where the mask is white) and ``instruct`` (InstructPix2Pix,
Brooks et al. 2023: follow an instruction, with image guidance keeping the source).
"""

from __future__ import annotations

from PIL import Image

from .errors import InvalidRequestError
from .jobs import JobControl
from .pipelines import ModelCache
from .requests import EditRequest, GenerationResult, Limits
from .runner import prepare, run


def _mask_image(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """White (255) = repaint. Alpha masks (as from a brush layer) use their alpha."""
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A")
    return mask.convert("L").resize(size, Image.NEAREST).point(lambda v: 255 if v >= 128 else 0)


def edit(req: EditRequest, control: JobControl | None = None,
         cache: ModelCache | None = None, limits: Limits | None = None,
         hooks=None) -> GenerationResult:
    """Edit ``req.image`` as ``req.mode`` says; image ``i`` uses seed ``req.seed + i``.
    ``hooks``: see :func:`vgen.runner.run`."""
    if not isinstance(req, EditRequest):
        raise InvalidRequestError("edit() takes an EditRequest")
    if req.image is None:
        raise InvalidRequestError("an edit needs a source image; none was given")
    # 1. Load, fill defaults (the source's aspect at the model's native size), validate.
    req, model, view = prepare(req, control, cache, limits)
    # 2. Source (and mask) at the working size.
    size = (req.width, req.height)
    source = req.image.convert("RGB").resize(size, Image.LANCZOS)
    kwargs: dict = {"image": source}
    if req.mode == "img2img":
        kwargs["strength"] = req.strength
    elif req.mode == "inpaint":
        kwargs.update(mask_image=_mask_image(req.mask, size), strength=req.strength,
                      width=req.width, height=req.height)
    else:
        kwargs["image_guidance_scale"] = req.image_guidance
    return run(req, model, view, kwargs, control, hooks)
