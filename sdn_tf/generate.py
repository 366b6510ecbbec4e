"""Generate images from captions with an exported SDN SavedModel.

The SavedModel carries the text encoder and the generator, so generating
needs only TensorFlow, NumPy and Pillow. The caption checks also use the
character encoding of sdn_tf.text.encoder.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from typing import Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

MAX_CAPTION_LENGTH = 201  # characters the char-CNN-RNN reads; the rest is cut


def count_noun(count: int, noun: str) -> str:
    """Format `count` with `noun` in the singular or in the plural made with "s"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def read_captions_file(path: str) -> list[str]:
    """Read one caption per line, keeping blank lines out of the list.

    The file must be UTF-8, with or without a byte order mark. Any other
    encoding raises ValueError with the line number, because a lenient read
    would feed replacement characters to the text encoder without a word.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"Captions file {path!r} is a folder. Pass --captions_file="
                                "a text file with one caption per line.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Captions file {path!r} not found. Check the path, or pass "
                                "the captions with --captions.")
    with open(path, "rb") as file:
        lines = file.read().splitlines()
    captions = []
    for number, line in enumerate(lines, start=1):
        try:
            # utf-8-sig drops the byte order mark that some Windows editors write.
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as error:
            byte = line[error.start]
            raise ValueError(
                f"Captions file {path!r} is not valid UTF-8: on line {number}, byte "
                f"{error.start + 1} is 0x{byte:02x}. Save the file as UTF-8 "
                "(for example, iconv -f latin1 -t utf-8 FILE > FILE.utf8 for a Latin-1 "
                "file).") from None
        captions.append(text.strip())
    blank = sum(1 for caption in captions if not caption)
    if blank:
        logging.info("Ignored %s in %s.", count_noun(blank, "blank line"), path)
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


def warn_unreadable_captions(captions: Sequence[str], max_listed: int = 10) -> list[int]:
    """Warn about captions with no letter, digit or punctuation the text encoder reads.

    The encoder turns characters outside its alphabet into blanks (all-zero
    one-hot rows), so a caption written only in, say, Japanese gives the image
    of an empty caption. Spaces and line breaks do not count as readable.
    Empty captions are left to `check_captions`. Returns the 1-based numbers of
    the captions warned about.
    """
    from sdn_tf.text.encoder import ALPHABET, captions_to_onehot

    if not captions:
        return []
    # The same encoding as in the SavedModel, so lowercasing and the cut at
    # MAX_LENGTH characters match what the model reads.
    onehot = captions_to_onehot(list(captions)).numpy()
    blank_columns = [ALPHABET.index(" "), ALPHABET.index("\n")]
    readable = np.delete(onehot, blank_columns, axis=2).sum(axis=(1, 2))
    numbers = [index + 1 for index, caption in enumerate(captions)
               if caption.strip() and readable[index] == 0]
    if numbers:
        listed = ", ".join(str(number) for number in numbers[:max_listed])
        if len(numbers) > max_listed:
            listed += f" and {len(numbers) - max_listed} more"
        single = len(numbers) == 1
        logging.warning(
            "%d of %s (%s %s) %s no character that the text encoder reads. It reads ASCII "
            "letters, digits and punctuation and turns every other character into a blank, "
            "so %s what the model draws for an empty caption. Write captions in English.",
            len(numbers), count_noun(len(captions), "caption"),
            "number" if single else "numbers", listed,
            "contains" if single else "contain",
            "its image shows" if single else "their images show")
    return numbers


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
        lines = caption_label(text, characters)
        draw.text((left + 2, top + height + 2), "\n".join(lines), fill="black", font=font)
    return sheet


def caption_label(caption: str, characters: int, max_lines: int = 2) -> list[str]:
    """Return `caption` wrapped at word boundaries into at most `max_lines` lines.

    A caption that does not fit ends its last line with "...".
    """
    lines = textwrap.wrap(caption, width=characters) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:max(characters - 3, 1)].rstrip() + "..."
    return lines


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
