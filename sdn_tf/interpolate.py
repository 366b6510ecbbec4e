"""Sentence interpolation: images generated along the line between two captions' embeddings.

Yuan & Peng (ACM MM 2018, section 4.7) feed the generator linear
interpolations between two sentence embeddings, e_t = (1 - t) e_A + t e_B,
and show that the images change smoothly. The exported SavedModel maps
strings to images and has no embedding input, so the text encoder and the
generator are rebuilt from the sdn-train workdir (an export names its
workdir in sdn_export.json).

  python -m sdn_tf.interpolate --model_workdir=runs/stage2 \
      --caption_a="a small red circle" --caption_b="a large blue square" \
      --steps=8 --output=interpolation.png
"""

from __future__ import annotations

import json
import os
import numpy as np
from absl import app, flags, logging

EXPORT_INFO = "sdn_export.json"
FLAGS = flags.FLAGS


def workdir_of_export(model_dir: str) -> str:
    """Return the sdn-train workdir an sdn-export folder was written from."""
    path = os.path.join(model_dir, EXPORT_INFO)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} not found: {model_dir!r} is not a folder written by sdn-export. "
            "Pass the export folder, or the training workdir with --model_workdir.")
    with open(path, encoding="utf-8") as file:
        workdir = json.load(file).get("workdir")
    if not workdir or not os.path.isdir(workdir):
        raise FileNotFoundError(
            f"The workdir {workdir!r} named in {path!r} does not exist any more; "
            "interpolation needs its text encoder and generator weights. Pass "
            "--model_workdir=WORKDIR of the run instead.")
    return workdir


def load_trained_models(workdir: str):
    """Rebuild (config, text_encoder, generator) of a finished sdn-train run.

    Raises WorkdirError when the run is unfinished or was trained on
    precomputed embeddings, so no text encoder exists.
    """
    from sdn_tf.export import _load_trained

    return _load_trained(workdir)


def interpolation_weights(steps: int) -> np.ndarray:
    """Return `steps` weights t of caption B, evenly spaced from 0 to 1."""
    if steps < 2:
        raise ValueError(f"steps={steps}; an interpolation needs at least 2 steps (A and B).")
    return np.linspace(0.0, 1.0, steps, dtype=np.float32)


def interpolate_embeddings(embedding_a: np.ndarray, embedding_b: np.ndarray,
                           weights: np.ndarray) -> np.ndarray:
    """Return (1 - t) * a + t * b for each weight t: float32 [len(weights), D]."""
    embedding_a = np.asarray(embedding_a, np.float32).reshape(-1)
    embedding_b = np.asarray(embedding_b, np.float32).reshape(-1)
    if embedding_a.shape != embedding_b.shape:
        raise ValueError(f"The embeddings have sizes {embedding_a.shape[0]} and "
                         f"{embedding_b.shape[0]}; they must come from one text encoder.")
    weights = np.asarray(weights, np.float32)[:, None]
    return (1.0 - weights) * embedding_a[None] + weights * embedding_b[None]


def interpolation_images(text_encoder, generator, config: dict, caption_a: str,
                         caption_b: str, steps: int = 8):
    """Generate uint8 images [steps, n, H, W, 3] from caption A to caption B.

    Returns (images, weights), with weights[i] the share of caption B in image i.
    """
    from sdn_tf.train import to_uint8_rgb

    for name, caption in (("caption_a", caption_a), ("caption_b", caption_b)):
        if not caption or not caption.strip():
            raise ValueError(f"{name} is empty; pass two non-empty captions.")
    weights = interpolation_weights(steps)
    embedding_a, embedding_b = text_encoder.embed([caption_a, caption_b])
    embeddings = interpolate_embeddings(embedding_a, embedding_b, weights)
    outputs = generator(embeddings, training=False)["image"]
    size = int(config["image_size"])
    num_images = int(config["num_images"])
    images = to_uint8_rgb(outputs, config["teacher_preset"]).numpy()
    images = images.reshape(steps, size, size, num_images, 3).transpose(0, 3, 1, 2, 4)
    return images, weights


def write_interpolation(workdir: str, caption_a: str, caption_b: str, output: str,
                        steps: int = 8) -> str:
    """Draw the interpolation of a trained run as a strip PNG at `output`; return the path."""
    from sdn_tf.figures import interpolation_strip

    config, text_encoder, generator = load_trained_models(workdir)
    images, weights = interpolation_images(text_encoder, generator, config, caption_a,
                                           caption_b, steps)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    interpolation_strip(images, caption_a, caption_b, weights.tolist()).save(output)
    return output


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    if FLAGS.model_workdir and FLAGS.model:
        raise app.UsageError("Pass either --model_workdir or --model, not both.")
    if not FLAGS.model_workdir and not FLAGS.model:
        raise app.UsageError("Pass --model_workdir (an sdn-train workdir) or --model (an "
                             "sdn-export folder).")
    try:
        workdir = FLAGS.model_workdir or workdir_of_export(FLAGS.model)
        path = write_interpolation(workdir, FLAGS.caption_a, FLAGS.caption_b, FLAGS.output,
                                   FLAGS.steps)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    logging.info("Wrote the interpolation strip of %d steps to %s.", FLAGS.steps, path)


def run() -> None:
    flags.DEFINE_string("model_workdir", None, "Workdir of a finished sdn-train run.")
    flags.DEFINE_string("model", None, "Folder written by sdn-export; its training workdir "
                        "must still exist.")
    flags.DEFINE_string("caption_a", None, "Caption at the left end of the strip.")
    flags.DEFINE_string("caption_b", None, "Caption at the right end of the strip.")
    flags.DEFINE_integer("steps", 8, "Images in the strip, both ends included.",
                         lower_bound=2)
    flags.DEFINE_string("output", "interpolation.png", "Path of the strip PNG.")
    flags.mark_flags_as_required(["caption_a", "caption_b"])
    app.run(main)


if __name__ == "__main__":
    run()
