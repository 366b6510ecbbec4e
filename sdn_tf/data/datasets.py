"""One entry point to every dataset reader, used by the training programs."""

from __future__ import annotations

from typing import Optional

from absl import logging

from sdn_tf.data.records import ImageRecord, SkipReport


def class_lists_of(config) -> dict:
    """Return the --train_classes/--test_classes of a training config as load_split's class_lists."""
    return {"train_classes": list(config.train_classes), "test_classes": list(config.test_classes)}


def load_split(dataset: str, data_dir: Optional[str], split: str,
               skips: Optional[SkipReport] = None,
               use_embeddings: bool = False,
               class_lists: Optional[dict] = None) -> list[ImageRecord]:
    """Read one split ("train" or "test") of a dataset as ImageRecords.

    `shapes` is built on first use (in `data_dir`, or the default cache when
    `data_dir` is None); the other datasets read what the user has on disk.
    A `data_dir` that contains a manifest.json of tools/prepare_dataset.py is read
    from its TFRecords, as is `dataset="tfrecord"`. `use_embeddings` also reads
    the StackGAN release's char-CNN-RNN-embeddings.pickle (cub and flowers only).
    `class_lists` ({"train_classes": [...], "test_classes": [...]}) splits
    Oxford-102 by class when it has no filenames.pickle.
    """
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r}; use train or test.")
    from sdn_tf.data import tfrecords

    if dataset == "tfrecord" or tfrecords.is_prepared_folder(data_dir):
        # A folder written by tools/prepare_dataset.py, named by --dataset=tfrecord or
        # recognised by its manifest.json under the name it was prepared from.
        records = tfrecords.load_prepared_split(dataset, data_dir, split, skips)
    elif dataset == "shapes":
        from sdn_tf.data import shapes

        root = shapes.open_shapes(data_dir)
        records = shapes.load_shapes_split(root, split)
    else:
        if not data_dir:
            raise ValueError(f"--dataset={dataset} needs --data_dir, the folder that holds it.")
        from sdn_tf.data import readers

        skips = skips if skips is not None else SkipReport()
        options = {"use_embeddings": True} if use_embeddings else {}
        if use_embeddings and dataset not in ("cub", "flowers"):
            raise ValueError(
                f"--text_embeddings=pickle needs precomputed caption embeddings, which only "
                f"the cub and flowers layouts provide, not --dataset={dataset}. Use "
                "--text_embeddings=encoder with --text_encoder=WORKDIR.")
        class_lists = {key: list(value) for key, value in (class_lists or {}).items() if value}
        if class_lists and dataset != "flowers":
            raise ValueError(
                f"--train_classes and --test_classes apply to --dataset=flowers only, not "
                f"--dataset={dataset}, whose split comes with the data.")
        options.update(class_lists)
        records = readers.read_dataset(dataset, data_dir, split, skips=skips, **options)
        if len(skips):
            logging.warning("Skipped %d items of %s/%s: %s", len(skips), dataset, split,
                            skips.reasons())
    if not records:
        raise ValueError(f"The {split} split of {dataset} at {data_dir!r} is empty.")
    logging.info("Read %d images with %d captions from %s/%s.", len(records),
                 sum(len(r.captions) for r in records), dataset, split)
    return records
