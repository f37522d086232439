"""Which files of a model repo or folder vgen fetches and loads (``vgen.hub.resolve`` uses them).

Only what a pipeline needs: configs, tokenizer files, the model card and the standard
``.safetensors`` weight names diffusers and transformers look for, per component the fp16
variant or the full-precision one (as diffusers falls back). Pickle weights (``.bin``,
``.ckpt``, ...) are never selected, and a repo that only has those is refused, because loading
them can run arbitrary code.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path, PurePosixPath
from typing import Sequence

from .errors import UnsafeWeightsError

_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
# The weight files diffusers and transformers actually look for: the (optionally sharded) standard
# names, optionally with the fp16 variant infix. Anything else (single-file checkpoints such as
# "sd_xl_base_1.0.safetensors", non_ema/ema variants, adapters) is never needed to load a pipeline.
_WEIGHT_FILE = re.compile(
    r"(?:diffusion_pytorch_model|model)(?P<variant>\.fp16)?(?:-\d+-of-\d+)?\.safetensors"
)
_WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
# README.md: the model card, whose ``inference: parameters:`` are the model's recommended settings
# (vgen.catalog.card_defaults); at the top level only.
# chat_template.jinja: where transformers 5 saves a chat template (an instruction planner needs it).
_SUPPORT_PATTERNS = ("model_index.json", "*.json", "*.txt", "*.model", "*.tiktoken", "chat_template.jinja",
                    "README.md")


def pipeline_allow_patterns(variant: str | None = None) -> list[str]:
    """``allow_patterns`` (fnmatch, as ``snapshot_download`` uses them) for what a pipeline loads.

    Configs (``*.json``: ``model_index.json``, component ``config.json``, index files), tokenizer
    files (``*.txt``, ``*.model``, ``*.tiktoken``, ``tokenizer.json``), the model card
    (``README.md``) and the standard safetensors weight names diffusers and transformers look
    for (``diffusion_pytorch_model*.safetensors``, ``model*.safetensors``, sharded or not). With ``variant="fp16"`` only the ``.fp16`` weight files
    match; with no variant only the non-variant ones. Pickle weights, ONNX/Flax/TF files and Python
    code never match.

    fnmatch's ``*`` also crosses ``/``, so these patterns cannot limit depth; :func:`resolve` applies
    a stricter per-file selection on top (one folder level, per-component fp16 fallback).
    """
    if variant not in (None, "fp16"):
        raise ValueError(f"Unknown weight variant {variant!r}; vgen supports None or 'fp16'.")
    infix = ".fp16" if variant else ""
    weights = []
    for stem in _WEIGHT_STEMS:
        for prefix in ("", "*/"):
            weights.append(f"{prefix}{stem}{infix}.safetensors")
            weights.append(f"{prefix}{stem}{infix}-*-of-*.safetensors")
    return [*_SUPPORT_PATTERNS, *weights]


def weight_variant(path: str) -> str | None | bool:
    """``None``/``"fp16"`` for a loadable safetensors weight file, ``False`` for any other file."""
    match = _WEIGHT_FILE.fullmatch(PurePosixPath(path).name)
    if match is None:
        return False
    return "fp16" if match.group("variant") else None


def loadable_weights(paths: Sequence[str]) -> dict[str, dict[str | None, list[str]]]:
    """Loadable weight files by component folder, then by variant (None or "fp16").

    Only files at most one folder deep count, and top-level weights of a pipeline repo do not: a
    ``model_index.json`` repo loads its weights from component folders.
    """
    is_pipeline = "model_index.json" in paths
    weights: dict[str, dict[str | None, list[str]]] = {}
    for path in paths:
        parts = PurePosixPath(path).parts
        variant = weight_variant(path)
        if variant is False or len(parts) > 2 or (is_pipeline and len(parts) == 1):
            continue
        weights.setdefault(str(PurePosixPath(path).parent), {}).setdefault(variant, []).append(path)
    return weights


def variant_candidates(paths: Sequence[str], prefer_fp16: bool) -> list[str | None]:
    """Variants that could load this file set, best first.

    fp16 is an option only if fp16 weight files exist; it becomes the only option when some
    component has fp16 weights but no full-precision ones (loading it needs ``variant="fp16"``).
    """
    components = loadable_weights(paths).values()
    if not any("fp16" in by_variant for by_variant in components):
        return [None]
    if any(None not in by_variant for by_variant in components):
        return ["fp16"]
    return ["fp16", None] if prefer_fp16 else [None, "fp16"]


def select_files(paths: Sequence[str], variant: str | None) -> list[str]:
    """The exact files to fetch from a repo listing for ``variant``.

    Support files (configs, tokenizer files) at most one folder deep, plus per component folder the
    chosen variant's weights if it has them, else the other variant's, as diffusers itself does.
    Top-level ``.safetensors`` of a pipeline repo (single-file checkpoints of several GB), other
    variants (non_ema, ...) and anything else are left out.
    """
    selected = [
        path
        for path in paths
        if len(PurePosixPath(path).parts) <= 2
        and weight_variant(path) is False
        and any(fnmatch.fnmatchcase(path, pattern) for pattern in _SUPPORT_PATTERNS)
    ]
    for by_variant in loadable_weights(paths).values():
        selected += by_variant.get(variant) or next(iter(by_variant.values()))
    return sorted(selected)


def refuse_pickle_only(paths: Sequence[str], where: str) -> None:
    if loadable_weights(paths):
        return
    pickles = sorted(path for path in paths if path.endswith(_PICKLE_SUFFIXES))
    if pickles:
        shown = ", ".join(pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise UnsafeWeightsError(
            f"{where} only has pickle weights ({shown}); vgen only loads .safetensors weights, because "
            "loading a pickle file can run arbitrary code. Use a repo or revision that ships "
            ".safetensors weights (or convert the weights yourself from a trusted copy)."
        )


def is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def relative_files(folder: Path) -> list[str]:
    """Files at the top level and one folder down, as posix paths relative to ``folder``."""
    files = []
    for entry in folder.iterdir():
        if entry.is_file():
            files.append(entry.name)
        elif entry.is_dir():
            files += [f"{entry.name}/{child.name}" for child in entry.iterdir() if child.is_file()]
    return files
