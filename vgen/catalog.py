"""The models the app offers by name, and each one's sensible defaults.

The default model is the project's own (``checkpoints/vgen-shapes``) so the app works offline;
an operator picks another with ``VGEN_DEFAULT_MODEL`` (e.g. ``stabilityai/sdxl-turbo`` on a GPU
Space).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .requests import ModelDefaults

EMBEDDED_MODEL = "vgen-shapes"
EMBEDDED_EDIT_MODEL = "vgen-shapes-edit"


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
    # 15 steps: one edit runs 3 UNet branches a step (instruction, image, neither), ~0.8 s of
    # one CPU core at 15 steps (image guidance: EditRequest's 1.5, the app's default).
    CatalogEntry(EMBEDDED_EDIT_MODEL, "vgen-shapes-edit (embedded, offline)",
                 ModelDefaults(64, 64, 15, 4.0), ("instruct",)),
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
    """The model a request without one uses: ``VGEN_DEFAULT_MODEL`` or the embedded model; for
    the instruct task ``VGEN_DEFAULT_EDIT_MODEL``, else the embedded editor when its folder is
    here (offline), else the Hub's InstructPix2Pix."""
    if task == "instruct":
        from .hub import CHECKPOINTS_DIR

        chosen = os.environ.get("VGEN_DEFAULT_EDIT_MODEL", "").strip()
        if chosen:
            return chosen
        if (CHECKPOINTS_DIR / EMBEDDED_EDIT_MODEL / "model_index.json").exists():
            return EMBEDDED_EDIT_MODEL
        return "timbrooks/instruct-pix2pix"
    return os.environ.get("VGEN_DEFAULT_MODEL", "").strip() or EMBEDDED_MODEL


def entry_for(ref: str) -> CatalogEntry | None:
    bare = ref.split("@", 1)[0].rstrip("/")
    for e in CATALOG:
        if bare == e.ref or bare.endswith("/" + e.ref) and "/" not in e.ref:
            return e
    return None


def defaults_for(ref: str, pipe=None) -> ModelDefaults:
    """Catalog defaults, else ones read off the pipeline (native size from the UNet config)."""
    e = entry_for(ref)
    if e is not None:
        return e.defaults
    size = 512
    if pipe is not None and getattr(pipe, "unet", None) is not None:
        size = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
    turbo = "turbo" in ref.lower()
    return ModelDefaults(size, size, 1 if turbo else 25, 0.0 if turbo else 7.5)
