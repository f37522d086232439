"""Files of a comparison (:mod:`vgen.compare`): the labelled grid PNG and a ZIP of its cells.

The grid is one PNG drawn with Pillow: the axes' values as column and row headers, each cell's
seconds (and, for the shapes model, its pass/fail) under it, the pass rates per column and row.
Small images (the 64x64 shapes world) are enlarged by a whole factor with nearest-neighbour
so they stay crisp. The whole comparison (the request, and per cell its seed, seconds, score
and ``parameters`` text) is recorded as JSON in the PNG's ``vgen-compare`` text chunk;
:func:`request_from_grid` reads it back to a :class:`~vgen.compare.CompareRequest` that runs
the same grid again. The ZIP holds every cell as its own PNG with its own ``parameters``
chunk (as ``vgen.metadata`` stamps every image), plus ``comparison.json``.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from . import __version__
from .compare import CompareRequest, CompareResult, short_model_name
from .compare_plan import plan_note
from .errors import InvalidImageError
from .metadata import png_bytes, save_png

KEY = "vgen-compare"
FORMAT = 1
MIN_CELL = 192  # smaller images are enlarged by a whole factor (nearest) to at least this
MAX_CELL = 512  # larger ones are shrunk to this on their longer side
PAD = 8
BG = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
PASS = (20, 130, 50)
FAIL = (200, 40, 40)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line ends in an ellipsis if cut."""
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    lines = lines or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " …"
    out = []
    for ln in lines:  # a single word wider than the box
        while ln and draw.textlength(ln, font=font) > width:
            ln = ln[:-2] + "…" if len(ln) > 2 else ""
        out.append(ln)
    return out


def display_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    longest = max(w, h)
    if longest < MIN_CELL:
        k = math.ceil(MIN_CELL / longest)
        return w * k, h * k
    if longest > MAX_CELL:
        s = MAX_CELL / longest
        return max(1, round(w * s)), max(1, round(h * s))
    return w, h


def _shown(image: Image.Image) -> Image.Image:
    size = display_size(image.size)
    if size == image.size:
        return image.convert("RGB")
    method = Image.NEAREST if size[0] > image.width else Image.LANCZOS
    return image.convert("RGB").resize(size, method)


def rate_text(tally) -> str:
    """``pass 1/2 judged (50%)``: counts over judged cells only (unscored and error cells are
    not failures); ``pass: none judged`` (Pillow's default font has no dash)."""
    if not tally.judged:
        return "pass: none judged"
    return f"pass {tally.passed}/{tally.judged} judged ({tally.rate:.0%})"


ERROR_BG = (205, 205, 205)


def error_tile(size: tuple[int, int], reason: str) -> Image.Image:
    """The picture of a cell that could not run: grey, with the reason written on it (drawn at
    the grid's display size, so the text stays readable there)."""
    w, h = display_size(size)
    tile = Image.new("RGB", (w, h), ERROR_BG)
    draw = ImageDraw.Draw(tile)
    font, big = _font(12), _font(14)
    draw.text((PAD, PAD), "could not run", fill=FAIL, font=big)
    lines = _wrap(draw, reason, font, w - 2 * PAD, max_lines=max(1, (h - 3 * PAD - 18) // 15))
    for i, ln in enumerate(lines):
        draw.text((PAD, PAD + 22 + 15 * i), ln, fill=INK, font=font)
    return tile


def attention_words(result: CompareResult) -> list[str]:
    """The words that have attention maps in at least one cell, in order of first appearance."""
    words: list[str] = []
    for cell in result.flat():
        if cell.maps is not None:
            for key in cell.maps.word_keys():
                w = key.split(":", 1)[1]
                if w not in words:
                    words.append(w)
    return words


def _word_key(maps, word: str) -> str | None:
    for key in maps.word_keys():
        if key.split(":", 1)[1].lower() == word.lower():
            return key
    return None


def cell_picture(cell, word: str | None = None, opacity: float = 0.6) -> tuple[Image.Image, bool]:
    """The cell's image, or its attention overlay for ``word`` when it has that word's map;
    the flag says whether an overlay was drawn."""
    if word and cell.maps is not None:
        key = _word_key(cell.maps, word)
        if key is not None:
            return cell.maps.overlay(cell.image, key, opacity), True
    return cell.image, False


def render_grid(result: CompareResult, word: str | None = None, opacity: float = 0.6) -> Image.Image:
    """The labelled grid image (without metadata; :func:`grid_image` adds it). ``word``: show
    that word's cross-attention map over every cell (cells run with ``attention=True``)."""
    req = result.request
    rows, cols = result.rows, result.cols
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f_title, f_head, f_small = _font(16), _font(14), _font(12)
    line_h, small_h = 18, 15
    shown = [[_shown(cell_picture(c, word, opacity)[0]) for c in row] for row in result.cells]
    col_w = [max(shown[r][c].width for r in range(rows)) for c in range(cols)]
    row_h = [max(im.height for im in shown[r]) for r in range(rows)]
    has_y = req.y is not None
    scored = result.scored
    # 1. Header texts, wrapped to their boxes.
    x_heads = [_wrap(scratch, f"{req.x.param}: {lab}" if req.x.param not in ("prompt",) else lab,
                     f_head, col_w[c] - 4)
               for c, lab in enumerate(heading_labels(result, "x"))]
    head_lines = max(len(h) for h in x_heads)
    left_w = 0
    y_heads: list[list[str]] = [[] for _ in range(rows)]
    if has_y:
        left_w = 170
        for r, lab in enumerate(heading_labels(result, "y")):
            text = f"{req.y.param}: {lab}" if req.y.param != "prompt" else lab
            y_heads[r] = _wrap(scratch, text, f_head, left_w - 2 * PAD, max_lines=6)
    total_w = left_w + sum(col_w) + PAD * (cols + 1)
    title = []
    if req.x.param != "prompt" and (req.y is None or req.y.param != "prompt"):
        title += _wrap(scratch, req.base.prompt or "(empty prompt)", f_title, total_w - 2 * PAD, 2)
    sub = f"x: {req.x.param}" + (f" · y: {req.y.param}" if has_y else "") + f" · seed {req.base.seed}"
    if req.x.param != "model" and (req.y is None or req.y.param != "model"):
        # Every model that drew a cell (a plan axis draws its on cells on the grounded one).
        ran = list(dict.fromkeys(c.result.model for c in result.flat() if c.result is not None))
        models = ran or [req.base.model or ""]
        sub += " · " + " / ".join(m.rstrip('/').rsplit('/', 1)[-1] for m in models)
    sub += f" · {result.seconds:.1f} s in all"
    if word:
        sub += f" · attention: “{word}”"
    title_h = PAD + len(title) * 20 + line_h + PAD
    head_h = head_lines * line_h + PAD
    caption_h = small_h * (2 if scored else 1) + 4
    footer_h = (small_h + PAD) if scored else 0
    total_h = title_h + head_h + sum(row_h) + rows * (caption_h + PAD) + PAD + footer_h
    canvas = Image.new("RGB", (total_w, total_h), BG)
    draw = ImageDraw.Draw(canvas)
    # 2. Title and subtitle.
    y = PAD
    for ln in title:
        draw.text((PAD, y), ln, fill=INK, font=f_title)
        y += 20
    draw.text((PAD, y), sub, fill=MUTED, font=f_small)
    # 3. Column headers.
    xs = []
    x = left_w + PAD
    for c in range(cols):
        xs.append(x)
        for i, ln in enumerate(x_heads[c]):
            draw.text((x + 2, title_h + i * line_h), ln, fill=INK, font=f_head)
        x += col_w[c] + PAD
    # 4. Rows: header, cells centred in their slots, captions.
    y = title_h + head_h
    for r in range(rows):
        if has_y:
            lines = y_heads[r] + ([rate_text(result.row_tallies()[r])] if scored else [])
            for i, ln in enumerate(lines):
                colour = MUTED if (scored and i == len(lines) - 1) else INK
                draw.text((PAD, y + i * line_h), ln, fill=colour, font=f_head)
        for c in range(cols):
            cell, im = result.cells[r][c], shown[r][c]
            ox = xs[c] + (col_w[c] - im.width) // 2
            oy = y + (row_h[r] - im.height) // 2
            canvas.paste(im, (ox, oy))
            cy = y + row_h[r] + 3
            caption = "not run" if cell.error is not None else f"{cell.seconds:.2f} s"
            if word and cell.error is None and not cell_picture(cell, word, opacity)[1]:
                caption += f" · no “{word}” map"
            draw.text((xs[c] + 2, cy), caption, fill=MUTED, font=f_small)
            if cell.score is not None:
                verdict = "PASS" if cell.score.passed else "FAIL"
                draw.text((xs[c] + 2, cy + small_h), verdict, fill=PASS if cell.score.passed else FAIL,
                          font=f_small)
        y += row_h[r] + caption_h + PAD
    # 5. Pass rates per column.
    if scored:
        for c, tally in enumerate(result.column_tallies()):
            draw.text((xs[c] + 2, y), rate_text(tally), fill=MUTED, font=f_small)
    return canvas


def heading_labels(result: CompareResult, which: str) -> list[str]:
    """An axis' labels as the grid heads them: a ``plan`` value whose cells were drawn from
    planned layouts also names the model that drew them (``on · vgen-shapes-grounded``), since
    the planned pipeline's model is not the one the cells were given."""
    axis = result.request.x if which == "x" else result.request.y
    labels = list(result.x_labels if which == "x" else result.y_labels)
    if axis is None or axis.param != "plan":
        return labels
    for i in range(len(labels)):
        line = [row[i] for row in result.cells] if which == "x" else result.cells[i]
        drawn = dict.fromkeys(c.request.model for c in line
                              if c.error is None and c.request.layout_plan is not None)
        if drawn:
            labels[i] += " · " + ", ".join(short_model_name(m or "") for m in drawn)
    return labels


def comparison_record(result: CompareResult) -> dict:
    """What the grid PNG records: the request, per-cell seeds, seconds, scores, parameters."""
    return {"format": FORMAT, "vgen_version": __version__, **result.summary()}


def grid_image(result: CompareResult, word: str | None = None, opacity: float = 0.6) -> Image.Image:
    """The labelled grid with the whole comparison in its ``vgen-compare`` text chunk
    (written by :func:`save_grid` / ``vgen.metadata.png_bytes``)."""
    image = render_grid(result, word, opacity)
    image.info[KEY] = json.dumps(comparison_record(result), ensure_ascii=True)
    return image


def save_grid(result: CompareResult, path: str | Path, word: str | None = None) -> Path:
    return save_png(grid_image(result, word), path)


def read_comparison(source: str | Path | Image.Image) -> dict:
    """The record of a grid PNG written by :func:`save_grid`."""
    image = source if isinstance(source, Image.Image) else Image.open(source)
    text = image.info.get(KEY)
    if not text:
        raise InvalidImageError(
            f"this image carries no comparison (only grids saved by vgen compare have a "
            f"'{KEY}' text chunk)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidImageError(f"the '{KEY}' text chunk is not valid JSON: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InvalidImageError(f"the '{KEY}' record is not a format-{FORMAT} comparison")
    return record


def request_from_grid(source: str | Path | Image.Image) -> CompareRequest:
    """The comparison a grid PNG records (with the seed that was used)."""
    return CompareRequest.from_json(read_comparison(source)["request"])


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:n] or "v"


def cell_name(result: CompareResult, row: int, col: int) -> str:
    """``r1-c2_guidance-3_steps-4.png``: position (from 1) and the cell's axis values."""
    req = result.request
    parts = [f"r{row + 1}-c{col + 1}", f"{req.x.param}-{_slug(result.x_labels[col])}"]
    if req.y is not None:
        parts.append(f"{req.y.param}-{_slug(result.y_labels[row])}")
    return "_".join(parts) + ".png"


def cells_zip(result: CompareResult) -> bytes:
    """A ZIP of every cell as a PNG with its own ``parameters`` chunk, and comparison.json."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for cell in result.flat():
            zf.writestr(cell_name(result, cell.row, cell.col), png_bytes(cell.image))
        zf.writestr("comparison.json", json.dumps(comparison_record(result), indent=2))
    return buf.getvalue()


def save_zip(result: CompareResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cells_zip(result))
    return path


def summary_text(result: CompareResult) -> str:
    """A plain-text table: seconds (and PASS/FAIL) per cell, pass rates per column and row."""
    req = result.request
    head = [f"{req.y.param} \\ {req.x.param}" if req.y is not None else req.x.param,
            *result.x_labels]
    if result.scored and req.y is not None:
        head.append("row pass")
    table = [head]
    for r, row in enumerate(result.cells):
        line = [result.y_labels[r] if req.y is not None else ""]
        for cell in row:
            text = "ERROR" if cell.error is not None else f"{cell.seconds:.2f}s"
            if cell.score is not None:
                text += " PASS" if cell.score.passed else " FAIL"
            line.append(text)
        if result.scored and req.y is not None:
            line.append(_tally_text(result.row_tallies()[r]))
        table.append(line)
    if result.scored:
        table.append(["column pass"] + [_tally_text(t) for t in result.column_tallies()])
    widths = [max(len(str(row[i])) for row in table if i < len(row)) for i in range(len(head))]
    lines = ["  ".join(str(v)[:60].ljust(min(w, 60)) for v, w in zip(row, widths)) for row in table]
    total = f"{result.rows * result.cols} cells in {result.seconds:.1f} s (loading {result.load_s:.1f} s); seed {req.base.seed}"
    if result.scored:
        total += f"; pass {_tally_text(result.tally())}"
    errors = [f"{cell_name(result, c.row, c.col)}: {c.error}" for c in result.errors]
    notes = list(dict.fromkeys(n for c in result.flat() if (n := plan_note(c.request))))
    return "\n".join(lines + [total] + [f"plan=on: {n}" for n in notes] + errors)


def _tally_text(tally) -> str:
    """``50% (1/2 judged)``, or ``-`` when no cell was judged."""
    if not tally.judged:
        return "-"
    return f"{tally.rate:.0%} ({tally.passed}/{tally.judged} judged)"
