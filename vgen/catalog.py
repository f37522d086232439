"""The models the app offers by name, and each one's sensible defaults.

The default model is the project's own (``checkpoints/vgen-shapes``) so the app works offline;
an operator picks another with ``VGEN_DEFAULT_MODEL`` (e.g. ``stabilityai/sdxl-turbo`` on a GPU
Space).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from . import config
from .requests import ModelDefaults

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "vgen-shapes"
EMBEDDED_EDIT_MODEL = "vgen-shapes-edit"
EMBEDDED_GROUNDED_MODEL = "vgen-shapes-grounded"
EMBEDDED_DISTILLED_MODEL = "vgen-shapes-distilled"


@dataclass(frozen=True)
class CatalogEntry:
    ref: str
    label: str
    defaults: ModelDefaults
    tasks: tuple[str, ...]


SHAPES_DEFAULTS = ModelDefaults(width=64, height=64, steps=20, guidance=4.0)

CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(EMBEDDED_MODEL, "vgen-shapes (embedded, offline)", SHAPES_DEFAULTS,
                 ("txt2img", "img2img", "inpaint")),
    # The embedded model distilled (vgen.shapes.train_distilled): half its steps, one UNet
    # branch each, guidance through an embedding.
    CatalogEntry(EMBEDDED_DISTILLED_MODEL, "vgen-shapes-distilled (fast, offline)",
                 replace(SHAPES_DEFAULTS, steps=10), ("txt2img", "img2img", "inpaint")),
    # gligen_beta 0.5: `eval grounded --n 40` chose it (the card's). Layout guidance 0: with
    # fusers that ground, `eval plan` scored better without it, in half the time. 10 steps, not
    # the plain model's 20: the layout fixes the composition early, and `eval plan` at 10 steps
    # kept every category's score (README, "Planning the picture").
    CatalogEntry(EMBEDDED_GROUNDED_MODEL, "vgen-shapes-grounded (layouts, offline)",
                 replace(SHAPES_DEFAULTS, steps=10, gligen_beta=0.5, layout_guidance=0.0),
                 ("txt2img",)),
    # 15 steps: one edit runs 3 UNet branches a step (instruction, image, neither), ~0.8 s of
    # one CPU core at 15 steps. Image guidance 2.5 by `eval edit --n 15` at step 11200: overall
    # 0.322 at 1.5, 0.378 at 2.5, 0.356 at 3.5 (more of the source kept, fewer right changes);
    # at step 16500: 0.422 at 1.5, 0.500 at 2.5.
    CatalogEntry(EMBEDDED_EDIT_MODEL, "vgen-shapes-edit (embedded, offline)",
                 ModelDefaults(64, 64, 15, 4.0, image_guidance=2.5), ("instruct",)),
    CatalogEntry("stabilityai/sd-turbo", "SD-Turbo (512, 1-4 steps)",
                 ModelDefaults(512, 512, 1, 0.0), ("txt2img", "img2img", "inpaint")),
    CatalogEntry("stabilityai/sdxl-turbo", "SDXL-Turbo (512, 1-4 steps)",
                 ModelDefaults(512, 512, 1, 0.0), ("txt2img", "img2img", "inpaint")),
    CatalogEntry("stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion 1.5",
                 ModelDefaults(512, 512, 25, 7.5), ("txt2img", "img2img", "inpaint")),
    CatalogEntry("timbrooks/instruct-pix2pix", "InstructPix2Pix",
                 ModelDefaults(512, 512, 20, 7.5), ("instruct",)),
)


def default_model(task: str = "txt2img") -> str:
    """The model a request without one uses: ``VGEN_DEFAULT_MODEL`` or :func:`embedded_default`; for
    the instruct task ``VGEN_DEFAULT_EDIT_MODEL``, else the embedded editor when its folder is
    here (offline), else the Hub's InstructPix2Pix."""
    if task == "instruct":
        from .hub import CHECKPOINTS_DIR

        chosen = config.default_edit_model_setting()
        if chosen:
            return chosen
        if (CHECKPOINTS_DIR / EMBEDDED_EDIT_MODEL / "model_index.json").exists():
            return EMBEDDED_EDIT_MODEL
        return "timbrooks/instruct-pix2pix"
    return config.default_model_setting() or embedded_default()


def embedded_default() -> str:
    """The embedded text-to-image model a fresh app draws with: the distilled student when its
    folder is here (10 steps of one UNet branch, against its teacher's 20 of two), else
    ``vgen-shapes``."""
    from .hub import CHECKPOINTS_DIR

    if (CHECKPOINTS_DIR / EMBEDDED_DISTILLED_MODEL / "model_index.json").exists():
        return EMBEDDED_DISTILLED_MODEL
    return EMBEDDED_MODEL


def is_model(ref: str | None, name: str) -> bool:
    """Whether ``ref`` names the embedded model ``name`` (by name or by its folder)."""
    from .hub import parse_reference

    ref = (ref or "").strip()
    if not ref:
        return False
    if ref == name:
        return True
    try:
        mine, embedded = parse_reference(ref), parse_reference(name)
    except Exception:  # the embedded model is missing, or ref is no reference at all
        return False
    return mine.is_local and embedded.is_local and mine.local_path == embedded.local_path


def is_plain_shapes_model(ref: str) -> bool:
    """Whether ``ref`` names an embedded text-to-image shapes model: ``vgen-shapes`` or its
    distilled student (the same world, text encoder and autoencoder)."""
    return any(is_model(ref, name) for name in (EMBEDDED_MODEL, EMBEDDED_DISTILLED_MODEL))


def layout_model(ref: str | None) -> str | None:
    """The model that draws a layout for a request naming ``ref``: an embedded plain model
    (:func:`is_plain_shapes_model`, named or the default when ``ref`` is empty) takes no layout,
    and the grounded twin (``vgen-shapes``' weights plus GLIGEN layers,
    ``checkpoints/vgen-shapes-grounded``) draws it instead; any other model is kept (a GLIGEN
    model draws the layout; another is the engine's error)."""
    from .hub import CHECKPOINTS_DIR

    target = (ref or "").strip() or default_model()
    twin = CHECKPOINTS_DIR / EMBEDDED_GROUNDED_MODEL / "model_index.json"
    if is_plain_shapes_model(target) and twin.exists():
        return EMBEDDED_GROUNDED_MODEL
    return ref


def planned_model(ref: str | None) -> str:
    """The model a planned request (``--plan``, Compare's ``plan=on``) is drawn on: as
    :func:`layout_model`, and with no model named and a default that is not the embedded one,
    the embedded grounded model (the planner is the shapes world's)."""
    return layout_model(ref) or EMBEDDED_GROUNDED_MODEL


def entry_for(ref: str) -> CatalogEntry | None:
    bare = ref.split("@", 1)[0].rstrip("/")
    for e in CATALOG:
        if bare == e.ref or bare.endswith("/" + e.ref) and "/" not in e.ref:
            return e
    return None


# The Hub's model-card convention for a model's recommended settings (the front matter's
# ``inference: parameters:``, as the Hub's widgets read it), mapped to ModelDefaults' fields.
CARD_PARAMETERS = {"num_inference_steps": ("steps", int), "guidance_scale": ("guidance", float),
                   "width": ("width", int), "height": ("height", int),
                   "image_guidance_scale": ("image_guidance", float),
                   "gligen_scheduled_sampling_beta": ("gligen_beta", float),
                   "layout_guidance_scale": ("layout_guidance", float)}


def card_defaults(folder: Path | str | None) -> dict:
    """The recommended settings in the model card (``folder/README.md``) as ModelDefaults fields;
    {} without a card or settings. A value of the wrong type or out of range is ignored (logged):
    a card is documentation, and a typo in one must not stop the model from loading."""
    card = Path(folder) / "README.md" if folder is not None else None
    if card is None or not card.is_file():
        return {}
    from huggingface_hub.repocard import metadata_load  # ~0.3 s to import: only when needed

    try:
        meta = metadata_load(card) or {}
    except Exception as e:  # malformed YAML front matter
        logger.warning("ignoring the front matter of %s: %s", card, e)
        return {}
    inference = meta.get("inference")
    params = inference.get("parameters") if isinstance(inference, dict) else None
    if not isinstance(params, dict):
        return {}
    out = {}
    for key, value in params.items():
        if key not in CARD_PARAMETERS:
            continue
        name, kind = CARD_PARAMETERS[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and (value > 0 if kind is int else value >= 0) and (kind is float or value == int(value)))
        if ok:
            out[name] = kind(value)
        else:
            logger.warning("ignoring %s: %r in %s (not a %s %s)", key, value, card,
                           "positive" if kind is int else "non-negative",
                           "integer" if kind is int else "number")
    return out


def defaults_for(ref: str, pipe=None, folder: Path | str | None = None) -> ModelDefaults:
    """The settings a request leaves open: the catalog's for a model it lists, else the model
    card's recommended ones (``folder``: the loaded model's folder, see :func:`card_defaults`),
    else ones read off the pipeline (native size from the UNet config) and its name."""
    e = entry_for(ref)
    if e is not None:
        return e.defaults
    size = 512
    if pipe is not None and getattr(pipe, "unet", None) is not None:
        size = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
    turbo = "turbo" in ref.lower()
    generic = ModelDefaults(size, size, 1 if turbo else 25, 0.0 if turbo else 7.5)
    return replace(generic, **card_defaults(folder))


def model_defaults(model) -> ModelDefaults:
    """:func:`defaults_for` a loaded model (``vgen.pipelines.LoadedModel``)."""
    return defaults_for(model.ref, model.pipe, model.resolved.path)
