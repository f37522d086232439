"""Prompt expansion with a causal language model: ``expand(ExpandRequest) -> ExpandResult``.

A short prompt ("a red circle", "a cat") is rewritten by a language model into a fuller one
that the image model then draws, the way Fooocus' GPT-2 "prompt expansion" works, but in the
open: the user sees, edits and picks what the model wrote, and the image records how its
prompt was made (``vgen.requests.Expansion`` in the PNG ``parameters`` chunk).

Two kinds of model, told apart by their tokenizer:

* **instruction models** (a tokenizer with a chat template, e.g. ``Qwen/Qwen2.5-0.5B-Instruct``)
  get the editable system prompt and the user's prompt as a chat (``apply_chat_template``) and
  answer with a rewritten prompt;
* **completion models** (no chat template: the embedded ``vgen-shapes-lm``, GPT-2 prompt models
  such as ``Gustavosta/MagicPrompt-Stable-Diffusion``) continue the user's text, so what the
  user wrote stays the start of every expansion; the system prompt does not apply.

Models load through the same references as image models (``vgen.hub``: Hub ids with optional
revision, or folders under the allowed roots; safetensors only) with transformers'
``AutoModelForCausalLM``/``AutoTokenizer`` and ``trust_remote_code=False``, and are kept in a
bounded, locked LRU (``vgen.pipelines.ModelCache`` with an LM loader).

Reproducible: variant ``i`` is sampled with seed ``seed + i`` by :class:`SeededSampling`, a
logits processor that draws each token with its own ``torch.Generator`` (temperature, then the
model's own top-k/top-p), so a text depends on (model, revision, prompt, system prompt, seed,
temperature) and not on the process' global random state or on another user's request running
at the same time. (Numbers can differ across devices and dtypes, as for images.)
"""

from __future__ import annotations

import copy
import difflib
import queue
import random
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator

from . import config
from .errors import InvalidRequestError, UnsupportedModelError
from .jobs import JobControl
from .requests import Expansion, Limits

if TYPE_CHECKING:  # torch and the model cache load on first use: the UI starts without them
    import torch

    from .pipelines import LoadedModel, ModelCache

EMBEDDED_LM = "vgen-shapes-lm"
MAX_VARIANTS = 8
MAX_NEW_TOKENS = 256
DEFAULT_MAX_NEW_TOKENS = 77  # a Stable Diffusion prompt is read up to 77 tokens
MAX_TEMPERATURE = 2.0
MAX_SYSTEM_PROMPT_CHARS = 4000
DEFAULT_TEMPERATURE = 0.8

DEFAULT_SYSTEM_PROMPT = (
    "You rewrite short image prompts into one richer prompt for a text-to-image model. "
    "Keep every object, count, colour, size, position and relation the user wrote, unchanged. "
    "Add concrete visual details (subject, setting, lighting, composition, style), nothing "
    "that contradicts the user. Reply with the prompt only: one line, no quotes, no explanation."
)


@dataclass(frozen=True)
class LMEntry:
    ref: str
    label: str


LM_CATALOG: tuple[LMEntry, ...] = (
    LMEntry(EMBEDDED_LM, "vgen-shapes-lm (embedded, offline; shapes world)"),
    LMEntry("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct (chat, uses the system prompt)"),
    LMEntry("Gustavosta/MagicPrompt-Stable-Diffusion", "MagicPrompt (GPT-2, Stable Diffusion prompts)"),
)


def default_lm() -> str:
    """``VGEN_DEFAULT_LM`` or the embedded shapes LM (works offline)."""
    return config.default_lm_setting() or EMBEDDED_LM


@dataclass(frozen=True)
class ExpandRequest:
    """Expand ``prompt`` into ``num_variants`` texts; variant ``i`` uses seed ``seed + i``.

    ``temperature`` 0 is greedy decoding (every variant then reads the same).
    ``max_new_tokens`` None: 77, capped by the model's context. ``system_prompt`` None: the
    default one (instruction models only; completion models take none)."""

    prompt: str
    lm: str | None = None  # None: default_lm()
    seed: int | None = None  # None or -1: draw one and report it
    temperature: float = DEFAULT_TEMPERATURE
    max_new_tokens: int | None = None
    num_variants: int = 1
    system_prompt: str | None = None


@dataclass(frozen=True)
class ExpandResult:
    """The variants, their seeds, the request as run (lm, seed and system prompt filled in)
    and where the model came from; ``mode`` is "chat" or "completion"."""

    request: ExpandRequest
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    lm: str
    revision: str
    mode: str
    seconds: float

    def expansion(self, index: int = 0) -> Expansion:
        """The record of variant ``index``, for ``GenerateRequest(expansion=...)``."""
        if not 0 <= index < len(self.variants):
            raise InvalidRequestError(f"variant must be from 0 to {len(self.variants) - 1}, got {index}")
        return Expansion(
            original_prompt=self.request.prompt, expanded_prompt=self.variants[index], lm=self.lm,
            revision=self.revision, seed=self.seeds[index], temperature=self.request.temperature,
            system_prompt=self.request.system_prompt or "",
        )


@dataclass(frozen=True)
class ExpandUpdate:
    """One streaming step: the text of every variant so far (later ones still empty); the
    last update has ``result``."""

    index: int
    texts: tuple[str, ...]
    result: ExpandResult | None = None


@dataclass
class LoadedLM:
    model: object  # a transformers PreTrainedModel (causal LM)
    tokenizer: object
    mode: str  # "chat" | "completion"

    @property
    def context(self) -> int | None:
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


# ---- validation ------------------------------------------------------------------------------

def _check_number(name: str, value, lo: float, hi: float, integer: bool) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value != value or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise InvalidRequestError(f"{name} must be {kind} from {lo} to {hi}, got {value!r}")


def check_expand_request(req: ExpandRequest, limits: Limits | None = None) -> ExpandRequest:
    """Validate; fill the LM, the seed (drawn when None or -1) and the system prompt."""
    lim = limits or Limits.from_env()
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise InvalidRequestError("the prompt to expand must be non-empty text")
    if len(req.prompt) > lim.max_prompt_chars or "\x00" in req.prompt:
        raise InvalidRequestError(
            f"the prompt to expand must be at most {lim.max_prompt_chars} characters, without NUL")
    if req.lm is not None and not isinstance(req.lm, str):
        raise InvalidRequestError("the language model must be a model reference (text)")
    if req.system_prompt is not None and (
            not isinstance(req.system_prompt, str) or len(req.system_prompt) > MAX_SYSTEM_PROMPT_CHARS
            or "\x00" in req.system_prompt):
        raise InvalidRequestError(
            f"the system prompt must be text of at most {MAX_SYSTEM_PROMPT_CHARS} characters, without NUL")
    _check_number("number of variants", req.num_variants, 1, MAX_VARIANTS, integer=True)
    _check_number("temperature", req.temperature, 0.0, MAX_TEMPERATURE, integer=False)
    if req.max_new_tokens is not None:
        _check_number("max new tokens", req.max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
    seed = req.seed
    if seed is None or seed == -1:
        seed = random.SystemRandom().randrange(0, 2**32 - MAX_VARIANTS)
    _check_number("seed", seed, 0, 2**32 - 1 - MAX_VARIANTS, integer=True)
    return replace(req, prompt=req.prompt.strip(), lm=(req.lm or "").strip() or default_lm(),
                   seed=seed, temperature=float(req.temperature))


# ---- loading ---------------------------------------------------------------------------------

def load_lm(resolved, device: torch.device, dtype: torch.dtype) -> LoadedLM:
    """Load a causal LM and its tokenizer from a resolved folder: safetensors only, no remote
    code. The ``ModelCache`` loader for language models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as tlogging

    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    path = resolved.path
    if not (path / "config.json").is_file():
        raise UnsupportedModelError(
            f"{resolved.ref} is not a language model (no config.json at its top level"
            + ("; it is a diffusers pipeline" if (path / "model_index.json").is_file() else "")
            + "); pick a causal LM such as vgen-shapes-lm or Qwen/Qwen2.5-0.5B-Instruct"
        )
    kwargs = dict(use_safetensors=True, trust_remote_code=False, dtype=dtype)
    if resolved.variant:
        kwargs["variant"] = resolved.variant
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UnsupportedModelError(
            f"{resolved.ref} could not be loaded as a causal language model "
            f"(AutoModelForCausalLM, safetensors, no remote code): {e}"
        ) from e
    model.to(device).eval()
    mode = "chat" if getattr(tokenizer, "chat_template", None) else "completion"
    return LoadedLM(model, tokenizer, mode)


_LM_CACHE: ModelCache | None = None
_LM_CACHE_LOCK = threading.Lock()


def lm_cache() -> ModelCache:
    """The process-wide cache of loaded language models (bounded by VGEN_LM_CACHE_SIZE, 1)."""
    from .pipelines import ModelCache

    global _LM_CACHE
    with _LM_CACHE_LOCK:
        if _LM_CACHE is None:
            _LM_CACHE = ModelCache(max_models=config.lm_cache_size(), loader=load_lm)
        return _LM_CACHE


# ---- generation ------------------------------------------------------------------------------

class SeededSampling:
    """A ``LogitsProcessor`` that *draws* the next token and leaves only it possible.

    Softmax sampling (Ackley et al. 1985) at ``temperature``, after top-k (Fan et al. 2018) and
    nucleus/top-p (Holtzman et al. 2020) filtering, with a private CPU ``torch.Generator`` seeded
    per variant; ``generate`` then runs greedy and takes the drawn token. Temperature 0 is
    argmax. The other processors of the model's generation config (repetition penalty, ...)
    still run before it."""

    def __init__(self, seed: int, temperature: float, top_k: int = 0, top_p: float = 1.0):
        import torch

        self.generator = torch.Generator("cpu").manual_seed(seed)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import torch

        logits = scores.detach().float().cpu()
        if self.temperature == 0:
            choice = logits.argmax(dim=-1)
        else:
            logits = logits / self.temperature
            if 0 < self.top_k < logits.shape[-1]:
                kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:
                ranked, order = torch.sort(logits, dim=-1, descending=True)
                probs = torch.softmax(ranked, dim=-1)
                # Drop a token once the tokens ranked above it already hold top_p of the mass
                # (so the most likely token always stays).
                drop = (probs.cumsum(dim=-1) - probs) > self.top_p
                logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            choice = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice.to(scores.device)[:, None], 0.0)


class _EachToken:
    """A ``StoppingCriteria`` run after every new token: it reports the tokens so far
    (``on_tokens``, which streams the text and says whether a completion's first line ended:
    a prompt is one line) and stops on cancel or time limit."""

    def __init__(self, control: JobControl, on_tokens: Callable[[list[int]], bool]):
        self.control, self.on_tokens = control, on_tokens

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        import torch

        stop = self.on_tokens(input_ids[0].tolist())
        try:
            self.control.check()
        except Exception:
            stop = True  # the caller raises after generate returns
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _clean(text: str) -> str:
    """One line, single spaces, no wrapping quotes (chat models like to quote)."""
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _encode(lm: LoadedLM, prompt: str, system_prompt: str) -> list[int]:
    tok = lm.tokenizer
    if lm.mode == "completion":
        return list(tok(prompt).input_ids)
    user = {"role": "user", "content": prompt}
    messages = [{"role": "system", "content": system_prompt}, user] if system_prompt else [user]
    try:
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    except Exception:  # some templates (Gemma, ...) refuse a system turn: fold it into the user's
        if not system_prompt:
            raise
        merged = [{"role": "user", "content": f"{system_prompt}\n\n{prompt}"}]
        enc = tok.apply_chat_template(merged, add_generation_prompt=True, return_dict=True)
    return list(enc["input_ids"])


def _text(lm: LoadedLM, prompt: str, prompt_ids: list[int], new_ids: list[int]) -> tuple[str, bool]:
    """(the expansion so far, whether a line ended). A completion keeps the user's text
    verbatim: the continuation is what decoding the whole sequence adds to decoding the
    prompt, so word joins (" circle", ", a", BPE pieces) come out as the tokenizer writes them."""
    tok = lm.tokenizer
    if lm.mode == "chat":
        return _clean(tok.decode(new_ids, skip_special_tokens=True)), False
    head = tok.decode(prompt_ids, skip_special_tokens=True)
    full = tok.decode(prompt_ids + new_ids, skip_special_tokens=True)
    if full.startswith(head):
        cont = full[len(head):]
    else:
        cont = tok.decode(new_ids, skip_special_tokens=True)
        cont = cont if cont[:1].isspace() or cont[:1] in ",.;:!?" else " " + cont
    line_end = "\n" in cont
    return prompt + re.sub(r"[ \t]+", " ", cont.split("\n")[0]).rstrip(), line_end


def _generation_config(lm: LoadedLM, max_new_tokens: int):
    """The model's generation config with sampling switched to :class:`SeededSampling`:
    returns (config, top_k, top_p)."""
    gc = copy.deepcopy(lm.model.generation_config)
    top_k, top_p = int(gc.top_k or 0), float(gc.top_p or 1.0)
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "top_h"):
        if hasattr(gc, name):
            setattr(gc, name, None)
    gc.do_sample, gc.num_beams, gc.num_return_sequences = False, 1, 1
    gc.max_new_tokens, gc.max_length, gc.min_new_tokens, gc.min_length = max_new_tokens, None, None, None
    eos = gc.eos_token_id if gc.eos_token_id is not None else lm.tokenizer.eos_token_id
    gc.eos_token_id = eos
    if gc.pad_token_id is None:
        pad = lm.tokenizer.pad_token_id
        gc.pad_token_id = pad if pad is not None else (eos[0] if isinstance(eos, list) else eos)
    return gc, top_k, top_p


def _generate_variant(lm: LoadedLM, prompt: str, prompt_ids: list[int], seed: int, temperature: float,
                      max_new_tokens: int, control: JobControl,
                      on_text: Callable[[str], None] | None) -> str:
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    gc, top_k, top_p = _generation_config(lm, max_new_tokens)
    n_prompt = len(prompt_ids)
    shown = [""]

    def on_tokens(ids: list[int]) -> bool:  # called once per generated token
        text, line_end = _text(lm, prompt, prompt_ids, ids[n_prompt:])
        if on_text is not None and text != shown[0]:
            shown[0] = text
            on_text(text)
        return line_end and lm.mode == "completion"

    device = lm.model.device
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc,
            logits_processor=LogitsProcessorList([SeededSampling(seed, temperature, top_k, top_p)]),
            stopping_criteria=StoppingCriteriaList([_EachToken(control, on_tokens)]),
        )
    control.check()  # cancelled or out of time while generating
    text, _ = _text(lm, prompt, prompt_ids, out[0, n_prompt:].tolist())
    return text


def _max_new_tokens(lm: LoadedLM, req: ExpandRequest, n_prompt: int) -> int:
    wanted = req.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    context = lm.context
    if context is None:
        return wanted
    room = context - n_prompt
    if room < 1:
        raise InvalidRequestError(
            f"the prompt is {n_prompt} tokens long; {req.lm} reads at most {context} tokens "
            "and has no room left to expand it: shorten the prompt or the system prompt"
        )
    return min(wanted, room)


def expand(req: ExpandRequest, control: JobControl | None = None, cache: ModelCache | None = None,
           limits: Limits | None = None,
           on_text: Callable[[int, str], None] | None = None) -> ExpandResult:
    """Expand ``req.prompt`` into ``req.num_variants`` texts (variant ``i``: seed ``seed + i``).

    ``on_text(i, text)`` (default: ``control.text``) is called as variant ``i`` grows
    (streaming); ``control`` cancels and bounds the time (its clock starts once the model is
    loaded)."""
    control = control or JobControl()
    on_text = on_text or control.text
    # 1. Validate and fill the defaults (LM, seed, system prompt) before any download.
    req = check_expand_request(req, limits)
    # 2. Load (or reuse) the model.
    model: LoadedModel = (cache or lm_cache()).get(req.lm, progress=control.download)
    lm: LoadedLM = model.pipe
    if not isinstance(lm, LoadedLM):
        raise UnsupportedModelError(f"{req.lm} was not loaded as a language model")
    system = "" if lm.mode == "completion" else (
        DEFAULT_SYSTEM_PROMPT if req.system_prompt is None else req.system_prompt)
    req = replace(req, system_prompt=system)  # lm stays as the user wrote it (portable)
    # 3. The prompt as the model reads it: plain text, or a chat with the system prompt.
    prompt_ids = _encode(lm, req.prompt, system)
    max_new = _max_new_tokens(lm, req, len(prompt_ids))
    # 4. One variant after the other, each from its own seed, holding the model's lock.
    seeds = tuple(req.seed + i for i in range(req.num_variants))
    variants = []
    with model.hold(control) as control:
        control.restart()
        t0 = time.perf_counter()
        for i, seed in enumerate(seeds):
            control.check()
            emit = (lambda text, i=i: on_text(i, text)) if on_text else None
            variants.append(_generate_variant(lm, req.prompt, prompt_ids, seed, req.temperature,
                                              max_new, control, emit))
    return ExpandResult(request=req, variants=tuple(variants), seeds=seeds, lm=req.lm,
                        revision=model.revision, mode=lm.mode, seconds=time.perf_counter() - t0)


def expand_stream(req: ExpandRequest, control: JobControl | None = None,
                  cache: ModelCache | None = None, limits: Limits | None = None,
                  run: Callable[[ExpandRequest, JobControl], ExpandResult] | None = None,
                  ) -> Iterator[ExpandUpdate]:
    """Like :func:`expand`, as a generator of :class:`ExpandUpdate` (text so far of every
    variant), for a UI. ``run(request, control)`` does the work (default :func:`expand` here;
    the app passes its engine worker, which streams through ``control.text``); it runs in a
    thread, and closing the generator cancels it."""
    control = control or JobControl()
    req = check_expand_request(req, limits)  # fail fast, in the caller's thread; seed drawn once
    n = req.num_variants
    updates: queue.Queue = queue.Queue()
    # The caller's control (its cancel event, time limit) with the stream's text hook.
    control = replace(control, text=lambda i, t: updates.put(("text", i, t)))
    run = run or (lambda r, c: expand(r, c, cache, limits))

    def work() -> None:
        try:
            result = run(req, control)
            updates.put(("done", result))
        except BaseException as e:  # handed to the consumer
            updates.put(("error", e))

    thread = threading.Thread(target=work, name="vgen-expand", daemon=True)
    thread.start()
    texts = [""] * n
    try:
        while True:
            item = updates.get()
            if item[0] == "text":
                _, i, text = item
                texts[i] = text
                yield ExpandUpdate(i, tuple(texts))
            elif item[0] == "done":
                result = item[1]
                yield ExpandUpdate(n - 1, result.variants, result)
                return
            else:
                raise item[1]
    finally:
        if thread.is_alive():
            control.cancel.set()
            thread.join()


# ---- for showing an expansion ----------------------------------------------------------------

def word_diff(original: str, expanded: str) -> list[tuple[str, str | None]]:
    """``expanded`` as (text, label) runs against ``original``: label None for kept words,
    "added" for words the model wrote, "removed" for the user's words it dropped (a word
    diff, ``difflib.SequenceMatcher``)."""
    a, b = original.split(), expanded.split()
    out: list[tuple[str, str | None]] = []
    norm = [w.lower().strip(",.;:!?\"'") for w in a], [w.lower().strip(",.;:!?\"'") for w in b]
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, *norm, autojunk=False).get_opcodes():
        if op == "equal":
            out.append((" ".join(b[j1:j2]), None))
            continue
        if op in ("delete", "replace"):
            out.append((" ".join(a[i1:i2]), "removed"))
        if op in ("insert", "replace"):
            out.append((" ".join(b[j1:j2]), "added"))
    return [(t + " ", label) for t, label in out if t]
