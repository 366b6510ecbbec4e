"""Evaluation of an exported SDN model with the metrics of Table 1 of Yuan & Peng,
"Text-to-image Synthesis via Symmetrical Distillation Networks" (ACM MM 2018).

`evaluate` generates images for every caption of every image of a split (one
image per caption, 29,330 on CUB's test split, as Yuan & Peng evaluated), then
computes:

- Inception score (mean and standard deviation over 10 splits) and FID, on
  Inception-v3 (`sdn_tf.metrics.inception`);
- SSIM and FSIM between each real image and the image generated from each of
  its captions, averaged over these pairs. The real image is resized to the
  model's image size first, as the generator never draws larger images;
- R-precision (R = 1, as in AttnGAN's evaluation) with this project's own
  encoders: the text encoder of the model and the image projection trained
  with it by sdn-train-text;
- colour accuracy, split into seen and unseen (colour, shape) combinations,
  for the `shapes` dataset;
- optionally a figure of each generated image's nearest training images
  (`sdn_tf.retrieval`).

It writes `metrics.json` (values, settings, model information, timings) and
`metrics.md`, a table laid out like that Table 1 with its published rows for
CUB and Oxford-102 beside this model's row.

TensorFlow is imported inside the functions that need it, so the processes
that compute SSIM and FSIM in parallel start without loading it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging

from sdn_tf.metrics.fsim import FSIM_SETTINGS, fsim_and_fsimc
from sdn_tf.metrics.inception import feature_statistics, frechet_distance, inception_score
from sdn_tf.metrics.ssim import SSIM_SETTINGS, ssim

# Names accepted by --skip; they are also the keys of "metrics" in metrics.json.
METRICS = ("is", "fid", "ssim", "fsim", "r_precision", "colour")
SPLITS = ("train", "test")
INCEPTION_SPLITS = 10  # as in the SDN, StackGAN and AttnGAN evaluations
# Xu et al. (AttnGAN, CVPR 2018) rank the true caption among itself and 99 mismatched ones.
R_PRECISION_MISMATCHED = 99
# Largest relative difference tolerated between the teacher features of a
# real image now and when the text encoder was trained: float32 round-off
# from other batch sizes stays far below it, and another teacher far above.
FEATURE_TOLERANCE = 1e-3
METRICS_JSON = "metrics.json"
METRICS_MARKDOWN = "metrics.md"
RETRIEVAL_FIGURE = "retrieval.png"
SAMPLES_FIGURE = "samples.png"
NUM_SAMPLES = 16

# Table 1 of Yuan & Peng, "Text-to-image Synthesis via Symmetrical
# Distillation Networks", ACM MM 2018. The paper reports no FID and no R-precision.
PAPER_TABLE_1 = {
    "cub": {"dataset": "CUB", "is": (6.89, 0.06), "ssim": 0.3160, "fsim": 0.6264},
    "flowers": {"dataset": "Oxford-102", "is": (4.28, 0.09), "ssim": 0.2174, "fsim": 0.6227},
}
DATASET_NAMES = {"cub": "CUB", "flowers": "Oxford-102", "shapes": "shapes", "folder": "folder"}


@dataclasses.dataclass
class EvalConfig:
    """Settings of one sdn-eval run.

    `crop` and `teacher_weights` default to the values in the config.json of
    the sdn-train run that the model was exported from. `max_captions` > 0
    evaluates that many captions, spread evenly over the split, for quick runs.
    """

    model_dir: str
    output_dir: str
    dataset: str = "shapes"
    data_dir: Optional[str] = None
    split: str = "test"
    images_per_caption: int = 1
    max_captions: int = 0
    inception_weights: str = "imagenet"
    inception_hub_features: Optional[str] = None
    skip: Sequence[str] = ()
    splits: int = INCEPTION_SPLITS
    batch_size: int = 32
    workers: int = 0
    crop: Optional[str] = None
    teacher_weights: Optional[str] = None
    retrieval_figure: int = 0
    retrieval_tap: str = "pool5"
    retrieval_k: int = 5
    r_precision_mismatched: int = R_PRECISION_MISMATCHED
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting and its allowed values."""
        unknown = sorted(set(self.skip) - set(METRICS))
        if unknown:
            raise ValueError(f"Unknown metrics {unknown} in skip; choose from {list(METRICS)}.")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not supported; use train or test.")
        if self.crop not in (None, "none", "bbox"):
            raise ValueError(f"crop={self.crop!r}; use none or bbox, or None for the model's.")
        for name in ("images_per_caption", "splits", "batch_size", "retrieval_k",
                     "r_precision_mismatched"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer.")
        for name in ("max_captions", "workers", "retrieval_figure"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative.")
        from sdn_tf.teacher import TAP_NAMES

        if self.retrieval_tap not in TAP_NAMES:
            raise ValueError(f"retrieval_tap={self.retrieval_tap!r} is not a teacher tap; "
                             f"use one of {', '.join(TAP_NAMES)}.")


@dataclasses.dataclass
class CaptionItems:
    """The captions to evaluate, each with the row of its image in the split."""

    record_index: np.ndarray  # int64 [P]
    caption_index: np.ndarray  # int64 [P], position of the caption in its record
    captions: list  # P strings

    def __len__(self) -> int:
        return len(self.captions)


def select_captions(records, max_captions: int = 0) -> CaptionItems:
    """Return every (image, caption) pair in record order, or `max_captions` spread evenly.

    Spreading a quick run's captions over the whole split keeps every class
    represented, which R-precision and the Inception score need.
    """
    record_index, caption_index, captions = [], [], []
    for row, record in enumerate(records):
        for position, caption in enumerate(record.captions):
            record_index.append(row)
            caption_index.append(position)
            captions.append(caption)
    if not captions:
        raise ValueError("The split has no captions to evaluate.")
    chosen = np.arange(len(captions))
    if 0 < max_captions < len(captions):
        chosen = np.unique(np.linspace(0, len(captions) - 1, max_captions).round().astype(int))
    return CaptionItems(np.asarray(record_index, np.int64)[chosen],
                        np.asarray(caption_index, np.int64)[chosen],
                        [captions[i] for i in chosen])


def generate_for_captions(model, captions: Sequence[str], images_per_caption: int = 1,
                          batch_size: int = 32) -> np.ndarray:
    """Generate uint8 images [P, images_per_caption, H, W, 3] in batches, logging images/s.

    The exported model is deterministic (SDN has no noise input), so the k
    images of a caption are the first k of its diverse-synthesis outputs.

    Raises:
      ValueError: images_per_caption exceeds the images the model draws per caption.
    """
    from sdn_tf.generate import generate_images

    count = len(captions)
    start_time = time.perf_counter()
    parts = []
    report_every = max(batch_size, count // 10)
    next_report = report_every
    for start in range(0, count, batch_size):
        images = generate_images(model, captions[start:start + batch_size])
        if images.shape[1] < images_per_caption:
            raise ValueError(
                f"images_per_caption={images_per_caption}, but the model draws "
                f"{images.shape[1]} images per caption (its num_images). Pass "
                f"--images_per_caption={images.shape[1]} or less.")
        parts.append(images[:, :images_per_caption])
        done = start + len(images)
        if done >= next_report or done == count:
            elapsed = max(time.perf_counter() - start_time, 1e-9)
            logging.info("Generated images for %d/%d captions (%.1f images/s).", done, count,
                         done * images_per_caption / elapsed)
            next_report = done + report_every
    return np.concatenate(parts)


# --- Inception score and FID -------------------------------------------------


def describe_inception_weights(weights: str) -> str:
    """Return the metrics.json description of an --inception_weights value."""
    if weights == "random":
        return "random weights (smoke test only; not comparable with published scores)"
    if weights == "imagenet":
        return "ImageNet weights of keras.applications.InceptionV3"
    if os.path.isfile(weights):
        return f"InceptionV3 weights file {os.path.abspath(weights)}"
    return f"TF-Hub model {weights}"


def inception_metrics(generated: np.ndarray, real: np.ndarray, scorer, splits: int,
                      want_is: bool, want_fid: bool) -> dict:
    """Return {"is": ..., "fid": ...} for generated uint8 images [N, H, W, 3].

    FID compares the generated images with the distinct real images they were
    generated for, both at the model's image size. Either entry is
    {"skipped": reason} when it cannot be computed.
    """
    results = {}
    probs, generated_features = _predict_logged(scorer, generated)
    if want_is:
        if len(generated) < splits:
            results["is"] = {"skipped": f"the Inception score needs at least {splits} images "
                                        f"({splits} splits), got {len(generated)}"}
        else:
            mean, std = inception_score(probs, splits)
            results["is"] = {"mean": mean, "std": std, "splits": splits,
                             "num_images": int(len(generated))}
            logging.info("Inception score %.3f +- %.3f over %d images.", mean, std,
                         len(generated))
    if want_fid:
        results["fid"] = _fid(generated_features, real, scorer)
    return results


def _predict_logged(scorer, images: np.ndarray, chunk: int = 256):
    """Run scorer.predict in chunks, logging images/s; return (probs, features or None)."""
    probs, features = [], []
    start_time = time.perf_counter()
    for start in range(0, len(images), chunk):
        chunk_probs, chunk_features = scorer.predict(images[start:start + chunk])
        probs.append(chunk_probs)
        if chunk_features is not None:
            features.append(chunk_features)
        done = min(start + chunk, len(images))
        logging.info("Inception-v3: %d/%d images (%.1f images/s).", done, len(images),
                     done / max(time.perf_counter() - start_time, 1e-9))
    return np.concatenate(probs), (np.concatenate(features) if features else None)


def _fid(generated_features, real, scorer) -> dict:
    if generated_features is None:
        return {"skipped": "the TF-Hub classifier has no pool features; pass "
                           "--inception_hub_features"}
    if len(generated_features) < 2 or len(real) < 2:
        return {"skipped": f"FID needs at least 2 generated and 2 real images, got "
                           f"{len(generated_features)} and {len(real)}"}
    real_features = _predict_logged(scorer, real)[1]
    value = frechet_distance(*feature_statistics(real_features),
                             *feature_statistics(generated_features))
    logging.info("FID %.3f between %d generated and %d real images.", value,
                 len(generated_features), len(real))
    # NOTE: FID is biased upwards for small sets. Below 2048 images (the
    # feature size) the covariances are singular, so compare only runs with equal set sizes.
    return {"value": value, "num_generated": int(len(generated_features)),
            "num_real": int(len(real))}


# --- SSIM and FSIM -----------------------------------------------------------


def _pair_scores(task):
    """Return (ssim, fsim, fsimc, error) lists for one chunk of (real, fake) pairs."""
    pairs, want_ssim, want_fsim = task
    ssim_values, fsim_values, fsimc_values, errors = [], [], [], []
    for real, fake in pairs:
        ssim_values.append(ssim(real, fake) if want_ssim else math.nan)
        if want_fsim:
            try:
                value, value_c = fsim_and_fsimc(real, fake)
            except ValueError as error:  # undefined for two flat images
                value, value_c = math.nan, math.nan
                errors.append(str(error))
            fsim_values.append(value)
            fsimc_values.append(value_c)
    return ssim_values, fsim_values, fsimc_values, errors


def structural_metrics(real: np.ndarray, generated: np.ndarray, record_index: np.ndarray,
                       want_ssim: bool = True, want_fsim: bool = True, workers: int = 1,
                       chunk_size: int = 64) -> dict:
    """Return mean SSIM and FSIM over all (real image, image generated from its caption) pairs.

    `real` is uint8 [R, S, S, 3] and `generated` is uint8 [P, k, S, S, 3].
    Caption p was written for real image `record_index[p]`. Every one of the
    P * k generated images forms a pair with its real image. Pairs for which
    FSIM is undefined (both images flat) are left out of the FSIM mean and
    counted. With workers > 1 the pairs are scored in that many processes.
    """
    count, per_caption = generated.shape[:2]
    pairs = [(real[record_index[p]], generated[p, k])
             for p in range(count) for k in range(per_caption)]
    tasks = [(pairs[start:start + chunk_size], want_ssim, want_fsim)
             for start in range(0, len(pairs), chunk_size)]
    start_time = time.perf_counter()
    ssim_values, fsim_values, fsimc_values, errors = [], [], [], []
    if workers > 1 and len(tasks) > 1:
        # Spawned processes do not inherit TensorFlow's threads, which fork could deadlock.
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(tasks))) as pool:
            results = pool.imap(_pair_scores, tasks)
            results = list(_log_pair_progress(results, len(pairs), chunk_size, start_time))
    else:
        results = list(_log_pair_progress(map(_pair_scores, tasks), len(pairs), chunk_size,
                                          start_time))
    for chunk_ssim, chunk_fsim, chunk_fsimc, chunk_errors in results:
        ssim_values.extend(chunk_ssim)
        fsim_values.extend(chunk_fsim)
        fsimc_values.extend(chunk_fsimc)
        errors.extend(chunk_errors)

    output = {}
    if want_ssim:
        values = np.asarray(ssim_values)
        output["ssim"] = {"mean": float(values.mean()), "std": float(values.std()),
                          "num_pairs": int(len(values))}
    if want_fsim:
        fsim_array = np.asarray(fsim_values)
        defined = ~np.isnan(fsim_array)
        if not defined.any():
            output["fsim"] = {"skipped": f"FSIM is undefined for all {len(pairs)} pairs: "
                                         f"{errors[0]}"}
        else:
            fsimc_array = np.asarray(fsimc_values)[defined]
            output["fsim"] = {"mean": float(fsim_array[defined].mean()),
                              "std": float(fsim_array[defined].std()),
                              "fsimc_mean": float(fsimc_array.mean()),
                              "num_pairs": int(defined.sum()),
                              "undefined_pairs": int((~defined).sum())}
        if errors:
            logging.warning("FSIM is undefined for %d of %d pairs (both images flat); they "
                            "are left out of the mean.", len(errors), len(pairs))
    return output


def _log_pair_progress(results, total, chunk_size, start_time):
    done = 0
    next_report = max(chunk_size, total // 10)
    for result in results:
        done = min(done + chunk_size, total)
        if done >= next_report or done == total:
            logging.info("SSIM/FSIM: %d/%d pairs (%.1f pairs/s).", done, total,
                         done / max(time.perf_counter() - start_time, 1e-9))
            next_report = done + max(chunk_size, total // 10)
        yield result


# --- R-precision -------------------------------------------------------------


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def r_precision(image_embeddings: np.ndarray, caption_embeddings: np.ndarray,
                caption_class_ids: np.ndarray, true_caption: np.ndarray,
                num_mismatched: int = R_PRECISION_MISMATCHED, splits: int = INCEPTION_SPLITS,
                seed: int = 0) -> dict:
    """Return the fraction of images whose own caption ranks first among 1 + n captions.

    Image m is scored by cosine similarity against its true caption
    `true_caption[m]` (a row of `caption_embeddings`) and `num_mismatched`
    captions drawn without replacement from the captions of other classes, as
    AttnGAN's R-precision with R = 1. The true caption must score strictly
    higher than every mismatched one, so ties count as misses. When fewer
    mismatched captions exist, all of them are used and the result records
    the smaller count and the chance level 1 / (1 + count).

    Returns:
      {"value", "std" (over `splits` consecutive parts), "num_images",
      "num_mismatched", "chance"}.

    Raises:
      ValueError: on mismatched shapes, or when no caption of another class exists.
    """
    image_embeddings = np.asarray(image_embeddings)
    caption_embeddings = np.asarray(caption_embeddings)
    caption_class_ids = np.asarray(caption_class_ids)
    true_caption = np.asarray(true_caption, np.int64)
    if image_embeddings.ndim != 2 or caption_embeddings.ndim != 2 or \
            image_embeddings.shape[1] != caption_embeddings.shape[1]:
        raise ValueError(f"image embeddings {image_embeddings.shape} and caption embeddings "
                         f"{caption_embeddings.shape} must be [M, D] and [C, D].")
    if len(true_caption) != len(image_embeddings):
        raise ValueError(f"got {len(image_embeddings)} images but {len(true_caption)} true "
                         "caption indices; pass one per image.")
    if len(caption_class_ids) != len(caption_embeddings):
        raise ValueError(f"got {len(caption_embeddings)} captions but "
                         f"{len(caption_class_ids)} class ids; pass one per caption.")
    if len(true_caption) == 0:
        raise ValueError("r_precision needs at least one image, got none.")

    images = _normalise_rows(image_embeddings)
    captions = _normalise_rows(caption_embeddings)
    rng = np.random.default_rng(seed)
    by_class = {}
    hits = np.zeros(len(images), bool)
    smallest = num_mismatched
    for m, caption in enumerate(true_caption):
        own_class = caption_class_ids[caption]
        if own_class not in by_class:
            by_class[own_class] = np.flatnonzero(caption_class_ids != own_class)
        others = by_class[own_class]
        if len(others) == 0:
            raise ValueError(f"no caption of a class other than {own_class!r} exists, so "
                             "R-precision has no mismatched captions; use a split with at "
                             "least two classes.")
        take = min(num_mismatched, len(others))
        smallest = min(smallest, take)
        mismatched = rng.choice(others, size=take, replace=False)
        true_score = images[m] @ captions[caption]
        hits[m] = bool(np.all(true_score > captions[mismatched] @ images[m]))
    parts = [part.mean() for part in np.array_split(hits, min(splits, len(hits)))]
    return {"value": float(hits.mean()), "std": float(np.std(parts)),
            "num_images": int(len(hits)), "num_mismatched": int(smallest),
            "chance": 1.0 / (1 + smallest)}


def _teacher_weights_value(description: str) -> str:
    """Turn a stored weights description ("imagenet", "random", "file PATH") into a flag value."""
    if description.startswith("file "):
        return description[len("file "):]
    return description


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    if images.shape[1] == size:
        return images
    resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear",
                              antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


class _Teachers:
    """Teachers built once per (image size, weights, preset) within one evaluation."""

    def __init__(self):
        self._built = {}

    def get(self, image_size: int, weights: str, preset: str):
        from sdn_tf.teacher import build_teacher

        key = (image_size, weights, preset)
        if key not in self._built:
            logging.info("Building the %s teacher (weights: %s) at %dx%d.", preset, weights,
                         image_size, image_size)
            self._built[key] = build_teacher(image_size, weights, preset)
        return self._built[key]


def _cached_feature_difference(text_encoder_dir: str, split: str, records,
                               features: np.ndarray) -> dict:
    """Compare real images' teacher features with those cached by the text encoder run.

    sdn-train-text stores the features it trained the projection on in
    `image_features/<split>.npz`. Returns the number of images found there by
    name and the largest absolute difference relative to the largest cached value.
    """
    from sdn_tf.text.train import FEATURE_CACHE_DIR

    path = os.path.join(text_encoder_dir, FEATURE_CACHE_DIR, f"{split}.npz")
    if not os.path.isfile(path):
        return {"compared_images": 0, "reason": f"{path} not found"}
    with np.load(path, allow_pickle=False) as cache:
        cached = dict(zip((str(name) for name in cache["names"]), cache["features"]))
    rows = [row for row, record in enumerate(records) if record.name in cached]
    if not rows:
        return {"compared_images": 0, "reason": f"no evaluated image is listed in {path}"}
    expected = np.stack([cached[records[row].name] for row in rows])
    scale = max(float(np.abs(expected).max()), 1e-12)
    difference = float(np.abs(features[rows] - expected).max()) / scale
    return {"compared_images": len(rows), "max_relative_difference": difference}


def encoder_r_precision(text_encoder_dir: Optional[str], generated: np.ndarray,
                        real: np.ndarray, items: CaptionItems, records, teachers: _Teachers,
                        num_mismatched: int, splits: int, batch_size: int, seed: int,
                        dataset: str = "", split: str = "test", crop: str = "none") -> dict:
    """Return R-precision of the generated images (and of the real ones, for reference).

    Images are embedded as in sdn-train-text: the teacher's pool1..pool5,
    pooled as that run pooled them (spatial means or its --feature_grid), at
    its image size, then its learned projection. The caption pool is every
    caption of `records`, the images whose captions are evaluated.

    A teacher that changed since the encoder was trained (other weights,
    other random initialisation) makes the projection meaningless. So when
    the encoder was trained on the same dataset, crop and image size, the
    real images' features are first compared with those it was trained on.
    Returns {"skipped": reason} when that check fails, when the encoder run
    lacks what is needed, or when the records have fewer than two classes.
    """
    if len({record.class_id for record in records}) < 2:
        return {"skipped": "R-precision needs captions of at least two classes as "
                           "mismatched captions; the evaluated images have one"}
    if not text_encoder_dir:
        return {"skipped": "the model's sdn_export.json names no text encoder workdir"}
    from sdn_tf.text.encoder import load_text_encoder
    from sdn_tf.text.train import compute_image_features, load_image_projection
    from sdn_tf.workdir import WorkdirError

    try:
        text_encoder = load_text_encoder(text_encoder_dir)
        projection = load_image_projection(text_encoder_dir)
    except WorkdirError as error:
        return {"skipped": f"the text encoder workdir cannot be used: {error}"}
    text_config = text_encoder.config
    size = int(text_config["image_size"])
    preset = text_config["teacher_preset"]
    grid = int(text_config.get("feature_grid", 1))
    weights = _teacher_weights_value(text_config["teacher_weights"])
    teacher = teachers.get(size, weights, preset)

    pool_captions, pool_classes, first_caption = [], [], []
    for record in records:
        first_caption.append(len(pool_captions))
        pool_captions.extend(record.captions)
        pool_classes.extend([record.class_id] * len(record.captions))
    true_caption = np.asarray(first_caption, np.int64)[items.record_index] + items.caption_index
    caption_embeddings = text_encoder.embed(pool_captions)
    pool_classes = np.asarray(pool_classes)

    def features_of(images):
        return compute_image_features(_resize_images(images, size), teacher, preset,
                                      batch_size, grid)

    def embed(features):
        return np.asarray(projection(features, training=False))

    real_features = features_of(real)
    feature_check = {"compared_images": 0, "reason": "the text encoder was trained on "
                                                     "another dataset, crop or image size"}
    if (text_config.get("dataset") == dataset and text_config.get("crop", "none") == crop
            and size == real.shape[1]):
        feature_check = _cached_feature_difference(text_encoder_dir, split, records,
                                                   real_features)
    if feature_check.get("max_relative_difference", 0.0) > FEATURE_TOLERANCE:
        return {"skipped": (
            f"the teacher gives features that differ from those the text encoder in "
            f"{text_encoder_dir} was trained on (relative difference "
            f"{feature_check['max_relative_difference']:.3g} over "
            f"{feature_check['compared_images']} real images), so its image projection does "
            "not fit this teacher; retrain the text encoder with the current teacher"),
            "feature_check": feature_check}

    per_caption = generated.shape[1]
    flat = generated.reshape((-1,) + generated.shape[2:])
    generated_embeddings = embed(features_of(flat))
    result = r_precision(generated_embeddings, caption_embeddings, pool_classes,
                         np.repeat(true_caption, per_caption), num_mismatched, splits, seed)
    real_embeddings = embed(real_features)[items.record_index]
    result["real_images"] = r_precision(real_embeddings, caption_embeddings, pool_classes,
                                        true_caption, num_mismatched, splits, seed)
    result["feature_check"] = feature_check
    result["text_encoder"] = os.path.abspath(text_encoder_dir)
    result["image_embedding"] = (
        f"teacher ({preset}, weights {weights}) pool1..pool5 spatial means at {size}x{size}, "
        "then the learned image projection of the text encoder run")
    logging.info("R-precision %.3f (real images %.3f, chance %.3f) over %d images.",
                 result["value"], result["real_images"]["value"], result["chance"],
                 result["num_images"])
    return result


# --- The whole evaluation ----------------------------------------------------


def _training_config(info: dict) -> dict:
    """Return the config.json of the sdn-train run the model came from, or {} if unreadable."""
    from sdn_tf import workdir as workdir_lib

    workdir = info.get("workdir")
    if not workdir:
        return {}
    try:
        return workdir_lib.read_config(workdir)
    except workdir_lib.WorkdirError as error:
        logging.warning("Cannot read the training config of the model (%s); crop and "
                        "teacher weights fall back to the flags' values.", error)
        return {}


def _colour(generated: np.ndarray, records, items: CaptionItems) -> dict:
    from sdn_tf.data.shapes import evaluate_colour

    per_caption = generated.shape[1]
    flat = generated.reshape((-1,) + generated.shape[2:])
    image_records = [records[i] for i in np.repeat(items.record_index, per_caption)]
    result = evaluate_colour(flat, image_records)
    summary = {}
    for group, value in result.items():
        summary[group] = None if value is None else {
            key: value[key] for key in ("accuracy", "count", "correct", "no_colour",
                                        "per_colour")}
    logging.info("Colour accuracy %.3f over %d images.", summary["all"]["accuracy"],
                 summary["all"]["count"])
    return summary


def evaluate(config: EvalConfig, records=None, train_records=None) -> dict:
    """Evaluate the model in `config.model_dir`; write metrics.json and metrics.md; return the results.

    `records` is the split to evaluate and `train_records` the gallery of the
    retrieval figure; both are read with `load_split` when None. The metrics
    are written before the retrieval figure is drawn, so a failure there
    loses no metric.
    """
    import keras

    from sdn_tf.data.pipeline import load_images
    from sdn_tf.generate import contact_sheet, load_model

    config.validate()
    timings = {}
    os.makedirs(config.output_dir, exist_ok=True)
    keras.mixed_precision.set_global_policy("float32")

    model, info = load_model(config.model_dir)
    # Inception-v3 is built before the long generation step, so a failed
    # weights download stops the run at once.
    scorer = None
    if {"is", "fid"} - set(config.skip):
        started = time.perf_counter()
        scorer = _build_scorer(config)
        timings["inception_build"] = time.perf_counter() - started
    training = _training_config(info)
    crop = config.crop or training.get("crop", "none")
    if records is None:
        from sdn_tf.data.datasets import load_split

        records = load_split(config.dataset, config.data_dir, config.split)
    items = select_captions(records, config.max_captions)
    logging.info("Evaluating %d captions of %d %s images.", len(items),
                 len(np.unique(items.record_index)), config.split)

    started = time.perf_counter()
    generated = generate_for_captions(model, items.captions, config.images_per_caption,
                                      config.batch_size)
    timings["generation"] = time.perf_counter() - started
    image_size = int(info.get("image_size") or generated.shape[2])
    contact_sheet(generated[:NUM_SAMPLES], items.captions[:NUM_SAMPLES]).save(
        os.path.join(config.output_dir, SAMPLES_FIGURE))

    # Only the real images that have an evaluated caption are decoded, and
    # the items are renumbered to index them.
    used_rows, item_rows = np.unique(items.record_index, return_inverse=True)
    used_records = [records[i] for i in used_rows]
    real = load_images(used_records, image_size, crop_to_bbox=crop == "bbox")
    used_items = dataclasses.replace(items, record_index=item_rows.astype(np.int64))

    teachers = _Teachers()
    metrics = _compute_metrics(config, info, scorer, generated, real, used_items,
                               used_records, teachers, crop, timings)
    results = {
        "dataset": config.dataset,
        "split": config.split,
        "model_dir": os.path.abspath(config.model_dir),
        "model_info": info,
        "image_size": image_size,
        "num_captions": len(items),
        "num_real_images": int(len(real)),
        "images_per_caption": config.images_per_caption,
        "num_images": int(generated.shape[0] * generated.shape[1]),
        "settings": _settings(config, image_size, crop),
        "metrics": metrics,
        "paper": PAPER_TABLE_1.get(config.dataset),
        "timings_seconds": timings,
    }
    _write_results(config.output_dir, results)

    if config.retrieval_figure:
        started = time.perf_counter()
        results["retrieval_figure"] = _retrieval(config, generated, items, image_size, crop,
                                                 training, teachers, train_records)
        timings["retrieval"] = time.perf_counter() - started
        _write_results(config.output_dir, results)
    for name, seconds in timings.items():
        logging.info("Time for %s: %.1f s.", name, seconds)
    return results


def _compute_metrics(config: EvalConfig, info: dict, scorer, generated: np.ndarray,
                     real: np.ndarray, items: CaptionItems, records, teachers: _Teachers,
                     crop: str, timings: dict) -> dict:
    """Return the "metrics" entry of metrics.json, adding each metric's seconds to `timings`."""
    skip = set(config.skip)
    flat_generated = generated.reshape((-1,) + generated.shape[2:])
    metrics = {}
    if {"is", "fid"} - skip:
        started = time.perf_counter()
        metrics.update(inception_metrics(flat_generated, real, scorer, config.splits,
                                         "is" not in skip, "fid" not in skip))
        timings["inception"] = time.perf_counter() - started

    if {"ssim", "fsim"} - skip:
        started = time.perf_counter()
        workers = config.workers or os.cpu_count() or 1
        metrics.update(structural_metrics(real, generated, items.record_index,
                                          "ssim" not in skip, "fsim" not in skip, workers))
        timings["ssim_fsim"] = time.perf_counter() - started

    if "r_precision" not in skip:
        started = time.perf_counter()
        metrics["r_precision"] = encoder_r_precision(
            info.get("text_encoder"), generated, real, items, records, teachers,
            config.r_precision_mismatched, config.splits, config.batch_size, config.seed,
            config.dataset, config.split, crop)
        timings["r_precision"] = time.perf_counter() - started

    if "colour" not in skip:
        if config.dataset == "shapes":
            started = time.perf_counter()
            metrics["colour"] = _colour(generated, records, items)
            timings["colour"] = time.perf_counter() - started
        else:
            metrics["colour"] = {"skipped": "only the shapes dataset has colour labels"}

    for name in sorted(skip):
        metrics[name] = {"skipped": "requested with --skip"}
    for name, value in metrics.items():
        if "skipped" in value:
            logging.warning("Metric %s skipped: %s", name, value["skipped"])
    return metrics


def _write_results(output_dir: str, results: dict) -> None:
    from sdn_tf.workdir import write_json_atomically

    write_json_atomically(os.path.join(output_dir, METRICS_JSON), results)
    with open(os.path.join(output_dir, METRICS_MARKDOWN), "w", encoding="utf-8") as file:
        file.write(format_markdown(results))
    logging.info("Wrote %s and %s to %s.", METRICS_JSON, METRICS_MARKDOWN, output_dir)


def _build_scorer(config: EvalConfig):
    from sdn_tf.metrics.inception import InceptionDownloadError, InceptionScorer

    weights = None if config.inception_weights == "random" else config.inception_weights
    logging.info("Building Inception-v3 (%s).", describe_inception_weights(
        config.inception_weights))
    try:
        return InceptionScorer(weights, batch_size=config.batch_size,
                               hub_features=config.inception_hub_features)
    except InceptionDownloadError as error:
        # The scorer's own message suggests Python arguments, so only the
        # download error it wraps is kept, after the flags that fix it.
        raise RuntimeError(
            "Could not download or load the ImageNet weights of Inception-v3. Pass "
            "--inception_weights=PATH (a Keras InceptionV3 weights file or a TF-Hub "
            "SavedModel folder) or --inception_weights=random (a smoke test, with scores "
            "not comparable to published ones), or leave out IS and FID with "
            f"--skip=is,fid. Download error: {error.__cause__}") from error


def _settings(config: EvalConfig, image_size: int, crop: str) -> dict:
    return {
        "real_images": (
            f"resized to the model's image size, {image_size}x{image_size}, bilinear with "
            "antialiasing, aspect ratio not kept"
            + (", after cropping to 1.5x the bounding box" if crop == "bbox" else
               ", whole image")),
        "pairs": "each real image against the image generated from each of its captions",
        "ssim": SSIM_SETTINGS,
        "fsim": FSIM_SETTINGS,
        "inception": {
            "weights": describe_inception_weights(config.inception_weights),
            "splits": config.splits,
            "input": "generated images resized to 299x299 (bilinear), x / 127.5 - 1",
            "fid_real_images": "the distinct real images of the evaluated captions, at the "
                               "model's image size",
        },
        "r_precision": {
            "R": 1,
            "mismatched_captions": config.r_precision_mismatched,
            "mismatched_from": "captions of other classes in the split",
            "similarity": "cosine",
            "seed": config.seed,
        },
        "max_captions": config.max_captions,
        "skip": sorted(config.skip),
    }


def _retrieval(config, generated, items, image_size, crop, training, teachers,
               train_records) -> str:
    from sdn_tf import retrieval
    from sdn_tf.data.pipeline import load_images

    weights = config.teacher_weights or training.get("teacher_weights")
    preset = training.get("teacher_preset") or "released_code"
    if not weights:
        raise ValueError("The model's training config is unreadable, so the teacher for the "
                         "retrieval figure is unknown; pass --teacher_weights.")
    weights = _teacher_weights_value(weights)
    if train_records is None:
        from sdn_tf.data.datasets import load_split

        train_records = load_split(config.dataset, config.data_dir, "train")
    count = min(config.retrieval_figure, len(items))
    gallery = load_images(train_records, image_size, crop_to_bbox=crop == "bbox")
    teacher = teachers.get(image_size, weights, preset)
    queries = generated[:count, 0]
    indices, similarities = retrieval.retrieve(queries, gallery, teacher, preset,
                                               config.retrieval_tap, config.retrieval_k,
                                               config.batch_size)
    figure = retrieval.draw_retrieval_figure(queries, gallery, indices, similarities,
                                             captions=items.captions[:count])
    path = os.path.join(config.output_dir, RETRIEVAL_FIGURE)
    figure.save(path)
    logging.info("Wrote the retrieval figure of %d generated images to %s.", count, path)
    return path


# --- Markdown ------------------------------------------------------------------


def _cell(metric: Optional[dict], kind: str, notes: list, name: str) -> str:
    if metric is None:
        return "–"
    if "skipped" in metric:
        notes.append(f"{name}: skipped, {metric['skipped']}.")
        return "–"
    if kind == "is":
        return f"{metric['mean']:.2f} ± {metric['std']:.2f}"
    if kind == "fid":
        return f"{metric['value']:.2f}"
    if kind == "r_precision":
        return f"{metric['value']:.4f}"
    return f"{metric['mean']:.4f}"


def format_markdown(results: dict) -> str:
    """Return metrics.md: a table laid out like the SDN paper's Table 1, then the settings."""
    metrics = results["metrics"]
    dataset = DATASET_NAMES.get(results["dataset"], results["dataset"])
    notes = []
    row = [f"{dataset} ({results['split']}, this model)",
           _cell(metrics.get("is"), "is", notes, "IS"),
           _cell(metrics.get("fid"), "fid", notes, "FID"),
           _cell(metrics.get("ssim"), "ssim", notes, "SSIM"),
           _cell(metrics.get("fsim"), "fsim", notes, "FSIM"),
           _cell(metrics.get("r_precision"), "r_precision", notes, "R-precision")]
    lines = [f"# SDN evaluation: {dataset}, {results['split']} split", "",
             "| Dataset | IS | FID | SSIM | FSIM | R-precision |",
             "|---|---|---|---|---|---|",
             "| " + " | ".join(row) + " |"]
    paper = results.get("paper")
    if paper:
        lines.append(f"| {paper['dataset']} (SDN paper, Table 1) | {paper['is'][0]:.2f} ± "
                     f"{paper['is'][1]:.2f} | – | {paper['ssim']:.4f} | {paper['fsim']:.4f} | – |")

    lines += [""] + _settings_lines(results)
    if paper:
        lines.append("The paper reports no FID or R-precision.")

    colour = metrics.get("colour")
    if colour and "skipped" not in colour:
        cells = [_colour_cell(colour.get(group)) for group in ("all", "seen", "unseen")]
        lines += ["", "| Colour accuracy | all | seen combinations | unseen combinations |",
                  "|---|---|---|---|", "| " + " | ".join(["shapes"] + cells) + " |"]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _settings_lines(results: dict) -> list:
    """Return the sentences under the table: image counts, sizes, Inception and R-precision."""
    settings = results["settings"]
    size = results["image_size"]
    lines = [
        f"{results['num_images']} images generated from {results['num_captions']} captions "
        f"of {results['num_real_images']} {results['split']} images "
        f"({results['images_per_caption']} per caption) at {size}x{size}. Real images are "
        f"{settings['real_images']}. SSIM and FSIM compare {settings['pairs']}.",
    ]
    if any("skipped" not in results["metrics"].get(name, {"skipped": ""})
           for name in ("is", "fid")):
        lines.append(f"Inception-v3: {settings['inception']['weights']}, "
                     f"{settings['inception']['splits']} splits. FID uses the distinct real "
                     "images as the reference set.")
    r_precision_metric = results["metrics"].get("r_precision") or {}
    if "value" in r_precision_metric:
        lines.append(
            f"R-precision (R = 1): the true caption against "
            f"{r_precision_metric['num_mismatched']} captions of other classes by cosine "
            f"similarity, chance {r_precision_metric['chance']:.4f}. Real images score "
            f"{r_precision_metric['real_images']['value']:.4f} with the same encoders.")
    return lines


def _colour_cell(group: Optional[dict]) -> str:
    if group is None:
        return "– (no images)"
    return f"{group['accuracy']:.3f} ({group['correct']}/{group['count']})"


def read_metrics(output_dir: str) -> dict:
    """Read the metrics.json that `evaluate` wrote to `output_dir`."""
    with open(os.path.join(output_dir, METRICS_JSON), encoding="utf-8") as file:
        return json.load(file)
