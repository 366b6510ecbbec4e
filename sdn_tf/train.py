"""Training library behind `sdn-train`: one SDN stage from a config to a workdir.

The run directory is the state. Rerunning the same command restores the
newest checkpoint, skips the batches already seen, and continues the step
counter; `init_from` starts a new run (usually Stage-II) from the generator of
a finished one (usually Stage-I), as the released code did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sdn_tf import distribute as distribute_lib
from sdn_tf import precision as precision_lib
from sdn_tf import workdir as workdir_lib
from sdn_tf.data import pipeline
from sdn_tf.data.datasets import class_lists_of, load_split
from sdn_tf.generator import build_generator, set_embedding_statistics
from sdn_tf.losses import parse_tap_weights
from sdn_tf.model import SDNModel, TeacherTapCache
from sdn_tf.schemes import check_scheme, record_default_scheme, scheme_terms
from sdn_tf.teacher import (build_teacher, describe_weights_choice, rgb_to_teacher_space,
                             teacher_space_to_rgb)

KIND = "sdn"
GENERATOR_WEIGHTS = "generator.weights.h5"
FINAL_STATE = "final.json"
# Settings that shape the model, the loss or the data: resuming must not change them.
MUST_MATCH = ("scheme", "stage", "image_size", "num_images", "teacher_preset",
              "teacher_weights", "dataset", "text_embeddings", "text_encoder", "embedding_dim",
              "tap_weights", "image_weight", "crop", "generator_init", "image_gain",
              "normalise_embeddings", "whiten_embeddings")
# Values of MUST_MATCH settings added after runs were already written, for
# stored configs that lack them.
SETTINGS_ADDED_LATER = {"whiten_embeddings": False}
NUM_SAMPLE_CAPTIONS = 6


@dataclasses.dataclass
class SDNConfig:
    workdir: str
    stage: int = 1
    dataset: str = "shapes"
    data_dir: Optional[str] = None
    image_size: int = 64
    crop: str = "none"
    train_classes: tuple = ()
    test_classes: tuple = ()
    teacher_weights: str = "imagenet"
    teacher_preset: str = "released_code"
    text_encoder: Optional[str] = None
    text_embeddings: str = "encoder"
    init_from: Optional[str] = None
    batch_size: int = 12
    learning_rate: float = 1e-4
    epochs: int = 100
    max_steps: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 500
    seed: int = 0
    precision: str = "auto"
    jit_compile: str = "auto"
    tap_weights: str = ""
    image_weight: float = 1.0
    num_images: int = 1
    scheme: str = "sdn"  # see sdn_tf.schemes
    init_image_bias: bool = False
    generator_init: str = "released"  # see sdn_tf.generator.GENERATOR_INITS
    image_gain: float = 1.0
    normalise_embeddings: bool = False
    whiten_embeddings: bool = False
    on_nan: str = "stop"
    max_nan_restores: int = 3
    embedding_dim: int = 0  # filled in from the text embeddings
    # Filled in from --text_encoder's weights file (`encoder.weights_digest`).
    text_encoder_digest: Optional[str] = None
    strategy: str = "default"  # see sdn_tf.distribute.STRATEGIES
    background_checkpoints: str = "auto"  # "auto" (GPU only), "true" or "false"
    cache_teacher_taps: bool = False  # see sdn_tf.model.TeacherTapCache

    def resolved(self) -> dict:
        payload = dataclasses.asdict(self)
        for key in ("workdir", "data_dir", "text_encoder", "init_from"):
            if payload[key]:
                payload[key] = os.path.abspath(os.path.expanduser(payload[key]))
        if payload["teacher_weights"] not in ("imagenet", "random"):
            payload["teacher_weights"] = describe_weights_choice(payload["teacher_weights"])
        return payload


_LOADED_ENCODER = {}


def _text_encoder(workdir: str):
    """Load the text encoder of `workdir`, reusing the last one while its weights file is unchanged.

    train() embeds the training captions and then the sample captions, and
    would otherwise rebuild the encoder for each call.
    """
    from sdn_tf.text.encoder import WEIGHTS_FILE, load_text_encoder

    weights = os.path.join(workdir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        return load_text_encoder(workdir)  # raises the error that names the missing file
    key = (os.path.abspath(workdir), os.stat(weights).st_mtime_ns)
    if key not in _LOADED_ENCODER:
        _LOADED_ENCODER.clear()
        _LOADED_ENCODER[key] = load_text_encoder(workdir)
    return _LOADED_ENCODER[key]


def embed_records(config: SDNConfig, records) -> np.ndarray:
    """Return one embedding row per (image, caption) pair, in `caption_pairs` order."""
    if config.text_embeddings == "pickle":
        missing = [r.name for r in records if r.embeddings is None]
        if missing:
            raise ValueError(
                f"--text_embeddings=pickle, but {len(missing)} images have no precomputed "
                f"embeddings (first: {missing[0]!r}). Put char-CNN-RNN-embeddings.pickle in "
                "the split folder or use --text_embeddings=encoder."
            )
        rows = []
        for record in records:
            if len(record.embeddings) != len(record.captions):
                raise ValueError(
                    f"{record.name!r} has {len(record.captions)} captions but "
                    f"{len(record.embeddings)} embeddings; they must align."
                )
            rows.append(np.asarray(record.embeddings, np.float32))
        return np.concatenate(rows)
    if not config.text_encoder:
        raise ValueError(
            "--text_embeddings=encoder needs --text_encoder=WORKDIR, the workdir of an "
            "sdn-train-text run."
        )
    captions = [caption for record in records for caption in record.captions]
    cache_path = _embedding_cache_path(config.text_encoder, config.text_encoder_digest,
                                       captions)
    cached = _read_embedding_cache(cache_path, len(captions))
    if cached is not None:
        logging.info("Read the embeddings of %d captions from %s.", len(captions), cache_path)
        return cached
    encoder = _text_encoder(config.text_encoder)
    logging.info("Embedding %d captions with the text encoder in %s.", len(captions),
                 config.text_encoder)
    embeddings = encoder.embed(captions)
    _write_embedding_cache(cache_path, embeddings)
    return embeddings


# Caption embeddings are kept in the text encoder's workdir, one file per
# (encoder weights, caption list) pair, because Stage-II and every rerun embed
# the same captions again. Embedding the 24,000 shapes captions took 25 to 31 s
# on 2 CPU cores, and reading them back takes well under a second.
EMBEDDING_CACHE_DIR = "caption_embeddings"


def _embedding_cache_path(encoder_dir: str, weights: Optional[str], captions) -> str:
    """Name the cache file by the encoder's weights digest and a hash of the captions in order.

    `weights` is the digest train() computed at start; when None (a direct
    call), the weights file is hashed here.
    """
    from sdn_tf.text.encoder import weights_digest

    digest = hashlib.sha256()
    for caption in captions:
        digest.update(caption.encode("utf-8"))
        digest.update(b"\0")  # Separates captions, so ["ab", "c"] and ["a", "bc"] differ.
    name = f"{weights or weights_digest(encoder_dir)}-{digest.hexdigest()[:16]}.npy"
    return os.path.join(encoder_dir, EMBEDDING_CACHE_DIR, name)


def _read_embedding_cache(path: str, num_captions: int) -> Optional[np.ndarray]:
    """Return the cached float32 [num_captions, D] embeddings, or None when absent or unusable."""
    if not os.path.isfile(path):
        return None
    try:
        embeddings = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        logging.warning("Ignoring the unreadable caption embedding cache %s (%s); embedding "
                        "the captions again.", path, error)
        return None
    if (embeddings.dtype != np.float32 or embeddings.ndim != 2
            or embeddings.shape[0] != num_captions or not np.all(np.isfinite(embeddings))):
        logging.warning("Ignoring the caption embedding cache %s: it contains %s %s values, not "
                        "%d finite float32 rows; embedding the captions again.", path,
                        embeddings.shape, embeddings.dtype, num_captions)
        return None
    return embeddings


def _write_embedding_cache(path: str, embeddings: np.ndarray) -> None:
    """Write the cache under a temporary name and rename it, so readers never see half a file."""
    temp_path = f"{path}.tmp-{os.getpid()}.npy"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(temp_path, embeddings, allow_pickle=False)
        os.replace(temp_path, path)
    except OSError as error:
        # A read-only encoder workdir costs time on the next run, not correctness.
        logging.warning("Could not cache caption embeddings in %s (%s); later runs embed the "
                        "captions again.", path, error)
        if os.path.exists(temp_path):
            os.remove(temp_path)


def _image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile uint8 images [N, H, W, 3] into one [rows*H, columns*W, 3] image."""
    count, height, width, _ = images.shape
    rows = math.ceil(count / columns)
    grid = np.zeros((rows * height, columns * width, 3), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return grid


def to_uint8_rgb(teacher_space_images: tf.Tensor, preset: str) -> tf.Tensor:
    """Convert generator output in teacher space to uint8 RGB."""
    rgb = teacher_space_to_rgb(tf.cast(teacher_space_images, tf.float32), preset)
    return tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8)


class _Samples:
    """Fixed training and held-out captions whose images go to TensorBoard."""

    def __init__(self, config, train_records, train_images, train_embeddings,
                 test_records, test_images, test_embeddings):
        self.groups = []
        for label, records, images, embeddings in (
                ("train", train_records, train_images, train_embeddings),
                ("heldout", test_records, test_images, test_embeddings)):
            if records is None:
                continue
            count = min(NUM_SAMPLE_CAPTIONS, len(records))
            first_pair = np.cumsum([0] + [len(r.captions) for r in records])[:count]
            self.groups.append((label, [records[i].captions[0] for i in range(count)],
                                images[:count], embeddings[first_pair]))
        self.preset = config.teacher_preset
        self.num_images = config.num_images

    def write(self, generator, step: int) -> None:
        for label, captions, real, embeddings in self.groups:
            fake = generator(embeddings, training=False)["image"]
            rows = [real]
            for k in range(self.num_images):
                rows.append(to_uint8_rgb(fake[..., 3 * k:3 * k + 3], self.preset).numpy())
            grid = _image_grid(np.concatenate(rows), columns=len(real))
            tf.summary.image(f"samples/{label}", grid[None], step=step)
            tf.summary.text(f"samples/{label}_captions",
                            "\n\n".join(f"{i + 1}. {c}" for i, c in enumerate(captions)),
                            step=step)


def _check_text_encoder_unchanged(stored: dict, config: SDNConfig, where: str) -> None:
    """Raise when the run described by `stored` embedded captions with other encoder weights.

    Runs written before the digest was recorded lack it and pass.
    """
    old = stored.get("text_encoder_digest")
    if old is None or config.text_encoder_digest is None or old == config.text_encoder_digest:
        return
    raise workdir_lib.WorkdirError(
        f"{where} embedded its captions with text encoder weights {old} "
        f"({stored.get('text_encoder')}), but --text_encoder={config.text_encoder!r} now "
        f"contains weights {config.text_encoder_digest}: the encoder was retrained or replaced, "
        "and the generator's embeddings and their statistics would no longer match. Use "
        "the encoder that run used, or start a new --workdir with this one.")


def _check_init_from(config: SDNConfig) -> dict:
    """Check --init_from's kind, generator settings and weights file, and return its config."""
    source = config.init_from
    stored = workdir_lib.read_config(source, "--init_from")
    workdir_lib.check_kind(stored, source, KIND, "--init_from")
    # Runs written before --image_gain, --normalise_embeddings and
    # --whiten_embeddings existed lack those keys because they had gain 1 and
    # no normalisation.
    defaults = {"image_gain": 1.0, "normalise_embeddings": False, "whiten_embeddings": False}
    keys = ["image_size", "num_images", "teacher_preset", "image_gain", "normalise_embeddings",
            "whiten_embeddings"]
    if config.embedding_dim:
        keys.insert(3, "embedding_dim")
    for key in keys:
        if stored.get(key, defaults.get(key)) != getattr(config, key):
            raise workdir_lib.WorkdirError(
                f"--init_from={source!r} was trained with {key}={stored.get(key)!r}, but this "
                f"run uses {key}={getattr(config, key)!r}; the generators do not fit. "
                f"Pass --{key}={stored.get(key, defaults.get(key))!r} to this run."
            )
    _check_text_encoder_unchanged(stored, config, f"--init_from={source!r}")
    path = os.path.join(source, GENERATOR_WEIGHTS)
    if not os.path.isfile(path):
        raise workdir_lib.WorkdirError(
            f"{path!r} not found: the run in --init_from={source!r} has not finished. "
            "Rerun its sdn-train command to completion first."
        )
    return stored


def _load_init_weights(config: SDNConfig, generator) -> None:
    # Checked again now that embedding_dim is known.
    stored = _check_init_from(config)
    path = os.path.join(config.init_from, GENERATOR_WEIGHTS)
    generator.load_weights(path)
    logging.info("Initialised the generator from %s (Stage %s run).", path, stored.get("stage"))


def _schedule(config: SDNConfig, num_pairs: int) -> tuple:
    """Return (steps per epoch, total steps) for `num_pairs` (image, caption) pairs."""
    steps_per_epoch = num_pairs // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps) if config.epochs else config.max_steps
    return steps_per_epoch, total_steps


def _finished_losses(config: SDNConfig, train_records, resuming: bool) -> Optional[dict]:
    """Return the recorded losses if the run in the workdir already reached its last step.

    A rerun of a finished command then returns at once instead of embedding
    every training caption (most of a minute on a CPU) to train no step.
    None means there is work to do.
    """
    if not resuming or config.strategy != "default":
        return None
    if not os.path.isfile(os.path.join(config.workdir, GENERATOR_WEIGHTS)):
        return None
    _, total_steps = _schedule(config, sum(len(record.captions) for record in train_records))
    summary = workdir_lib.previous_summary(os.path.join(config.workdir, FINAL_STATE),
                                           total_steps)
    if not summary:
        return None
    logging.info("The run in %s already reached step %d; nothing to train. Raise "
                 "--max_steps or --epochs to train further.", config.workdir, total_steps)
    return summary.get("losses", {})


def _check_before_loading(config: SDNConfig) -> bool:
    """Raise the errors a user can fix before the slow work of loading and embedding.

    Embedding every training caption takes most of a minute on a CPU, and
    the run writes its config.json only after these checks pass. Returns
    whether the workdir contains a run to resume.
    """
    if config.text_embeddings == "encoder":
        if not config.text_encoder:
            raise ValueError(
                "--text_embeddings=encoder needs --text_encoder=WORKDIR, the workdir of an "
                "sdn-train-text run.")
        from sdn_tf.text.encoder import weights_digest

        _text_encoder(config.text_encoder)  # names a missing or unfinished encoder
        config.text_encoder_digest = weights_digest(config.text_encoder)
    # embedding_dim is known only after embedding; open_workdir checks it later.
    early_keys = [key for key in MUST_MATCH if key != "embedding_dim"]
    state, _ = workdir_lib.check_resume(config.workdir, KIND, config.resolved(), early_keys,
                                        SETTINGS_ADDED_LATER)
    if state == "resume":
        _check_text_encoder_unchanged(workdir_lib.read_config(config.workdir), config,
                                      f"The run in --workdir={config.workdir!r}")
    if config.init_from:
        _check_init_from(config)
    elif config.stage == 2:
        logging.warning("Stage-II starts from a randomly initialised generator. SDN trains "
                        "Stage-II from a Stage-I result: pass --init_from=STAGE1_WORKDIR.")
    return state == "resume"


def _set_image_bias_to_mean(generator, images: np.ndarray, config: SDNConfig) -> None:
    """Start g_img's bias at the mean training colour in teacher space.

    The released code starts every bias at zero, so the generator first spends
    many steps growing its output from about 0 to the 0-255 pixel scale. This
    option skips that phase for short runs; it is off by default.
    """
    mean_rgb = images.reshape(-1, 3).mean(axis=0).astype(np.float32)
    mean = rgb_to_teacher_space(tf.constant(mean_rgb), config.teacher_preset).numpy()
    layer = generator.get_layer("g_img")
    # The image is image_gain * (g_img's output), so the bias is divided by it.
    layer.bias.assign(np.tile(mean / config.image_gain, config.num_images))
    logging.info("Initialised the g_img bias to the mean training colour: %s in teacher "
                 "space (%s), RGB %s.", np.round(mean, 1).tolist(), config.teacher_preset,
                 np.round(mean_rgb, 1).tolist())


def _save_generator(generator, workdir: str) -> str:
    final = os.path.join(workdir, GENERATOR_WEIGHTS)
    temporary = os.path.join(workdir, ".tmp-" + GENERATOR_WEIGHTS)
    generator.save_weights(temporary)
    os.replace(temporary, final)
    return final


def train(config: SDNConfig, train_records=None, test_records=None) -> dict:
    """Train one SDN stage and return the final mean losses.

    Records default to the dataset's train and test splits; tests pass small
    hand-made lists.
    """
    if config.cache_teacher_taps and config.strategy != "default":
        raise ValueError(
            f"--cache_teacher_taps works only with --strategy=default, not "
            f"--strategy={config.strategy}: every replica would hold the whole cache. Drop "
            "one of the two flags.")
    # First, because MultiWorkerMirroredStrategy configures collective ops at startup.
    strategy = distribute_lib.build_strategy(config.strategy)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"--batch_size={config.batch_size} is the global batch and must divide evenly "
            f"among the {strategy.num_replicas_in_sync} replicas of --strategy="
            f"{config.strategy}; use a multiple of {strategy.num_replicas_in_sync}.")
    policy = precision_lib.choose_policy(config.precision, config.jit_compile)
    precision_lib.apply_policy(policy)
    keras.utils.set_random_seed(config.seed)
    check_scheme(config.scheme, config.stage, config.num_images, config.init_from,
                 config.image_weight)
    terms = scheme_terms(config.scheme, config.stage, parse_tap_weights(config.tap_weights),
                         config.image_weight)
    if config.init_from and os.path.abspath(config.init_from) == os.path.abspath(config.workdir):
        raise workdir_lib.WorkdirError("--init_from must name another workdir than --workdir.")
    own_workdir = distribute_lib.worker_workdir(config.workdir, strategy)
    if own_workdir != config.workdir:
        config = dataclasses.replace(config, workdir=own_workdir)

    resuming = _check_before_loading(config)
    with strategy.scope():
        # Before the data, so a bad --teacher_weights fails within seconds.
        teacher = build_teacher(config.image_size, config.teacher_weights,
                                config.teacher_preset)

    if train_records is None:
        train_records = load_split(config.dataset, config.data_dir, "train",
                                   use_embeddings=config.text_embeddings == "pickle",
                                   class_lists=class_lists_of(config))
    finished = _finished_losses(config, train_records, resuming)
    if finished is not None:
        return finished
    if test_records is None:
        try:
            test_records = load_split(config.dataset, config.data_dir, "test",
                                      use_embeddings=config.text_embeddings == "pickle",
                                      class_lists=class_lists_of(config))
        except (FileNotFoundError, ValueError) as error:
            logging.warning("No held-out split for samples: %s", error)
            test_records = None
    train_embeddings = embed_records(config, train_records)
    config.embedding_dim = int(train_embeddings.shape[1])
    record_default_scheme(config.workdir)
    resuming = workdir_lib.open_workdir(config.workdir, KIND, config.resolved(), MUST_MATCH,
                                        defaults=SETTINGS_ADDED_LATER)

    train_images = pipeline.load_images(train_records, config.image_size, config.crop == "bbox")
    pair_image_index, _ = pipeline.caption_pairs(train_records)
    test_images = test_embeddings = None
    if test_records:
        sample_records = test_records[:NUM_SAMPLE_CAPTIONS]
        test_images = pipeline.load_images(sample_records, config.image_size,
                                           config.crop == "bbox")
        test_embeddings = embed_records(config, sample_records)
        test_records = sample_records

    with strategy.scope():
        generator = build_generator(config.image_size, config.embedding_dim,
                                    config.num_images, seed=config.seed,
                                    init=config.generator_init, image_gain=config.image_gain,
                                    normalise_embeddings=config.normalise_embeddings,
                                    whiten_embeddings=config.whiten_embeddings)
        fuse_ops = policy.fuse_ops and config.strategy == "default"
        model = SDNModel(generator, teacher, terms, config.teacher_preset, config.num_images,
                         fuse_ops=fuse_ops)
        if fuse_ops:
            logging.info("XLA compiles the loss terms and the optimizer update on their own.")
        optimizer = precision_lib.make_optimizer(policy, config.learning_rate)
        model.optimizer = optimizer
        optimizer.build(generator.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

    checkpoint = tf.train.Checkpoint(step=step, generator=generator, optimizer=optimizer)
    checkpoint_writer = _checkpoint_writer(config, policy, checkpoint, generator, optimizer,
                                           step)
    # The writer's checkpoints restore into `checkpoint`, whichever object wrote them.
    if resuming and workdir_lib.restore_latest(checkpoint_writer.manager, checkpoint):
        logging.info("Resuming at step %d.", int(step.numpy()))
    elif config.init_from:
        _load_init_weights(config, generator)
    else:
        if config.init_image_bias:
            _set_image_bias_to_mean(generator, train_images, config)
        if config.normalise_embeddings:
            mean, scale = set_embedding_statistics(generator, train_embeddings)
            logging.info("Normalising embeddings: mean norm %.4g, scale %.4g, from %d training "
                         "caption embeddings.", float(np.linalg.norm(mean)), scale,
                         len(train_embeddings))
        elif config.whiten_embeddings:
            mean, directions = set_embedding_statistics(generator, train_embeddings)
            logging.info("Whitening embeddings: mean norm %.4g, %.1f directions kept, from %d "
                         "training caption embeddings.", float(np.linalg.norm(mean)), directions,
                         len(train_embeddings))

    steps_per_epoch, total_steps = _schedule(config, len(pair_image_index))
    start = int(step.numpy())
    logging.info(
        "Stage-%s training (scheme %s) on %d images, %d caption pairs: %d steps per epoch, "
        "%d steps in total, batch %d, learning rate %g, teacher %s (%s preset), generator "
        "%.1fM parameters.",
        "I" if config.stage == 1 else "II", config.scheme, len(train_records),
        len(pair_image_index),
        steps_per_epoch, total_steps, config.batch_size, config.learning_rate,
        describe_weights_choice(config.teacher_weights), config.teacher_preset,
        generator.count_params() / 1e6)

    if config.cache_teacher_taps:
        model.tap_cache = TeacherTapCache(teacher, train_images, config.teacher_preset)
    dataset = pipeline.pair_dataset(train_images, train_embeddings, pair_image_index,
                                    config.batch_size, seed=config.seed, start_step=start,
                                    with_image_index=config.cache_teacher_taps)
    if config.strategy != "default":
        dataset = strategy.experimental_distribute_dataset(dataset)
    step_fn = distribute_lib.distributed_step(strategy, model.train_step, policy.jit_compile)
    samples = _Samples(config, train_records, train_images, train_embeddings,
                       test_records, test_images, test_embeddings)
    writer = tf.summary.create_file_writer(os.path.join(config.workdir, "train"))

    last_losses = {}
    with writer.as_default():
        if start == 0:
            samples.write(generator, 0)
            # A step-0 checkpoint lets --on_nan=restore recover from an early NaN.
            checkpoint_writer.save(0)
        iterator = iter(dataset)
        window_start = time.perf_counter()
        window_steps = 0
        if start < total_steps:
            logging.info("Compiling the training step (the first step is slow).")
        current = start
        nan_restores = 0
        while current < total_steps:
            losses = step_fn(next(iterator))
            current += 1
            if not math.isfinite(float(losses["loss"])):
                # train_step has already refused the update; decide what follows.
                iterator, current = _recover_from_nan(
                    config, losses, current, nan_restores, checkpoint_writer, checkpoint,
                    step, train_images, train_embeddings, pair_image_index, strategy)
                nan_restores += 1
                continue
            step.assign(current)
            window_steps += 1
            if current == start + 1:
                logging.info("First step done in %.1f s.", time.perf_counter() - window_start)
                window_start = time.perf_counter()
                window_steps = 0
            if current % config.log_every == 0 or current == total_steps:
                last_losses = _log_window(model, current, total_steps, config, window_steps,
                                          time.perf_counter() - window_start)
                window_start = time.perf_counter()
                window_steps = 0
            if current % config.sample_every == 0 or current == total_steps:
                samples.write(generator, current)
            if current % config.checkpoint_every == 0 or current == total_steps:
                checkpoint_writer.save(current)
        writer.flush()
    checkpoint_writer.wait()

    path = _save_generator(generator, config.workdir)
    final_path = os.path.join(config.workdir, FINAL_STATE)
    if not last_losses:  # no step ran: the run had already finished
        last_losses = workdir_lib.previous_summary(final_path, start).get("losses", {})
        logging.info("The run had already reached step %d; %s keeps its losses.", start,
                     final_path)
    workdir_lib.write_json_atomically(
        final_path, {"step": int(step.numpy()), "losses": last_losses, "generator_weights": path})
    logging.info("Finished at step %d; generator weights in %s.", int(step.numpy()), path)
    return last_losses


def _checkpoint_writer(config, policy, checkpoint, generator, optimizer, step):
    """Return the run's CheckpointWriter, which writes from a host copy on a background thread.

    The copy is a second generator and optimizer built the same way, so its
    checkpoints have the training checkpoint's structure. By default only GPU
    runs write in the background: on a 2-core CPU, background writes of a
    224x224 Stage-II checkpoint slowed the steps around them more than the
    write itself took in the training thread. Under a distribution strategy
    checkpoints are written in the training thread.
    """
    background = (config.background_checkpoints == "true"
                  or (config.background_checkpoints == "auto" and policy.device == "gpu"))
    if background and config.strategy != "default":
        logging.info("Checkpoints are written in the training thread under --strategy=%s.",
                     config.strategy)
        background = False
    if not background:
        return workdir_lib.CheckpointWriter(checkpoint, config.workdir, config.keep_checkpoints)
    # NOTE: not yet checked on a GPU machine that the copy lands in host memory.
    # In GPU memory it would double the memory that the generator and Adam take.
    with tf.device("/cpu:0"):
        shadow_generator = build_generator(
            config.image_size, config.embedding_dim, config.num_images, seed=config.seed,
            init=config.generator_init, image_gain=config.image_gain,
            normalise_embeddings=config.normalise_embeddings,
            whiten_embeddings=config.whiten_embeddings)
        shadow_optimizer = precision_lib.make_optimizer(policy, config.learning_rate)
        shadow_optimizer.build(shadow_generator.trainable_variables)
        shadow_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    shadow = tf.train.Checkpoint(step=shadow_step, generator=shadow_generator,
                                 optimizer=shadow_optimizer)
    pairs = list(zip([step, *generator.weights, *optimizer.variables],
                     [shadow_step, *shadow_generator.weights, *shadow_optimizer.variables]))
    copy_bytes = sum(int(np.prod(real.shape)) * tf.as_dtype(real.dtype).size
                     for real, _ in pairs)
    logging.info("Checkpoints are written on a background thread from a copy in host memory "
                 "(%.0f MB); --background_checkpoints=false writes them in the training thread.",
                 copy_bytes / 1e6)
    return workdir_lib.CheckpointWriter(checkpoint, config.workdir, config.keep_checkpoints,
                                        shadow=shadow, pairs=pairs)


def _recover_from_nan(config, losses, failed_step, restores_so_far, checkpoints, checkpoint, step,
                      train_images, train_embeddings, pair_image_index, strategy=None):
    """Stop, or restore the newest checkpoint, after a non-finite loss.

    Returns a new batch iterator and the step counter to continue from. The
    restored run starts its data after the failing batch, so the same batch
    cannot fail again.
    """
    bad_parts = sorted(name for name, value in losses.items()
                       if name != "loss" and not math.isfinite(float(value)))
    message = (f"Non-finite loss at step {failed_step} (non-finite parts: "
               f"{', '.join(bad_parts) or 'loss'}); the update was not applied.")
    if config.on_nan == "stop":
        raise FloatingPointError(
            message + " Lower --learning_rate, check the data for NaN values, or pass "
            "--on_nan=restore to continue from the last checkpoint.")
    if restores_so_far >= config.max_nan_restores:
        raise FloatingPointError(
            message + f" Gave up after {config.max_nan_restores} restores (--max_nan_restores).")
    latest = checkpoints.latest_checkpoint
    if latest is None:
        raise FloatingPointError(message + " No checkpoint exists yet to restore from.")
    checkpoint.restore(latest)
    restored_step = int(step.numpy())
    logging.warning("%s Restored %s (step %d), restore %d of %d; data continues after the "
                    "failing batch.", message, latest, restored_step, restores_so_far + 1,
                    config.max_nan_restores)
    dataset = pipeline.pair_dataset(train_images, train_embeddings, pair_image_index,
                                    config.batch_size, seed=config.seed, start_step=failed_step,
                                    with_image_index=config.cache_teacher_taps)
    if config.strategy != "default":
        dataset = strategy.experimental_distribute_dataset(dataset)
    return iter(dataset), restored_step


def _log_window(model, current, total_steps, config, window_steps, seconds) -> dict:
    losses = {name: float(tracker.result()) for name, tracker in model.loss_trackers.items()}
    skipped = int(model.skipped_steps.result())
    examples_per_second = window_steps * config.batch_size / max(seconds, 1e-9)
    for name, value in losses.items():
        tf.summary.scalar(f"loss/{name}", value, step=current)
    tf.summary.scalar("learning_rate", config.learning_rate, step=current)
    tf.summary.scalar("examples_per_second", examples_per_second, step=current)
    message = (f"step {current}/{total_steps}: loss {losses['loss']:.4f}, "
               f"image {losses['image']:.4f}")
    for part in ("stage1_taps", "stage2_taps"):
        if part in losses:
            message += f", {part} {losses[part]:.4f}"
    message += f", {examples_per_second:.1f} examples/s"
    if skipped:
        message += f", {skipped} steps skipped for a non-finite loss"
    logging.info(message)
    for tracker in model.metrics:
        tracker.reset_state()
    with open(os.path.join(config.workdir, "train_log.jsonl"), "a", encoding="utf-8") as file:
        file.write(json.dumps({"step": current, "examples_per_second": examples_per_second,
                               "skipped_steps": skipped, **losses}) + "\n")
    return losses
