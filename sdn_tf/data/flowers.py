"""Reader for Oxford-102 flowers with the Reed et al. (2016) captions."""

from __future__ import annotations

import csv
import glob
import os
import posixpath
from typing import Iterable, Optional

from absl import logging

from sdn_tf.data import reader_utils as utils
from sdn_tf.data.records import ImageRecord, SkipReport

SPLITS = ("train", "test")
NUM_CLASSES = 102

# Reed et al. split the 102 classes into 82 train+val and 20 test classes and list
# them in trainvalclasses.txt and testclasses.txt, one "class_000LL" per line.
CLASS_LIST_FILES = {"train": "trainvalclasses.txt", "test": "testclasses.txt"}
REED_CLASS_COUNTS = {"train": 82, "test": 20}

EMBEDDINGS_FILE = "char-CNN-RNN-embeddings.pickle"


def image_key(entry: str) -> str:
    """Return the Oxford file stem, such as "image_06734", of a file list entry.

    StackGAN's flowers filenames.pickle lists "jpg/image_06734"; other copies list
    "image_06734", "class_00001/image_06734" or keep the ".jpg" suffix.
    """
    stem = posixpath.basename(entry.replace("\\", "/"))
    return stem[:-4] if stem.lower().endswith(".jpg") else stem


def caption_path(caption_dir: str, key: str, class_id: int) -> str:
    return os.path.join(caption_dir, f"class_{class_id:05d}", key + ".txt")


def _read_class_list(path: str) -> list[int]:
    with open(path, encoding="utf-8") as f:
        return utils.parse_class_numbers([line for line in f if line.strip()], path)


def _split_classes(data_dir: str, split: str, train_classes, test_classes) -> set:
    """Return the class numbers of `split` when no filenames.pickle exists.

    Explicit class lists win over trainvalclasses.txt / testclasses.txt in data_dir.
    When only one split's classes are known, the other split gets the remaining
    classes of 1..102, which reproduces Reed's 82/20 split from either file alone.
    """
    lists = {
        "train": None if train_classes is None else
        set(utils.parse_class_numbers(train_classes, "train_classes")),
        "test": None if test_classes is None else
        set(utils.parse_class_numbers(test_classes, "test_classes")),
    }
    for name, filename in CLASS_LIST_FILES.items():
        path = os.path.join(data_dir, filename)
        if lists[name] is None and os.path.isfile(path):
            lists[name] = set(_read_class_list(path))
    if lists["train"] is None and lists["test"] is None:
        raise FileNotFoundError(
            f"No split definition for flowers in {data_dir}: expected "
            "train/filenames.pickle and test/filenames.pickle (StackGAN), "
            "trainvalclasses.txt / testclasses.txt (Reed et al.), or the "
            "train_classes / test_classes arguments."
        )
    all_classes = set(range(1, NUM_CLASSES + 1))
    for name, classes in lists.items():
        outside = sorted(classes - all_classes) if classes is not None else []
        if outside:
            raise ValueError(f"Invalid flowers {name} classes {outside}: Oxford-102 "
                             f"classes are 1..{NUM_CLASSES}.")
    if lists["train"] is None:
        lists["train"] = all_classes - lists["test"]
    if lists["test"] is None:
        lists["test"] = all_classes - lists["train"]
    shared = sorted(lists["train"] & lists["test"])
    if shared:
        raise ValueError(f"Flowers train and test classes overlap in {shared}. Give each "
                         "class to one split only, because the splits must be class-disjoint.")
    classes = lists[split]
    if len(classes) != REED_CLASS_COUNTS[split]:
        logging.info("flowers %s: %d classes (Reed et al. use %d).",
                     split, len(classes), REED_CLASS_COUNTS[split])
    return classes


def load_image_labels(data_dir: str, caption_dir: str) -> tuple[dict, dict]:
    """Map each image key to its 1-based Oxford class, and class ids to class names.

    Sources, first found wins: `imagelabels.csv` (columns image, label and
    optionally class_name), the dataset's own `imagelabels.mat` (labels[i] is the
    class of image_{i+1:05d}), or the caption files `class_000LL/image_NNNNN.txt`.
    """
    csv_path = os.path.join(data_dir, "imagelabels.csv")
    mat_path = os.path.join(data_dir, "imagelabels.mat")
    labels, class_names = {}, {}
    if os.path.isfile(csv_path):
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"image", "label"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{csv_path} must have the columns image and label, "
                                 f"found {reader.fieldnames}.")
            for row in reader:
                class_id = utils.parse_class_number(row["label"], csv_path)
                labels[image_key(row["image"])] = class_id
                if row.get("class_name"):
                    class_names[class_id] = row["class_name"]
        return labels, class_names
    if os.path.isfile(mat_path):
        import scipy.io  # Only needed for this file format.

        values = scipy.io.loadmat(mat_path)["labels"].reshape(-1)
        return {f"image_{index + 1:05d}": int(value) for index, value in enumerate(values)}, {}
    for path in glob.glob(os.path.join(caption_dir, "class_*", "image_*.txt")):
        class_folder = os.path.basename(os.path.dirname(path))
        key = os.path.splitext(os.path.basename(path))[0]
        labels[key] = utils.parse_class_number(class_folder, path)
    if not labels:
        raise FileNotFoundError(
            f"No image labels for flowers: expected {csv_path}, {mat_path} or caption "
            f"files {caption_dir}/class_000LL/image_NNNNN.txt."
        )
    return labels, class_names


def _list_split(data_dir: str, split: str, caption_dir: str, train_classes,
                test_classes) -> tuple[list, list, dict, Optional[str]]:
    """Return the split's image keys, class ids, class names and filenames.pickle path."""
    split_dir = os.path.join(data_dir, split)
    names_path = os.path.join(split_dir, "filenames.pickle")
    if os.path.isfile(names_path):
        if train_classes is not None or test_classes is not None:
            raise ValueError(f"{names_path} defines the split, so train_classes and "
                             "test_classes must not be given.")
        keys = [image_key(entry) for entry in utils.load_name_list(names_path)]
        class_info_path = os.path.join(split_dir, "class_info.pickle")
        if not os.path.isfile(class_info_path):
            raise FileNotFoundError(
                f"{class_info_path} not found: flower file names do not contain their "
                "class, which the caption path class_000LL/ needs."
            )
        class_ids = utils.load_class_ids(class_info_path, len(keys), names_path)
        return keys, class_ids, {}, names_path

    classes = _split_classes(data_dir, split, train_classes, test_classes)
    labels, class_names = load_image_labels(data_dir, caption_dir)
    keys = sorted(key for key, class_id in labels.items() if class_id in classes)
    return keys, [labels[key] for key in keys], class_names, None


def read_flowers(data_dir, split: str, caption_dir=None, skips: Optional[SkipReport] = None,
                 train_classes: Optional[Iterable] = None,
                 test_classes: Optional[Iterable] = None,
                 use_embeddings: bool = False,
                 validate_images: bool = False) -> list[ImageRecord]:
    """Read one class-disjoint split of Oxford-102 flowers.

    Images are `data_dir/jpg/image_NNNNN.jpg` and captions
    `caption_dir/class_000LL/image_NNNNN.txt` (caption_dir defaults to
    data_dir/text_c10). The split comes from the first source found:
    `<split>/filenames.pickle` with `class_info.pickle` (StackGAN release), the
    train_classes / test_classes arguments (class numbers or "class_000LL" names),
    or Reed's `trainvalclasses.txt` / `testclasses.txt` in data_dir. Without a pickle,
    images are listed from `imagelabels.csv`, `imagelabels.mat` or the caption files.

    Args:
      data_dir: the dataset root described above.
      split: "train" (Reed: 82 classes) or "test" (Reed: 20 classes).
      caption_dir: folder holding the class_000LL/ caption folders.
      skips: receives (name, reason) for every listed image left out.
      train_classes, test_classes: class numbers of each split; when only one is
        given, the other split gets the remaining classes.
      use_embeddings: attach `<split>/char-CNN-RNN-embeddings.pickle` rows.
      validate_images: decode every image and skip bad ones (slow: reads each file).

    Returns:
      Records named by the Oxford file stem ("image_06734"). Their attributes hold
      the class name when imagelabels.csv provides one.
    """
    utils.check_split(split, SPLITS, "flowers")
    data_dir = os.fspath(data_dir)
    caption_dir = os.fspath(caption_dir) if caption_dir is not None else os.path.join(
        data_dir, "text_c10")
    if not os.path.isdir(caption_dir):
        raise FileNotFoundError(
            f"Caption folder not found: {caption_dir}. Put Reed et al.'s text_c10/ "
            "under data_dir or pass caption_dir."
        )
    keys, class_ids, class_names, names_path = _list_split(
        data_dir, split, caption_dir, train_classes, test_classes)

    embeddings = None
    if use_embeddings:
        if names_path is None:
            raise ValueError("use_embeddings=True needs the StackGAN layout: "
                             f"{os.path.join(data_dir, split, 'filenames.pickle')} "
                             "lists the images in embedding order.")
        embeddings = utils.load_embeddings(
            os.path.join(data_dir, split, EMBEDDINGS_FILE), len(keys))

    image_dir = os.path.join(data_dir, "jpg")
    logging.info("flowers %s: %d listed images from %d classes, captions from %s.",
                 split, len(keys), len(set(class_ids)), caption_dir)
    tally = utils.SplitTally("flowers", split, {
        utils.IMAGE_NOT_FOUND: image_dir,
        utils.CAPTION_NOT_FOUND: caption_dir,
    })
    records = []
    for index, (key, class_id) in enumerate(zip(keys, class_ids)):
        image_path = os.path.join(image_dir, key + ".jpg")
        text_path = caption_path(caption_dir, key, class_id)
        row = embeddings[index] if embeddings is not None else None
        item = utils.read_listed_item(tally, key, image_path, text_path, row, validate_images)
        if item is None:
            continue
        captions, record_embeddings = item
        class_name = class_names.get(class_id)
        records.append(ImageRecord(
            name=key,
            image_path=image_path,
            captions=tuple(captions),
            class_id=class_id,
            embeddings=record_embeddings,
            attributes={"class_name": class_name} if class_name else None,
        ))
    return tally.finish(records, len(keys), skips)
