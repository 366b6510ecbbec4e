"""Build a variant of the shapes dataset in a folder of its own.

The programs build the default shapes dataset on first use. This tool builds
one with other parameters, for example with dark backgrounds as well as light
ones. Pass its folder as --data_dir to sdn-train-text, sdn-train, sdn-eval and
the colour check. They read a complete build as it is:

    python tools/build_shapes.py --output_dir=data/shapes_all --backgrounds=all
    sdn-train-text --dataset=shapes --data_dir=data/shapes_all --workdir=...

Rerunning the same command reuses the finished build.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from sdn_tf.data import shapes

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("output_dir", None, "Folder to build the dataset in (created).")
    flags.DEFINE_enum("backgrounds", shapes.DEFAULT_BACKGROUNDS, list(shapes.BACKGROUND_SETS),
                      "Background palette: " + "; ".join(
                          f"{name}: {', '.join(palette)}"
                          for name, palette in shapes.BACKGROUND_SETS.items()) + ".")
    flags.DEFINE_integer("seed", 0, "Seed of the rendering.", lower_bound=0)
    flags.DEFINE_integer("image_size", 128, "Image size in pixels.", lower_bound=32)
    flags.DEFINE_integer("images_per_class_train", 100,
                         "Images per colour-and-shape combination in the train split.",
                         lower_bound=1)
    flags.DEFINE_integer("images_per_class_test", 30,
                         "Images per combination in the (unseen) test split.", lower_bound=1)
    flags.mark_flag_as_required("output_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    output_dir = os.path.abspath(FLAGS.output_dir)
    if os.path.isfile(output_dir):
        raise ValueError(f"--output_dir={FLAGS.output_dir} is a file; pass a folder.")
    folder = shapes.build_shapes(
        output_dir, seed=FLAGS.seed, image_size=FLAGS.image_size,
        images_per_class_train=FLAGS.images_per_class_train,
        images_per_class_test=FLAGS.images_per_class_test, backgrounds=FLAGS.backgrounds)
    if folder != output_dir:
        # build_shapes keeps a different earlier build and writes next to it.
        logging.warning("%s holds a shapes dataset with other parameters; this one is in %s",
                        output_dir, folder)
    with open(os.path.join(folder, "params.json"), encoding="utf-8") as file:
        print(json.dumps({"folder": folder, "params": json.load(file)}))


if __name__ == "__main__":
    define_flags()
    from sdn_tf.cli.errors import run_program

    run_program(main)
