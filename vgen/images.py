"""Images coming in: from a path, bytes or a PIL image, checked before they are decoded.

Formats are allow-listed; the pixel count is checked from the header before any decoding (so a
decompression bomb never allocates); EXIF orientation is applied; modes are normalised to RGB
(transparency composited on white) or L for masks; animated files use their first frame.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from . import config
from .errors import InvalidImageError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
DEFAULT_MAX_PIXELS = 16_000_000  # VGEN_MAX_INPUT_PIXELS


def max_input_pixels() -> int:
    return config.max_input_pixels(DEFAULT_MAX_PIXELS)


def open_image(source, max_pixels: int | None = None) -> Image.Image:
    """Open and check an image without normalising it (keeps its ``info`` text chunks)."""
    limit = max_pixels or max_input_pixels()
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        elif isinstance(source, (str, Path)) and not Path(source).is_file():
            raise InvalidImageError(f"no such image file: {source}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source, formats=FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # PIL checks its own (larger) limit while reading the header: say ours.
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{found.group(1)} pixels" if found else "too many pixels"
            raise InvalidImageError(
                f"image is {size}; at most {limit} are accepted (a decompression bomb?)"
            ) from None
        except UnidentifiedImageError as e:
            raise InvalidImageError(
                f"not a readable image (allowed formats: {', '.join(FORMATS)}): {e}"
            ) from None
    w, h = image.size  # read from the header; nothing is decoded yet
    if w * h > limit:
        raise InvalidImageError(
            f"image is {w}x{h} = {w * h} pixels; at most {limit} are accepted"
        )
    if image.format is not None and image.format not in FORMATS:
        raise InvalidImageError(f"{image.format} images are not accepted; allowed: {', '.join(FORMATS)}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImageError(f"the image file is truncated or corrupt: {e}") from None
    return image


def normalise(image: Image.Image, kind: str = "image") -> tuple[Image.Image, list[str]]:
    """RGB (or L for a mask), upright, first frame; also returns notices for the user."""
    notes: list[str] = []
    if getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        notes.append(f"the {kind} is animated; its first frame was used")
    info = dict(image.info)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not sink a good image
        notes.append(f"the {kind}'s EXIF orientation could not be read and was ignored")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if kind == "mask":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            out = image.convert("RGBA").getchannel("A")
        else:
            out = image.convert("L")
    else:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
        else:
            out = image.convert("RGB")
    out.info.update({k: v for k, v in info.items() if isinstance(v, str)})
    return out, notes


def load_image(source, kind: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Open, check and normalise an input image (``kind='mask'`` gives an L-mode mask)."""
    image, _ = normalise(open_image(source, max_pixels), kind)
    return image
