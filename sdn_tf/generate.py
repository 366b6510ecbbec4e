"""Generate images from captions with an exported SDN SavedModel.

Only TensorFlow, NumPy and Pillow are needed here: the SavedModel carries the
text encoder and the generator.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

MAX_CAPTION_LENGTH = 201  # characters the char-CNN-RNN reads; the rest is cut


def read_captions_file(path: str) -> list[str]:
    """Read one caption per line, UTF-8, keeping blank lines out of the list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Captions file {path!r} not found.")
    with open(path, encoding="utf-8", errors="replace") as file:
        captions = [line.strip() for line in file]
    blank = sum(1 for caption in captions if not caption)
    if blank:
        logging.info("Ignored %d blank lines in %s.", blank, path)
    return [caption for caption in captions if caption]


def check_captions(captions: Sequence[str], max_length: int = MAX_CAPTION_LENGTH) -> None:
    """Raise on an empty list; warn about empty and over-long captions."""
    if not captions:
        raise ValueError("No captions given: pass --captions or --captions_file with at least one.")
    for index, caption in enumerate(captions):
        if not caption.strip():
            logging.warning("Caption %d is empty; its image shows what the model draws for "
                            "no text.", index + 1)
        elif len(caption) > max_length:
            logging.warning("Caption %d has %d characters; the text encoder reads only the "
                            "first %d: %r", index + 1, len(caption), max_length,
                            caption[:max_length])


def load_model(model_dir: str):
    """Load an exported SavedModel and its sdn_export.json, with a clear error if absent."""
    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"{model_dir!r} holds no SavedModel (saved_model.pb not found). Pass the folder "
            "written by sdn-export."
        )
    # Imported here so that sdn-generate rejects bad flags without the
    # seconds TensorFlow takes to import.
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    info_path = os.path.join(model_dir, "sdn_export.json")
    info = {}
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as file:
            info = json.load(file)
    return model, info


def generate_images(model, captions: Sequence[str]) -> np.ndarray:
    """Return uint8 images [N, n, H, W, 3] for the captions."""
    import tensorflow as tf

    outputs = model.signatures["serving_default"](captions=tf.constant(list(captions), tf.string))
    return outputs["all_images"].numpy()


def contact_sheet(images: np.ndarray, captions: Sequence[str], columns: int = 4) -> Image.Image:
    """Draw images [N, n, H, W, 3] in a grid, each caption's n images side by side with
    the start of the caption underneath."""
    count, per_caption, height, width, _ = images.shape
    cell_width = max(width * per_caption, 160)
    text_height = 36
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (columns * cell_width, rows * (height + text_height)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index in range(count):
        row, column = divmod(index, columns)
        left = column * cell_width
        top = row * (height + text_height)
        for k in range(per_caption):
            sheet.paste(Image.fromarray(images[index, k]), (left + k * width, top))
        text = captions[index]
        characters = max(cell_width // 7, 8)
        lines = [text[:characters], text[characters:2 * characters]]
        draw.text((left + 2, top + height + 2), "\n".join(lines), fill="black", font=font)
    return sheet


def write_outputs(images: np.ndarray, captions: Sequence[str], output_dir: str) -> list[str]:
    """Write one PNG per caption (per image for n > 1), captions.txt and contact_sheet.png."""
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    digits = max(4, len(str(len(captions))))
    for index, caption_images in enumerate(images):
        for k, image in enumerate(caption_images):
            suffix = f"_{k + 1}" if len(caption_images) > 1 else ""
            path = os.path.join(output_dir, f"{index + 1:0{digits}d}{suffix}.png")
            Image.fromarray(image).save(path)
            paths.append(path)
    with open(os.path.join(output_dir, "captions.txt"), "w", encoding="utf-8") as file:
        for index, caption in enumerate(captions):
            file.write(f"{index + 1:0{digits}d}\t{caption}\n")
    contact_sheet(images, captions).save(os.path.join(output_dir, "contact_sheet.png"))
    return paths
