"""The shapes world: renderer, caption grammar, parser and analyzer agree exactly."""

import random

import numpy as np
import pytest

from vgen.errors import CaptionParseError
from vgen.shapes import analyzer, captions, world


def scenes(n, seed=0, held_out=True):
    rng = random.Random(seed)
    return [world.sample_scene(rng, include_held_out=held_out) for _ in range(n)]


def test_analyzer_is_exact_on_rendered_scenes():
    rng = random.Random(1)
    for scene in scenes(300):
        image = world.render_array(scene)
        assert analyzer.score(image, captions.description_of(scene)).passed
        caption = captions.describe(rng, scene)
        result = analyzer.score(image, caption)
        assert result.passed, (caption, result.reason)


def test_detected_objects_match_scene_positions():
    for scene in scenes(100, seed=2):
        found = analyzer.detect(world.render_array(scene))
        assert len(found) == len(scene.objects)
        for o in scene.objects:
            assert any(
                d.color == o.color and d.shape == o.shape and d.size == o.size
                and abs(d.cx - o.cx) <= 0.5 and abs(d.cy - o.cy) <= 0.5
                for d in found
            )


def test_caption_parse_round_trip():
    rng = random.Random(3)
    for scene in scenes(300, seed=3):
        caption = captions.describe(rng, scene)
        d = captions.parse(caption)
        assert d.combos() == captions.description_of(scene).combos(), caption


def test_scores_reject_wrong_prompts():
    scene = world.Scene((world.Obj("red", "circle", "large", 20, 32), world.Obj("blue", "square", "small", 48, 32)))
    image = world.render_array(scene)
    assert analyzer.score(image, "a red circle to the left of a blue square").passed
    assert not analyzer.score(image, "a red circle to the right of a blue square").passed
    assert not analyzer.score(image, "a blue circle and a red square").passed  # binding
    assert not analyzer.score(image, "a small red circle and a blue square").passed  # size
    assert not analyzer.score(image, "two red circles and a blue square").passed  # count
    assert not analyzer.score(image, "a cat on a sofa").passed  # outside the grammar


def test_training_sampler_never_produces_held_out_pairs():
    from vgen.shapes.train import sample_batch

    rng = random.Random(4)
    for scene in scenes(2000, seed=4, held_out=False):
        assert not any((o.color, o.shape) in world.HELD_OUT for o in scene.objects)
    _, texts = sample_batch(rng, 500)
    for t in texts:
        for color, shape in world.HELD_OUT:
            assert f"{color} {shape}" not in t


def test_objects_inside_and_apart():
    for scene in scenes(500, seed=5):
        for i, a in enumerate(scene.objects):
            x0, y0, x1, y1 = a.box
            assert 0 <= x0 and 0 <= y0 and x1 <= world.IMAGE_SIZE and y1 <= world.IMAGE_SIZE
            for b in scene.objects[i + 1:]:
                assert world.boxes_clear(a.box, b.box)


@pytest.mark.parametrize("bad", ["", "a red", "two red circle", "a red circle and", "five red circles",
                                 "a red circle to the left of two blue squares"])
def test_parse_rejects_text_outside_the_grammar(bad):
    with pytest.raises(CaptionParseError):
        captions.parse(bad)


def test_tokenizer_covers_every_caption_word():
    from vgen.shapes.tokenizer import build_tokenizer, unknown_words

    tok = build_tokenizer()
    rng = random.Random(6)
    for scene in scenes(200, seed=6):
        caption = captions.describe(rng, scene)
        assert tok.unk_token_id not in tok(caption).input_ids
        assert unknown_words(caption) == []
    assert unknown_words("a cat on a sofa") == ["cat", "sofa"]
