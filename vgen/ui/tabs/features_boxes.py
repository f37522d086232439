"""The Features tab's "Boxes" view (issue #22): for an inspection drawn from a layout, each
object's phrase attention over the image with its box, and how much of it lies in the box.

The maps and figures are ``vgen.layout_maps``' (torch-free); this module turns them into the
``/attention`` endpoint's ``boxes`` answer and the tab's gallery and table."""

from __future__ import annotations

import gradio as gr

INTRO = ("**Boxes** · each object's phrase: the prompt words it names, summed, over the image "
         "with its box; *inside* is the share of that attention within the box (attention "
         "spread evenly would score the box's own share of the picture).")
LAYOUT_HELP = ('{"objects": [{"phrase": "a red circle", "box": [0.05, 0.3, 0.4, 0.65]}], '
               '"background": ""}')


def boxes_answer(maps, layout) -> list[dict] | None:
    """The endpoint's ``boxes``: one dict per layout object (phrase, box, words, missing,
    inside, box_area) over all steps and resolutions; None without a layout."""
    if layout is None or maps is None:
        return None
    from vgen.layout_maps import box_maps

    return [b.to_dict() for b in box_maps(maps, layout)]


def _table(found) -> str:
    """The figures, one line per object (a table's narrow columns broke words on a phone)."""
    lines = []
    for b in found:
        phrase = b.phrase.replace("*", "\\*")
        if b.inside is None:
            figures = "no map: none of its words is in the prompt"
        else:
            figures = f"**{b.inside:.0%}** inside its box · words: {', '.join(b.words)}"
        if b.missing and b.inside is not None:
            figures += f" · not in the prompt: {', '.join(b.missing)}"
        lines.append(f"- **{b.index + 1}** · {phrase}: {figures} · the box: {b.area:.0%} of "
                     "the picture")
    return INTRO + "\n\n" + "\n".join(lines)


def hidden() -> tuple:
    """No layout (or no inspection yet): the view is hidden."""
    return gr.update(value=None, visible=False), gr.update(value="", visible=False)


def columns(n: int) -> int:
    """Overlays a row: all of up to three, else two or three a row (four: two by two)."""
    return n if n <= 3 else 2 if n == 4 else 3


def boxes_view(maps, image, layout, opacity, **filters) -> tuple:
    """(one picture: an overlay per object, the table of figures) for an inspection's maps and
    layout, under the tab's step range and resolutions."""
    if maps is None or layout is None:
        return hidden()
    from vgen.layout_maps import box_maps, box_overlay
    from vgen.viz import grid

    found = box_maps(maps, layout, **filters)
    cells = [box_overlay(image, b, float(opacity)) for b in found]
    picture = grid(cells, columns=columns(len(cells)), pad=8) if cells else None
    return gr.update(value=picture, visible=True), gr.update(value=_table(found), visible=True)


def build() -> dict:
    """The view's components (hidden until an inspection has a layout)."""
    # One picture, as "Every word" is: each overlay writes its phrase and figures below itself.
    # No label shown: it is drawn over the picture's top-left corner (the first box's number);
    # the table above says what the picture is.
    return {
        "boxes_info": gr.Markdown(visible=False, elem_id="features-boxes-info"),
        "boxes_view": gr.Image(label="Boxes: each object's phrase attention and its box",
                               show_label=False, visible=False, type="pil", format="png",
                               interactive=False, buttons=["download", "fullscreen"],
                               elem_id="features-boxes"),
    }
