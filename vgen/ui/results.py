"""What a generate or edit job shows in its gallery, info line and notice: while it runs (a
progress line and the live preview), when it is done, stopped or failed."""

from __future__ import annotations

import gradio as gr

from vgen.catalog import entry_for

from .components import HUB_POINTER
from .handlers import Job, Progress, fair_queue, session_of

# The info line's first character says what it describes (the Stop and failure handlers read it);
# geometric shapes, not emoji, so a browser without an emoji font draws them too.
RUNNING, STOPPED, FAILED = "▶", "■", "✖"
STOPPED_LINE = f"{STOPPED} Stopped: no image was finished."
STOP_WAIT_S = 15.0  # at most this long for the stopped job to end (it stops within one step)


def running(p: Progress) -> tuple:
    """While a job runs: the preview that just arrived (the old results are cleared when it
    starts, so nothing on screen belongs to another job) and a progress line with a timer."""
    gallery = [p.preview] if p.preview else (None if p.first else gr.skip())
    line = f"{RUNNING} {p.text[:1].upper()}{p.text[1:]} · {p.seconds:.0f} s"
    return gallery, line, "" if p.first else gr.skip()


def is_running(info: str | None) -> bool:
    return (info or "").startswith(RUNNING)


async def stopped(info: str | None, request: gr.Request = None) -> tuple:
    """Stop pressed: while a job ran, no half-denoised preview stays and the info line says it
    stopped; with none running nothing changes (the last results stay). The line is sent once
    the session's job has really ended: an update the job sent just before the cancel reached
    it then comes first, and cannot overwrite "Stopped" (regression: the Edit tab's line went
    back to "Denoising: step 5/112")."""
    if not is_running(info):
        return gr.skip(), gr.skip(), gr.skip()
    await fair_queue().until_idle(session_of(request), STOP_WAIT_S)
    return None, STOPPED_LINE, ""


def failed_line(error: BaseException) -> str:
    """The info line of a failed job: the message the caller also gets (``gr.Error``)."""
    return f"{FAILED} No image was made: {getattr(error, 'message', None) or error}"


def refused(info: str | None) -> tuple:
    """A failed event whose endpoint did not say why (its inputs were refused before it ran):
    the info line says so, and the results of an earlier job are cleared. Not after a job
    that started (its line is a progress line): one stopped says so itself (``stopped``; Gradio
    counts a cancelled event as failed), one that failed wrote its error."""
    if (info or "").startswith((FAILED, STOPPED, RUNNING)):
        return gr.skip(), gr.skip(), gr.skip()
    return None, f"{FAILED} No image was made: the request was refused (see the message).", ""


def info_line(job: Job) -> str:
    """One line that says what made the images: model, revision, task, sampler, size, steps,
    guidance (and strength or image guidance for edits), seeds, time, decoder, precision and
    (when not PyTorch) what ran on OpenVINO."""
    r = job.result
    req = r.request
    task = getattr(req, "mode", "txt2img")
    parts = [f"**{r.model}**", f"revision `{r.revision[:12]}`", task, r.sampler,
             f"{req.width}×{req.height}", f"{req.steps} steps", f"guidance {req.guidance:g}"]
    if task in ("img2img", "inpaint"):
        parts.append(f"strength {req.strength:g}")
    elif task == "instruct" and req.image_guidance is not None:
        parts.append(f"image guidance {req.image_guidance:g}")
    seeds = ", ".join(str(s) for s in r.seeds)
    parts += [f"seed{'s' if len(r.seeds) > 1 else ''} {seeds}", f"{job.seconds():.1f} s"]
    decoder = r.extras.get("decoder")
    if decoder:  # which decoder made the images (and why not "fast")
        note = r.extras.get("decoder_note")
        parts.append(f"decoder {decoder}" + (f" ({note})" if note else ""))
    parts.append(r.precision)  # what the denoiser computed in (VGEN_DTYPE)
    backend = r.extras.get("backend")
    if backend and (backend != "torch" or r.extras.get("backend_note")):  # VGEN_BACKEND=openvino
        on_ov = [p for p in (r.extras.get("openvino_parts") or "").split(", ") if p]
        if backend == "openvino":  # e.g. "text encoder, denoiser, decoder on openvino"
            parts.append(f"{', '.join(on_ov or ['denoiser'])} on openvino")
        else:
            others = [p for p in on_ov if p != "denoiser"]
            parts.append(f"denoiser on {backend}" + (f" · {', '.join(others)} on openvino" if others else ""))
    return " · ".join(parts)


def vocabulary_notice(result, known: list[str]) -> str:
    unknown = result.extras.get("unknown_words") or []
    if not unknown:
        return ""
    text = (f"⚠️ **{result.model} does not know the words:** "
            + ", ".join(f"`{w}`" for w in unknown) + " — they were ignored.")
    if known:
        text += "\n\nIt knows: " + " ".join(known) + ".\n\n" + HUB_POINTER
    return text


def native_size(result) -> tuple[int, int] | None:
    """The size the model was trained at: from the engine (``extras["native_size"]``), else
    the catalog's default size for a model it lists."""
    size = result.extras.get("native_size")
    if size:
        return int(size[0]), int(size[1])
    entry = entry_for(result.model or "")
    return (entry.defaults.width, entry.defaults.height) if entry is not None else None


def size_notice(result) -> str:
    """A size larger than the model's own: it was not trained to compose such an image."""
    native, req = native_size(result), result.request
    if native is None or req.width * req.height <= native[0] * native[1]:
        return ""
    w, h = native
    return (f"ℹ️ {result.model} was trained at {w}×{h}: at {req.width}×{req.height} it loses "
            f"its composition (shapes repeat or break apart). Width and Height 0 draw at "
            f"{w}×{h}.")


def notice(job: Job) -> str:
    """What the input checks noticed (an animation's first frame), a size the model was not
    trained at, a negative prompt that had no effect, a denoiser that could not run on the
    OpenVINO backend, then the vocabulary notice."""
    parts = []
    if job.notes:
        parts.append("ℹ️ " + "; ".join(n[0].upper() + n[1:] for n in job.notes) + ".")
    negative = job.result.extras.get("negative_note")
    backend = job.result.extras.get("backend_note")  # VGEN_BACKEND=openvino, a call it cannot take
    parts += [size_notice(job.result), "ℹ️ " + negative if negative else "", "ℹ️ " + backend if backend else "",
              vocabulary_notice(job.result, job.known)]
    return "\n\n".join(p for p in parts if p)


def outputs(job: Job) -> tuple:
    """Gallery (file, caption) pairs, the info line and the notice."""
    return job.files, info_line(job), notice(job)
