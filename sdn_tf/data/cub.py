"""Reader for CUB-200-2011 in the StackGAN layout, with Reed et al. (2016) captions."""

from __future__ import annotations

import os
from typing import Optional

from absl import logging

from sdn_tf.data import reader_utils as utils
from sdn_tf.data.records import ImageRecord, SkipReport

SPLITS = ("train", "test")

# Caption folders, searched in this order. StackGAN ships Reed's captions as
# `text_c10`, and AttnGAN and DF-GAN ship the same captions as `text`.
CAPTION_FOLDERS = ("text_c10", "text")

EMBEDDINGS_FILE = "char-CNN-RNN-embeddings.pickle"


def find_caption_dir(data_dir: str, caption_dir: Optional[str]) -> str:
    """Return `caption_dir` if given, else the first of text_c10/ and text/ under data_dir."""
    if caption_dir is not None:
        caption_dir = os.fspath(caption_dir)
        if not os.path.isdir(caption_dir):
            raise FileNotFoundError(f"Caption folder not found: {caption_dir}.")
        return caption_dir
    for folder in CAPTION_FOLDERS:
        candidate = os.path.join(data_dir, folder)
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(
        f"No caption folder in {data_dir}: expected text_c10/ (StackGAN) or text/ "
        "(AttnGAN, DF-GAN) with one <image name>.txt per image. Pass caption_dir to "
        "use a folder elsewhere."
    )


def load_cub_bboxes(cub_dir: str) -> dict:
    """Map each image name (without .jpg) to its (x, y, width, height) box in pixels.

    Joins CUB's `images.txt` ("<id> <class folder>/<file>.jpg") with
    `bounding_boxes.txt` ("<id> <x> <y> <width> <height>"). Returns an empty dict
    when either file is absent, because the boxes are only needed for StackGAN's crop.
    """
    images_path = os.path.join(cub_dir, "images.txt")
    boxes_path = os.path.join(cub_dir, "bounding_boxes.txt")
    if not (os.path.isfile(images_path) and os.path.isfile(boxes_path)):
        logging.info("No %s or %s: records get no bounding boxes.", images_path, boxes_path)
        return {}

    names_by_id = {}
    with open(images_path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) == 2:
                names_by_id[fields[0]] = _strip_jpg(fields[1])

    boxes = {}
    with open(boxes_path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                raise ValueError(
                    f"{boxes_path} line {line_number} has {len(fields)} fields, "
                    "expected '<image id> <x> <y> <width> <height>'."
                )
            name = names_by_id.get(fields[0])
            if name is not None:
                boxes[name] = tuple(float(value) for value in fields[1:])
    return boxes


def _strip_jpg(name: str) -> str:
    return name[:-4] if name.lower().endswith(".jpg") else name


def _class_from_name(name: str, names_path: str) -> int:
    # CUB class folders start with the 1-based class number: "001.Black_footed_Albatross".
    prefix = name.split(".", 1)[0]
    try:
        return int(prefix)
    except ValueError:
        raise ValueError(
            f"Cannot read a class number from {name!r} in {names_path} and there is no "
            "class_info.pickle next to it."
        ) from None


def read_cub(data_dir, split: str, caption_dir=None, use_embeddings: bool = False,
             skips: Optional[SkipReport] = None,
             validate_images: bool = False) -> list[ImageRecord]:
    """Read one split of CUB-200-2011 from the StackGAN layout.

    Layout under data_dir: `<split>/filenames.pickle`, `<split>/class_info.pickle`,
    optionally `<split>/char-CNN-RNN-embeddings.pickle`, images in
    `CUB_200_2011/images/<name>.jpg`, boxes in `CUB_200_2011/bounding_boxes.txt`,
    captions in `text_c10/<name>.txt` or `text/<name>.txt`.

    Args:
      data_dir: the dataset root described above.
      split: "train" (8,855 images, 150 classes) or "test" (2,933 images, 50 classes).
      caption_dir: folder of `<name>.txt` caption files; found under data_dir if None.
      use_embeddings: attach the StackGAN char-CNN-RNN embeddings to each record.
      skips: receives (name, reason) for every listed image left out.
      validate_images: decode every image and skip bad ones (slow: reads each file).

    Returns:
      One record per listed image with an image file and at least one caption, in
      filenames.pickle order.

    Raises:
      FileNotFoundError: filenames.pickle is missing, or more than half of the listed
        images lack an image or caption file.
      ValueError: a pickle is damaged or the files of the split disagree.
    """
    utils.check_split(split, SPLITS, "cub")
    data_dir = os.fspath(data_dir)
    split_dir = os.path.join(data_dir, split)
    names_path = os.path.join(split_dir, "filenames.pickle")
    if not os.path.isfile(names_path):
        raise FileNotFoundError(
            f"{names_path} not found. data_dir must be the StackGAN CUB folder, which "
            f"contains train/ and test/ with filenames.pickle and CUB_200_2011/images/."
        )
    names = [_strip_jpg(name) for name in utils.load_name_list(names_path)]

    class_info_path = os.path.join(split_dir, "class_info.pickle")
    if os.path.isfile(class_info_path):
        class_ids = utils.load_class_ids(class_info_path, len(names), names_path)
    else:
        logging.info("No %s: class ids come from the class folder prefix.", class_info_path)
        class_ids = [_class_from_name(name, names_path) for name in names]

    embeddings = None
    if use_embeddings:
        embeddings = utils.load_embeddings(os.path.join(split_dir, EMBEDDINGS_FILE), len(names))

    caption_dir = find_caption_dir(data_dir, caption_dir)
    cub_dir = os.path.join(data_dir, "CUB_200_2011")
    image_dir = os.path.join(cub_dir, "images")
    boxes = load_cub_bboxes(cub_dir)
    logging.info("cub %s: %d listed images, captions from %s.", split, len(names), caption_dir)

    tally = utils.SplitTally("cub", split, {
        utils.IMAGE_NOT_FOUND: image_dir,
        utils.CAPTION_NOT_FOUND: caption_dir,
    })
    records = []
    for index, (name, class_id) in enumerate(zip(names, class_ids)):
        image_path = os.path.join(image_dir, name + ".jpg")
        caption_path = os.path.join(caption_dir, name + ".txt")
        row = embeddings[index] if embeddings is not None else None
        item = utils.read_listed_item(tally, name, image_path, caption_path, row,
                                      validate_images)
        if item is None:
            continue
        captions, record_embeddings = item
        records.append(ImageRecord(
            name=name,
            image_path=image_path,
            captions=tuple(captions),
            class_id=class_id,
            embeddings=record_embeddings,
            bbox=boxes.get(name),
        ))
    return tally.finish(records, len(names), skips)
