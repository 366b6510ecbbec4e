"""Measure the input pipeline's images/s against the training step's examples/s.

  python tools/benchmark_pipeline.py --data_dir=path/to/flowers102/jpg \
      --output=pipeline_benchmark.json

Each input source is timed end to end at --image_size, --repeats times, and the
median is reported:

  (a) image files: `pipeline.load_images` reads, decodes and resizes the JPEG or PNG
      files of --data_dir in parallel with tf.data.
  (b) prepared TFRecords: `tfrecords.write_prepared` stores the same images once at
      --image_size. Each pass runs `read_tfrecord_split` (with its checksums) and
      `pipeline.load_images`.
  (c) in-memory cache: batches of `pipeline.pair_dataset`, which training iterates
      after decoding the images once.

The training step is measured with `sdn_tf.train.train` at --image_size and
--batch_size for Stage-I and Stage-II (random teacher weights, precision "auto",
random 1024-dimensional caption embeddings), or taken from
--train_examples_per_second. The folder's images get ten placeholder captions each,
so an epoch has ten (image, caption) pairs per image as in Reed et al.'s captions.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from sdn_tf import precision as precision_lib
from sdn_tf.data import pipeline, tfrecords
from sdn_tf.data.records import ImageRecord, SkipReport
from sdn_tf.train import SDNConfig, train

FLAGS = flags.FLAGS

flags.DEFINE_string("data_dir", None, "Folder of JPEG or PNG photographs, such as "
                    "Oxford-102's jpg/ folder.")
flags.DEFINE_string("output", "pipeline_benchmark.json", "JSON file for the results.")
flags.DEFINE_integer("image_size", 224, "Side of the square training images in pixels.",
                     lower_bound=32)
flags.DEFINE_integer("batch_size", 12, "Examples per training step and per cached batch.",
                     lower_bound=1)
flags.DEFINE_integer("limit", 0, "Use only the first N images of --data_dir (0: all).",
                     lower_bound=0)
flags.DEFINE_integer("repeats", 3, "Timed passes per input source; the median is reported.",
                     lower_bound=1)
flags.DEFINE_integer("shards", 8, "TFRecord files for source (b).", lower_bound=1)
flags.DEFINE_integer("cache_batches", 400, "Batches timed from the in-memory cache.",
                     lower_bound=1)
flags.DEFINE_integer("train_steps", 4, "Training steps per stage; the first compiles "
                     "and is not timed.", lower_bound=2)
flags.DEFINE_integer("train_images", 24, "Images the training measurement uses.",
                     lower_bound=1)
flags.DEFINE_float("train_examples_per_second", None, "Skip the training measurement "
                   "and use this rate for both stages.")
flags.register_validator("train_examples_per_second", lambda value: value is None or value > 0,
                         message="--train_examples_per_second must be positive.")
flags.mark_flag_as_required("data_dir")

CAPTIONS_PER_IMAGE = 10
EMBEDDING_DIM = 1024  # Size of the rows of StackGAN's char-CNN-RNN-embeddings.pickle.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def folder_records(folder: str, limit: int) -> list[ImageRecord]:
    """Return one record per image file of `folder`, sorted by name, with placeholder captions."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(_IMAGE_SUFFIXES))
    if limit:
        names = names[:limit]
    if not names:
        raise ValueError(f"No .jpg, .jpeg or .png files in --data_dir={folder}.")
    rng = np.random.default_rng(0)
    records = []
    for name in names:
        stem = os.path.splitext(name)[0]
        records.append(ImageRecord(
            name=stem, image_path=os.path.join(folder, name),
            captions=tuple(f"placeholder caption {k} of {stem}"
                           for k in range(CAPTIONS_PER_IMAGE)),
            class_id=0,
            embeddings=rng.normal(size=(CAPTIONS_PER_IMAGE, EMBEDDING_DIM)).astype(np.float32)))
    return records


def time_passes(function, repeats: int) -> list[float]:
    """Run `function` `repeats` times and return the wall time of each run in seconds."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return seconds


def rate(count: int, seconds: list[float]) -> dict:
    rates = [count / s for s in seconds]
    return {"images_per_second": statistics.median(rates), "min": min(rates),
            "max": max(rates), "seconds": seconds, "images": count}


def measure_cache(images: np.ndarray, records: list, batch_size: int, batches: int,
                  repeats: int) -> dict:
    embeddings = np.concatenate([record.embeddings for record in records])
    pair_image_index, _ = pipeline.caption_pairs(records)
    dataset = pipeline.pair_dataset(images, embeddings, pair_image_index, batch_size, seed=0)
    iterator = iter(dataset)
    for _ in range(10):  # The first batches build the tables and fill the prefetch buffer.
        next(iterator)

    def consume():
        for _ in range(batches):
            next(iterator)

    return rate(batches * batch_size, time_passes(consume, repeats))


def measure_training(records: list, stage: int, workdir: str) -> float:
    """Train a few steps and return the examples/s logged over all steps after the first."""
    config = SDNConfig(workdir=workdir, stage=stage, dataset="folder",
                       image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                       teacher_weights="random", precision="auto", text_embeddings="pickle",
                       max_steps=FLAGS.train_steps, log_every=FLAGS.train_steps,
                       checkpoint_every=FLAGS.train_steps, sample_every=FLAGS.train_steps)
    train(config, records, records[:2])
    with open(os.path.join(workdir, "train_log.jsonl"), encoding="utf-8") as file:
        entries = [json.loads(line) for line in file]
    return float(entries[-1]["examples_per_second"])


def describe_machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    policy = precision_lib.choose_policy("auto")
    return {"platform": platform.platform(), "cpu": model,
            "cpus_available": len(os.sched_getaffinity(0)),
            "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__, "python": platform.python_version(),
            "training_precision": policy.precision, "training_xla": policy.jit_compile,
            "load_average_start": os.getloadavg()}


def print_table(results: dict) -> None:
    training = results["training_examples_per_second"]
    size = results["image_size"]
    print(f"\nInput pipeline at {size}x{size}, {results['images']} images, "
          f"batch {results['batch_size']}")
    print(f"{'source':42s} {'images/s':>10s} {'x Stage-I':>10s} {'x Stage-II':>10s}")
    for label, entry in results["sources"].items():
        value = entry["images_per_second"]
        print(f"{label:42s} {value:10.1f} {value / training['stage1']:10.1f} "
              f"{value / training['stage2']:10.1f}")
    print(f"{'preparing the TFRecords (once)':42s} "
          f"{results['preparation']['images_per_second']:10.1f}")
    for stage, label in (("stage1", "Stage-I"), ("stage2", "Stage-II")):
        print(f"{label + ' training step (examples/s)':42s} {training[stage]:10.2f}"
              f"  ({training['source']})")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    machine = describe_machine()
    records = folder_records(FLAGS.data_dir, FLAGS.limit)
    size = FLAGS.image_size
    scratch = tempfile.mkdtemp(prefix="sdn-pipeline-benchmark-")
    try:
        prepared = os.path.join(scratch, "prepared")
        start = time.perf_counter()
        manifest = tfrecords.write_prepared(
            prepared, {"train": (records, SkipReport())}, image_size=size,
            shards=FLAGS.shards, source={"dataset": None,
                                         "source_dir": os.path.abspath(FLAGS.data_dir)})
        preparation_seconds = time.perf_counter() - start
        count = manifest["splits"]["train"]["images"]
        logging.info("Timing (a): decoding %d image files.", len(records))
        files = rate(len(records), time_passes(
            lambda: pipeline.load_images(records, size), FLAGS.repeats))
        logging.info("Timing (b): reading %d images from TFRecords.", count)
        prepared_rate = rate(count, time_passes(
            lambda: pipeline.load_images(tfrecords.read_tfrecord_split(prepared, "train"), size),
            FLAGS.repeats))
        images = pipeline.load_images(records, size)
        logging.info("Timing (c): %d batches from the in-memory cache.", FLAGS.cache_batches)
        cache = measure_cache(images, records, FLAGS.batch_size, FLAGS.cache_batches,
                              FLAGS.repeats)

        if FLAGS.train_examples_per_second is not None:
            training = {"stage1": FLAGS.train_examples_per_second,
                        "stage2": FLAGS.train_examples_per_second,
                        "source": "--train_examples_per_second"}
        else:
            subset = records[:FLAGS.train_images]
            training = {"source": f"measured, {FLAGS.train_steps - 1} steps after the first"}
            for stage in (1, 2):
                logging.info("Timing Stage-%s training steps.", "I" * stage)
                training[f"stage{stage}"] = measure_training(
                    subset, stage, os.path.join(scratch, f"stage{stage}"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    shard_bytes = sum(shard["bytes"] for shard in manifest["splits"]["train"]["shards"])
    results = {
        "command_flags": {name: FLAGS[name].value for name in (
            "data_dir", "image_size", "batch_size", "limit", "repeats", "shards",
            "cache_batches", "train_steps", "train_images", "train_examples_per_second")},
        "machine": {**machine, "load_average_end": os.getloadavg()},
        "image_size": size,
        "batch_size": FLAGS.batch_size,
        "images": len(records),
        "sources": {
            "(a) image files, tf.data decode + resize": files,
            "(b) prepared TFRecords, read + decode": prepared_rate,
            "(c) in-memory cache, batches": cache,
        },
        "preparation": {"images_per_second": count / preparation_seconds,
                        "seconds": preparation_seconds, "tfrecord_megabytes": shard_bytes / 1e6},
        "training_examples_per_second": training,
    }
    results["ratios_to_training"] = {
        label: {stage: entry["images_per_second"] / training[stage]
                for stage in ("stage1", "stage2")}
        for label, entry in results["sources"].items()}
    with open(FLAGS.output, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
        file.write("\n")
    print_table(results)
    print(f"\nWrote {FLAGS.output}.")


if __name__ == "__main__":
    app.run(main)
