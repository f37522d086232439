"""The prompt panel of Text to Image: a language model rewrites the prompt (``vgen.expand``),
the user edits and picks a variant, and the images record how their prompt was made. Its
endpoint is ``/expand``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from ..components import lm_choices
from ..forms import model_ref, opt_float, opt_int, text
from ..handlers import endpoint, run_job, skip
from ..inputs import StrictDropdown, StrictNumber, StrictSlider, StrictTextbox


def expand_request(prompt, lm, seed, temperature, num_variants, system_prompt):
    from vgen.expand import DEFAULT_TEMPERATURE, ExpandRequest

    t = opt_float(temperature, "temperature")
    n = opt_int(num_variants, "number of variants")
    return ExpandRequest(
        prompt=text(prompt), lm=model_ref(lm), seed=opt_int(seed, "seed"),
        temperature=DEFAULT_TEMPERATURE if t is None else t, num_variants=1 if n is None else n,
        system_prompt=system_prompt if system_prompt and system_prompt.strip() else None,
    )


def answer(result) -> dict:
    """An expansion as the endpoint's JSON (also what the panel keeps of it)."""
    req = result.request
    return {"original": req.prompt, "variants": list(result.variants), "seeds": list(result.seeds),
            "lm": result.lm, "revision": result.revision, "mode": result.mode,
            "temperature": req.temperature, "system_prompt": req.system_prompt or "",
            "seconds": round(result.seconds, 3), "done": True}


@endpoint
async def expand_prompt(prompt: str, lm: str | None = None, seed: float | None = 0,
                        temperature: float | None = 0.8, num_variants: float = 1,
                        system_prompt: str | None = None, request: gr.Request = None,
                        progress=gr.Progress()):
    """Expand a prompt with a language model (streams; the last answer is complete).

    Parameters:
        prompt: the prompt to expand
        lm: Hub repo id (org/name[@revision]) or local folder of a causal LM; empty for the embedded vgen-shapes-lm
        seed: variant i uses seed + i; -1 draws one
        temperature: sampling temperature from 0 to 2 (0: greedy)
        num_variants: how many expansions (1-8)
        system_prompt: instruction models only; empty for the default one
    Returns:
        expansion: {"variants", "seeds", "lm", "revision", "mode", "temperature", "system_prompt", "original", "seconds", "done": true}; while it streams {"variants": texts so far, "index": the variant being written, "done": false}
    """
    req = expand_request(prompt, lm, seed, temperature, num_variants, system_prompt)

    def partial(job) -> tuple:
        texts = [job.texts.get(i, "") for i in range(req.num_variants)]
        return ({"original": req.prompt, "variants": texts, "index": job.text_index,
                 "done": False},)

    async for out in run_job("expand", lambda: req, progress, request, n_outputs=1,
                             finish=lambda job: (answer(job.result),), live=partial):
        yield out


def variant_choices(texts) -> list[tuple[str, int]]:
    return [(f"{i + 1} · {t}" if t else f"{i + 1} · …", i) for i, t in enumerate(texts)]


def diff(original: str | None, expanded: str | None) -> list[tuple[str, str | None]]:
    from vgen.expand import word_diff

    return word_diff(original or "", expanded or "")


def show_answer(answer_value: dict | None, system_prompt: str | None):
    """The /expand answer (streamed or complete) in the picker, the editable prompt and its
    highlighted additions; a complete one also becomes the panel's state and info line."""
    if not answer_value or not answer_value.get("variants"):
        return skip(5)
    texts, original = answer_value["variants"], answer_value.get("original", "")
    if not answer_value.get("done"):
        i = min(int(answer_value.get("index") or 0), len(texts) - 1)
        return (gr.update(choices=variant_choices(texts), value=i), texts[i],
                diff(original, texts[i]), gr.skip(), gr.skip())
    a = answer_value
    info = (f"**{a['lm']}** · {a['mode']} · revision `{(a['revision'] or '?')[:12]}` · seeds "
            f"{a['seeds'][0]}–{a['seeds'][-1]} · temperature {a['temperature']:g} · "
            f"{a['seconds']:.1f} s")
    if a["mode"] == "completion" and system_prompt and system_prompt.strip():
        info += " · (a completion model: the system prompt does not apply)"
    return (gr.update(choices=variant_choices(texts), value=0), texts[0],
            diff(original, texts[0]), a, info)


def pick_variant(index, state):
    """A variant picked: it becomes the editable expanded prompt."""
    if not state or not isinstance(index, int) or not 0 <= index < len(state["variants"]):
        return gr.skip(), gr.skip()
    chosen = state["variants"][index]
    return chosen, diff(state["original"], chosen)


def show_additions(edited, state):
    """The expanded prompt edited: re-highlight what differs from the original."""
    return diff(state["original"] if state else "", edited)


def use_expansion(edited, index, state):
    """"Use this prompt": the (possibly edited) expansion becomes the prompt, and what made it
    is kept so the images made from it record it."""
    if not state or not (edited or "").strip():
        raise gr.Error("Expand a prompt first (Expand), then pick a variant.", print_exception=False)
    i = index if isinstance(index, int) and 0 <= index < len(state["variants"]) else 0
    record = {"original_prompt": state["original"], "expanded_prompt": state["variants"][i],
              "lm": state["lm"], "revision": state["revision"], "seed": state["seeds"][i],
              "temperature": state["temperature"], "system_prompt": state["system_prompt"],
              "used": edited.strip()}
    return edited.strip(), record


def recorded_expansion(record, prompt):
    """The Expansion to record with a generation: only while the prompt is still the text the
    expansion made (a prompt typed afterwards was not made by the language model)."""
    from vgen.requests import Expansion

    if not isinstance(record, dict) or (prompt or "").strip() != record.get("used"):
        return None
    return Expansion(**{k: v for k, v in record.items() if k != "used"})


def restore_expansion(path: str | None):
    """The expansion fields from a PNG's parameters (nothing changes for images made without)."""
    n = 10
    if not path:
        return skip(n)
    from vgen.images import open_image
    from vgen.metadata import read_parameters, request_from_parameters

    try:
        req = request_from_parameters(read_parameters(open_image(path)))
    except (ValueError, KeyError):
        return skip(n)  # restore_parameters reports it
    e = req.expansion
    if e is None:
        return (*skip(n - 1), None)
    state = {"original": e.original_prompt, "variants": [e.expanded_prompt], "seeds": [e.seed],
             "lm": e.lm, "revision": e.revision, "mode": "", "temperature": e.temperature,
             "system_prompt": e.system_prompt}
    record = {"original_prompt": e.original_prompt, "expanded_prompt": e.expanded_prompt,
              "lm": e.lm, "revision": e.revision, "seed": e.seed, "temperature": e.temperature,
              "system_prompt": e.system_prompt, "used": req.prompt.strip()}
    info = (f"Restored: **{e.lm}** revision `{(e.revision or '?')[:12]}` · seed {e.seed} · "
            f"temperature {e.temperature} wrote this prompt from “{e.original_prompt}”.")
    return (e.lm, e.seed if e.seed is not None else gr.skip(),
            e.temperature if e.temperature is not None else gr.skip(),
            e.system_prompt or gr.skip(),
            gr.update(choices=variant_choices([e.expanded_prompt]), value=0),
            e.expanded_prompt, diff(e.original_prompt, e.expanded_prompt), state, info, record)


@dataclass
class PromptPanel:
    lm: gr.Dropdown
    seed: gr.Number
    temperature: gr.Slider
    variants: gr.Slider
    system_prompt: gr.Textbox
    expand: gr.Button
    picker: gr.Radio
    expanded: gr.Textbox
    diff: gr.HighlightedText
    use: gr.Button
    use_and_generate: gr.Button
    info: gr.Markdown
    answer: gr.JSON  # the /expand endpoint's answer (hidden: the panel shows it)
    result: gr.State  # the last expansion: original, variants, seeds, lm, ... (plain dict)
    record: gr.State  # the expansion in use: Expansion fields + "used" (the prompt it made)
    event: object = None


def build() -> PromptPanel:
    from vgen.expand import DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPERATURE, MAX_VARIANTS, default_lm

    with gr.Accordion("Expand with language model", open=False):
        gr.Markdown("A language model rewrites the prompt above into fuller ones; edit and "
                    "pick one, then use it. Images record how their prompt was made.")
        lm = StrictDropdown(choices=lm_choices(), value=default_lm(), allow_custom_value=True,
                            label="Language model", elem_classes=["vgen-model"],
                            info="Pick one, or type a Hub repo id of a causal LM "
                            "(org/name[@revision]).")
        with gr.Row():
            seed = StrictNumber(label="Seed (variant i: seed + i)", value=0, precision=0)
            temperature = StrictSlider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05,
                                       label="Temperature")
            variants = StrictSlider(1, MAX_VARIANTS, value=3, step=1, label="Variants")
        system_prompt = StrictTextbox(label="System prompt (instruction models only)", lines=3,
                                      value=DEFAULT_SYSTEM_PROMPT)
        expand = gr.Button("Expand")
        picker = gr.Radio(choices=[], label="Variants", type="value")
        expanded = StrictTextbox(label="Expanded prompt (editable)", lines=2)
        highlighted = gr.HighlightedText(label="Added by the language model",
                                         combine_adjacent=True, show_legend=True,
                                         show_inline_category=False,
                                         color_map={"added": "green", "removed": "red"})
        with gr.Row():
            use = gr.Button("Use this prompt", size="sm")
            use_and_generate = gr.Button("Use and generate", size="sm", variant="primary")
        info = gr.Markdown(elem_id="t2i-expand-info")
        answer_json = gr.JSON(visible=False, label="expansion")
    return PromptPanel(lm, seed, temperature, variants, system_prompt, expand, picker, expanded,
                       highlighted, use, use_and_generate, info, answer_json, gr.State(None),
                       gr.State(None))


def wire(x: PromptPanel, prompt: gr.Textbox, generate: Callable, generate_inputs: list,
         generate_outputs: list, results: gr.Gallery, restore_file: gr.File, defaults_js: str):
    """Wire the panel; "Use and generate" runs ``generate`` as the tab's Generate does (with
    its "0 = default" adapter ``defaults_js``). Returns that generation, for the tab's Stop."""
    quick = dict(api_visibility="private", concurrency_limit=None)
    inputs = [prompt, x.lm, x.seed, x.temperature, x.variants, x.system_prompt]
    # The one /expand endpoint: its streamed answers are shown by the panel as they come.
    x.event = x.expand.click(expand_prompt, inputs, x.answer, api_name="expand",
                             concurrency_limit=None, trigger_mode="once",
                             show_progress_on=x.expanded)
    x.answer.change(show_answer, [x.answer, x.system_prompt],
                    [x.picker, x.expanded, x.diff, x.result, x.info], **quick)
    x.picker.input(pick_variant, [x.picker, x.result], [x.expanded, x.diff], **quick)
    x.expanded.input(show_additions, [x.expanded, x.result], x.diff, **quick)
    x.use.click(use_expansion, [x.expanded, x.picker, x.result], [prompt, x.record], **quick)
    generating = x.use_and_generate.click(
        use_expansion, [x.expanded, x.picker, x.result], [prompt, x.record], **quick,
    ).success(generate, generate_inputs, generate_outputs, api_visibility="private",
              concurrency_limit=None, show_progress="hidden", js=defaults_js)
    restore_file.upload(
        restore_expansion, restore_file,
        [x.lm, x.seed, x.temperature, x.system_prompt, x.picker, x.expanded, x.diff, x.result,
         x.info, x.record], **quick,
    )
    return generating
