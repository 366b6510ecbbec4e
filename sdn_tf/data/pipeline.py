"""The training input pipeline: decoded images plus one caption embedding each.

One epoch visits every (image, caption) pair once, in a fresh random order,
as the released SDN code did. Images are decoded and resized once, in
parallel, and kept in memory as uint8 (CUB at 224x224 takes about 1.3 GB);
each step then gathers a batch of images and their caption embeddings.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from sdn_tf.data.records import ImageRecord


def decode_and_resize(encoded: tf.Tensor, image_size: int, bbox=None) -> tf.Tensor:
    """Decode JPEG/PNG/GIF/BMP bytes to uint8 RGB [S, S, 3].

    The whole image is resized straight to S x S without keeping the aspect
    ratio, as SDN does. With `bbox` = (x, y, w, h) the image is first cropped
    to 1.5 times the box around its centre, the StackGAN convention for CUB.
    Greyscale and CMYK images become RGB (decode_image with channels=3).
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if bbox is not None:
        image = _crop_around_box(image, bbox)
    return _resize_to_uint8(image, image_size)


def _resize_to_uint8(image: tf.Tensor, image_size: int) -> tf.Tensor:
    image = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _crop_around_box(image: tf.Tensor, bbox) -> tf.Tensor:
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    box = tf.cast(tf.convert_to_tensor(bbox), tf.float32)
    x, y, w, h = box[0], box[1], box[2], box[3]
    half = tf.cast(tf.maximum(w, h) * 0.75, tf.int32)
    centre_x = tf.cast(x + w / 2, tf.int32)
    centre_y = tf.cast(y + h / 2, tf.int32)
    top = tf.maximum(0, centre_y - half)
    bottom = tf.minimum(height, centre_y + half)
    left = tf.maximum(0, centre_x - half)
    right = tf.minimum(width, centre_x + half)
    return image[top:bottom, left:right]


def load_images(records: Sequence[ImageRecord], image_size: int, crop_to_bbox: bool = False,
                ) -> np.ndarray:
    """Decode every record's image once: uint8 [N, S, S, 3], in record order.

    Raises:
      ValueError: naming the file, when an image cannot be decoded. Readers
        skip unreadable files beforehand when asked to validate them.
    """
    if not records:
        raise ValueError("No images to load: the split is empty. Check --dataset and --data_dir.")
    # Records read from a folder written by tools/prepare_dataset.py name a TFRecord
    # shard and a position in it instead of an image file.
    from sdn_tf.data import tfrecords  # Imported here because tfrecords imports this module.

    if any(tfrecords.is_tfrecord_record(record) for record in records):
        return tfrecords.load_images(records, image_size, crop_to_bbox)
    paths = [record.image_path for record in records]
    boxes = [record.bbox if (crop_to_bbox and record.bbox) else (0, 0, 0, 0) for record in records]
    use_box = [bool(crop_to_bbox and record.bbox) for record in records]

    def load(path, box, has_box):
        encoded = tf.io.read_file(path)
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.cond(has_box, lambda: _crop_around_box(image, box), lambda: image)
        return _resize_to_uint8(image, image_size)

    dataset = tf.data.Dataset.from_tensor_slices(
        (paths, tf.constant(boxes, tf.float32), use_box)
    ).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    images = np.empty((len(records), image_size, image_size, 3), np.uint8)
    index = 0
    iterator = iter(dataset)
    while index < len(records):
        try:
            images[index] = next(iterator).numpy()
        except tf.errors.OpError as error:
            raise ValueError(
                f"Could not decode image {paths[index]!r} ({error.message.strip()}). "
                "Remove or replace the file, or prepare the dataset with "
                "tools/prepare_dataset.py, which skips unreadable images and lists them."
            ) from None
        index += 1
    logging.info("Decoded %d images at %dx%d.", len(records), image_size, image_size)
    return images


def caption_pairs(records: Sequence[ImageRecord]) -> tuple:
    """Return (image_index, caption_index) arrays covering every caption once."""
    image_index = []
    caption_index = []
    for i, record in enumerate(records):
        for j in range(len(record.captions)):
            image_index.append(i)
            caption_index.append(j)
    return np.asarray(image_index, np.int32), np.asarray(caption_index, np.int32)


def pair_dataset(images: np.ndarray, embeddings: np.ndarray, pair_image_index: np.ndarray,
                 batch_size: int, seed: int, shuffle: bool = True,
                 drop_remainder: bool = True, start_step: int = 0,
                 with_image_index: bool = False) -> tf.data.Dataset:
    """Build batches of (uint8 images [B, S, S, 3], float32 embeddings [B, D]).

    With `with_image_index`, each batch also contains the int64 row of each
    image in `images` [B], for looking up per-image values such as the
    teacher's cached taps.

    `embeddings` has one row per (image, caption) pair, aligned with
    `pair_image_index`. The dataset repeats forever; each pass over it is one
    epoch in a new order drawn from `seed`. `start_step` skips the batches a
    resumed run has already trained on, so its data order matches an
    uninterrupted run.
    """
    if len(pair_image_index) < batch_size and drop_remainder:
        raise ValueError(
            f"The split has {len(pair_image_index)} (image, caption) pairs, fewer than "
            f"--batch_size={batch_size}. Lower --batch_size or use more data."
        )
    image_table = tf.constant(images)
    embedding_table = tf.constant(embeddings.astype(np.float32))
    dataset = tf.data.Dataset.range(len(pair_image_index))
    if shuffle:
        dataset = dataset.shuffle(len(pair_image_index), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=drop_remainder)
    # Skipping index batches is cheap: no image is gathered for them.
    dataset = dataset.skip(start_step)
    pair_to_image = tf.constant(pair_image_index)

    def gather(pairs):
        image_index = tf.gather(pair_to_image, pairs)
        batch = (tf.gather(image_table, image_index), tf.gather(embedding_table, pairs))
        return batch + (image_index,) if with_image_index else batch

    return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
