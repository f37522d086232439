"""Batch generation from a prompts file: one prompt a line, ``DIR/0000.png``, ``DIR/0001.png``,
... in line order, the model loaded once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .errors import InvalidRequestError
from .generate import generate
from .metadata import save_png
from .requests import GenerateRequest


def read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"cannot read prompts file {path}: {e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InvalidRequestError(f"prompts file {path} has no prompts (one a line)")
    return prompts


def output_name(index: int, image: int, n_images: int) -> str:
    return f"{index:04d}.png" if n_images == 1 else f"{index:04d}-{image}.png"


def generate_file(prompts_file: Path, out_dir: Path, base: GenerateRequest,
                  indices: range | None = None, plan: bool = False,
                  planner: str | None = None) -> list[Path]:
    """Generate every prompt of ``prompts_file`` (or those at ``indices``) with the settings of
    ``base``; returns the files written. ``plan``: plan each prompt's layout first
    (``vgen.plan.with_planned_layout``) and draw it."""
    prompts = read_prompts(prompts_file)
    written = []
    for i in indices if indices is not None else range(len(prompts)):
        req = replace(base, prompt=prompts[i])
        if plan:
            from .plan import with_planned_layout

            req = with_planned_layout(req, planner=planner)
        result = generate(req)
        for j, im in enumerate(result.images):
            written.append(save_png(im, out_dir / output_name(i, j, len(result.images))))
    return written


def split_for_processes(n: int):
    """The indices (of ``n`` prompts) this process generates, and accelerate's ``PartialState``.

    Under ``accelerate launch`` with several processes (one per GPU, or several CPU processes),
    ``split_between_processes`` gives each a contiguous share, and each process uses its own GPU;
    files are named by prompt index, so together they write exactly what one process would.
    Run alone, a process gets every index."""
    from accelerate import PartialState

    from .pipelines import pick_device

    # Where the engine runs on the CPU (no CUDA, or VGEN_DEVICE=cpu), the processes a launcher
    # started (accelerate launch --multi_gpu, torchrun) are CPU processes joined over gloo.
    state = PartialState(cpu=pick_device().type != "cuda")
    if state.num_processes == 1:
        return range(n), state
    if state.device.type == "cuda":
        import torch

        torch.cuda.set_device(state.device)  # the engine's "cuda" is then this process's GPU
    with state.split_between_processes(list(range(n))) as mine:
        return list(mine), state
