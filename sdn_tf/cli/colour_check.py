"""Check an exported shapes model: does each image show the colour its caption asks for?

Generates one image per caption for held-out test images (colour-and-shape
combinations never seen in training) and for training images (seen
combinations), scores both with the shapes colour evaluator, writes the
held-out images with a contact sheet, and stores the figures in
colour_check.json:

  python -m sdn_tf.cli.colour_check --model=runs/export --output_dir=runs/generated
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags, logging

from sdn_tf import generate
from sdn_tf.data import shapes
from sdn_tf.data.datasets import load_split
from sdn_tf.cli.errors import run_program
from sdn_tf.folders import check_writable_folder

flags.DEFINE_string("model", None, "SavedModel folder written by sdn-export.")
flags.DEFINE_string("data_dir", None, "Folder of the shapes dataset (default: its cache).")
flags.DEFINE_string("output_dir", "generated", "Folder for images and colour_check.json.")
flags.DEFINE_integer("max_images", 480, "Images per split to check (every caption index is "
                     "used in turn).", lower_bound=1)
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS


def caption_sample(records, max_images: int):
    """Pick up to `max_images` records spread over the split, cycling the caption index."""
    step = max(1, len(records) // max_images)
    chosen = records[::step][:max_images]
    captions = [record.captions[i % len(record.captions)] for i, record in enumerate(chosen)]
    return chosen, captions


def check_split(model, records, max_images: int):
    chosen, captions = caption_sample(records, max_images)
    images = generate.generate_images(model, captions)[:, 0]
    return chosen, captions, images, shapes.evaluate_colour(images, chosen)["all"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    check_writable_folder(FLAGS.output_dir, "--output_dir")
    model, info = generate.load_model(FLAGS.model)
    if info.get("dataset") not in (None, "shapes"):
        raise app.UsageError(f"--model was trained on {info.get('dataset')!r}; the colour "
                             "check needs a model trained on shapes.")
    results = {}
    for label, split in (("unseen", "test"), ("seen", "train")):
        records = load_split("shapes", FLAGS.data_dir, split)
        chosen, captions, images, scores = check_split(model, records, FLAGS.max_images)
        results[label] = {key: scores[key] for key in ("accuracy", "count", "no_colour",
                                                       "per_colour")}
        logging.info("Colour accuracy on %s combinations: %.1f%% of %s (%d with no "
                     "object colour).", label, 100 * scores["accuracy"],
                     generate.count_noun(scores["count"], "image"), scores["no_colour"])
        if label == "unseen":
            generate.write_outputs(images[:, None], captions, FLAGS.output_dir)
    results["chance"] = 1.0 / len(shapes.COLOURS)
    results["model"] = os.path.abspath(FLAGS.model)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "colour_check.json")
    with open(path, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2, default=lambda value: np.asarray(value).tolist())
    print(f"colour accuracy: seen {results['seen']['accuracy']:.3f}, "
          f"unseen {results['unseen']['accuracy']:.3f} (chance {results['chance']:.3f})")


def run():
    run_program(main)


if __name__ == "__main__":
    run()
