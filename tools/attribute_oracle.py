"""Train the generator on shapes from attribute codes instead of caption embeddings.

  python tools/attribute_oracle.py --workdir=runs/oracle --max_steps=1000 \
      --tap_weights=all=0

The run is Stage-I by default; --stage=2 trains Stage-II from the first step.

Every caption of an image is replaced by the one-hot code of the image's
attributes (colour, shape, size, position, background, background style), so
the generator receives exactly what the captions state and nothing else. The
run then generates images for training captions (seen colour-and-shape
combinations) and held-out ones (unseen), scores them with the shapes colour
evaluator and writes oracle_colour.json to the workdir.

When the quickstart's images lack the caption's colour, this run separates
the two causes. If the generator does not draw the colour from a perfect
code either, more text-encoder training will not help. The generator options
default to those of experiments/shapes_quickstart.sh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS

ATTRIBUTES = ("colour", "shape", "size", "position", "background", "background_style")


def attribute_values(records) -> dict:
    """Return {attribute: sorted values} over `records`, the code's layout."""
    return {name: sorted({record.attributes[name] for record in records})
            for name in ATTRIBUTES}


def attribute_code(record, values: dict) -> np.ndarray:
    """Return the concatenated one-hot code of one record's attributes: float32 [D]."""
    parts = []
    for name in ATTRIBUTES:
        value = record.attributes[name]
        if value not in values[name]:
            raise ValueError(f"{record.name!r} has {name}={value!r}, which is not among "
                             f"the coded values {values[name]}; build the code from "
                             "records that include this one.")
        parts.append(np.eye(len(values[name]), dtype=np.float32)[values[name].index(value)])
    return np.concatenate(parts)


def with_attribute_embeddings(records, values: dict) -> list:
    """Return copies of `records` whose every caption is embedded as the image's code."""
    return [dataclasses.replace(
        record, embeddings=np.repeat(attribute_code(record, values)[None],
                                     len(record.captions), axis=0))
            for record in records]


def colour_scores(generator, config, records, max_images: int) -> dict:
    """Generate one image per record (its first caption's code) and score the colours."""
    from sdn_tf import train as train_lib
    from sdn_tf.data import shapes

    step = max(1, len(records) // max_images)
    chosen = records[::step][:max_images]
    codes = np.stack([record.embeddings[0] for record in chosen])
    images = np.concatenate([
        train_lib.to_uint8_rgb(generator(codes[start:start + 64])["image"],
                               config.teacher_preset).numpy()
        for start in range(0, len(codes), 64)])
    scores = shapes.colour_accuracy(images, [r.attributes["colour"] for r in chosen])
    return {key: scores[key] for key in ("accuracy", "count", "correct", "no_colour")}


def run_oracle(workdir: str, train_records, test_records, max_images: int = 480,
               **options) -> dict:
    """Train on attribute codes, then score and return the colours.

    The scores also go to oracle_colour.json in `workdir`. `options` are
    SDNConfig fields such as stage (1 unless given), max_steps, tap_weights
    and image_size.
    """
    from sdn_tf import train as train_lib
    from sdn_tf.generator import build_generator

    values = attribute_values(list(train_records) + list(test_records))
    train_records = with_attribute_embeddings(train_records, values)
    test_records = with_attribute_embeddings(test_records, values)
    settings = dict(stage=1, dataset="shapes", teacher_weights="random", epochs=0,
                    max_steps=1000, tap_weights="all=0.05", generator_init="he",
                    image_gain=64.0, init_image_bias=True, normalise_embeddings=True)
    settings.update(options)
    settings.setdefault("sample_every", settings["max_steps"])
    settings.setdefault("checkpoint_every", settings["max_steps"])
    config = train_lib.SDNConfig(workdir=workdir, text_embeddings="pickle", **settings)
    train_lib.train(config, train_records, test_records)

    generator = build_generator(config.image_size, config.embedding_dim,
                                init=config.generator_init, image_gain=config.image_gain,
                                normalise_embeddings=config.normalise_embeddings,
                                whiten_embeddings=config.whiten_embeddings)
    generator.load_weights(os.path.join(workdir, train_lib.GENERATOR_WEIGHTS))
    results = {"stage": config.stage, "steps": config.max_steps,
               "tap_weights": config.tap_weights,
               "code_layout": values}
    for label, records in (("seen", train_records), ("unseen", test_records)):
        results[label] = colour_scores(generator, config, records, max_images)
        logging.info("Colour accuracy from attribute codes, %s combinations: %.1f%% of %d "
                     "images (%d with no colour).", label, 100 * results[label]["accuracy"],
                     results[label]["count"], results[label]["no_colour"])
    with open(os.path.join(workdir, "oracle_colour.json"), "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    from sdn_tf.data.datasets import load_split

    results = run_oracle(
        FLAGS.workdir, load_split("shapes", FLAGS.data_dir, "train"),
        load_split("shapes", FLAGS.data_dir, "test"), FLAGS.max_images,
        data_dir=FLAGS.data_dir, stage=int(FLAGS.stage), image_size=FLAGS.image_size,
        teacher_weights=FLAGS.teacher_weights, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, max_steps=FLAGS.max_steps,
        log_every=FLAGS.log_every, tap_weights=FLAGS.tap_weights,
        generator_init=FLAGS.generator_init, image_gain=FLAGS.image_gain,
        precision=FLAGS.precision)
    print(json.dumps({label: results[label] for label in ("seen", "unseen")}))


def define_flags() -> None:
    """Define the tool's flags; only when run as a program, so tests can import it."""
    flags.DEFINE_string("workdir", None, "Folder for the Stage-I run and oracle_colour.json.")
    flags.DEFINE_string("data_dir", None, "Folder of the shapes dataset (default: its cache).")
    flags.DEFINE_enum("stage", "1", ["1", "2"], "1: Stage-I (generator taps); 2: Stage-II "
                      "(teacher taps of the generated image), from the first step.")
    flags.DEFINE_integer("max_steps", 1000, "Training steps.", lower_bound=1)
    flags.DEFINE_integer("image_size", 64, "Image size in pixels (a multiple of 32, 64 to "
                         "224).", lower_bound=64, upper_bound=224)
    flags.DEFINE_string("teacher_weights", "random", "imagenet, random or a weights file.")
    flags.DEFINE_integer("batch_size", 12, "Examples per step.", lower_bound=1)
    flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.", lower_bound=0.0)
    flags.DEFINE_string("tap_weights", "all=0.05", "Stage-I tap weights, as for sdn-train.")
    from sdn_tf.generator import GENERATOR_INITS

    flags.DEFINE_enum("generator_init", "he", GENERATOR_INITS, "Generator initialiser.")
    flags.DEFINE_float("image_gain", 64.0, "Fixed factor on g_img's output.")
    flags.DEFINE_string("precision", "auto", "auto, float32, mixed_bfloat16 or "
                        "mixed_float16.")
    flags.DEFINE_integer("log_every", 100, "Steps between loss log lines.", lower_bound=1)
    flags.DEFINE_integer("max_images", 480, "Images per split to score.", lower_bound=1)
    flags.mark_flag_as_required("workdir")


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
