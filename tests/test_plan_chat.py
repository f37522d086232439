"""Planning with an instruction LM from the Hub in LMD's in-context format (vgen.plan_chat):
the answer's parser, and a tiny Qwen2-architecture chat model served by the loopback Hub that
was taught one answer, planned by repo id through vgen.plan."""

from __future__ import annotations

import pytest

from vgen import plan as plan_mod
from vgen.errors import InvalidRequestError, PlanParseError
from vgen.plan import PlanRequest, plan
from vgen.plan_chat import lmd_messages, parse_lmd_text

PROMPT = "a red circle to the left of a blue square"
ANSWER = ("Objects: [('a red circle', [40, 180, 150, 150]), ('a blue square', [300, 180, 150, 150])]\n"
          "Background prompt: A plain scene")
TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_an_lmd_answer_becomes_a_layout_in_fractions_of_the_image():
    layout = parse_lmd_text(ANSWER)
    assert layout.phrases == ["a red circle", "a blue square"]
    assert layout.boxes[0] == pytest.approx([40 / 512, 180 / 512, 190 / 512, 330 / 512], abs=1e-4)
    assert layout.background == "A plain scene"
    # The bare list that continues the prompt's "Objects:", and a box past the canvas clipped.
    clipped = parse_lmd_text("[('a tree', [400, 0, 300, 100])]")
    assert clipped.boxes[0] == pytest.approx([400 / 512, 0, 1, 100 / 512], abs=1e-4)


@pytest.mark.parametrize("text, says", [
    ("I cannot draw that.", "no 'Objects:"),
    ("Objects: [('a cat', [1, 2])]", "do not parse"),
    ("Objects: [('a cat', [10, 10, 0, 20])]", "bad object"),
    ("Objects: []", "1 to 30"),
])
def test_an_unparsable_answer_is_an_error_that_shows_the_raw_text(text, says):
    with pytest.raises(PlanParseError) as e:
        parse_lmd_text(text)
    assert says in str(e.value) and repr(text)[1:20] in str(e.value)
    assert isinstance(e.value, InvalidRequestError) and e.value.raw == text


def test_the_lmd_prompt_ends_with_the_caption():
    (turn,) = lmd_messages(PROMPT)
    assert turn["role"] == "user" and turn["content"].endswith(f"Caption: {PROMPT}\nObjects:")
    assert "[top-left x coordinate, top-left y coordinate, box width, box height]" in turn["content"]


def _chat_planner(folder, taught: bool):
    """A tiny Qwen2 chat LM with a byte-level BPE tokenizer and a chat template; ``taught``: fit
    to answer PROMPT's LMD question with ANSWER (greedy decoding then writes it back)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|user|>", "<|end|>", "<|assistant|>", "<|eos|>"]
    question = lmd_messages(PROMPT)[0]["content"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([question, ANSWER], vocab_size=1200, min_frequency=1, special_tokens=specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|eos|>",
                                  pad_token="<|eos|>", additional_special_tokens=specials[:3])
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.eos_token_id)
    model = Qwen2ForCausalLM(cfg)
    if taught:
        prompt_ids = tok.apply_chat_template(lmd_messages(PROMPT), add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
        answer_ids = tok(ANSWER).input_ids + [tok.eos_token_id]
        ids = torch.tensor([prompt_ids + answer_ids])
        labels = ids.clone()
        labels[0, :len(prompt_ids)] = -100  # only the answer is taught
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(120):
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 0.05:
                break
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def taught_planner(tmp_path_factory):
    return _chat_planner(tmp_path_factory.mktemp("chat"), True)


def test_a_hub_instruction_lm_plans_by_repo_id(local_hub, local_hub_env, taught_planner):
    commit = local_hub.add_repo("planners/tiny-chat", from_dir=taught_planner)
    try:
        result = plan(PlanRequest(PROMPT, planner="planners/tiny-chat", seed=3, temperature=0.0))
    finally:
        plan_mod._CACHE.pop("planners/tiny-chat", None)
    assert result.layouts[0] == parse_lmd_text(ANSWER)
    assert result.revision == commit and result.seeds == (3,)
    assert result.texts[0].strip().startswith("Objects:")


def test_an_instruction_lm_that_writes_no_layout_is_a_clear_error(tmp_path, monkeypatch):
    folder = _chat_planner(tmp_path / "untaught", False)
    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tmp_path))
    try:
        with pytest.raises(PlanParseError) as e:
            plan(PlanRequest(PROMPT, planner=str(folder), seed=0, temperature=1.0,
                             on_unparsable="next_seed", max_tries=2))
    finally:
        plan_mod._CACHE.pop(str(folder), None)
    assert "raw output" in str(e.value) and "at seed 0" in str(e.value)
