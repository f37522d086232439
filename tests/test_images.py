"""Images coming in: formats, bombs, EXIF, modes, animation, truncation."""

import io

import pytest
from PIL import Image

from vgen.errors import InvalidImageError
from vgen.images import load_image, normalise, open_image


def encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_allowed_formats_load_as_rgb(fmt):
    im = load_image(encode(Image.new("RGB", (40, 30), (200, 10, 10)), fmt))
    assert im.mode == "RGB" and im.size == (40, 30)


def test_pixel_cap_is_checked_before_decoding():
    # A 20000x20000 PNG header over a tiny payload: refused from the header alone.
    bomb = encode(Image.new("1", (20000, 20000)))
    with pytest.raises(InvalidImageError, match="pixels"):
        open_image(bomb, max_pixels=16_000_000)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_modes_are_normalised(mode):
    im = Image.new(mode, (16, 16))
    out = load_image(encode(im, "TIFF" if mode in ("CMYK", "I;16") else "PNG"))
    assert out.mode == "RGB"


def test_transparency_is_composited_on_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert load_image(encode(im)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = load_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_uses_first_frame_and_says_so():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    im, notes = normalise(open_image(buf.getvalue()))
    assert im.getpixel((0, 0))[0] > 200 and any("first frame" in n for n in notes)


@pytest.mark.parametrize("data", [b"", b"not an image", encode(Image.new("RGB", (64, 64)))[:60]])
def test_truncated_or_non_images_are_refused(data):
    with pytest.raises(InvalidImageError):
        load_image(data)


def test_disallowed_format_is_refused():
    with pytest.raises(InvalidImageError):
        load_image(encode(Image.new("RGB", (8, 8)), "PPM"))


def test_mask_uses_alpha_of_a_brush_layer():
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.putpixel((2, 2), (10, 10, 10, 255))
    m = load_image(encode(layer), kind="mask")
    assert m.mode == "L" and m.getpixel((2, 2)) == 255 and m.getpixel((0, 0)) == 0
