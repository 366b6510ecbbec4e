"""Dataset readers that turn the layouts users already have into ImageRecord lists.

- `read_cub`: CUB-200-2011 in the StackGAN layout (module `sdn_tf.data.cub`).
- `read_flowers`: Oxford-102 with Reed et al. captions (module `sdn_tf.data.flowers`).
- `read_folder`: any folder with a Hugging Face style metadata.jsonl.
- `read_dataset`: dispatch on a dataset name, as the command-line tools do.
- `read_tfds_images`: images kept in TensorFlow Datasets, to join with captions.

Every reader records the items it leaves out in an optional SkipReport, logs a
summary with counts per reason, and raises when more than half of the items are
missing files, which usually means a wrong data_dir.
"""

from __future__ import annotations

import importlib
from typing import Iterator, Optional

import numpy as np
from absl import logging

from sdn_tf.data.cub import read_cub
from sdn_tf.data.flowers import read_flowers
from sdn_tf.data.folder import read_folder
from sdn_tf.data.reader_utils import check_image_file, parse_captions, read_caption_file

__all__ = [
    "DATASETS",
    "check_image_file",
    "parse_captions",
    "read_caption_file",
    "read_cub",
    "read_dataset",
    "read_flowers",
    "read_folder",
    "read_tfds_images",
]

_READERS = {"cub": read_cub, "flowers": read_flowers, "folder": read_folder}

# "shapes" is a generated data set provided by sdn_tf.data.shapes.
DATASETS = tuple(_READERS) + ("shapes",)
_SHAPES_IGNORED_KWARGS = ("skips", "validate_images")


def _read_shapes(data_dir, split):
    try:
        shapes = importlib.import_module("sdn_tf.data.shapes")
    except ModuleNotFoundError as error:
        if error.name != "sdn_tf.data.shapes":
            raise
        raise ValueError("Dataset 'shapes' is not available in this installation: the "
                         "module sdn_tf.data.shapes is missing.") from error
    return shapes.load_shapes_split(shapes.open_shapes(data_dir), split)


def read_dataset(name: str, data_dir, split: Optional[str], **kwargs) -> list:
    """Read `split` of the dataset called `name` ("cub", "flowers", "folder" or "shapes").

    Keyword arguments go to the matching reader (`read_cub`, `read_flowers`,
    `read_folder`). For "shapes", data_dir is where the generated images are
    stored (None for the module's default). Generated images are never missing or
    damaged, so "shapes" ignores skips and validate_images and rejects other
    keyword arguments.

    Raises:
      ValueError: unknown dataset name; the message lists the choices.
    """
    key = name.lower() if isinstance(name, str) else name
    if key == "shapes":
        unsupported = sorted(set(kwargs) - set(_SHAPES_IGNORED_KWARGS))
        if unsupported:
            raise TypeError(f"read_dataset('shapes') does not accept {unsupported}.")
        return _read_shapes(data_dir, split)
    if key not in _READERS:
        raise ValueError(f"Unknown dataset {name!r}: choose one of {', '.join(DATASETS)}.")
    return _READERS[key](data_dir, split, **kwargs)


# TensorFlow Datasets names, the feature that contains each example's file name, and
# how many trailing path parts form the record name used by the caption readers.
_TFDS_DATASETS = {
    "caltech_birds2011": ("image/filename", 2),  # ".../001.Black_footed_Albatross/X.jpg"
    "oxford_flowers102": ("file_name", 1),  # "image_00001.jpg"
}


def read_tfds_images(name: str, split: str, data_dir=None
                     ) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yield (record name, uint8 image [H, W, 3], 1-based class id) from TensorFlow Datasets.

    The record name matches `read_cub` ("001.Black_footed_Albatross/<file stem>") or
    `read_flowers` ("image_00001"), so captions can be joined by name, e.g. from
    `text_c10/<name>.txt`. TFDS labels are 0-based and are shifted to the 1-based
    class numbers of class_info.pickle and the class_000LL caption folders.
    The TFDS splits are the datasets' own (CUB's per-image train/test, Oxford's
    train/validation/test), not the class-disjoint text-to-image splits, so select
    images by the names of `read_cub` / `read_flowers` records.
    Nothing is downloaded: the data must already be prepared in data_dir.
    """
    if name not in _TFDS_DATASETS:
        raise ValueError(f"Unsupported TensorFlow Datasets name {name!r}: choose one of "
                         f"{', '.join(_TFDS_DATASETS)}.")
    import tensorflow_datasets as tfds  # Imported here: it loads TensorFlow.

    file_feature, name_parts = _TFDS_DATASETS[name]
    dataset = tfds.load(name, split=split, data_dir=data_dir, download=False,
                        shuffle_files=False)
    logging.info("Reading %s split %s from TensorFlow Datasets.", name, split)
    for example in tfds.as_numpy(dataset):
        file_name = example[file_feature].decode("utf-8").replace("\\", "/")
        record_name = "/".join(file_name.split("/")[-name_parts:])
        if record_name.lower().endswith(".jpg"):
            record_name = record_name[:-4]
        yield record_name, example["image"], int(example["label"]) + 1
