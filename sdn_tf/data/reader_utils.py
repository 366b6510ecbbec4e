"""Helpers shared by the dataset readers: pickles, captions, image checks and skip counts."""

from __future__ import annotations

import os
import pickle
from typing import Iterable, Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image

from sdn_tf.data.records import SkipReport

# Skip reasons shared by the readers, so that counts from different datasets group together.
IMAGE_NOT_FOUND = "image file not found"
CAPTION_NOT_FOUND = "caption file not found"
NO_CAPTIONS = "no captions"
EMBEDDING_MISMATCH = "caption count differs from embedding count"

# Reasons that mean a file is absent rather than damaged. Many of them point at a wrong data_dir.
_MISSING_REASONS = (IMAGE_NOT_FOUND, CAPTION_NOT_FOUND)

# Formats that tf.io.decode_image decodes (TensorFlow 2.21 also reads JPEG XL, which
# Pillow does not identify). MPO is the multi-picture JPEG some cameras write, and
# TensorFlow decodes its first frame as a plain JPEG.
_DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})

# Number of captions per image in the Reed et al. (2016) caption files.
CAPTIONS_PER_FILE = 10

_NAMES_LOGGED = 5

_CRLF_FIX = (
    "The file went through a CRLF line-ending conversion (for example git "
    "core.autocrlf, an FTP transfer in ASCII mode or a Windows editor). Download it "
    "again, or restore LF line endings with `dos2unix {path}`. Binary files copied "
    "the same way (JPEGs, char-CNN-RNN-embeddings.pickle) are probably damaged too."
)


def check_split(split: str, choices: Sequence[str], dataset: str) -> None:
    if split not in choices:
        raise ValueError(
            f"Invalid split {split!r} for {dataset}: expected one of {', '.join(choices)}."
        )


def load_python2_pickle(path: str):
    """Load a pickle written by Python 2, as in the StackGAN data release.

    Python-2 `str` objects are decoded as Latin-1, which maps every byte to one
    character, so numpy arrays stored inside (embeddings, int64 scalars) load intact.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file cannot be unpickled. The message names the file, and it
        names a CRLF conversion as the likely cause when the bytes contain "\\r\\n".
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return pickle.loads(data, encoding="latin1")
    except (pickle.UnpicklingError, ImportError, AttributeError, EOFError,
            ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as error:
        message = f"Failed to load the pickle {path}: {type(error).__name__}: {error}."
        # A CRLF conversion of a protocol-0 pickle turns "numpy.core.multiarray\n" into
        # a module name ending in "\r", which fails as a ModuleNotFoundError.
        if b"\r\n" in data:
            message += " " + _CRLF_FIX.format(path=path)
        raise ValueError(message) from error


def load_name_list(path: str) -> list[str]:
    """Load a `filenames.pickle` and return its entries as text.

    Raises:
      ValueError: the pickle is not a list of strings, or a name contains a carriage
        return. CRLF conversion of a protocol-0 pickle appends "\\r" to every name
        while loading still succeeds, so every image and caption lookup would miss.
        The file is rejected instead of stripped because the same conversion
        corrupts the JPEGs and embedding pickles that usually travel with it.
    """
    entries = load_python2_pickle(path)
    if isinstance(entries, np.ndarray):
        entries = entries.tolist()
    if not isinstance(entries, (list, tuple)):
        raise ValueError(
            f"{path} contains a {type(entries).__name__}, expected a list of file names."
        )
    names = []
    for index, entry in enumerate(entries):
        if isinstance(entry, bytes):
            entry = entry.decode("latin-1")
        if not isinstance(entry, str):
            raise ValueError(
                f"{path} entry {index} is a {type(entry).__name__} ({entry!r}), "
                "expected a file name string."
            )
        names.append(entry)
    damaged = [name for name in names if "\r" in name]
    if damaged:
        raise ValueError(
            f"{len(damaged)} of {len(names)} names in {path} contain a carriage return "
            f"('\\r'), for example {damaged[0]!r}. " + _CRLF_FIX.format(path=path)
        )
    return names


def load_class_ids(path: str, count: int, names_path: str) -> list[int]:
    """Load a `class_info.pickle` and return its class ids as Python ints.

    The StackGAN CUB training copy stores numpy int64 scalars, which become plain
    ints so that records compare and serialise like the other readers' records.
    """
    values = load_python2_pickle(path)
    try:
        class_ids = [int(value) for value in np.asarray(values).reshape(-1)]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} does not contain integer class ids: {error}.") from error
    if len(class_ids) != count:
        raise ValueError(
            f"{path} has {len(class_ids)} class ids but {names_path} has {count} names. "
            "Both files must come from the same split of the same release."
        )
    return class_ids


def load_embeddings(path: str, count: int) -> np.ndarray:
    """Load `char-CNN-RNN-embeddings.pickle` as float32 [images, captions, dim].

    Raises:
      FileNotFoundError: the file is missing. The message names both remedies.
      ValueError: the array shape does not match the split's file names.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Embedding file not found: {path}. Download the StackGAN "
            "char-CNN-RNN-embeddings.pickle into that folder, or pass "
            "use_embeddings=False to encode the captions with the text encoder."
        )
    embeddings = np.asarray(load_python2_pickle(path), dtype=np.float32)
    if embeddings.ndim != 3 or embeddings.shape[0] != count:
        raise ValueError(
            f"{path} has shape {embeddings.shape}, expected [{count}, captions, dim] "
            "to match the split's filenames.pickle."
        )
    return embeddings


def _decode_line(line: bytes) -> tuple[str, bool]:
    try:
        return line.decode("utf-8"), False
    except UnicodeDecodeError:
        # Latin-1 maps every byte to a character, so no text is lost. The text
        # encoder maps characters outside its alphabet itself.
        return line.decode("latin-1"), True


def parse_captions(data: bytes) -> tuple[list[str], bool]:
    """Split caption file bytes into stripped, non-empty captions.

    Each line is decoded as UTF-8 on its own, falling back to Latin-1 for a line that
    is not valid UTF-8, so one bad byte does not garble the other lines. "\\r\\n" and
    "\\r" line ends are accepted.

    Returns:
      The captions in file order and whether any line needed the Latin-1 fallback.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    captions = []
    used_latin1 = False
    for raw_line in data.splitlines():
        text, fallback = _decode_line(raw_line)
        used_latin1 = used_latin1 or fallback
        text = text.strip()
        if text:
            captions.append(text)
    return captions, used_latin1


def read_caption_file(path: str) -> list[str]:
    """Read one caption file and return its non-empty lines, stripped."""
    with open(path, "rb") as f:
        return parse_captions(f.read())[0]


def check_image_file(path: str) -> Optional[str]:
    """Decode an image file fully and return a skip reason, or None when it is usable.

    Greyscale, CMYK and PNG-encoded files named .jpg decode and are kept, because
    training converts every image to RGB. A file that Pillow can read but
    tf.io.decode_image cannot (TIFF, for example) is rejected.
    """
    try:
        if os.path.getsize(path) == 0:
            return "empty image file"
    except OSError:
        return IMAGE_NOT_FOUND
    try:
        # verify() checks the container structure (PNG CRCs, JPEG markers) but does
        # not decode pixels, so a second open with load() catches truncated data.
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
        if image_format not in _DECODABLE_FORMATS:
            return "unsupported image format"
        with Image.open(path) as image:
            image.load()
    except Image.DecompressionBombError:
        return "image too large"
    except OSError as error:
        if "truncated" in str(error).lower():
            return "truncated image"
        return "undecodable image"
    except (SyntaxError, ValueError, EOFError):
        return "undecodable image"
    return None


class SplitTally:
    """Counts skipped items and caption statistics while a reader builds one split.

    `finish` logs one summary, copies the skips into the caller's SkipReport and
    raises when most items point at files that do not exist.
    """

    def __init__(self, dataset: str, split: Optional[str], folders: dict):
        """`folders` maps a skip reason to the folder where the missing files were expected."""
        self.dataset = dataset
        self.split = split
        self.folders = folders
        self.skips = SkipReport()
        self.caption_files = 0
        self.caption_files_not_ten = 0
        self.caption_files_latin1 = 0

    def skip(self, name: str, reason: str) -> None:
        self.skips.add(name, reason)

    def read_captions(self, path: str) -> list[str]:
        """Read a caption file and count files whose caption count differs from 10."""
        with open(path, "rb") as f:
            captions, used_latin1 = parse_captions(f.read())
        self.caption_files += 1
        self.caption_files_latin1 += int(used_latin1)
        self.caption_files_not_ten += int(len(captions) != CAPTIONS_PER_FILE)
        return captions

    def _label(self) -> str:
        return f"{self.dataset} {self.split}" if self.split else self.dataset

    def finish(self, records: list, total: int, caller_skips: Optional[SkipReport]) -> list:
        """Log the split summary, copy skips to `caller_skips` and return `records`.

        Raises:
          FileNotFoundError: more than half of the `total` items are missing an image
            or caption file, which usually means a wrong data_dir or caption_dir.
        """
        if caller_skips is not None:
            for name, reason in self.skips.items:
                caller_skips.add(name, reason)

        label = self._label()
        logging.info("%s: %d records from %d listed items, %d skipped.",
                     label, len(records), total, len(self.skips))
        for reason, count in sorted(self.skips.reasons().items()):
            first = [name for name, why in self.skips.items if why == reason][:_NAMES_LOGGED]
            logging.warning("%s: skipped %d items, reason %r, first: %s.",
                            label, count, reason, ", ".join(first))
        if self.caption_files_not_ten:
            logging.info("%s: %d of %d caption files do not have exactly %d captions. "
                         "Their records keep every caption.", label,
                         self.caption_files_not_ten, self.caption_files, CAPTIONS_PER_FILE)
        if self.caption_files_latin1:
            logging.info("%s: %d caption files contain lines that are not valid UTF-8. "
                         "Those lines were decoded as Latin-1.", label,
                         self.caption_files_latin1)

        counts = self.skips.reasons()
        missing = sum(counts.get(reason, 0) for reason in _MISSING_REASONS)
        if total and missing * 2 > total:
            where = "; ".join(
                f"{counts[reason]} with reason {reason!r}, expected under {self.folders[reason]}"
                for reason in _MISSING_REASONS if counts.get(reason)
            )
            raise FileNotFoundError(
                f"{label}: {missing} of {total} items are missing files ({where}). "
                "Check data_dir (and caption_dir, if given) against the expected layout."
            )
        if not records:
            logging.warning("%s: no records left after skipping.", label)
        return records


def validate_image(tally: SplitTally, name: str, path: str, enabled: bool) -> bool:
    """Return True when `path` may be used, recording a skip otherwise."""
    if not enabled:
        return True
    reason = check_image_file(path)
    if reason is None:
        return True
    tally.skip(name, reason)
    return False


def read_listed_item(tally: SplitTally, name: str, image_path: str, caption_path: str,
                     embeddings, validate_images: bool):
    """Read the captions of one item listed by a split pickle, or record why it is skipped.

    Returns (captions, embeddings) or None. The embeddings row, when given,
    must have one entry per caption, because ImageRecord aligns them row by row.
    """
    if not os.path.isfile(image_path):
        tally.skip(name, IMAGE_NOT_FOUND)
        return None
    if not os.path.isfile(caption_path):
        tally.skip(name, CAPTION_NOT_FOUND)
        return None
    captions = tally.read_captions(caption_path)
    if not captions:
        tally.skip(name, NO_CAPTIONS)
        return None
    if embeddings is not None and len(embeddings) != len(captions):
        tally.skip(name, EMBEDDING_MISMATCH)
        return None
    if not validate_image(tally, name, image_path, validate_images):
        return None
    return captions, embeddings


def parse_class_number(value, source: str) -> int:
    """Convert 7, "7", "007" or "class_00007" to the class number 7."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    text = str(value).strip()
    if text.startswith("class_"):
        text = text[len("class_"):]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"Invalid class {value!r} in {source}: expected a class number such as 1 "
            "or a name such as class_00001."
        ) from None


def parse_class_numbers(values: Iterable, source: str) -> list[int]:
    return [parse_class_number(value, source) for value in values]
