"""Training of the char-CNN-RNN text encoder with the DS-SJE loss against fixed image features.

Image features. Reed et al. (2016) trained their encoder against fixed
GoogLeNet features. Here the image side uses the frozen VGG19 teacher that
SDN distils from, so no second ImageNet network is needed: the teacher's taps
pool1 to pool5, each averaged over its spatial positions and concatenated
(64 + 128 + 256 + 512 + 512 = 1472 values), computed once per training image
at the run's image size. Each feature dimension is standardised with the
mean and standard deviation of the training set, because the five blocks
differ in scale by orders of magnitude (most of all with random teacher
weights). A learned linear projection then maps the 1472 values to the
embedding size, because the feature size differs from the embedding size.
The projection is trained jointly with the text encoder, checkpointed with
it and saved next to it as `image_projection.weights.h5`.

Data order. One epoch visits every (image, caption) pair once, in an order
drawn from the seed and the epoch number, so a resumed run continues with
exactly the batches the interrupted run would have seen. With
batch_neighbours=K, each batch holds batch_size / (K + 1) such pairs
(anchors), each followed by captions of K images drawn from the anchor
image's nearest neighbours in teacher-feature space (hard negatives). By
default the neighbours are found in the features of the greyscale images.
On the shapes dataset with a random teacher, 72 % of an image's eight
nearest neighbours in the colour images' features had its colour, against
34 % in the greyscale images' features, which still share its position
and background. Greyscale neighbours thus teach the colour words.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Mapping, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sdn_tf import teacher as teacher_lib
from sdn_tf import workdir as workdir_lib
from sdn_tf.data.records import ImageRecord
from sdn_tf.layers import Standardize
from sdn_tf.text import encoder as encoder_lib

IMAGE_FEATURE_TAPS = ("pool1", "pool2", "pool3", "pool4", "pool5")
IMAGE_FEATURE_DIM = 64 + 128 + 256 + 512 + 512
NEGATIVES = ("class", "instance", "class+instance")
NEIGHBOUR_SPACES = ("greyscale", "rgb")
LEARNING_RATE_DECAYS = ("none", "cosine")
# ITU-R BT.601 luma weights, for the greyscale images of neighbour search.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# batch_neighbours draws from this many nearest images of each anchor image.
NEIGHBOUR_POOL = 8


def image_feature_dim(grid: int = 1) -> int:
    """Return the size of the image features: 1472 channels times grid x grid cells."""
    return IMAGE_FEATURE_DIM * grid * grid


def image_features_description(grid: int = 1) -> str:
    """Describe the image features, as recorded in config.json and the README."""
    if grid == 1:
        pooling = "spatial means"
    else:
        pooling = f"area-averaged to a {grid}x{grid} grid"
    return (f"teacher taps pool1..pool5, {pooling}, concatenated ({image_feature_dim(grid)} "
            "values), standardised with training-set statistics, learned linear projection")


IMAGE_FEATURES_DESCRIPTION = image_features_description(1)
PROJECTION_WEIGHTS_FILE = "image_projection.weights.h5"
EVAL_FILE = "text_eval.json"
FEATURE_CACHE_DIR = "image_features"

# Settings a resumed run must share with the run that started the workdir,
# because they change the model's shape, its inputs or the cached features.
MUST_MATCH = (
    "embedding_dim", "rnn", "alphabet", "max_length", "image_size", "crop",
    "teacher_preset", "teacher_weights", "dataset", "data_dir", "image_features",
)


@dataclasses.dataclass
class TextTrainConfig:
    """Settings of one sdn-train-text run.

    The model defaults and the learning rate follow the CUB encoder behind
    StackGAN's embeddings (GRU, embedding 1024, learning rate 7e-4, as its
    file name records). Batch size and epochs are this project's choices.
    """

    workdir: str
    dataset: str = "shapes"
    data_dir: Optional[str] = None
    image_size: int = 64
    crop: str = "none"
    train_classes: tuple = ()
    test_classes: tuple = ()
    teacher_weights: str = "imagenet"
    teacher_preset: str = "released_code"
    embedding_dim: int = 1024
    rnn: str = "gru"
    dropout: float = 0.5
    margin: float = 1.0
    batch_size: int = 40
    learning_rate: float = 7e-4
    epochs: int = 10
    max_steps: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    feature_batch_size: int = 32
    # Compile the Adam update with XLA on its own, as sdn-train does on the CPU.
    # Off by default: it changes the rounding, and on shapes the encoder's
    # colour content varied widely with such changes (see the NOTE in
    # _train_loop).
    fused_update: bool = False
    # Reed et al. average the image features over the whole image and treat
    # only captions of other classes as negatives, so the embedding learns what
    # a class looks like, not where things are. feature_grid > 1 keeps a coarse
    # layout and negatives="instance" contrasts every other image, which lets
    # the embedding carry the position and size that captions state.
    # "class+instance" sums both losses: the class term makes the embedding
    # tell classes apart (colour and shape on `shapes`), which the instance
    # term alone rarely requires when a batch's images already differ in
    # position or background.
    feature_grid: int = 1
    negatives: str = "class"
    # With negatives="instance", a hinge term is non-zero only while some
    # other image in the batch still scores close to the caption. Random
    # images usually differ in layout and background, so the loss saturates
    # once those are encoded, and what else the encoder learns (the colour,
    # on shapes) hinges on the few pairs left. batch_neighbours=K fills each
    # batch with groups of K + 1 images that look alike to the teacher, so the
    # remaining differences keep the loss non-zero.
    batch_neighbours: int = 0
    neighbour_space: str = "greyscale"
    # "cosine" lowers the learning rate from learning_rate to 0 at the run's
    # last step. With a constant 1e-3 the shapes encoder's loss spiked in
    # some of the last few hundred steps (from under 0.1 to 33 once), and the
    # encoder then kept whatever the spike had left.
    learning_rate_decay: str = "none"
    on_nan: str = "stop"
    max_nan_restores: int = 3

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting and its allowed values."""
        if self.rnn not in encoder_lib.RNN_TYPES:
            raise ValueError(f"rnn={self.rnn!r} is not supported; use one of "
                             f"{encoder_lib.RNN_TYPES}.")
        if self.precision not in ("auto", "float32", "mixed_bfloat16", "mixed_float16"):
            raise ValueError(f"precision={self.precision!r} is not supported; use auto, "
                             "float32, mixed_bfloat16 or mixed_float16.")
        if self.jit_compile not in ("auto", "true", "false"):
            raise ValueError(f"jit_compile={self.jit_compile!r}; use auto, true or false.")
        if self.crop not in ("none", "bbox"):
            raise ValueError(f"crop={self.crop!r}; use none or bbox.")
        if self.on_nan not in ("stop", "restore"):
            raise ValueError(f"on_nan={self.on_nan!r}; use stop or restore.")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives={self.negatives!r}; use one of "
                             f"{', '.join(NEGATIVES)}.")
        if not 1 <= self.feature_grid <= 7:
            raise ValueError(f"feature_grid={self.feature_grid} must be from 1 to 7 (pool5 "
                             "is 7x7 at 224 pixels); 1 takes spatial means.")
        if self.max_nan_restores < 0:
            raise ValueError(f"max_nan_restores={self.max_nan_restores} must not be negative.")
        for name in ("embedding_dim", "batch_size", "log_every", "checkpoint_every",
                     "keep_checkpoints", "feature_batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer.")
        if self.epochs < 0 or self.max_steps < 0:
            raise ValueError(f"epochs={self.epochs} and max_steps={self.max_steps} must not "
                             "be negative.")
        if self.epochs == 0 and self.max_steps == 0:
            raise ValueError("epochs=0 and max_steps=0 leave nothing to train; set one of them.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1).")
        if self.learning_rate <= 0.0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")
        if self.batch_neighbours < 0 or self.batch_neighbours > NEIGHBOUR_POOL:
            raise ValueError(f"batch_neighbours={self.batch_neighbours} must be from 0 to "
                             f"{NEIGHBOUR_POOL} (the neighbours are drawn from the "
                             f"{NEIGHBOUR_POOL} nearest images); 0 draws batches at random.")
        if self.neighbour_space not in NEIGHBOUR_SPACES:
            raise ValueError(f"neighbour_space={self.neighbour_space!r}; use one of "
                             f"{', '.join(NEIGHBOUR_SPACES)}.")
        if self.learning_rate_decay not in LEARNING_RATE_DECAYS:
            raise ValueError(f"learning_rate_decay={self.learning_rate_decay!r}; use one of "
                             f"{', '.join(LEARNING_RATE_DECAYS)}.")
        group = self.batch_neighbours + 1
        if self.batch_size % group:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of batch_neighbours + 1 = "
                f"{group}, because each anchor brings {self.batch_neighbours} neighbours; "
                f"for example --batch_size={(self.batch_size // group + 1) * group}.")


def as_config(config: Union[TextTrainConfig, Mapping]) -> TextTrainConfig:
    """Return `config` as a validated TextTrainConfig; a mapping may hold any subset of fields."""
    if isinstance(config, TextTrainConfig):
        result = dataclasses.replace(config)
    else:
        known = {field.name for field in dataclasses.fields(TextTrainConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Unknown text training settings {unknown}; known settings are "
                             f"{sorted(known)}.")
        result = TextTrainConfig(**config)
    result.validate()
    return result


def workdir_config(config: TextTrainConfig) -> dict:
    """Return what config.json records about a run (open_workdir adds the kind)."""
    return {
        "embedding_dim": config.embedding_dim,
        "rnn": config.rnn,
        "dropout": config.dropout,
        "alphabet": encoder_lib.ALPHABET,
        "max_length": encoder_lib.MAX_LENGTH,
        "image_size": config.image_size,
        "crop": config.crop,
        "teacher_preset": config.teacher_preset,
        "teacher_weights": teacher_lib.describe_weights_choice(config.teacher_weights),
        "dataset": config.dataset,
        "data_dir": os.path.abspath(os.path.expanduser(config.data_dir))
        if config.data_dir else None,
        "image_features": image_features_description(config.feature_grid),
        "image_feature_dim": image_feature_dim(config.feature_grid),
        "feature_grid": config.feature_grid,
        "negatives": config.negatives,
        "batch_neighbours": config.batch_neighbours,
        "neighbour_space": config.neighbour_space,
        "learning_rate_decay": config.learning_rate_decay,
        "margin": config.margin,
        "seed": config.seed,
    }


# --- Image features ---------------------------------------------------------


def compute_image_features(images: np.ndarray, teacher: keras.Model, preset: str,
                           batch_size: int = 32, grid: int = 1) -> np.ndarray:
    """Return pool1..pool5 pooled to grid x grid cells, concatenated: float32 [N, 1472 g^2].

    grid=1 takes each tap's spatial mean. A larger grid averages each tap over
    the cells of a grid x grid partition (area resampling), keeping where in
    the image a feature fires. `images` are uint8 RGB [N, S, S, 3]; they are
    converted to the teacher's input space with `preset` and run through
    `teacher` in batches.
    """

    @tf.function(reduce_retracing=True, autograph=False)
    def features_of(batch):
        teacher_input = teacher_lib.rgb_to_teacher_space(tf.cast(batch, tf.float32), preset)
        taps = teacher(teacher_input, training=False)
        parts = []
        for tap in IMAGE_FEATURE_TAPS:
            value = tf.cast(taps[tap], tf.float32)
            if grid == 1:
                parts.append(tf.reduce_mean(value, axis=[1, 2]))
            else:
                cells = tf.image.resize(value, [grid, grid], method="area")
                parts.append(tf.reshape(cells, [tf.shape(value)[0], -1]))
        return tf.concat(parts, axis=1)

    count = len(images)
    features = np.empty((count, image_feature_dim(grid)), np.float32)
    report_every = max(1, count // 10)
    next_report = report_every
    start_time = time.time()
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        features[start:stop] = features_of(images[start:stop]).numpy()
        if stop >= next_report or stop == count:
            logging.info("Teacher features: %d/%d images (%.1f images/s).", stop, count,
                         stop / max(time.time() - start_time, 1e-9))
            next_report = stop + report_every
    return features


def to_greyscale(images: np.ndarray) -> np.ndarray:
    """Return uint8 RGB images [N, S, S, 3] whose three channels each equal the luma."""
    luma = np.asarray(images, np.float32) @ np.asarray(LUMA_WEIGHTS, np.float32)
    luma = np.clip(np.round(luma), 0, 255).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=-1)


def feature_statistics(features: np.ndarray) -> tuple:
    """Return per-dimension (mean, std) for standardisation, float32 [D] each.

    Dimensions that are (almost) constant over the training set, such as
    channels whose ReLU never fires, get std 1 instead of a tiny value, so
    they stay near zero for unseen images rather than being blown up.
    """
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    typical = float(np.median(std[std > 0])) if np.any(std > 0) else 1.0
    std = np.where(std > 1e-3 * typical, std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def build_image_projection(embedding_dim: int, seed: int = 0,
                           feature_dim: int = IMAGE_FEATURE_DIM) -> keras.Model:
    """Build the image side: standardisation then a linear map to `embedding_dim`."""
    inputs = keras.Input((feature_dim,), name="image_features")
    standardized = Standardize(dtype="float32", name="standardize")(inputs)
    outputs = keras.layers.Dense(
        embedding_dim, kernel_initializer=keras.initializers.GlorotUniform(seed=seed * 100 + 50),
        dtype="float32", name="projection")(standardized)
    return keras.Model(inputs, outputs, name="image_projection")


def _feature_cache_path(workdir: str, split: str) -> str:
    return os.path.join(workdir, FEATURE_CACHE_DIR, f"{split}.npz")


def _read_feature_cache(workdir: str, split: str, records: Sequence[ImageRecord],
                        dim: int) -> Optional[np.ndarray]:
    path = _feature_cache_path(workdir, split)
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as cache:
        names = [str(name) for name in cache["names"]]
        features = cache["features"]
    if names != [record.name for record in records] or features.shape[1] != dim:
        logging.warning("Ignoring %s: it was computed for other images; recomputing.", path)
        return None
    logging.info("Read cached teacher features of %d %s images from %s.", len(names), split,
                 path)
    return features


def _write_feature_cache(workdir: str, split: str, records: Sequence[ImageRecord],
                         features: np.ndarray) -> None:
    path = _feature_cache_path(workdir, split)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp_path = path + ".tmp.npz"
    np.savez(temp_path, names=np.array([record.name for record in records]),
             features=features)
    os.replace(temp_path, path)


def load_image_features(config: TextTrainConfig, splits: Mapping[str, Sequence[ImageRecord]],
                        greyscale: Sequence[str] = ()) -> dict:
    """Return {split: float32 [N, image_feature_dim]} for each split, from the workdir cache when possible.

    The features are cached in the workdir because a resumed run must see the
    same features as the run that trained the projection. With random teacher
    weights, a teacher rebuilt under another seed would give different ones.
    The keys of `splits` name the cache files; the images of the keys listed
    in `greyscale` are converted with `to_greyscale` first.
    """
    from sdn_tf.data.pipeline import load_images

    result = {}
    missing = {}
    for split, records in splits.items():
        cached = _read_feature_cache(config.workdir, split, records,
                                     image_feature_dim(config.feature_grid))
        if cached is None:
            missing[split] = records
        else:
            result[split] = cached
    if not missing:
        return result
    if result:
        # NOTE: the splits computed now come from a rebuilt teacher. Random
        # teacher weights match the cached splits only under the same --seed.
        logging.warning("Computing teacher features for %s although %s were cached; with "
                        "--teacher_weights=random they match only if --seed is unchanged.",
                        sorted(missing), sorted(result))
    logging.info("Building the %s teacher (weights: %s) at %dx%d for image features.",
                 config.teacher_preset, teacher_lib.describe_weights_choice(config.teacher_weights),
                 config.image_size, config.image_size)
    # float32 on purpose. A bfloat16 teacher was 2.4 times faster on a 2-core
    # AMX CPU, but the encoder trained on its features carried the colour far
    # less well (see the NOTE in _train_loop).
    teacher = teacher_lib.build_teacher(config.image_size, config.teacher_weights,
                                        config.teacher_preset)
    for split, records in missing.items():
        images = load_images(records, config.image_size, crop_to_bbox=config.crop == "bbox")
        if split in greyscale:
            images = to_greyscale(images)
        features = compute_image_features(images, teacher, config.teacher_preset,
                                          config.feature_batch_size, config.feature_grid)
        _write_feature_cache(config.workdir, split, records, features)
        result[split] = features
    return result


# --- Training data --------------------------------------------------------


@dataclasses.dataclass
class CaptionPairs:
    """Every (image, caption) pair of a split, flattened in record order."""

    image_index: np.ndarray  # int64 [P], row of the image in the split
    captions: np.ndarray  # bytes [P], UTF-8 encoded captions
    class_ids: np.ndarray  # int64 [P]

    def __len__(self) -> int:
        return len(self.image_index)


def caption_pairs(records: Sequence[ImageRecord], split: str) -> CaptionPairs:
    """Flatten records into pairs; images without captions are counted and logged."""
    image_index, captions, class_ids = [], [], []
    without_captions = 0
    for row, record in enumerate(records):
        if not record.captions:
            without_captions += 1
            continue
        for caption in record.captions:
            image_index.append(row)
            captions.append(caption.encode("utf-8") if isinstance(caption, str) else caption)
            class_ids.append(int(record.class_id))
    if without_captions:
        logging.warning("Skipped %d %s images that have no captions.", without_captions, split)
    pairs = CaptionPairs(np.asarray(image_index, np.int64), np.asarray(captions, dtype=object),
                         np.asarray(class_ids, np.int64))
    if len(pairs):
        too_long = int(np.sum(encoder_lib.caption_length_exceeds(pairs.captions).numpy()))
        if too_long:
            logging.warning("%d of %d %s captions are longer than %d characters; only their "
                            "first %d characters are encoded.", too_long, len(pairs), split,
                            encoder_lib.MAX_LENGTH, encoder_lib.MAX_LENGTH)
    return pairs


class PairSchedule:
    """Batches of pair indices for any step: each epoch is a seeded permutation of all pairs.

    Batches run across epoch boundaries, so every batch is full and the batch
    of step s depends only on (seed, s), which makes resumption exact.
    """

    def __init__(self, num_pairs: int, batch_size: int, seed: int):
        self.num_pairs = num_pairs
        self.batch_size = batch_size
        self.seed = seed
        self._epoch = -1
        self._order = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs)
            self._epoch = epoch
        return self._order

    def batch(self, step: int) -> np.ndarray:
        """Return the pair indices of the batch trained at `step` (0-based)."""
        position = step * self.batch_size
        indices = []
        while len(indices) < self.batch_size:
            epoch, offset = divmod(position, self.num_pairs)
            take = min(self.batch_size - len(indices), self.num_pairs - offset)
            indices.extend(self._permutation(epoch)[offset:offset + take])
            position += take
        return np.asarray(indices, np.int64)


def nearest_images(features: np.ndarray, count: int, chunk: int = 1024) -> np.ndarray:
    """Return int64 [N, count]: each row's `count` nearest other rows, nearest first.

    Distances are Euclidean between the rows of `features` (float [N, D]);
    ties go to the lower row index. The distance matrix is built `chunk` rows
    at a time, so memory stays at chunk x N values.
    """
    features = np.asarray(features, np.float64)
    num = len(features)
    if not 1 <= count < num:
        raise ValueError(f"count={count} nearest images need 1 <= count < {num}, the number "
                         "of images.")
    squared = np.einsum("nd,nd->n", features, features)
    result = np.empty((num, count), np.int64)
    for start in range(0, num, chunk):
        stop = min(start + chunk, num)
        distances = squared[start:stop, None] + squared[None, :] - 2.0 * (
            features[start:stop] @ features.T)
        distances[np.arange(stop - start), np.arange(start, stop)] = np.inf
        result[start:stop] = np.argsort(distances, axis=1, kind="stable")[:, :count]
    return result


class NeighbourSchedule:
    """Batches of anchor pairs, each followed by pairs of K images that resemble the anchor's.

    The anchors follow a PairSchedule of batch_size / (K + 1) pairs per step.
    For each anchor, K distinct images are drawn from the NEIGHBOUR_POOL
    nearest neighbours of its image, and one caption of each, from a random
    generator seeded with (seed, step). The batch of step s therefore depends
    only on (seed, s), as with PairSchedule.
    """

    def __init__(self, image_index: np.ndarray, neighbours: Mapping[int, np.ndarray],
                 batch_size: int, per_anchor: int, seed: int):
        self.image_index = image_index
        self.neighbours = neighbours
        self.per_anchor = per_anchor
        self.seed = seed
        self.anchors = PairSchedule(len(image_index), batch_size // (per_anchor + 1), seed)
        self.pairs_of = {}
        for pair, row in enumerate(image_index):
            self.pairs_of.setdefault(int(row), []).append(pair)

    def batch(self, step: int) -> np.ndarray:
        """Return the pair indices of the batch trained at `step` (0-based)."""
        rng = np.random.default_rng([self.seed, step, 1])
        indices = []
        for anchor in self.anchors.batch(step):
            indices.append(anchor)
            pool = self.neighbours[int(self.image_index[anchor])]
            for row in rng.choice(pool, size=self.per_anchor, replace=False):
                candidates = self.pairs_of[int(row)]
                indices.append(candidates[rng.integers(len(candidates))])
        return np.asarray(indices, np.int64)


def neighbour_schedule(config: TextTrainConfig, pairs: CaptionPairs,
                       features: np.ndarray) -> NeighbourSchedule:
    """Build the NeighbourSchedule of a run from the training images' unstandardised features."""
    rows = np.unique(pairs.image_index)
    pool = min(NEIGHBOUR_POOL, len(rows) - 1)
    if pool < config.batch_neighbours:
        raise ValueError(
            f"batch_neighbours={config.batch_neighbours} needs at least "
            f"{config.batch_neighbours + 1} training images with captions; the split has "
            f"{len(rows)}. Lower --batch_neighbours or use more data.")
    mean, std = feature_statistics(features)
    nearest = nearest_images((features[rows] - mean) / std, pool)
    neighbours = {int(row): rows[nearest[position]] for position, row in enumerate(rows)}
    logging.info("Neighbour batches: %d anchors per batch, each with %d of the %d images "
                 "nearest to its own in the standardised teacher features of the %s images.",
                 config.batch_size // (config.batch_neighbours + 1), config.batch_neighbours,
                 pool, config.neighbour_space)
    return NeighbourSchedule(pairs.image_index, neighbours, config.batch_size,
                             config.batch_neighbours, config.seed)


def total_steps(config: TextTrainConfig, num_pairs: int) -> int:
    """Return the steps of the whole run: --epochs over the pairs, capped by --max_steps."""
    epoch_steps = math.ceil(config.epochs * num_pairs / config.batch_size)
    if config.max_steps and (config.epochs == 0 or config.max_steps < epoch_steps):
        return config.max_steps
    return epoch_steps


# --- Precision and compilation -----------------------------------------------


def resolve_precision(precision: str) -> str:
    """Return the Keras dtype policy name for a --precision value.

    "auto" follows `sdn_tf.precision.choose_policy`: mixed precision on GPUs,
    mixed_bfloat16 on CPUs with bf16 instructions, float32 elsewhere.
    """
    from sdn_tf.precision import choose_policy

    return choose_policy(precision).precision


def resolve_jit_compile(jit_compile: str) -> bool:
    """Return whether to XLA-compile the training step; "auto" compiles on GPUs only."""
    if jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return jit_compile == "true"


# --- Evaluation ---------------------------------------------------------------


def zero_shot_accuracy(text_encoder: encoder_lib.TextEncoder, image_projection: keras.Model,
                       features: np.ndarray, records: Sequence[ImageRecord]) -> dict:
    """Zero-shot class retrieval: is each image's best-scoring class its own?

    Each class is represented by the mean embedding of all captions of its
    images. An image scores a class by the inner product of its projected
    features with that mean, as in Reed et al.'s zero-shot classification.
    """
    pairs = caption_pairs(records, "test")
    classes = np.unique(pairs.class_ids)
    caption_embeddings = text_encoder.embed(tf.constant(list(pairs.captions), tf.string))
    class_means = np.stack([caption_embeddings[pairs.class_ids == c].mean(axis=0)
                            for c in classes])
    with_captions = np.array([bool(record.captions) for record in records])
    image_classes = np.array([int(record.class_id) for record in records])[with_captions]
    image_embeddings = image_projection(features[with_captions], training=False).numpy()
    predicted = classes[np.argmax(image_embeddings @ class_means.T, axis=1)]
    hits = predicted == image_classes
    per_class = {str(int(c)): float(np.mean(hits[image_classes == c])) for c in classes}
    return {
        "zero_shot_accuracy": float(np.mean(hits)),
        "num_images": int(len(hits)),
        "num_classes": int(len(classes)),
        "chance_accuracy": 1.0 / len(classes),
        "per_class_accuracy": per_class,
    }


# --- Training -------------------------------------------------------------------


def _load_test_records(config: TextTrainConfig) -> Optional[list]:
    from sdn_tf.data.datasets import class_lists_of, load_split

    try:
        return load_split(config.dataset, config.data_dir, "test",
                          class_lists=class_lists_of(config))
    except (ValueError, FileNotFoundError) as error:
        logging.warning("No test split for the zero-shot evaluation (%s); it is skipped.", error)
        return None


def _make_train_step(text_model, image_projection, optimizer, margin: float, jit: bool,
                     fuse_update: bool = False):
    """Build the DS-SJE training step; `fuse_update` compiles only the Adam update with XLA.

    With feature_grid=3 the projection has 13.6M weights, and Adam's
    element-wise passes over them took about as long as the forward and
    backward pass together on a 2-core CPU. XLA fuses those passes.
    """
    variables = text_model.trainable_variables + image_projection.trainable_variables
    if fuse_update:
        update = tf.function(lambda gradients: optimizer.apply(gradients, variables),
                             jit_compile=True, autograph=False)
    else:
        def update(gradients):
            optimizer.apply(gradients, variables)

    @tf.function(jit_compile=jit, autograph=False)
    def train_step(onehot, features, groups):
        """Return (loss, accuracy); the update is applied only when the loss is finite.

        `groups` is [B] or [B, K]: one DS-SJE term per column, summed.
        Accuracy is that of the last column (the image, under "class+instance").
        """
        if groups.shape.rank == 1:
            groups = groups[:, None]
        with tf.GradientTape() as tape:
            text_embeddings = text_model(onehot, training=True)
            image_embeddings = image_projection(features, training=True)
            loss = tf.constant(0.0, tf.float32)
            for column in range(groups.shape[1]):
                term, accuracy = encoder_lib.ds_sje_loss(image_embeddings, text_embeddings,
                                                         groups[:, column], margin)
                loss += term
            scaled_loss = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)

        def apply():
            update(gradients)
            return tf.constant(True)

        # Non-finite gradients with a finite loss are left to the loss-scale
        # optimizer under mixed_float16, which skips them and lowers its scale.
        tf.cond(tf.math.is_finite(loss), apply, lambda: tf.constant(False))
        return loss, accuracy

    return train_step


@dataclasses.dataclass
class TrainedTextEncoder:
    """Result of train_text_encoder: the final models and the summary written to text_eval.json."""

    text_encoder: encoder_lib.TextEncoder
    image_projection: keras.Model
    summary: dict


def train_text_encoder(config: Union[TextTrainConfig, Mapping],
                       records: Optional[Sequence[ImageRecord]] = None,
                       test_records: Optional[Sequence[ImageRecord]] = None
                       ) -> TrainedTextEncoder:
    """Train (or resume) a text encoder in `config.workdir` and return the final models.

    `records` is the training split; when None it is read with
    `load_split(config.dataset, config.data_dir, "train")`, and the test split
    for the final zero-shot evaluation likewise. With `records` given, only
    `test_records` are evaluated (none when it is None).

    Writes config.json at the start, checkpoints every `checkpoint_every`
    steps, TensorBoard scalars under `workdir/train`, and at the end
    text_encoder.weights.h5, image_projection.weights.h5 and text_eval.json.
    Rerunning with the same workdir resumes from the newest checkpoint.

    Raises:
      WorkdirError: when the workdir contains a run of another kind or was started
        with settings in MUST_MATCH that differ from `config`.
    """
    config = as_config(config)
    stored_config = workdir_config(config)
    workdir_lib.open_workdir(config.workdir, encoder_lib.WORKDIR_KIND, stored_config,
                             MUST_MATCH, derived=(FEATURE_CACHE_DIR,))
    keras.utils.set_random_seed(config.seed)  # also fixes a random-weight teacher

    if records is None:
        from sdn_tf.data.datasets import class_lists_of, load_split

        records = load_split(config.dataset, config.data_dir, "train",
                             class_lists=class_lists_of(config))
        test_records = _load_test_records(config)
    pairs = caption_pairs(records, "train")
    if len(pairs) < config.batch_size:
        raise ValueError(
            f"The training split has {len(pairs)} (image, caption) pairs, fewer than "
            f"batch_size={config.batch_size}. Lower --batch_size or use more data.")

    splits = {"train": records}
    if test_records:
        splits["test"] = test_records
    greyscale = ()
    if config.batch_neighbours and config.neighbour_space == "greyscale":
        splits["train_greyscale"] = records
        greyscale = ("train_greyscale",)
    features = load_image_features(config, splits, greyscale)
    if config.batch_neighbours:
        schedule = neighbour_schedule(config, pairs,
                                      features.pop("train_greyscale", features["train"]))
    else:
        schedule = PairSchedule(len(pairs), config.batch_size, config.seed)

    policy = resolve_precision(config.precision)
    jit = resolve_jit_compile(config.jit_compile)
    logging.info("Precision %s, XLA compilation %s.", policy, "on" if jit else "off")
    text_model = encoder_lib.build_text_encoder(
        config.embedding_dim, config.rnn, config.dropout, config.seed,
        dtype=policy,
        use_cudnn=False if jit else "auto")
    image_projection = build_image_projection(config.embedding_dim, config.seed,
                                              image_feature_dim(config.feature_grid))
    image_projection.get_layer("standardize").set_statistics(
        *feature_statistics(features["train"]))
    num_steps = total_steps(config, len(pairs))
    learning_rate = config.learning_rate
    if config.learning_rate_decay == "cosine":
        # The schedule reads the optimizer's iteration count, which the
        # checkpoint restores. A rerun with another --max_steps stretches it.
        learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, num_steps)
    optimizer = keras.optimizers.Adam(learning_rate)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(text_model.trainable_variables + image_projection.trainable_variables)

    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # Batches skipped after a NaN restore (see _restore_after_nan), saved so
    # that resuming later continues with the same data.
    data_offset = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_offset")
    tracked = dict(step=step, data_offset=data_offset, text_encoder=text_model,
                   image_projection=image_projection, optimizer=optimizer)
    # The dropout layer's random state lives outside the Keras weights; saving
    # it makes a resumed run draw the masks an uninterrupted run would draw.
    # Keras creates no seed generator for a rate of 0.
    seed_generator = getattr(text_model.get_layer("dropout"), "seed_generator", None)
    if seed_generator is not None:
        tracked["dropout_seed_state"] = seed_generator.state
    checkpoint = tf.train.Checkpoint(**tracked)
    manager = workdir_lib.checkpoint_manager(checkpoint, config.workdir,
                                             config.keep_checkpoints)
    if not workdir_lib.restore_latest(manager, checkpoint):
        manager.save(checkpoint_number=0)  # lets --on_nan=restore recover from an early NaN

    start_step = int(step.numpy())
    logging.info("%d images, %d (image, caption) pairs, batch %d: %g steps per epoch; "
                 "training steps %d to %d.", len(records), len(pairs), config.batch_size,
                 len(pairs) / config.batch_size, start_step, num_steps)

    last_window = _train_loop(config, pairs, schedule, features["train"], text_model,
                              image_projection, optimizer, checkpoint, manager, num_steps)
    text_encoder = encoder_lib.TextEncoder(
        text_model, dict(stored_config, kind=encoder_lib.WORKDIR_KIND))
    summary = _finish(config, text_encoder, image_projection, features, test_records, step,
                      manager, last_window)
    return TrainedTextEncoder(text_encoder, image_projection, summary)


def _train_loop(config, pairs, schedule, train_features, text_model, image_projection,
                optimizer, checkpoint, manager, num_steps) -> dict:
    """Run the steps from `checkpoint.step` to `num_steps`; return the means of the last log window.

    `schedule` (a PairSchedule or NeighbourSchedule) gives each step's pairs.
    """
    encode = tf.function(encoder_lib.captions_to_onehot,
                         input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    from sdn_tf.precision import choose_policy

    # NOTE: the shapes quickstart's encoder is sensitive to rounding. With the
    # plain update, the XLA update, and the XLA update on bfloat16 features, a
    # linear probe read the colour from 87, 65 and 60 % of held-out captions.
    # After Stage-I the colour check gave 73 % seen for the first and 33 % for
    # the third, so the plain update stays the default.
    policy = choose_policy(config.precision, config.jit_compile)
    fuse_update = config.fused_update and policy.fuse_ops
    if fuse_update:
        logging.info("--fused_update: XLA compiles the Adam update on its own.")
    elif config.fused_update:
        logging.info("--fused_update has no effect under whole-step XLA or mixed_float16.")
    train_step = _make_train_step(text_model, image_projection, optimizer, config.margin,
                                  policy.jit_compile, fuse_update=fuse_update)
    writer = tf.summary.create_file_writer(os.path.join(config.workdir, "train"))
    # DS-SJE never treats a pair with the same group id as a negative: the
    # class (Reed et al.), the image (negatives="instance"), or one term each.
    columns = {"class": [pairs.class_ids], "instance": [pairs.image_index],
               "class+instance": [pairs.class_ids, pairs.image_index]}[config.negatives]
    groups = np.stack(columns, axis=1)

    window = {"loss": 0.0, "accuracy": 0.0, "steps": 0, "start": time.time()}
    last_window = {}
    nan_restores = 0
    current = int(checkpoint.step.numpy())
    while current < num_steps:
        batch = schedule.batch(current + int(checkpoint.data_offset.numpy()))
        onehot = encode(tf.constant(list(pairs.captions[batch]), tf.string))
        batch_features = tf.constant(train_features[pairs.image_index[batch]])
        loss, accuracy = train_step(onehot, batch_features, tf.constant(groups[batch]))
        current += 1
        if not math.isfinite(float(loss)):
            current = _restore_after_nan(config, float(loss), current, nan_restores, manager,
                                         checkpoint)
            nan_restores += 1
            continue
        checkpoint.step.assign(current)
        window["loss"] += float(loss)
        window["accuracy"] += float(accuracy)
        window["steps"] += 1

        if current % config.log_every == 0 or current == num_steps:
            last_window = _log_window(window, current, num_steps, config.batch_size, writer)
            with writer.as_default(step=current):
                tf.summary.scalar("learning_rate", float(optimizer.learning_rate))
            window = {"loss": 0.0, "accuracy": 0.0, "steps": 0, "start": time.time()}
        if current % config.checkpoint_every == 0 and current < num_steps:
            manager.save(checkpoint_number=current)
    writer.flush()
    return last_window


def _restore_after_nan(config, loss: float, failed_step: int, restores_so_far: int, manager,
                       checkpoint) -> int:
    """Stop, or restore the newest checkpoint, after a non-finite loss; return the step to resume at.

    After a restore, the data continues after the failing batch, because the
    same batches with the same dropout masks would lead to the same NaN.
    """
    message = (f"The DS-SJE loss was {loss} at step {failed_step}; that update was not "
               "applied.")
    if config.on_nan == "stop":
        raise FloatingPointError(
            message + " Lower --learning_rate, or pass --on_nan=restore to continue from "
            "the newest checkpoint.")
    if restores_so_far >= config.max_nan_restores:
        raise FloatingPointError(
            message + f" Stopped after {config.max_nan_restores} restores "
            "(--max_nan_restores). Lower --learning_rate and rerun; the run resumes from its "
            "newest checkpoint.")
    data_position = failed_step + int(checkpoint.data_offset.numpy())
    latest = manager.latest_checkpoint
    checkpoint.restore(latest).expect_partial()
    restored_step = int(checkpoint.step.numpy())
    checkpoint.data_offset.assign(data_position - restored_step)
    logging.warning("%s Restored %s (step %d), restore %d of %d; the data continues after the "
                    "failing batch.", message, latest, restored_step, restores_so_far + 1,
                    config.max_nan_restores)
    return restored_step


def _log_window(window: dict, current: int, num_steps: int, batch_size: int, writer) -> dict:
    elapsed = max(time.time() - window["start"], 1e-9)
    means = {
        "loss": window["loss"] / window["steps"],
        "accuracy": window["accuracy"] / window["steps"],
        "examples_per_second": window["steps"] * batch_size / elapsed,
    }
    logging.info("step %d/%d: loss %.4f, accuracy %.3f, %.0f examples/s", current, num_steps,
                 means["loss"], means["accuracy"], means["examples_per_second"])
    with writer.as_default(step=current):
        for name, value in means.items():
            tf.summary.scalar(name, value)
    return means


def _finish(config, text_encoder, image_projection, features, test_records, step, manager,
            last_window) -> dict:
    """Save the final checkpoint and weights, evaluate on the test split, return the summary."""
    final_step = int(step.numpy())
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(
            f"-{final_step}"):
        manager.save(checkpoint_number=final_step)
    weights_path = encoder_lib.save_text_encoder(text_encoder.model, config.workdir)
    projection_path = os.path.join(config.workdir, PROJECTION_WEIGHTS_FILE)
    temp_path = os.path.join(config.workdir, ".tmp-" + PROJECTION_WEIGHTS_FILE)
    image_projection.save_weights(temp_path)
    os.replace(temp_path, projection_path)
    logging.info("Wrote %s and %s at step %d.", weights_path, projection_path, final_step)

    summary = {"step": final_step}
    if last_window:
        summary.update({f"train_{name}": value for name, value in last_window.items()})
    else:
        # A rerun of a finished run trained no step: keep the recorded figures.
        previous = workdir_lib.previous_summary(os.path.join(config.workdir, EVAL_FILE),
                                                final_step)
        summary.update({name: value for name, value in previous.items()
                        if name.startswith("train_")})
    if test_records and "test" in features:
        if len({int(record.class_id) for record in test_records}) < 2:
            logging.warning("The test split has fewer than 2 classes; the zero-shot "
                            "evaluation is skipped.")
        else:
            result = zero_shot_accuracy(text_encoder, image_projection, features["test"],
                                        test_records)
            logging.info("Zero-shot class retrieval on the test split: %.3f over %d images "
                         "and %d classes (chance %.3f).", result["zero_shot_accuracy"],
                         result["num_images"], result["num_classes"],
                         result["chance_accuracy"])
            summary.update(result)
    workdir_lib.write_json_atomically(os.path.join(config.workdir, EVAL_FILE), summary)
    return summary


def load_image_projection(workdir: str) -> keras.Model:
    """Load the image-side projection saved by a finished sdn-train-text run."""
    config = workdir_lib.read_config(workdir)
    workdir_lib.check_kind(config, workdir, encoder_lib.WORKDIR_KIND)
    path = os.path.join(workdir, PROJECTION_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise workdir_lib.WorkdirError(
            f"{path!r} not found: the sdn-train-text run in {workdir!r} did not finish. "
            "Rerun sdn-train-text with that --workdir to finish it.")
    projection = build_image_projection(int(config["embedding_dim"]),
                                        feature_dim=int(config.get("image_feature_dim",
                                                                   IMAGE_FEATURE_DIM)))
    projection.load_weights(path)
    return projection


__all__ = [
    "IMAGE_FEATURE_TAPS", "IMAGE_FEATURE_DIM", "NEGATIVES", "image_feature_dim",
    "image_features_description", "MUST_MATCH", "TextTrainConfig", "as_config",
    "workdir_config", "compute_image_features", "feature_statistics", "build_image_projection",
    "load_image_features", "caption_pairs", "PairSchedule", "NeighbourSchedule",
    "nearest_images", "neighbour_schedule", "NEIGHBOUR_POOL", "NEIGHBOUR_SPACES",
    "to_greyscale", "LEARNING_RATE_DECAYS", "total_steps",
    "zero_shot_accuracy", "TrainedTextEncoder", "train_text_encoder", "load_image_projection",
]
