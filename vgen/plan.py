"""Plan the picture: a language model turns a description into layouts (objects in boxes,
``vgen.layout``) for a grounded generator to draw (LayoutGPT, Feng et al. 2023; LMD, Lian et al.
2023).

``plan(PlanRequest) -> PlanResult``: variant ``i`` is sampled with seed ``seed + i`` by a private
``torch.Generator`` (temperature sampling), so a layout depends only on the planner, its
revision, the prompt, the seed and the temperature — reproducible like ``/expand``. An output
that does not parse is a :class:`~vgen.errors.PlanParseError` showing the raw text, or,
with ``on_unparsable="next_seed"``, the next seeds are tried (up to ``max_tries``) and the seed
that gave the layout is the one recorded in ``PlanResult.seeds``. Generate and verify: with the
embedded planner, a layout that disagrees with a prompt in the shapes world's grammar (a count,
colour, shape, size, relation or place the layout gets wrong, or overlapping boxes) is resampled
at the next seeds too (``verify``, on by default): the grammar, not the scorer's images, is the
check, so it costs ~0.1 s a sample and no image.

Offline planner: ``checkpoints/vgen-shapes-planner`` (``python -m vgen train planner``), a small
GPT-2 prompted with ``<bos> DESCRIPTION ;`` that writes ``PHRASE [ x0 y0 x1 y1 ] ...`` in pixels
of the 64×64 image (``vgen/shapes/planner.py``). Any planner whose tokenizer has a chat template
(an instruction LM from the Hub, e.g. ``Qwen/Qwen2.5-0.5B-Instruct``) is asked in LMD's
in-context format instead (``vgen.plan_chat``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .cpu_share import job_threads, threads_limited
from .errors import InvalidRequestError, PlanParseError
from .layout import Layout

DEFAULT_PLANNER = "vgen-shapes-planner"
MAX_VARIANTS = 16
MAX_PROMPT_CHARS = 500
DEFAULT_TEMPERATURE = 0.7
VERIFY_TRIES = 8  # seeds tried per variant for one that agrees with its prompt


@dataclass(frozen=True)
class PlanRequest:
    prompt: str
    planner: str | None = None  # None: the embedded vgen-shapes-planner
    seed: int = 0
    num_variants: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    on_unparsable: str = "raise"  # or "next_seed"
    max_tries: int = 4  # seeds tried per variant with "next_seed"
    verify: bool = True  # with "next_seed": resample a layout that disagrees with the prompt


@dataclass(frozen=True)
class PlanResult:
    layouts: tuple[Layout, ...]
    seeds: tuple[int, ...]  # the seed that produced each layout
    texts: tuple[str, ...]  # each layout as the planner wrote it
    planner: str
    revision: str = ""
    prompt: str = ""
    temperature: float = DEFAULT_TEMPERATURE
    skipped_seeds: tuple[int, ...] = field(default_factory=tuple)  # unparsable, with next_seed


def check_plan_request(req: PlanRequest) -> PlanRequest:
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise InvalidRequestError("the prompt to plan must be non-empty text")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(f"the prompt to plan must be at most {MAX_PROMPT_CHARS} characters")
    if isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed < 2**32:
        raise InvalidRequestError(f"seed must be an integer from 0 to {2**32 - 1}, got {req.seed!r}")
    n = req.num_variants
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VARIANTS:
        raise InvalidRequestError(f"num_variants must be an integer from 1 to {MAX_VARIANTS}, got {n!r}")
    t = req.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0:
        raise InvalidRequestError(f"temperature must be a number from 0 to 2, got {t!r}")
    if req.on_unparsable not in ("raise", "next_seed"):
        raise InvalidRequestError("on_unparsable must be 'raise' or 'next_seed'")
    if not 1 <= req.max_tries <= 16:
        raise InvalidRequestError("max_tries must be from 1 to 16")
    if not isinstance(req.verify, bool):
        raise InvalidRequestError(f"verify must be true or false, got {req.verify!r}")
    return req


@dataclass
class _Loaded:
    model: object
    tok: object
    ref: str
    revision: str
    threads: int | None = None  # vgen.cpu_share.job_threads


_CACHE: dict[str, _Loaded] = {}  # bounded (MAX_PLANNERS, oldest out), under _LOCK
_LOCK = threading.Lock()
MAX_PLANNERS = 2


def _load(ref: str) -> _Loaded:
    with _LOCK:
        if ref not in _CACHE:
            from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
            from transformers.utils import logging as tlogging

            from .hub import parse_reference, resolve
            from .precision import network_params

            tlogging.disable_progress_bar()  # the CLI's stdout is the layouts, stderr its bars
            # The image models' reference rules: a name under checkpoints/, a folder under an
            # allowed root (VGEN_MODEL_ROOTS), or a Hub id; any other path is refused.
            resolved = resolve(parse_reference(ref))
            folder = Path(resolved.path)
            model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
            tok = PreTrainedTokenizerFast.from_pretrained(folder)
            meta = folder / "training.json"
            revision = (f"step {json.loads(meta.read_text())['step']}" if meta.exists()
                        else "" if resolved.commit == "local" else resolved.commit)
            while len(_CACHE) >= MAX_PLANNERS:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[ref] = _Loaded(model, tok, ref, revision, job_threads("cpu", network_params(model)))
        return _CACHE[ref]


def _sample(lm: _Loaded, prompt_ids: list[int], seed: int, temperature: float) -> str:
    """One continuation, token by token from a private generator (greedy at temperature 0)."""
    import torch

    from .shapes.planner import MAX_POSITIONS

    gen = torch.Generator("cpu").manual_seed(seed)
    ids = list(prompt_ids)
    out: list[int] = []
    eos = lm.tok.eos_token_id
    with torch.no_grad():
        # The whole sequence each step (at most 96 tokens of a 1 M-parameter model): no cache
        # API to depend on, and the same logits whatever transformers release.
        for _ in range(MAX_POSITIONS - len(prompt_ids)):
            x = torch.tensor([ids])
            logits = lm.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float()
            if temperature == 0:
                nxt = int(logits.argmax())
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=gen))
            if nxt == eos:
                break
            out.append(nxt)
            ids.append(nxt)
    tokens = lm.tok.convert_ids_to_tokens(out)
    return " ".join(t for t in tokens if t not in lm.tok.all_special_tokens)


def _planner_format(lm: _Loaded, prompt: str):
    """(write(seed, temperature) -> text, parse(text) -> Layout) for the planner's kind: LMD's
    chat format for an instruction LM, else the embedded planner's own."""
    from . import plan_chat

    if plan_chat.is_chat_tokenizer(lm.tok):
        return (lambda seed, temp: plan_chat.sample_chat(lm.model, lm.tok, prompt, seed, temp),
                plan_chat.parse_lmd_text)
    from .shapes.planner import parse_plan_text, prompt_text

    prompt_ids = lm.tok(prompt_text(prompt)).input_ids
    return (lambda seed, temp: _sample(lm, prompt_ids, seed, temp)), parse_plan_text


def _checker(lm: _Loaded, prompt: str, verify: bool):
    """For the embedded planner and a prompt in the shapes world's grammar: a check that a
    layout agrees with the prompt (``shapes.planner.agrees``: every count, colour, shape, size,
    relation and place, the boxes apart); None where there is nothing to check against."""
    from . import plan_chat

    if not verify or plan_chat.is_chat_tokenizer(lm.tok):
        return None
    from .shapes import captions
    from .shapes.planner import agrees

    try:
        captions.parse(prompt)
    except Exception:  # outside the grammar: nothing to check the layout against
        return None
    return lambda layout: agrees(prompt, layout)[0]


def plan(req: PlanRequest) -> PlanResult:
    """``req.num_variants`` layouts for ``req.prompt``; variant ``i`` from seed ``seed + i``.

    With ``next_seed``, a variant whose text does not parse moves on to the seeds after the last
    one used (``max_tries`` in all), and so does one that disagrees with its prompt where the
    planner's world can check it (``verify``, up to ``VERIFY_TRIES`` seeds; if none agrees, the
    first layout that parsed is kept). Every seed passed over is in ``skipped_seeds``."""
    req = check_plan_request(req)
    ref = req.planner or DEFAULT_PLANNER
    lm = _load(ref)
    write, parse = _planner_format(lm, req.prompt)
    check = _checker(lm, req.prompt, req.verify)
    tries = max(req.max_tries, VERIFY_TRIES if check else 1) if req.on_unparsable == "next_seed" else 1
    layouts, seeds, texts, skipped = [], [], [], []
    next_free = req.seed + req.num_variants  # seeds past the variants' own, for retries
    for i in range(req.num_variants):
        candidates = [req.seed + i] + list(range(next_free, next_free + tries - 1))
        kept, last_error, unparsed = None, None, 0
        for s in candidates:
            next_free = max(next_free, s + 1)
            with threads_limited(lm.threads):  # vgen.cpu_share.job_threads
                text = write(s, float(req.temperature))
            try:
                layout = parse(text)
            except PlanParseError as e:
                last_error, unparsed = e, unparsed + 1
                skipped.append(s)
                if unparsed >= req.max_tries and kept is None:
                    break
                continue
            if check is None or check(layout):
                kept = (layout, s, text)
                break
            kept = kept or (layout, s, text)  # the first that parsed, should none agree
            skipped.append(s)
        if kept is None:
            raise PlanParseError(f"planner {ref} at seed {candidates[0]}: {last_error}",
                                 getattr(last_error, "raw", ""))
        if kept[1] in skipped:
            skipped.remove(kept[1])
        layouts.append(kept[0])
        seeds.append(kept[1])
        texts.append(kept[2])
    return PlanResult(tuple(layouts), tuple(seeds), tuple(texts), ref, lm.revision, req.prompt,
                      float(req.temperature), tuple(skipped))


def with_planned_layout(req, planner: str | None = None,
                        temperature: float = DEFAULT_TEMPERATURE):
    """``req`` (a GenerateRequest) with a layout planned for its prompt (one variant, the image
    seed, or 0 when it has none; an unparsable plan moves on to the next seeds) and the
    ``layout_plan`` that records how; on the embedded grounded model when it names none."""
    from dataclasses import replace

    from .catalog import planned_model
    from .requests import LayoutPlan

    seed = req.seed if isinstance(req.seed, int) and req.seed >= 0 else 0
    result = plan(PlanRequest(req.prompt, planner=planner, seed=seed, temperature=temperature,
                              on_unparsable="next_seed"))
    record = LayoutPlan(result.planner, result.revision, result.seeds[0], result.temperature)
    return replace(req, layout=result.layouts[0], layout_plan=record,
                   model=planned_model(req.model))
