"""Text on quality-control pictures (captions, wrapped lines) and writing them as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from mrct.errors import WriteError
from mrct.io.atomic import atomic_file

TEXT_RGB = (255, 220, 0)


def font_for(height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=int(np.clip(height / 22, 9, 22)))
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()  # type: ignore[return-value]


def with_caption(image: npt.NDArray[np.uint8], text: str) -> npt.NDArray[np.uint8]:
    """``image`` (RGB) above a line of ``text`` (wrapped to its width)."""
    strip = text_strip([(text, TEXT_RGB)], image.shape[1], font_for(image.shape[0]))
    return np.concatenate([image, strip], axis=0)


def text_strip(
    lines: list[tuple[str, tuple[int, int, int]]],
    width: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> npt.NDArray[np.uint8]:
    """Coloured lines of text on black, ``width`` pixels wide, long lines wrapped at spaces."""
    wrapped: list[tuple[str, tuple[int, int, int]]] = []
    for text, colour in lines:
        current = ""
        for word in text.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and font.getlength(candidate) > width - 4:
                wrapped.append((current, colour))
                current = word
            else:
                current = candidate
        wrapped.append((current, colour))
    line_h = int(font.getbbox("Sg")[3]) + 3
    strip = Image.new("RGB", (width, line_h * len(wrapped) + 4))
    draw = ImageDraw.Draw(strip)
    for n, (text, colour) in enumerate(wrapped):
        draw.text((2, 2 + n * line_h), text, fill=colour, font=font)
    return np.asarray(strip)


def write_png(
    image: npt.NDArray[np.uint8],
    path: str | Path,
    *,
    overwrite: bool = False,
    source: str | Path = "",
    description: str = "",
) -> Path:
    """Write a greyscale (rows, cols) or RGB (rows, cols, 3) uint8 image as PNG, atomically.
    ``source``: the scan it shows, never removed as a leftover (:func:`mrct.io.atomic.atomic_file`).
    ``description``: a PNG ``Description`` text chunk (what a synthetic image says of itself).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        WriteError: the file could not be written.
    """
    a = np.asarray(image)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"a PNG needs uint8 (rows, cols) or (rows, cols, 3), got {a.dtype} {a.shape}")
    path = Path(path)
    with atomic_file(path, overwrite=overwrite, keep=[source]) as tmp:
        try:
            info = PngInfo()
            if description:
                info.add_itxt("Description", description)  # iTXt: UTF-8 (the label's dash)
            Image.fromarray(a).save(tmp, format="PNG", pnginfo=info)
        except OSError as err:
            raise WriteError(f"cannot write PNG: {err.strerror or err}", path) from err
    return path
