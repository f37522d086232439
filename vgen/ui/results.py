"""What a finished generate or edit job shows: gallery items, the info line and the notice."""

from __future__ import annotations

from .components import HUB_POINTER
from .handlers import Job


def info_line(job: Job) -> str:
    """One line that says what made the images: model, revision, task, sampler, size, steps,
    guidance (and strength or image guidance for edits), seeds, time and decoder."""
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


def notice(job: Job) -> str:
    """The vocabulary notice, after what the input checks noticed (an animation's first frame)."""
    text = vocabulary_notice(job.result, job.known)
    if job.notes:
        inputs = "ℹ️ " + "; ".join(n[0].upper() + n[1:] for n in job.notes) + "."
        text = inputs + ("\n\n" + text if text else "")
    return text


def outputs(job: Job) -> tuple:
    """Gallery (file, caption) pairs, the info line and the notice."""
    return job.files, info_line(job), notice(job)
