"""Reader for image folders described by a Hugging Face style `metadata.jsonl`."""

from __future__ import annotations

import json
import os
from typing import Optional

from absl import logging

from sdn_tf.data import reader_utils as utils
from sdn_tf.data.records import ImageRecord, SkipReport

METADATA_FILE = "metadata.jsonl"


def find_metadata(data_dir: str, split: Optional[str]) -> str:
    """Return the folder whose metadata.jsonl describes `split`.

    `data_dir/<split>/metadata.jsonl` is used when it exists, as in the Hugging Face
    imagefolder layout. Otherwise `data_dir/metadata.jsonl` serves every split, and
    a warning is logged because train and test then contain the same images.
    """
    if split:
        split_dir = os.path.join(data_dir, split)
        if os.path.isfile(os.path.join(split_dir, METADATA_FILE)):
            return split_dir
    if os.path.isfile(os.path.join(data_dir, METADATA_FILE)):
        if split:
            logging.warning("folder: no %s; split %r reads the whole folder %s.",
                            os.path.join(data_dir, split, METADATA_FILE), split, data_dir)
        return data_dir
    expected = os.path.join(data_dir, METADATA_FILE)
    if split:
        expected = f"{os.path.join(data_dir, split, METADATA_FILE)} or {expected}"
    raise FileNotFoundError(
        f"{expected} not found. Each line of metadata.jsonl must be a JSON object with "
        '"file_name", "text" (a caption or a list of captions) and optionally "class_id".'
    )


def _captions_of(value, location: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{location}: \"text\" must be a string or a list of strings, "
                         f"got {value!r}.")
    captions = []
    for item in value:
        # A caption string may contain several captions on separate lines, as in a
        # caption file. parse_captions strips them and drops empty lines.
        captions.extend(utils.parse_captions(item.encode("utf-8"))[0])
    return captions


def _parse_metadata(path: str) -> dict:
    """Return {file_name: [class_id, captions]} in file order.

    Several lines with the same file_name add their captions to one record.
    """
    entries: dict = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            location = f"{path} line {line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{location} is not valid JSON: {error}.") from error
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise ValueError(f"{location} needs a \"file_name\" string, got {line.strip()!r}.")
            class_value = row.get("class_id", 0)
            if isinstance(class_value, bool) or not isinstance(class_value, (int, str)):
                raise ValueError(f"{location}: \"class_id\" must be an integer, "
                                 f"got {class_value!r}.")
            class_id = utils.parse_class_number(class_value, location)
            captions = _captions_of(row.get("text"), location)
            file_name = row["file_name"]
            if file_name in entries:
                if entries[file_name][0] != class_id:
                    raise ValueError(f"{location}: {file_name!r} has class_id {class_id} "
                                     f"here but {entries[file_name][0]} on an earlier line.")
                entries[file_name][1].extend(captions)
            else:
                entries[file_name] = [class_id, captions]
    return entries


def read_folder(data_dir, split: Optional[str] = None, skips: Optional[SkipReport] = None,
                validate_images: bool = False) -> list[ImageRecord]:
    """Read an image folder with a `metadata.jsonl` file.

    Each line is {"file_name": path relative to the metadata file, "text": a caption
    or a list of captions, optional "class_id": integer, default 0}.

    Args:
      data_dir: folder with metadata.jsonl, or with one <split>/ folder per split.
      split: split folder name such as "train" or "test"; None reads data_dir itself.
      skips: receives (file_name, reason) for every listed image left out.
      validate_images: decode every image and skip bad ones (slow: reads each file).

    Returns:
      One record per file_name, named by its file_name, in file order.
    """
    data_dir = os.fspath(data_dir)
    root = find_metadata(data_dir, split)
    entries = _parse_metadata(os.path.join(root, METADATA_FILE))

    tally = utils.SplitTally("folder", split, {
        utils.IMAGE_NOT_FOUND: root,
        utils.CAPTION_NOT_FOUND: root,
    })
    records = []
    for file_name, (class_id, captions) in entries.items():
        image_path = os.path.join(root, file_name)
        if not os.path.isfile(image_path):
            tally.skip(file_name, utils.IMAGE_NOT_FOUND)
            continue
        if not captions:
            tally.skip(file_name, utils.NO_CAPTIONS)
            continue
        if not utils.validate_image(tally, file_name, image_path, validate_images):
            continue
        records.append(ImageRecord(
            name=file_name,
            image_path=image_path,
            captions=tuple(captions),
            class_id=class_id,
        ))
    return tally.finish(records, len(entries), skips)
