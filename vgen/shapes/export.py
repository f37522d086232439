"""What every embedded-model trainer shares at export and at stop: a model folder is written
beside its final place and swapped in whole (with configs that plain diffusers loads in fp32),
SIGTERM/SIGINT end a run cleanly, and the pipeline trainers' step loop (:func:`run_steps`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np


def partial_folder(final: str | Path) -> Path:
    """An empty ``NAME.partial`` folder beside ``final`` to write the export into."""
    final = Path(final)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


HALF = ("float16", "bfloat16")


def load_in_float32(folder: str | Path) -> list[Path]:
    """Make the transformers configs in ``folder`` (its own ``config.json`` and each component's,
    e.g. ``text_encoder/``) say ``"dtype": "float32"`` where they name a half type; returns the
    files changed. The weights stay as stored (fp16 keeps a model small): transformers 5 loads a
    model in its config's ``dtype`` (the saved one by default) while diffusers loads its own
    models in fp32, so a pipeline saved in fp16 mixed an fp16 text encoder with an fp32 UNet
    under ``DiffusionPipeline.from_pretrained(folder)`` without a dtype, and failed at the first
    call ("mat1 and mat2 must have the same dtype"). With this, transformers upcasts at load."""
    folder = Path(folder)
    changed = []
    for config in [folder / "config.json", *sorted(folder.glob("*/config.json"))]:
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("dtype") in HALF:
            data["dtype"] = "float32"
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            changed.append(config)
    return changed


def publish(tmp: Path, final: str | Path, meta: dict, write_card: Callable[[Path], Path]) -> Path:
    """Finish an export written to ``tmp`` and swap it in for ``final``: its configs loadable
    in fp32 by plain diffusers/transformers (:func:`load_in_float32`), ``training.json``, the
    scores of the previous export (kept until re-evaluated), the model card. The app or a commit
    never sees half a model."""
    final = Path(final)
    load_in_float32(tmp)
    (tmp / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    if (final / "eval.json").exists():
        shutil.copy2(final / "eval.json", tmp / "eval.json")
    write_card(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM/SIGINT end the run after the current step, with the state saved and the weights
    exported: a session that must stop keeps every step trained so far. The previous handlers
    are back afterwards, so a caller in the same process (a test, a notebook) keeps its Ctrl-C."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, lambda *_: flag.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_steps(trainer, status: Callable[[], str] = lambda: "", export_on_save: bool = False,
              **budget) -> None:
    """A pipeline trainer's loop (``train_edit``, ``train_grounded``, ``train_distilled``):
    ``step_once`` on its batches until the config's ``steps``, its ``minutes``
    (``train.TimeBudget``, ``budget`` its keywords) or SIGTERM/SIGINT; a log line every
    ``log_every`` steps (``status()`` adds to it), the resumable state every ``save_every`` (and
    the export too with ``export_on_save``: the editor's run publishes as it goes); then the
    state and the export."""
    from .train import TimeBudget

    t, c = trainer, trainer.cfg
    with stop_on_signals() as stop:
        t0, losses = time.time(), []
        run_t0, run_step0 = t0, t.step
        batches, clock = t.batches(), TimeBudget(c.minutes, t.step, c, **budget)
        while t.step < c.steps and not stop.is_set() and not clock.expired():
            losses.append(t.step_once(next(batches)))
            t.step += 1
            clock.after_step(t.step, t.log)
            if t.step % c.log_every == 0:
                t.log(f"step {t.step}/{c.steps} loss {np.mean(losses):.4f}{status()} "
                      f"({(time.time() - t0) / len(losses):.2f} s/step)")
                t0, losses = time.time(), []
            if t.step % c.save_every == 0:
                t.save_state()
                if export_on_save:
                    t.export()
                    t.log(f"exported step {t.step} to {c.out}")
        run_s, done = time.time() - run_t0, t.step - run_step0
        if not (export_on_save and done and t.step % c.save_every == 0):  # else the loop just did both
            t.save_state()
            t.export()
        t.log(f"done: step {t.step}, exported to {c.out} ({done} steps in this run, "
              f"{run_s / max(1, done):.2f} s/step{' including exports' if export_on_save else ''})")


def train_from(trainer, resume: bool, origin: str, resume_run: Callable[[], bool] | None = None):
    """A pipeline trainer's entry: with ``resume``, go on from its saved state
    (``resume_run()``, by default ``trainer.resume()``), else start from its init model
    (``origin`` names it in the log); then run it. Returns the trainer."""
    if not (resume and (resume_run or trainer.resume)()):
        if resume:
            trainer.log(f"nothing to resume from; starting from {origin}")
        trainer.start_from_init()
    trainer.run()
    return trainer


def export_saved_state(trainer, out: str | Path) -> Path:
    """Export the weights of a (running) run's saved state to ``out`` without touching the run:
    to evaluate a run midway. Its model folder is only written when it ends."""
    if not trainer.resume():
        raise FileNotFoundError(f"no training state in {trainer.state_path.parent}")
    trainer.export(out)
    return Path(out)
