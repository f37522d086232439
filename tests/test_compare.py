"""The Compare feature (vgen.compare, vgen.compare_grid, `python -m vgen compare`, the app's
``/compare`` endpoint): axis parsing and bounds, a grid over two local model folders, cells
identical to the same requests run alone, the grid PNG's metadata round trip, shapes scores."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from vgen.compare import (
    Axis,
    CompareRequest,
    expand,
    parse_axis,
    split_values,
)
from vgen.compare_run import compare
from vgen.compare_grid import (
    attention_words,
    cells_zip,
    grid_image,
    read_comparison,
    request_from_grid,
    save_grid,
    summary_text,
)
from vgen.errors import CancelledError, InvalidRequestError
from vgen.generate import generate
from vgen.jobs import JobControl
from vgen.metadata import request_from_parameters
from vgen.pipelines import ModelCache
from vgen.requests import GenerateRequest

STEPS = 2


# ---- axes and bounds (no model runs) -------------------------------------------------------

def test_axis_values_are_parsed_and_typed():
    assert parse_axis("guidance=1,3,7").values == (1.0, 3.0, 7.0)
    assert parse_axis("steps = 4, 20").values == (4, 20)
    assert parse_axis("size=64x64, 96x64,128").values == ((64, 64), (96, 64), (128, 128))
    assert parse_axis("sampler=default,euler").values == (None, "euler")  # alias of scheduler
    assert parse_axis("scheduler=default,euler").labels() == ("default", "euler")
    prompts = parse_axis("prompt=a red circle, a blue square|two green triangles")
    assert prompts.values == ("a red circle, a blue square", "two green triangles")
    assert parse_axis("negative_prompt=|blue").values == ("", "blue")
    assert parse_axis("model=vgen-shapes,org/name@v1").labels() == ("vgen-shapes", "org/name@v1")
    assert Axis("cfg", ("2", 4)).values == (2.0, 4.0)  # text or typed, stored typed
    assert split_values("guidance", "1| 2") == ["1", "2"]


@pytest.mark.parametrize("text, match", [
    ("colour=red,blue", "unknown axis parameter 'colour'"),
    ("guidance=1,abc", "guidance value 'abc' is not valid"),
    ("steps=2.5", "steps value '2.5' is not valid"),
    ("size=64by64", "size value '64by64' is not valid"),
    ("scheduler=nope", "schedulers are default, "),
    ("guidance=1,3,1", "lists '1' twice"),
    ("steps=", "has no values"),
    ("guidance", "PARAMETER=V1,V2"),
])
def test_bad_axes_say_what_is_allowed(text, match):
    with pytest.raises(InvalidRequestError, match=match):
        parse_axis(text)


def test_one_parameter_per_axis_and_a_text_to_image_base():
    with pytest.raises(InvalidRequestError, match="both axes vary guidance"):
        CompareRequest(GenerateRequest("a red circle"), parse_axis("guidance=1,2"),
                       parse_axis("cfg=3,4"))
    from vgen.requests import EditRequest

    with pytest.raises(InvalidRequestError, match="text-to-image"):
        CompareRequest(EditRequest("a red circle"), parse_axis("guidance=1,2"))


def test_expansion_holds_one_seed_and_puts_y_on_rows(tiny_env):
    req = CompareRequest(GenerateRequest("a red circle", seed=11, steps=STEPS),
                         parse_axis("guidance=1,3,7"), parse_axis("size=64x64,96x64"))
    grid = expand(req)
    assert len(grid) == 2 and all(len(row) == 3 for row in grid)
    assert {c.seed for row in grid for c in row} == {11}
    assert [c.guidance for c in grid[1]] == [1.0, 3.0, 7.0]
    assert [(row[0].width, row[0].height) for row in grid] == [(64, 64), (96, 64)]
    # No seed: one is drawn for the whole grid.
    drawn = expand(replace(req, base=replace(req.base, seed=None)))
    assert len({c.seed for row in drawn for c in row}) == 1 and drawn[0][0].seed is not None


def test_cell_cap_and_cell_bounds_fail_before_anything_runs(tiny_env, monkeypatch):
    base = GenerateRequest("a red circle", seed=1, steps=STEPS)
    four = parse_axis("guidance=1,2,3,4")
    expand(CompareRequest(base, four, parse_axis("steps=1,2,3,4")))  # 16: the default cap
    with pytest.raises(InvalidRequestError, match=r"5x4 = 20 cells; at most 16 .*VGEN_MAX_COMPARE_CELLS"):
        expand(CompareRequest(base, four, parse_axis("steps=1,2,3,4,5")))
    monkeypatch.setenv("VGEN_MAX_COMPARE_CELLS", "3")
    with pytest.raises(InvalidRequestError, match="at most 3"):
        expand(CompareRequest(base, four))
    monkeypatch.delenv("VGEN_MAX_COMPARE_CELLS")
    with pytest.raises(InvalidRequestError, match="cell guidance=99, steps=1: guidance must be from"):
        expand(CompareRequest(base, parse_axis("guidance=1,99"), parse_axis("steps=1,2")))
    with pytest.raises(ValueError, match="cell model=nowhere: 'nowhere' is neither"):
        expand(CompareRequest(base, parse_axis("model=nowhere")))
    with pytest.raises(InvalidRequestError, match="one image per cell"):
        expand(CompareRequest(replace(base, num_images=2), four))


# ---- running grids on tiny random pipelines ------------------------------------------------

@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    """A second tiny txt2img pipeline (other random weights) in its own allowed root."""
    from tiny_models import save_tiny

    root = tmp_path_factory.mktemp("models-b")
    return save_tiny(root / "tiny-b", "txt2img", seed=1)


@pytest.fixture
def two_models(tiny_env, second_model, monkeypatch):
    import os

    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.pathsep.join([str(tiny_env["root"]),
                                                            str(second_model.parent)]))
    return str(tiny_env["txt2img"]), str(second_model)


class CountingCache(ModelCache):
    """Records which loaded object each model reference was served as."""

    def __init__(self, max_models):
        super().__init__(max_models)
        self.served: dict[str, set[int]] = {}

    def get(self, reference=None, progress=None):
        model = super().get(reference, progress)
        self.served.setdefault(model.ref, set()).add(id(model))
        return model


def test_grid_over_two_local_models_loads_each_once_and_matches_single_runs(two_models):
    a, b = two_models
    cache = CountingCache(max_models=1)  # a model loaded twice would be a new object
    steps = []
    control = JobControl(progress=lambda i, n: steps.append((i, n)))
    req = CompareRequest(GenerateRequest("a red circle", negative_prompt="a blue square",
                                         seed=5, steps=STEPS),
                         parse_axis(f"model={a},{b}"), parse_axis("guidance=1,3"))
    result = compare(req, control=control, cache=cache)
    assert (result.rows, result.cols) == (2, 2)
    assert all(len(ids) == 1 for ids in cache.served.values()) and len(cache.served) == 2
    # One text encoding per model; the second cell of each model reused it.
    assert result.encodings == 2
    assert [[c.shared_embeddings for c in row] for row in result.cells] == [[False, False],
                                                                          [True, True]]
    # Progress spans the whole grid and ends at its total.
    assert steps[-1] == (4 * STEPS, 4 * STEPS) and [i for i, _ in steps] == sorted(i for i, _ in steps)
    for row in result.cells:
        for cell in row:
            assert cell.request.seed == 5 and cell.image.size == (64, 64) and cell.seconds > 0
            assert cell.score is None  # random weights: nothing for the analyzer to check
            alone = generate(cell.request, cache=cache)
            assert np.array_equal(np.asarray(alone.images[0]), np.asarray(cell.image))
            assert alone.images[0].info["parameters"] == cell.image.info["parameters"]
    assert result.cells[0][0].request.model == a and result.cells[0][1].request.model == b
    assert result.cells[1][0].request.guidance == 3.0
    # The two models draw different pictures from the same seed.
    assert not np.array_equal(np.asarray(result.cells[0][0].image), np.asarray(result.cells[0][1].image))


def test_progress_total_counts_the_steps_an_uncatalogued_models_card_recommends(
        tiny_env, second_model, tmp_path, monkeypatch):
    """Regression: the grid's progress total took 25 steps per cell for a model the catalog does
    not list, although the cells ran at the steps its card recommends."""
    import os
    import shutil

    carded = shutil.copytree(second_model, tmp_path / "carded")
    (carded / "README.md").write_text(
        "---\nlibrary_name: diffusers\ninference:\n  parameters:\n    num_inference_steps: 3\n---\n")
    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.pathsep.join([str(tiny_env["root"]), str(tmp_path)]))
    steps = []
    req = CompareRequest(GenerateRequest("a red circle", seed=3, model=str(carded)),
                         parse_axis("guidance=1,2"))
    result = compare(req, control=JobControl(progress=lambda i, n: steps.append((i, n))))
    assert [c.request.steps for c in result.flat()] == [3, 3]
    assert steps[-1] == (6, 6) and all(n == 6 for _, n in steps)


def test_prompt_negative_and_scheduler_axes_match_single_runs(tiny_env):
    req = CompareRequest(GenerateRequest("", seed=9, steps=STEPS, guidance=3.0),
                         parse_axis("prompt=a red circle|two yellow triangles"),
                         parse_axis("negative_prompt=|a green square"))
    result = compare(req)
    assert result.encodings == 4  # four different (prompt, negative prompt) pairs
    for cell in result.flat():
        alone = generate(cell.request)
        assert np.array_equal(np.asarray(alone.images[0]), np.asarray(cell.image))
    sched = compare(CompareRequest(GenerateRequest("a red circle", seed=2, steps=STEPS),
                                   parse_axis("scheduler=default,euler")))
    assert "Sampler: Euler," in sched.cells[0][1].image.info["parameters"]
    for cell in sched.flat():
        assert np.array_equal(np.asarray(generate(cell.request).images[0]), np.asarray(cell.image))


def test_cancel_stops_the_whole_grid(tiny_env):
    control = JobControl()
    control.progress = lambda i, n: control.cancel.set() if i >= STEPS + 1 else None
    req = CompareRequest(GenerateRequest("a red circle", seed=1, steps=STEPS),
                         parse_axis("guidance=1,2,3"))
    with pytest.raises(CancelledError, match="cancelled after 1 of 3 cells"):
        compare(req, control=control)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random causal LM (the embedded prompt LM's architecture) in an allowed root."""
    import torch

    from vgen.shapes.lm import LMTrainConfig, build_lm, build_lm_tokenizer, export

    cfg = LMTrainConfig(n_embd=16, n_layer=1, n_head=2)
    tok = build_lm_tokenizer()
    torch.manual_seed(0)
    return export(build_lm(cfg, tok), tok, cfg, 0, {}, 0.0,
                  out=tmp_path_factory.mktemp("lms") / "tiny-lm")


def test_expand_axis_rewrites_on_cells_like_generate_expand(tiny_env, tiny_lm, monkeypatch):
    import os

    from vgen.expand import ExpandRequest, expand as expand_prompt

    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.pathsep.join([str(tiny_env["root"]),
                                                            str(tiny_lm.parent)]))
    req = CompareRequest(GenerateRequest("a red circle", seed=3, steps=STEPS),
                         parse_axis("expand=off,on"), lm=str(tiny_lm))
    off, on = compare(req).cells[0]
    assert off.request.prompt == "a red circle" and off.request.expansion is None
    # The on cell: the LM's text for the grid's seed, recorded as generate --expand records it.
    text = expand_prompt(ExpandRequest("a red circle", lm=str(tiny_lm), seed=3)).variants[0]
    assert on.request.prompt == text and on.request.expansion.original_prompt == "a red circle"
    assert on.request.expansion.seed == 3 and "Original prompt: a red circle" in on.image.info["parameters"]
    for cell in (off, on):
        assert np.array_equal(np.asarray(generate(cell.request).images[0]), np.asarray(cell.image))
    assert CompareRequest.from_json(req.to_json()) == req


# ---- files: the grid PNG and the ZIP --------------------------------------------------------

def test_grid_png_records_the_comparison_and_zip_holds_the_cells(tiny_env, tmp_path):
    req = CompareRequest(GenerateRequest("a red circle", seed=4, steps=STEPS),
                         parse_axis("guidance=1,3"), parse_axis("size=64x64,96x64"), attention=True)
    result = compare(req)
    path = save_grid(result, tmp_path / "grid.png")
    grid = Image.open(path)
    assert grid.width > 2 * 192 and grid.height > 2 * 192  # labelled, cells enlarged
    again = request_from_grid(path)
    assert again == result.request and again.base.seed == 4
    record = read_comparison(path)
    assert [[c["seed"] for c in row] for row in record["cells"]] == [[4, 4], [4, 4]]
    assert record["cells"][1][0]["parameters"] == result.cells[1][0].image.info["parameters"]
    # The recorded request runs the same grid again.
    rerun = compare(again)
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image))
               for x, y in zip(rerun.flat(), result.flat()))
    # ZIP: every cell with its own parameters, which read back to the cell's request.
    with zipfile.ZipFile(io.BytesIO(cells_zip(result))) as zf:
        names = zf.namelist()
        assert names[:2] == ["r1-c1_guidance-1_size-64x64.png", "r1-c2_guidance-3_size-64x64.png"]
        assert json.loads(zf.read("comparison.json"))["request"] == result.request.to_json()
        for cell, name in zip(result.flat(), names):
            im = Image.open(io.BytesIO(zf.read(name)))
            assert np.array_equal(np.asarray(im), np.asarray(cell.image))
            back = request_from_parameters(im.info["parameters"])
            assert (back.prompt, back.seed, back.steps, back.guidance, back.width, back.height) == (
                cell.request.prompt, 4, STEPS, cell.request.guidance, cell.request.width,
                cell.request.height)
    # Attention maps in every cell: one word shown over all of them.
    assert attention_words(result) == ["a", "red", "circle"]
    overlaid = grid_image(result, word="red")
    assert overlaid.size == grid.size and np.asarray(overlaid).tobytes() != np.asarray(grid.convert("RGB")).tobytes()
    assert "red" in summary_text(result) or "guidance" in summary_text(result)


# ---- the shapes model: analyzer scores per cell ---------------------------------------------

def test_shapes_model_cells_get_analyzer_scores():
    from vgen.shapes.analyzer import score

    prompts = ["a red circle", "two yellow triangles", "a cat on a sofa"]
    req = CompareRequest(GenerateRequest("", model="vgen-shapes", seed=3, steps=4),
                         Axis("prompt", tuple(prompts)))
    result = compare(req)
    cells = result.cells[0]
    for cell, prompt in zip(cells[:2], prompts):
        assert cell.score is not None and cell.score.passed == score(cell.image, prompt).passed
    assert cells[2].score is None  # outside the shapes grammar: not scored
    rates = result.column_pass_rates()
    assert rates[:2] == tuple(float(c.score.passed) for c in cells[:2]) and rates[2] is None
    assert result.pass_rate() == sum(c.score.passed for c in cells[:2]) / 2
    assert ("PASS" in summary_text(result)) or ("FAIL" in summary_text(result))


# ---- the command line -----------------------------------------------------------------------

def test_cli_compare_writes_grid_and_zip(tiny_env, tmp_path, capsys):
    from vgen.cli import main

    out, archive = tmp_path / "grid.png", tmp_path / "cells.zip"
    assert main(["compare", "a red circle", "--x", "guidance=1,3", "--y", "steps=1,2",
                 "--seed", "6", "--out", str(out), "--zip", str(archive)]) == 0
    req = request_from_grid(out)
    assert req.x.values == (1.0, 3.0) and req.y.values == (1, 2) and req.base.seed == 6
    assert len(zipfile.ZipFile(archive).namelist()) == 5
    assert "4 cells in" in capsys.readouterr().out
    assert main(["compare", "a red circle", "--x", "colour=red", "--out", str(out)]) == 2
    assert "unknown axis parameter 'colour'" in capsys.readouterr().err


# ---- the app: the /compare endpoint through gradio_client -----------------------------------

@pytest.fixture(scope="module")
def client(hardened_app, tmp_path_factory):
    """A client of the app conftest.py serves for the whole session (tiny txt2img default)."""
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(hardened_app.url, verbose=False,
                                download_files=str(tmp_path_factory.mktemp("compare-downloads")))


def test_compare_endpoint(client):
    from gradio_client.exceptions import AppError

    api = client.view_api(return_format="dict", print_info=False)
    params = [p["parameter_name"] for p in api["named_endpoints"]["/compare"]["parameters"]]
    assert params == ["prompt", "x_param", "x_values", "y_param", "y_values", "negative_prompt",
                      "model", "seed", "steps", "guidance", "attention"]
    grid, gallery, summary, archive = client.predict(
        "a red circle", "guidance", "1, 3", "steps", "1, 2", seed=8, api_name="/compare")
    req = request_from_grid(grid)
    assert req.x.values == (1.0, 3.0) and req.y.values == (1, 2) and req.base.seed == 8
    assert [item["caption"].rsplit(" · ", 1)[0] for item in gallery] == [
        "guidance 1 · steps 1", "guidance 3 · steps 1", "guidance 1 · steps 2", "guidance 3 · steps 2"]
    cells = [c for row in summary["cells"] for c in row]
    for item, cell in zip(gallery, cells):
        picture = Image.open(item["image"])
        assert picture.size == (64, 64) and picture.info["parameters"] == cell["parameters"]
        assert "Seed: 8," in cell["parameters"]
    assert summary["pass_rate"] is None  # the tiny model is not the shapes model
    assert len(zipfile.ZipFile(archive).namelist()) == 5
    # The same cell generated alone through /generate has the same pixels.
    alone = client.predict("a red circle", api_name="/generate", steps=2, guidance=3, seed=8,
                           randomize_seed=False)[0][0]
    assert np.array_equal(np.asarray(Image.open(alone["image"])), np.asarray(Image.open(gallery[3]["image"])))
    with pytest.raises(AppError, match="unknown axis parameter|not in the list of choices|colour"):
        client.predict("a red circle", "colour", "red", api_name="/compare")
    with pytest.raises(AppError, match="at most 16"):
        client.predict("a red circle", "guidance", "1,2,3,4,5", "steps", "1,2,3,4", api_name="/compare")


def test_compare_tab_handlers(tiny_env):
    """The Run button's endpoint, the displays after it, a click on a cell and the
    attention-word picker, in process."""
    import asyncio

    from vgen.ui.tabs import compare as tab

    async def run():
        last = None
        async for out in tab.compare_grid("a red circle", "guidance", "1, 3", "steps", "1, 2",
                                          "", None, 4, None, None, True):
            last = out
        return last

    grid, gallery, summary, archive, state = asyncio.run(run())
    assert request_from_grid(grid).y.values == (1, 2) and len(gallery) == 4
    assert summary["request"]["base"]["seed"] == 4 and archive.endswith(".zip")
    assert gallery[1][1].startswith("guidance 3 · steps 1 · ")
    scores, word, dl_grid, dl_zip, cell, info = tab.show_comparison(state)
    assert "2×2 cells" in scores and cell is None and info == ""
    assert word["choices"] == ["", "a", "red", "circle"] and word["visible"]
    assert dl_grid["value"] == grid and dl_zip["value"].endswith(".zip")

    class Click:
        index = 3

    path, text = tab.show_compare_cell(state, Click())
    assert Image.open(path).info["parameters"] in text and "guidance 3 · steps 2" in text
    overlaid = tab.compare_word(state, "red")
    assert overlaid != grid and Image.open(overlaid).size == Image.open(grid).size
    assert tab.compare_word(state, "") == grid


# ---- regressions of issue #21 (item 8) ------------------------------------------------------

def _scored_result(marks):
    """A CompareResult built by hand: one row, a cell per mark (True/False: judged pass/fail,
    None: not judged, "error": could not run)."""
    from vgen.compare import Cell, CellScore, CompareResult
    from vgen.compare_grid import error_tile

    req = CompareRequest(GenerateRequest("a red circle", seed=1, model="vgen-shapes"),
                         Axis("guidance", tuple(range(1, len(marks) + 1))),
                         Axis("expand", ("off",)))
    cells = []
    for c, mark in enumerate(marks):
        image = Image.new("RGB", (64, 64), "white")
        if mark == "error":
            cells.append(Cell(0, c, req.base, error_tile((64, 64), "x could not be loaded"), 0.0,
                              None, error="x could not be loaded"))
            continue
        score = None if mark is None else CellScore(mark, "because")
        cells.append(Cell(0, c, req.base, image, 0.1, None, score))
    return CompareResult(req, (tuple(cells),), 1.0, 0.0, 1)


def test_compare_pass_counts_count_judged_cells_only():
    """Regression: "expand: off pass 3/3" with one judged cell of three: the counts took every
    cell of the row as judged."""
    from vgen.compare_grid import rate_text
    from vgen.ui.tabs.compare import compare_scores

    result = _scored_result([True, None, "error"])
    row = result.row_tallies()[0]
    assert (row.passed, row.judged, row.cells) == (1, 1, 3) and result.pass_rate() == 1.0
    assert rate_text(row) == "pass 1/1 judged (100%)"
    assert rate_text(result.column_tallies()[1]) == "pass: none judged"
    summary = result.summary()
    assert summary["row_passes"] == [{"passed": 1, "judged": 1, "cells": 3}]
    assert summary["column_passes"][1] == {"passed": 0, "judged": 0, "cells": 1}
    assert summary["passes"] == {"passed": 1, "judged": 1, "cells": 3}
    assert summary["column_pass_rates"] == [1.0, None, None] and summary["errors"] == 1
    table = compare_scores(result)
    assert "100% (1/1 judged)" in table and "3/3" not in table
    assert "– not judged" in table and "| error |" in table
    assert "1 of 3 cells could not run" in table and "x could not be loaded" in table
    text = summary_text(result)
    assert "100% (1/1 judged)" in text and "ERROR" in text
    grid_image(result)  # draws the tallies and the error tile
    half = _scored_result([True, False])
    assert rate_text(half.row_tallies()[0]) == "pass 1/2 judged (50%)"


@pytest.fixture
def bad_refs(two_models, tmp_path_factory, monkeypatch):
    """Two references that cannot be loaded: a Hub id with no network and a folder (in an
    allowed root) that is not a model."""
    import os

    not_a_model = tmp_path_factory.mktemp("not-models") / "empty-folder"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("no model here")
    monkeypatch.setenv("VGEN_MODEL_ROOTS", os.environ["VGEN_MODEL_ROOTS"] + os.pathsep
                       + str(not_a_model.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))
    return "org/does-not-exist", str(not_a_model)


def test_unreachable_model_fails_its_cells_not_the_grid(two_models, bad_refs):
    """Regression: one unreachable model failed the whole grid instead of its own cells."""
    a, b = two_models
    hub_id, folder = bad_refs
    steps = []
    req = CompareRequest(GenerateRequest("a red circle", seed=2, steps=STEPS),
                         parse_axis(f"model={a},{hub_id},{b},{folder}"), parse_axis("guidance=1,3"))
    result = compare(req, control=JobControl(progress=lambda i, n: steps.append((i, n))))
    assert (result.rows, result.cols) == (2, 4)
    for row in result.cells:
        assert row[0].error is None and row[2].error is None  # the good models still ran
        assert row[0].image.size == (64, 64) and row[0].result is not None
        assert row[1].error.startswith(f"{hub_id} could not be loaded: ")
        assert row[3].error.startswith(f"{folder} could not be loaded: ")
        for bad in (row[1], row[3]):
            assert bad.result is None and bad.score is None and bad.image.size == (192, 192)
            assert "Not generated: " in bad.image.info["parameters"]
    alone = generate(result.cells[1][2].request)
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(result.cells[1][2].image))
    assert steps[-1] == (4 * STEPS, 4 * STEPS)  # the progress total left the error cells out
    assert len(result.errors) == 4 and result.summary()["errors"] == 4
    assert [c["error"] for c in result.summary()["cells"][0]][1].startswith(hub_id)
    # The grid still renders (grey tiles with the reason) and its files hold every cell.
    grid = grid_image(result)
    assert grid.width > 4 * 192
    with zipfile.ZipFile(io.BytesIO(cells_zip(result))) as zf:
        assert len(zf.namelist()) == 9
    assert "ERROR" in summary_text(result) and "could not be loaded" in summary_text(result)
    # A grid whose every model fails still returns its error cells.
    only_bad = compare(CompareRequest(GenerateRequest("a red circle", seed=2, steps=STEPS),
                                      parse_axis(f"model={hub_id}")))
    assert only_bad.cells[0][0].error and grid_image(only_bad).width >= 192


def test_unreachable_model_fails_its_cells_not_the_grid_through_the_endpoint(client, hardened_app):
    """Regression (the /compare endpoint): a model that cannot be loaded made the whole grid an
    error; now its cells are error cells and the others run."""
    folder = hardened_app.models_root / "not-a-model"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("no model here")
    grid, gallery, summary, archive = client.predict(
        "a red circle", "model", f"{hardened_app.models_root / 'tiny-txt2img'}, org/does-not-exist, "
        f"{folder}", "none", "", seed=3, steps=2, api_name="/compare")
    cells = summary["cells"][0]
    assert cells[0]["error"] is None and "Seed: 3," in cells[0]["parameters"]
    assert cells[1]["error"].startswith("org/does-not-exist could not be loaded")
    assert cells[2]["error"].startswith(f"{folder} could not be loaded")
    assert summary["errors"] == 2 and summary["passes"]["judged"] == 0
    assert "error: org/does-not-exist could not be loaded" in gallery[1]["caption"]
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    assert request_from_grid(grid).x.values[1] == "org/does-not-exist"
    assert len(zipfile.ZipFile(archive).namelist()) == 4


def test_switching_an_axis_puts_its_values_in_the_box(tiny_env):
    """Regression: switching X to `model` kept "1, 4, 7" in the values box (only the
    placeholder changed)."""
    from vgen.ui.tabs.compare import AXIS_HINTS, NO_AXIS, compare_axis_hint

    update = compare_axis_hint("model", str(tiny_env["txt2img"]))
    models = [v.strip() for v in update["value"].split(",")]
    assert models[0] == str(tiny_env["txt2img"]) and "stabilityai/sd-turbo" in models
    assert len(models) == len(set(models)) and update["interactive"]
    assert parse_axis("model=" + update["value"]).values[0] == str(tiny_env["txt2img"])
    for param in ("guidance", "steps", "scheduler", "size", "negative_prompt", "prompt", "expand"):
        update = compare_axis_hint(param)
        assert update["placeholder"] == AXIS_HINTS[param]
        Axis(param, tuple(split_values(param, update["value"])))  # valid values of that axis
    assert compare_axis_hint("guidance")["value"] == "1, 4, 7"
    off = compare_axis_hint(NO_AXIS)
    assert off["value"] == "" and off["interactive"] is False
