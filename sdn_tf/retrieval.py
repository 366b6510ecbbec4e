"""Approximate sample retrieval: the training images nearest to each generated image.

Yuan & Peng (ACM MM 2018, section 4.6) show that SDN's images are not copies
of training images by listing, for generated images, the most similar
training images. Here similarity is the cosine similarity of teacher
features: one tap of the frozen VGG19 (pool5 by default), averaged over its
spatial positions, so each image becomes one vector of that tap's channels.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

DEFAULT_TAP = "pool5"
DEFAULT_K = 5
MIN_CELL = 128  # pixels per image in the figure; smaller images are enlarged
TEXT_HEIGHT = 28  # pixels under each image for its label


def tap_features(images: np.ndarray, teacher, preset: str, tap: str = DEFAULT_TAP,
                 batch_size: int = 32) -> np.ndarray:
    """Return the spatial mean of one teacher tap for uint8 RGB images [N, S, S, 3]: float32 [N, C].

    `teacher` is a model from `sdn_tf.teacher.build_teacher` at the images'
    size, and `preset` the input convention it was built with.
    """
    import tensorflow as tf

    from sdn_tf.teacher import TAP_NAMES, rgb_to_teacher_space

    if tap not in TAP_NAMES:
        raise ValueError(f"Unknown teacher tap {tap!r}; use one of {', '.join(TAP_NAMES)}.")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB [N, S, S, 3], got dtype {images.dtype} "
                         f"and shape {images.shape}.")

    @tf.function(reduce_retracing=True)
    def features_of(batch):
        taps = teacher(rgb_to_teacher_space(tf.cast(batch, tf.float32), preset),
                       training=False)
        return tf.reduce_mean(tf.cast(taps[tap], tf.float32), axis=[1, 2])

    parts = []
    start_time = time.perf_counter()
    for start in range(0, len(images), batch_size):
        parts.append(features_of(images[start:start + batch_size]).numpy())
    logging.info("Teacher %s features of %d images (%.1f images/s).", tap, len(images),
                 len(images) / max(time.perf_counter() - start_time, 1e-9))
    return np.concatenate(parts).astype(np.float32, copy=False)


def nearest_neighbours(queries: np.ndarray, gallery: np.ndarray,
                       k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices int64 [Q, k], similarities float64 [Q, k]) of the k most similar gallery rows.

    Similarity is cosine; a zero vector has similarity 0 with everything.
    Neighbours are ordered from most to least similar, ties by gallery index.

    Raises:
      ValueError: the feature sizes differ, or k exceeds the gallery size.
    """
    queries = np.asarray(queries, np.float64)
    gallery = np.asarray(gallery, np.float64)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be "
                         "[Q, D] and [G, D] with the same D.")
    if not 1 <= k <= len(gallery):
        raise ValueError(f"k={k} must be between 1 and the gallery size, {len(gallery)}.")
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    gallery = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    similarity = queries @ gallery.T
    # A stable sort of the negated similarity keeps equal values in gallery order.
    indices = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return indices.astype(np.int64), np.take_along_axis(similarity, indices, axis=1)


def retrieve(query_images: np.ndarray, gallery_images: np.ndarray, teacher, preset: str,
             tap: str = DEFAULT_TAP, k: int = DEFAULT_K,
             batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Return the k gallery images nearest to each query image, as `nearest_neighbours` does.

    Both image sets are uint8 RGB at the teacher's input size.
    """
    query_features = tap_features(query_images, teacher, preset, tap, batch_size)
    gallery_features = tap_features(gallery_images, teacher, preset, tap, batch_size)
    return nearest_neighbours(query_features, gallery_features, k)


def _enlarge(image: np.ndarray, cell: int) -> Image.Image:
    picture = Image.fromarray(image)
    if picture.size != (cell, cell):
        picture = picture.resize((cell, cell), Image.NEAREST)
    return picture


def draw_retrieval_figure(query_images: np.ndarray, gallery_images: np.ndarray,
                          indices: np.ndarray, similarities: np.ndarray,
                          captions: Optional[Sequence[str]] = None,
                          min_cell: int = MIN_CELL) -> Image.Image:
    """Draw one row per query: the generated image, then its nearest gallery images.

    Each neighbour is labelled with its rank, its similarity to 4 decimals
    (teacher features are non-negative after ReLU, so cosines of unrelated
    images are often above 0.99) and its gallery index. The query is
    labelled "generated" and the start of its caption. Images
    smaller than `min_cell` pixels are enlarged with nearest-neighbour
    sampling so that pixels stay visible.
    """
    count, k = indices.shape
    if len(query_images) != count or similarities.shape != indices.shape:
        raise ValueError(f"got {len(query_images)} queries, indices {indices.shape} and "
                         f"similarities {similarities.shape}; they must agree.")
    size = query_images.shape[1]
    cell = max(size, min_cell)
    gap = 12  # separates the generated image from its neighbours
    width = cell * (k + 1) + gap
    sheet = Image.new("RGB", (width, count * (cell + TEXT_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    characters = max(8, cell // 6)
    for row in range(count):
        top = row * (cell + TEXT_HEIGHT)
        sheet.paste(_enlarge(query_images[row], cell), (0, top))
        label = "generated"
        if captions is not None:
            label += "\n" + captions[row][:characters]
        draw.text((2, top + cell + 1), label, fill="black", font=font)
        for rank in range(k):
            left = gap + cell * (rank + 1)
            index = int(indices[row, rank])
            sheet.paste(_enlarge(gallery_images[index], cell), (left, top))
            draw.text((left + 2, top + cell + 1),
                      f"#{rank + 1} cos {similarities[row, rank]:.4f}\ntrain {index}",
                      fill="black", font=font)
    return sheet

