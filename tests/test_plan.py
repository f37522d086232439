"""The layout planner (issue #22): its text format, agreement check, trainer discipline and
vgen.plan's seeded reproducibility and parse errors. A tiny planner, a few steps."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vgen.errors import InvalidRequestError
from vgen.shapes import captions, planner, world

pytestmark = pytest.mark.filterwarnings("ignore")


def test_training_texts_parse_back_and_agree():
    from vgen.shapes.train_planner import build_planner_tokenizer, sample_pairs

    tok = build_planner_tokenizer()
    for caption, scene in sample_pairs(random.Random(5), 300):
        text = planner.training_text(caption, scene)
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids and len(ids) < planner.MAX_POSITIONS
        lay = planner.parse_plan_text(planner.layout_text(caption, scene))
        assert len(lay) == len(scene.objects)
        assert planner.agrees(caption, lay) == (True, "ok"), (caption, text)


def test_layout_order_follows_the_caption():
    a = world.Obj("red", "circle", "small", 50, 30)
    b = world.Obj("blue", "square", "large", 12, 30)
    scene = world.Scene((a, b))
    text = planner.layout_text("a blue square to the left of a red circle", scene)
    assert text == "a large blue square [ 2 20 22 40 ] a small red circle [ 44 24 56 36 ]"


def test_agreement_catches_wrong_layouts():
    lay = planner.parse_plan_text("a small red circle [ 44 24 56 36 ] a large blue square [ 2 20 22 40 ]")
    assert planner.agrees("a red circle to the left of a blue square", lay)[0] is False
    assert planner.agrees("a red circle to the right of a blue square", lay) == (True, "ok")
    assert planner.agrees("two red circles", lay)[0] is False
    assert planner.agrees("a large red circle and a blue square", lay)[0] is False
    overlap = planner.parse_plan_text("a red circle [ 10 10 30 30 ] a blue square [ 20 20 40 40 ]")
    assert "overlap" in planner.agrees("a red circle and a blue square", overlap)[1]
    one = planner.parse_plan_text("a red circle [ 2 2 14 14 ]")
    assert planner.agrees("a red circle at the top", one) == (True, "ok")
    assert planner.agrees("a red circle at the bottom", one)[0] is False


@pytest.mark.parametrize("raw", ["", "a red circle", "a red circle [ 1 2 3 ]", "[ 1 2 3 4 ]",
                                 "a red circle [ 10 10 5 20 ]", "a red circle [ 1 2 3 4 ] junk"])
def test_unparsable_output_shows_the_raw_text(raw):
    with pytest.raises(planner.PlanParseError) as info:
        planner.parse_plan_text(raw)
    assert isinstance(info.value, InvalidRequestError)
    assert repr(raw) in str(info.value) and info.value.raw == raw


@pytest.fixture(scope="module")
def tiny_planner(tmp_path_factory) -> Path:
    from vgen.shapes.train_planner import PlannerTrainConfig, train_planner

    tmp = tmp_path_factory.mktemp("planner")
    cfg = PlannerTrainConfig(out=str(tmp / "vgen-shapes-planner"), state_dir=str(tmp / "state"),
                             steps=3, batch=4, n_embd=32, n_layer=1, n_head=2, log_every=1,
                             save_every=1)
    return train_planner(cfg, log=lambda m: None)


def test_trainer_exports_a_loadable_planner(tiny_planner):
    from transformers import AutoModelForCausalLM

    meta = json.loads((tiny_planner / "training.json").read_text())
    assert meta["step"] == 3 and (tiny_planner / "README.md").exists()
    assert (tiny_planner / "model.safetensors").exists()
    assert AutoModelForCausalLM.from_pretrained(tiny_planner).config.model_type == "gpt2"


def test_plan_is_reproducible_and_reports_raw_text(tiny_planner, monkeypatch):
    from vgen.plan import PlanRequest, plan

    monkeypatch.setenv("VGEN_MODEL_ROOTS", str(tiny_planner.parent))
    from vgen.shapes.planner import PlanParseError

    req = PlanRequest("a red circle", planner=str(tiny_planner), seed=3, num_variants=2)
    # An untrained planner writes no layout: a clear error with the raw text.
    with pytest.raises(PlanParseError, match="raw output"):
        plan(req)
    from vgen import plan as plan_mod

    texts = [plan_mod._sample(plan_mod._load(str(tiny_planner)), [1, 5], s, 0.8) for s in (3, 3, 4)]
    assert texts[0] == texts[1] and texts[0] != texts[2]


def test_plan_with_a_stub_planner(monkeypatch):
    """Seeds s + i per variant, next_seed retries recorded, checks on the request."""
    from vgen import plan as plan_mod
    from vgen.plan import PlanRequest, plan

    outputs = {0: "a red circle [ 2 2 14 14 ]", 1: "not a layout", 2: "a blue square [ 40 40 60 60 ]",
               3: "nor this"}
    monkeypatch.setattr(plan_mod, "_load", lambda ref: plan_mod._Loaded(None, _Tok(), ref, "step 1"))
    monkeypatch.setattr(plan_mod, "_sample", lambda lm, ids, seed, t: outputs.get(seed, "x"))
    r = plan(PlanRequest("a red circle", planner="stub", seed=0, num_variants=2,
                         on_unparsable="next_seed", verify=False))  # (seed 2 draws a blue square)
    assert r.seeds == (0, 2) and r.skipped_seeds == (1,)
    assert r.layouts[0].boxes == [[2 / 64, 2 / 64, 14 / 64, 14 / 64]] and r.revision == "step 1"
    with pytest.raises(plan_mod.InvalidRequestError):
        plan(PlanRequest("a red circle", planner="stub", seed=0, num_variants=2))
    for bad in (dict(prompt=""), dict(prompt="a", num_variants=0), dict(prompt="a", seed=-1),
                dict(prompt="a", temperature=3.0), dict(prompt="a", on_unparsable="retry"),
                dict(prompt="a", verify="yes")):
        with pytest.raises(InvalidRequestError):
            plan(PlanRequest(**bad))


class _Tok:
    eos_token_id = 2

    def __call__(self, text):
        class _R:
            input_ids = [1]
        return _R()


def test_eval_prompt_set_has_every_kind():
    from vgen.shapes.evaluate_planner import prompt_set

    ps = prompt_set(5)
    assert all(len(v) == 5 for v in ps.values())
    assert all(captions.parse(p).relation for p in ps["relation"])
    assert all(captions.parse(p).place for p in ps["place"])
    assert all(any((g.color, g.shape) in world.HELD_OUT for g in captions.parse(p).groups)
               for p in ps["held_out"])


def test_a_planner_outside_the_allowed_roots_is_refused(tmp_path):
    """Regression: the planner loaded any existing folder, skipping the model roots rule."""
    from vgen.errors import VgenError
    from vgen.plan import PlanRequest, plan

    with pytest.raises(VgenError):
        plan(PlanRequest("a red circle", planner=str(tmp_path)))


def test_a_plan_that_disagrees_with_its_prompt_is_resampled_and_the_seed_recorded():
    """Seed 39 of the embedded planner puts the circle below the triangle; the app's planning
    (next_seed, verify) moves on to a seed whose layout agrees, and says which it passed over."""
    from vgen.plan import PlanRequest, plan
    from vgen.shapes.planner import agrees

    prompt = "a blue circle above a cyan triangle"
    one = plan(PlanRequest(prompt, seed=39))
    assert not agrees(prompt, one.layouts[0])[0]
    checked = plan(PlanRequest(prompt, seed=39, on_unparsable="next_seed"))
    assert agrees(prompt, checked.layouts[0])[0]
    assert checked.seeds[0] != 39 and 39 in checked.skipped_seeds
    unchecked = plan(PlanRequest(prompt, seed=39, on_unparsable="next_seed", verify=False))
    assert unchecked.layouts == one.layouts and unchecked.skipped_seeds == ()


def test_eval_plan_end_to_end_reports_every_category_and_its_timing():
    """``python -m vgen eval plan``'s part (c) on one prompt per category, 2 steps (a smoke test of
    the command's code: its figures come from --n 20 runs)."""
    from vgen.shapes.evaluate_plan import end_to_end

    r = end_to_end(1, 0, steps=2, log=lambda *_: None)
    assert set(r["categories"]) >= {"position", "counting", "held_out"}
    assert all(0.0 <= v["planned"] <= 1.0 and v["n"] == 1 for v in r["categories"].values())
    assert 0 < r["median_seconds_per_image"] and 0 < r["median_seconds_per_plan"]
