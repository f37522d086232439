"""Prompt expansion (vgen.expand): tiny random causal LMs built from a config and saved in Hub
layout go through the real loading path (completion and chat); seeds reproduce texts; the
expansion travels in the PNG parameters and back; the embedded vgen-shapes-lm loads offline and
completes partial prompts into valid ones; the CLI and the app's /expand endpoint work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vgen import expand as expand_mod
from vgen.errors import InvalidRequestError, UnsupportedModelError
from vgen.expand import (
    DEFAULT_SYSTEM_PROMPT,
    ExpandRequest,
    SeededSampling,
    expand,
    expand_stream,
    word_diff,
)
from vgen.metadata import format_parameters, parse_parameters, request_from_parameters
from vgen.requests import Expansion, GenerateRequest
from vgen.shapes.captions import parse
from vgen.shapes.lm_eval import kept, valid

REPO = Path(__file__).resolve().parent.parent
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} , {% endfor %}"
    "{% if add_generation_prompt %}and{% endif %}"
)


def _save_tiny_lm(folder: Path, chat: bool) -> Path:
    """A 1-layer GPT-2 from a config (random weights, fixed seed) with the shapes LM tokenizer,
    saved as a Hub repo would hold it: config.json, model.safetensors, tokenizer files."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from vgen.shapes.lm import build_lm_tokenizer

    tok = build_lm_tokenizer()
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_positions=256 if chat else 48, n_embd=16, n_layer=1, n_head=2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    return {"root": root, "completion": _save_tiny_lm(root / "tiny-lm", chat=False),
            "chat": _save_tiny_lm(root / "tiny-chat-lm", chat=True)}


@pytest.fixture
def lm_env(tiny_lms, monkeypatch):
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tiny_lms["root"]))
    monkeypatch.setattr(expand_mod, "_LM_CACHE", None)
    return tiny_lms


def test_a_tiny_hub_layout_lm_expands_through_the_loading_path(lm_env):
    assert {p.name for p in lm_env["completion"].iterdir()} >= {"config.json", "model.safetensors",
                                                                 "tokenizer.json"}
    req = ExpandRequest("a red circle", lm="tiny-lm", seed=7, num_variants=4, temperature=1.0)
    result = expand(req)
    assert result.mode == "completion" and result.revision == "local" and result.lm == "tiny-lm"
    assert result.seeds == (7, 8, 9, 10) and len(result.variants) == 4
    # A completion keeps what the user wrote: it is the start of every variant.
    assert all(v.startswith("a red circle") for v in result.variants)
    assert result.request.system_prompt == ""  # completion models take no system prompt
    # Same seed, same text; variant i is seed + i; seeds matter.
    again = expand(req)
    assert again.variants == result.variants
    ninth = expand(ExpandRequest("a red circle", lm="tiny-lm", seed=9, temperature=1.0))
    assert ninth.variants[0] == result.variants[2]
    assert len(set(result.variants)) > 1
    # The model was loaded once and is reused (bounded cache).
    assert expand_mod.lm_cache().loaded() == [str(lm_env["completion"].resolve())]


def test_streaming_ends_with_the_same_texts(lm_env):
    req = ExpandRequest("two blue", lm="tiny-lm", seed=3, num_variants=2)
    updates = list(expand_stream(req))
    assert updates[-1].result is not None
    assert updates[-1].texts == expand(req).variants
    assert any(u.result is None for u in updates)  # text arrived before the end
    assert all(len(u.texts) == 2 for u in updates)


def test_streaming_from_an_engine_worker_process_gives_the_same_texts(lm_env):
    """The app runs the language model in its engine worker (vgen.worker), as image jobs: the
    text streams back as it grows, and the variants are the in-process ones."""
    from vgen.worker import EnginePool

    req = ExpandRequest("two blue", lm="tiny-lm", seed=3, num_variants=2)
    pool = EnginePool()  # its worker inherits lm_env's model roots
    try:
        updates = list(expand_stream(req, run=lambda r, control: pool.run("expand", r, control)[0]))
        loaded = pool.loaded_models()
    finally:
        pool.close()
    assert updates[-1].result is not None and updates[-1].texts == expand(req).variants
    assert any(u.result is None for u in updates)  # text arrived before the end
    assert loaded == [str(lm_env["completion"].resolve())]  # what /status shows


def test_instruction_models_get_the_system_prompt_through_the_chat_template(lm_env):
    result = expand(ExpandRequest("a red circle", lm="tiny-chat-lm", seed=1, num_variants=2))
    assert result.mode == "chat" and result.request.system_prompt == DEFAULT_SYSTEM_PROMPT
    custom = expand(ExpandRequest("a red circle", lm="tiny-chat-lm", seed=1, system_prompt="red"))
    assert custom.request.system_prompt == "red"
    lm = expand_mod.lm_cache().get("tiny-chat-lm").pipe
    ids = expand_mod._encode(lm, "a blue square", "red")
    text = lm.tokenizer.decode(ids, skip_special_tokens=True)  # roles are <unk> here
    assert text.startswith("red") and "a blue square" in text


def test_bad_requests_and_non_lms_are_refused(lm_env, tiny_models, monkeypatch):
    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.pathsep.join([str(lm_env["root"]), str(tiny_models["root"])]))
    for bad in (dict(num_variants=0), dict(num_variants=9), dict(temperature=-1),
                dict(temperature=float("nan")), dict(max_new_tokens=0), dict(seed=2**40)):
        with pytest.raises(InvalidRequestError):
            expand(ExpandRequest("a red circle", lm="tiny-lm", **bad))
    with pytest.raises(InvalidRequestError):
        expand(ExpandRequest("   ", lm="tiny-lm"))
    with pytest.raises(InvalidRequestError, match="reads at most"):
        expand(ExpandRequest(" ".join(["red"] * 60), lm="tiny-lm"))
    with pytest.raises(UnsupportedModelError, match="diffusers pipeline"):
        expand(ExpandRequest("a red circle", lm=str(tiny_models["txt2img"])))


def test_seeded_sampling_is_private_and_greedy_at_zero():
    import torch

    scores = torch.randn(1, 50)
    a = [SeededSampling(5, 1.0)(None, scores).argmax().item() for _ in range(3)]
    torch.manual_seed(123)  # the global generator plays no part
    b = [SeededSampling(5, 1.0)(None, scores).argmax().item() for _ in range(3)]
    assert a == b
    assert SeededSampling(5, 0.0)(None, scores).argmax().item() == scores.argmax().item()
    kept_ = SeededSampling(1, 1.0, top_k=1)(None, scores)
    assert kept_.argmax().item() == scores.argmax().item()


def test_the_expansion_round_trips_through_png_parameters(tmp_path):
    e = Expansion(original_prompt="two blue", expanded_prompt="two blue squares, and a red circle",
                  lm="Qwen/Qwen2.5-0.5B-Instruct@main", revision="0123456789abcdef", seed=42,
                  temperature=0.7, system_prompt='Keep it short, "exact":\nno quotes.')
    req = GenerateRequest(prompt="two blue squares and a big red circle", model="vgen-shapes",
                          steps=20, guidance=4.0, seed=42, width=64, height=64, expansion=e)
    text = format_parameters(req, 42, "DPM++ 2M", "vgen-shapes", "local")
    assert len(text.split("\n")) == 2  # newlines of the system prompt are escaped
    back = request_from_parameters(text)
    assert back.expansion == e and back.prompt == req.prompt
    # Older PNGs (no expansion fields) still parse, to no expansion.
    plain = format_parameters(GenerateRequest(prompt="a red circle", steps=20, guidance=4.0,
                                              width=64, height=64), 1, "Euler", "vgen-shapes", "local")
    assert "Expansion" not in plain and request_from_parameters(plain).expansion is None
    assert parse_parameters(text)["Expansion LM"] == e.lm


def test_the_embedded_lm_completes_partial_prompts_offline(monkeypatch):
    assert (REPO / "checkpoints" / "vgen-shapes-lm" / "model.safetensors").stat().st_size < 10e6
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(expand_mod, "_LM_CACHE", None)
    for prompt in ("a red circle", "two blue", "a small green triangle to the", "three"):
        result = expand(ExpandRequest(prompt, lm="vgen-shapes-lm", seed=0, num_variants=3))
        assert result.mode == "completion"
        for text in result.variants:
            assert valid(text) and kept(prompt, text), (prompt, text)
            parse(text)


def test_the_keep_check_reads_partial_prompts():
    assert kept("two blue", "two blue squares and a red circle")
    assert not kept("two blue", "a blue square and a red circle")
    assert kept("a red circle to the", "a red circle to the left of a blue square")
    assert not kept("a red circle to the", "a red circle above a blue square")
    assert kept("a", "a picture of two red circles") and kept("a", "a red circle")
    assert kept("a red circle and", "a red circle and a blue square")
    assert not kept("a red circle and", "a red circle")
    assert not valid("two blue") and valid("two blue squares")


def test_word_diff_marks_what_the_model_added():
    assert word_diff("two blue", "two blue squares and a red circle") == [
        ("two blue ", None), ("squares and a red circle ", "added")]
    assert ("red ", "removed") in word_diff("a red circle", "a blue circle")


def test_cli_expand_and_generate_with_expand(tiny_env, tmp_path, capsys, monkeypatch):
    from vgen.cli import main

    monkeypatch.setattr(expand_mod, "_LM_CACHE", None)
    assert main(["expand", "a red circle", "--seed", "4", "--num", "3"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 3 and all(valid(x) and x.startswith("a red circle") for x in lines)
    out = tmp_path / "a.png"
    assert main(["generate", "two blue", "--expand", "--seed", "3", "--steps", "1",
                 "--out", str(out)]) == 0
    from vgen.metadata import read_parameters

    req = request_from_parameters(read_parameters(out))
    e = req.expansion
    assert e is not None
    assert (e.original_prompt, e.lm, e.seed, e.revision) == ("two blue", "vgen-shapes-lm", 3, "local")
    assert req.prompt == e.expanded_prompt and req.prompt.startswith("two blue") and valid(req.prompt)
    assert main(["expand", "a red circle", "--num", "0"]) == 2


def test_train_lm_smoke_saves_a_loadable_model(tmp_path, monkeypatch):
    from vgen.shapes.lm import LMTrainConfig, train_lm

    out = tmp_path / "lm"
    train_lm(LMTrainConfig(out=str(out), steps=2, batch=4, n_embd=16, n_layer=1, n_head=2,
                           log_every=1, save_every=2), log=lambda m: None)
    assert json.loads((out / "training.json").read_text())["step"] == 2
    train_lm(LMTrainConfig(out=str(out), steps=3, batch=4, n_embd=16, n_layer=1, n_head=2,
                           log_every=1, save_every=2), resume=True, log=lambda m: None)
    assert json.loads((out / "training.json").read_text())["step"] == 3  # resumed, not restarted
    assert (out / "README.md").read_text().startswith("---")
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tmp_path))
    monkeypatch.setattr(expand_mod, "_LM_CACHE", None)
    assert expand(ExpandRequest("a red", lm=str(out), seed=0)).variants[0].startswith("a red")


def test_the_app_expand_endpoint(hardened_app):
    from gradio_client import Client

    client = Client(hardened_app.url, verbose=False)
    assert "/expand" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    kwargs = dict(prompt="two blue", lm="", seed=11, temperature=0.8, num_variants=2,
                  system_prompt="", api_name="/expand")
    answer = client.predict(**kwargs)
    assert answer["done"] and answer["seeds"] == [11, 12] and answer["lm"] == "vgen-shapes-lm"
    assert len(answer["variants"]) == 2 and all(valid(v) and kept("two blue", v) for v in answer["variants"])
    assert client.predict(**kwargs)["variants"] == answer["variants"]
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="number of variants"):
        client.predict(**{**kwargs, "num_variants": 20})


def test_the_ui_handlers_expand_use_record_and_restore(tiny_env, tmp_path, monkeypatch):
    """Expand -> pick -> "Use this prompt" -> Generate records the expansion; dropping the PNG
    on "Restore parameters" gives it all back (the prompt panel's handlers, in-process)."""
    import asyncio

    from vgen.generate import generate
    from vgen.metadata import save_png
    from vgen.ui import handlers
    from vgen.ui.tabs import prompt_panel

    monkeypatch.setattr(expand_mod, "_LM_CACHE", None)
    handlers.configure()  # in process, a fresh fair queue for this event loop

    async def expand_answers():
        return [a async for a in prompt_panel.expand_prompt("two blue", "vgen-shapes-lm", 3, 0.8,
                                                            2, "")]

    answers = asyncio.run(expand_answers())
    assert answers[-1]["done"] and all(not a["done"] for a in answers[:-1])
    # The /expand answer drives the picker (its .change): streamed ones, then the complete one.
    picker, text, diff, state, info = prompt_panel.show_answer(answers[-1], "")
    assert state["seeds"] == [3, 4] and text == state["variants"][0] and "vgen-shapes-lm" in info
    assert diff[0] == ("two blue ", None)  # the user's words, then what the model added
    edited = text + " and a red circle"  # the user edits the expansion before using it
    prompt, record = prompt_panel.use_expansion(edited, 1, state)
    e = prompt_panel.recorded_expansion(record, prompt)
    assert (e.original_prompt, e.expanded_prompt, e.seed) == ("two blue", state["variants"][1], 4)
    assert prompt_panel.recorded_expansion(record, "a prompt typed afterwards") is None
    result = generate(GenerateRequest(prompt=prompt, steps=1, seed=0, expansion=e))
    path = save_png(result.images[0], tmp_path / "x.png")
    lm, seed, temperature, system, _, expanded, _, restored_state, _, restored = (
        prompt_panel.restore_expansion(str(path)))
    assert (lm, seed, temperature, expanded) == ("vgen-shapes-lm", 4, 0.8, state["variants"][1])
    assert prompt_panel.recorded_expansion(restored, prompt) == e
    plain = save_png(generate(GenerateRequest(prompt="a red circle", steps=1, seed=0)).images[0],
                     tmp_path / "plain.png")
    assert prompt_panel.restore_expansion(str(plain))[-1] is None  # no expansion: record cleared
