"""Typed requests and results: the one vocabulary the CLI, the app and the API share.

Requests are frozen dataclasses. ``None`` in a field means "the model's default" (a 64x64
shapes model and a 512x512 SD-Turbo want different sizes, steps and guidance); the engine fills
those in with :func:`with_model_defaults` and then validates with :func:`check_inputs`, so
every caller, UI or not, gets the same bounds (``diffusers``' ``check_inputs`` style).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from PIL import Image

from . import config
from .errors import InvalidRequestError
from .layout import Layout

EDIT_MODES = ("img2img", "instruct", "inpaint")
DECODERS = ("full", "fast")


@dataclass(frozen=True)
class Limits:
    """Server-side bounds; operators tune them with VGEN_* environment variables."""

    max_area: int = 1024 * 1024  # pixels per image (VGEN_MAX_AREA)
    min_side: int = 64
    max_side: int = 2048
    max_steps: int = 150  # VGEN_MAX_STEPS
    max_images: int = 8  # per request (VGEN_MAX_IMAGES)
    max_guidance: float = 30.0
    max_prompt_chars: int = 2000

    @classmethod
    def from_env(cls) -> "Limits":
        d = cls()
        return replace(
            d,
            max_area=config.integer("VGEN_MAX_AREA", d.max_area),
            max_steps=config.integer("VGEN_MAX_STEPS", d.max_steps),
            max_images=config.integer("VGEN_MAX_IMAGES", d.max_images),
        )


@dataclass(frozen=True)
class Expansion:
    """How a prompt was written by a language model (``vgen.expand``), recorded in the PNG so
    the prompt can be made again: ``expanded_prompt`` is what the model wrote (the request's
    ``prompt`` may be the user's edit of it); ``system_prompt`` is "" for completion models."""

    original_prompt: str
    expanded_prompt: str
    lm: str
    revision: str = ""
    seed: int | None = None
    temperature: float | None = None
    system_prompt: str = ""


@dataclass(frozen=True)
class LayoutPlan:
    """How a language model planned the request's layout (``vgen.plan``), recorded in the PNG
    so the layout can be planned again."""

    planner: str
    revision: str = ""
    seed: int | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """Text to image. Image ``i`` of the request uses seed ``seed + i``."""

    prompt: str
    negative_prompt: str = ""
    model: str | None = None  # None: the default model (VGEN_DEFAULT_MODEL or checkpoints/vgen-shapes)
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None  # None or -1: draw one and report it
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    scheduler: str | None = None  # a key of vgen.schedulers.SCHEDULERS; None: the model's own
    decoder: str = "full"  # "full" VAE, or "fast" tiny autoencoder (TAESD)
    expansion: Expansion | None = None  # the prompt was written by a language model
    layout: Layout | None = None  # objects in boxes, for a GLIGEN model (vgen.grounded)
    layout_plan: LayoutPlan | None = None  # the layout was planned by a language model
    layout_guidance: float | None = None  # layout guidance step size; None: the model's; 0: off

    task = "txt2img"


@dataclass(frozen=True)
class EditRequest(GenerateRequest):
    """Edit an image: SDEdit (img2img), InstructPix2Pix (instruct) or inpainting with a mask.

    ``prompt`` is the instruction for ``instruct`` and the description of the result otherwise.
    """

    image: Image.Image | None = field(default=None, compare=False)
    mode: str = "img2img"
    strength: float = 0.75  # img2img / inpaint: how much of the schedule is re-run
    image_guidance: float | None = None  # instruct: how closely to keep the source; None: the model's
    mask: Image.Image | None = field(default=None, compare=False)  # inpaint: white = repaint

    @property
    def task(self) -> str:  # type: ignore[override]
        return self.mode


@dataclass(frozen=True)
class ModelDefaults:
    width: int
    height: int
    steps: int
    guidance: float
    image_guidance: float = 1.5  # instruct edits (InstructPix2Pix's own default)
    gligen_beta: float = 0.3  # layouts: the share of steps grounded (diffusers' default)
    layout_guidance: float = 0.3  # layouts: layout guidance step size (vgen.layout_guidance)


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0
    encode_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True)
class GenerationResult:
    """Images (PIL, each with its ``parameters`` PNG text in ``.info``), their seeds, the
    request as run (defaults filled in), and where the model came from."""

    images: tuple[Image.Image, ...]
    seeds: tuple[int, ...]
    request: GenerateRequest
    model: str
    revision: str
    sampler: str
    timings: Timings
    extras: dict[str, Any] = field(default_factory=dict, compare=False)
    precision: str = "fp32"  # what the denoiser computed in: fp32, bf16 or fp16 (vgen.precision)

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(im.info.get("parameters", "") for im in self.images)


def fit_size(image: Image.Image, native_w: int, native_h: int,
             min_side: int = Limits.min_side) -> tuple[int, int]:
    """The size to edit at when none is given: the source's aspect at the model's native area,
    in multiples of 8, scaled up where needed so neither side is under ``min_side``."""
    area = native_w * native_h
    aspect = image.width / image.height
    w, h = (area * aspect) ** 0.5, (area / aspect) ** 0.5
    grow = max(1.0, min_side / min(w, h))
    return (max(min_side, round(w * grow / 8) * 8), max(min_side, round(h * grow / 8) * 8))


def with_model_defaults(req: GenerateRequest, defaults: ModelDefaults) -> GenerateRequest:
    """Fill the fields left as None with the model's defaults (an edit keeps its source's
    aspect ratio at the model's native area)."""
    width, height = defaults.width, defaults.height
    if isinstance(req, EditRequest) and isinstance(req.image, Image.Image):
        width, height = fit_size(req.image, width, height)
    if isinstance(req, EditRequest) and req.image_guidance is None:
        req = replace(req, image_guidance=defaults.image_guidance)
    if req.layout is not None and req.layout_guidance is None:
        req = replace(req, layout_guidance=defaults.layout_guidance)
    return replace(
        req,
        steps=defaults.steps if req.steps is None else req.steps,
        guidance=defaults.guidance if req.guidance is None else req.guidance,
        width=width if req.width is None else req.width,
        height=height if req.height is None else req.height,
    )


def _check_number(name: str, value: Any, lo: float, hi: float, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise InvalidRequestError(f"{name} must be {kind} from {lo} to {hi}, got {value!r}")
    if not (lo <= value <= hi) or value != value:  # NaN fails the second test
        raise InvalidRequestError(f"{name} must be from {lo} to {hi}, got {value!r}")


def check_inputs(req: GenerateRequest, limits: Limits | None = None) -> None:
    """Validate a request whose defaults are filled in; raise InvalidRequestError otherwise."""
    lim = limits or Limits.from_env()
    if not isinstance(req.prompt, str) or not isinstance(req.negative_prompt, str):
        raise InvalidRequestError("prompt and negative prompt must be text")
    for name, text in (("prompt", req.prompt), ("negative prompt", req.negative_prompt)):
        if len(text) > lim.max_prompt_chars:
            raise InvalidRequestError(
                f"{name} is {len(text)} characters; at most {lim.max_prompt_chars} are allowed"
            )
        if "\x00" in text:
            raise InvalidRequestError(f"{name} contains a NUL character")
    _check_number("steps", req.steps, 1, lim.max_steps, integer=True)
    _check_number("guidance", req.guidance, 0.0, lim.max_guidance, integer=False)
    _check_number("number of images", req.num_images, 1, lim.max_images, integer=True)
    for name, side in (("width", req.width), ("height", req.height)):
        _check_number(name, side, lim.min_side, lim.max_side, integer=True)
        if side % 8:
            raise InvalidRequestError(f"{name} must be a multiple of 8, got {side}")
    if req.width * req.height > lim.max_area:
        raise InvalidRequestError(
            f"size {req.width}x{req.height} is {req.width * req.height} pixels; at most "
            f"{lim.max_area} are allowed (e.g. {int(lim.max_area ** 0.5) // 8 * 8} square)"
        )
    if req.seed is not None and req.seed != -1:
        _check_number("seed", req.seed, 0, 2**32 - 1 - lim.max_images, integer=True)
    if req.expansion is not None:
        _check_expansion(req.expansion, lim)
    _check_layout(req)
    if req.decoder not in DECODERS:
        raise InvalidRequestError(f"decoder must be one of {', '.join(DECODERS)}, got {req.decoder!r}")
    if req.scheduler is not None:
        from .schedulers import SCHEDULERS

        if req.scheduler not in SCHEDULERS:
            raise InvalidRequestError(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, got {req.scheduler!r}"
            )
    if isinstance(req, EditRequest):
        _check_edit(req)


def _check_expansion(e: Expansion, lim: Limits) -> None:
    if not isinstance(e, Expansion):
        raise InvalidRequestError(f"expansion must be a vgen.requests.Expansion, got {type(e).__name__}")
    for name in ("original_prompt", "expanded_prompt", "lm", "revision", "system_prompt"):
        text = getattr(e, name)
        if not isinstance(text, str) or "\x00" in text or len(text) > 4 * lim.max_prompt_chars:
            raise InvalidRequestError(
                f"expansion {name.replace('_', ' ')} must be text without NUL of at most "
                f"{4 * lim.max_prompt_chars} characters"
            )


def _check_layout(req: GenerateRequest) -> None:
    if req.layout is None:
        if req.layout_plan is not None:
            raise InvalidRequestError("layout_plan says how a layout was planned; the request has no layout")
        return
    if not isinstance(req.layout, Layout):
        raise InvalidRequestError(f"layout must be a vgen.layout.Layout, got {type(req.layout).__name__}")
    if isinstance(req, EditRequest):
        raise InvalidRequestError("a layout is drawn by text to image; edits take none")
    if req.layout_plan is not None and not isinstance(req.layout_plan, LayoutPlan):
        raise InvalidRequestError(
            f"layout_plan must be a vgen.requests.LayoutPlan, got {type(req.layout_plan).__name__}")
    if req.layout_guidance is not None:
        _check_number("layout guidance", req.layout_guidance, 0.0, 5.0, integer=False)


def _check_edit(req: EditRequest) -> None:
    if req.mode not in EDIT_MODES:
        raise InvalidRequestError(f"edit mode must be one of {', '.join(EDIT_MODES)}, got {req.mode!r}")
    if req.image is None:
        raise InvalidRequestError("an edit needs a source image; none was given")
    if not isinstance(req.image, Image.Image):
        raise InvalidRequestError("the source image must be a PIL image")
    if req.mode == "inpaint":
        if req.mask is None:
            raise InvalidRequestError("inpainting needs a mask (white where to repaint); none was given")
        if not isinstance(req.mask, Image.Image):
            raise InvalidRequestError("the mask must be a PIL image")
    _check_number("strength", req.strength, 0.01, 1.0, integer=False)
    if req.mode in ("img2img", "inpaint") and int(req.steps * req.strength) < 1:
        # SDEdit runs only the last steps x strength steps of the schedule: none is no edit.
        raise InvalidRequestError(
            f"{req.steps} steps at strength {req.strength} runs no denoising step; "
            f"use at least {int(1 / req.strength + 0.999)} steps or a higher strength"
        )
    _check_number("image guidance", req.image_guidance, 0.0, 30.0, integer=False)


def request_fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


BACKBONES = ("vgg16", "unet", "vae")  # what vgen.features reads feature maps from


@dataclass(frozen=True)
class FeaturesRequest:
    """Feature maps of an image (``vgen.features``; an app job: ``vgen.worker.run_job``)."""

    image: Image.Image
    backbone: str = "vgg16"
    model: str | None = None  # unet / vae: the generator (None: the default model)
    prompt: str = ""  # unet: the text it is conditioned on
