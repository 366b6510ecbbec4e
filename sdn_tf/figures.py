"""Figures of the SDN experiments as Pillow images: method comparison, diverse
synthesis and sentence interpolation.

Every function takes uint8 RGB arrays and returns a `PIL.Image.Image`; call
`.save(path)` to write a PNG. Captions are wrapped into a text column at the
left of each row, drawn with Pillow's default bitmap font.
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TEXT_WIDTH = 200  # pixels of the caption column
HEADER_HEIGHT = 18  # pixels of the column titles
GAP = 4  # pixels between cells
CHARACTER_WIDTH = 6  # width of a character of Pillow's default font, for wrapping
LINE_HEIGHT = 12


def _check_images(name: str, images: np.ndarray, dims: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != dims or images.shape[-1] != 3:
        expected = "[N, H, W, 3]" if dims == 4 else "[N, n, H, W, 3]"
        raise ValueError(f"{name} has shape {images.shape}; expected uint8 RGB {expected}.")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} has dtype {images.dtype}; convert it to uint8 RGB first.")
    return images


def _wrap(text: str, width_pixels: int, max_lines: int) -> str:
    lines = textwrap.wrap(text, max(width_pixels // CHARACTER_WIDTH, 8)) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-3] + "..."
    return "\n".join(lines)


def _canvas(columns_width: int, rows: int, row_height: int, header: bool):
    top = HEADER_HEIGHT if header else 0
    image = Image.new("RGB", (TEXT_WIDTH + columns_width, top + rows * row_height), "white")
    return image, ImageDraw.Draw(image), ImageFont.load_default(), top


def comparison_grid(captions: Sequence[str], real_images: Optional[np.ndarray],
                    generated: Mapping[str, np.ndarray]) -> Image.Image:
    """Draw one row per caption: the caption, the real image, then each method's image.

    Args:
      captions: N captions.
      real_images: uint8 [N, H, W, 3], or None to leave the real column out.
      generated: method name -> uint8 [N, H, W, 3], drawn left to right in
        the mapping's order.

    Raises:
      ValueError: when an array is not uint8 [N, H, W, 3] with N captions
        and the size of the others, or when no method is given.
    """
    if not generated:
        raise ValueError("generated is empty; pass at least one method's images.")
    columns = {}
    if real_images is not None:
        columns["real"] = _check_images("real_images", real_images, 4)
    for method, images in generated.items():
        columns[method] = _check_images(f"generated[{method!r}]", images, 4)
    size = next(iter(columns.values())).shape[1:3]
    for name, images in columns.items():
        if len(images) != len(captions):
            raise ValueError(f"{name} has {len(images)} images for {len(captions)} captions; "
                             "pass one image per caption.")
        if images.shape[1:3] != size:
            raise ValueError(f"{name} images are {images.shape[1]}x{images.shape[2]}, the "
                             f"others {size[0]}x{size[1]}; resize them to one size first.")
    height, width = size
    cell = max(width, 64) + GAP
    row_height = height + GAP
    sheet, draw, font, top = _canvas(cell * len(columns), len(captions), row_height, True)
    for column, name in enumerate(columns):
        title = _wrap(name, cell, 1)
        draw.text((TEXT_WIDTH + column * cell, 2), title, fill="black", font=font)
    for row, caption in enumerate(captions):
        y = top + row * row_height
        draw.text((2, y + 2), _wrap(caption, TEXT_WIDTH - 4, max(height // LINE_HEIGHT, 1)),
                  fill="black", font=font)
        for column, images in enumerate(columns.values()):
            sheet.paste(Image.fromarray(images[row]), (TEXT_WIDTH + column * cell, y))
    return sheet


def diverse_grid(captions: Sequence[str], images: np.ndarray) -> Image.Image:
    """Draw one row per caption: the caption, then its n generated images.

    Args:
      captions: N captions.
      images: uint8 [N, n, H, W, 3], as the exported model's `all_images`.
    """
    images = _check_images("images", images, 5)
    if len(images) != len(captions):
        raise ValueError(f"images has {len(images)} rows for {len(captions)} captions; pass "
                         "one row of n images per caption.")
    count, per_caption, height, width, _ = images.shape
    row_height = height + GAP
    sheet, draw, font, top = _canvas(per_caption * (width + GAP), count, row_height, True)
    for k in range(per_caption):
        draw.text((TEXT_WIDTH + k * (width + GAP), 2), f"image {k + 1}", fill="black",
                  font=font)
    for row, caption in enumerate(captions):
        y = top + row * row_height
        draw.text((2, y + 2), _wrap(caption, TEXT_WIDTH - 4, max(height // LINE_HEIGHT, 1)),
                  fill="black", font=font)
        for k in range(per_caption):
            sheet.paste(Image.fromarray(images[row, k]), (TEXT_WIDTH + k * (width + GAP), y))
    return sheet


def interpolation_strip(images: np.ndarray, caption_a: str, caption_b: str,
                        weights: Optional[Sequence[float]] = None) -> Image.Image:
    """Draw the images of an interpolation from caption A (left) to caption B (right).

    Args:
      images: uint8 [K, H, W, 3], or [K, n, H, W, 3] to draw each of the n
        diverse images in its own row.
      caption_a, caption_b: the two captions, written above the strip.
      weights: the K interpolation weights of caption B, written under each
        image; None writes none.
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, None]
    images = _check_images("images", images, 5)
    steps, rows, height, width, _ = images.shape
    if weights is not None and len(weights) != steps:
        raise ValueError(f"weights has {len(weights)} values for {steps} images; pass one "
                         "weight per image.")
    label_height = LINE_HEIGHT + 2 if weights is not None else 0
    text_height = 2 * LINE_HEIGHT + 6
    strip_width = max(steps * (width + GAP), 2 * TEXT_WIDTH)
    strip = Image.new("RGB", (strip_width, text_height + rows * (height + GAP) + label_height),
                      "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    characters = strip_width // CHARACTER_WIDTH - 4
    draw.text((2, 2), ("A: " + caption_a)[:characters], fill="black", font=font)
    draw.text((2, 2 + LINE_HEIGHT + 2), ("B: " + caption_b)[:characters], fill="black",
              font=font)
    for step in range(steps):
        for row in range(rows):
            strip.paste(Image.fromarray(images[step, row]),
                        (step * (width + GAP), text_height + row * (height + GAP)))
        if weights is not None:
            draw.text((step * (width + GAP) + 2, text_height + rows * (height + GAP)),
                      f"{weights[step]:.2f}", fill="black", font=font)
    return strip
