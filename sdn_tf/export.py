"""Export a trained SDN generator and its text encoder as one SavedModel.

The `serving_default` signature maps a batch of caption strings [N] to
`images`, uint8 RGB [N, H, W, 3] (the first image of each caption), and
`all_images`, uint8 [N, n, H, W, 3] (all n images of diverse synthesis).
Characters are encoded inside the graph, so the SavedModel loads with
`tf.saved_model.load` in a Python without sdn_tf. Captions run through the
networks in chunks, so a batch of any size, zero included, fits in memory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile

import keras
import tensorflow as tf
from absl import logging

from sdn_tf import workdir as workdir_lib
from sdn_tf.folders import check_writable_folder
from sdn_tf.generator import build_generator
from sdn_tf.teacher import teacher_space_to_rgb
from sdn_tf.train import GENERATOR_WEIGHTS, KIND

EXPORT_INFO = "sdn_export.json"
DEFAULT_CHUNK = 32


def _load_trained(workdir: str):
    """Rebuild the text encoder and generator of a finished sdn-train run."""
    config = workdir_lib.read_config(workdir)
    workdir_lib.check_kind(config, workdir, KIND)
    weights = os.path.join(workdir, GENERATOR_WEIGHTS)
    if not os.path.isfile(weights):
        raise workdir_lib.WorkdirError(
            f"{weights!r} not found: the sdn-train run in {workdir!r} has not finished. "
            "Rerun its sdn-train command to completion, then export."
        )
    if config.get("text_embeddings") != "encoder" or not config.get("text_encoder"):
        raise workdir_lib.WorkdirError(
            f"{workdir!r} was trained on precomputed caption embeddings "
            f"(text_embeddings={config.get('text_embeddings')!r}), so no text encoder can "
            "turn new captions into embeddings. Train with --text_encoder=WORKDIR to export."
        )
    from sdn_tf.text.encoder import load_text_encoder

    keras.mixed_precision.set_global_policy("float32")
    text_encoder = load_text_encoder(config["text_encoder"])
    # Runs written before --image_gain, --normalise_embeddings and
    # --whiten_embeddings existed had none of them; the initialiser does not
    # matter here, the weights are loaded.
    generator = build_generator(config["image_size"], config["embedding_dim"],
                                config["num_images"],
                                image_gain=float(config.get("image_gain", 1.0)),
                                normalise_embeddings=bool(config.get("normalise_embeddings",
                                                                     False)),
                                whiten_embeddings=bool(config.get("whiten_embeddings", False)))
    generator.load_weights(weights)
    return config, text_encoder, generator


class _Serving(tf.Module):
    """Captions to uint8 images, in chunks of `chunk` captions."""

    def __init__(self, text_encoder, generator, config: dict, chunk: int):
        super().__init__()
        self.text_model = text_encoder.model
        self.generator = generator
        self.image_size = int(config["image_size"])
        self.num_images = int(config["num_images"])
        self.preset = config["teacher_preset"]
        self.chunk = chunk

    def images_for(self, captions: tf.Tensor) -> tf.Tensor:
        from sdn_tf.text.encoder import captions_to_onehot

        onehot = captions_to_onehot(captions)
        embeddings = self.text_model(onehot, training=False)
        images = self.generator(embeddings, training=False)["image"]
        size = self.image_size
        images = tf.reshape(images, [-1, size, size, self.num_images, 3])
        images = tf.transpose(images, [0, 3, 1, 2, 4])  # [B, n, H, W, 3]
        rgb = teacher_space_to_rgb(tf.cast(images, tf.float32), self.preset)
        return tf.cast(tf.clip_by_value(tf.round(rgb), 0.0, 255.0), tf.uint8)

    def serve(self, captions: tf.Tensor) -> dict:
        count = tf.shape(captions)[0]
        chunks = (count + self.chunk - 1) // self.chunk
        outputs = tf.TensorArray(tf.uint8, size=chunks, infer_shape=False,
                                 element_shape=[None, self.num_images, self.image_size,
                                                self.image_size, 3])

        def body(index, outputs):
            part = captions[index * self.chunk:(index + 1) * self.chunk]
            return index + 1, outputs.write(index, self.images_for(part))

        _, outputs = tf.while_loop(lambda index, _: index < chunks, body, (0, outputs))
        shape = [0, self.num_images, self.image_size, self.image_size, 3]
        all_images = tf.cond(chunks > 0, outputs.concat, lambda: tf.zeros(shape, tf.uint8))
        return {"images": all_images[:, 0], "all_images": all_images}


def check_export_dir(export_dir: str) -> None:
    """Raise OSError unless `export_dir` can be written or replaced by a SavedModel.

    An existing folder is replaced only if it is empty or contains a SavedModel,
    so a mistyped --export_dir cannot delete a run or a dataset.
    """
    if not os.path.lexists(export_dir):
        check_writable_folder(export_dir, "--export_dir")
        return
    if not os.path.isdir(export_dir):
        raise NotADirectoryError(
            f"--export_dir={export_dir!r} is not a folder. Pass a folder path.")
    # The SavedModel is written next to the folder and renamed into its place.
    parent = os.path.dirname(os.path.abspath(export_dir))
    check_writable_folder(parent, "--export_dir", export_dir)
    if os.listdir(export_dir) and not os.path.isfile(os.path.join(export_dir,
                                                                  "saved_model.pb")):
        raise FileExistsError(
            f"--export_dir={export_dir!r} is a folder that contains no SavedModel "
            "(saved_model.pb not found). sdn-export replaces the whole folder, so pass a "
            "new folder, an empty one or an earlier export.")
    # Replacing the folder moves it to another parent, which needs write
    # access to the folder itself on Linux (to update its ".." entry).
    check_writable_folder(export_dir, "--export_dir")


def create_staging_folder(parent: str) -> str:
    """Create and return a hidden folder in `parent` with the usual mode (0777 less the umask).

    Not tempfile.mkdtemp: its folder has mode 0700, so after the rename into
    place other users could not load the SavedModel.
    """
    staging = os.path.join(parent, f".export-{secrets.token_hex(8)}")
    os.mkdir(staging)
    return staging


def export(workdir: str, export_dir: str, chunk: int = DEFAULT_CHUNK) -> str:
    """Write the SavedModel of a finished run to `export_dir`, atomically, and return it.

    The model is written into a temporary sibling folder and renamed into
    place, so an interrupted export never leaves a partial SavedModel where a
    previous one was.
    """
    from sdn_tf.text.encoder import MAX_LENGTH

    check_export_dir(export_dir)
    config, text_encoder, generator = _load_trained(workdir)
    serving = _Serving(text_encoder, generator, config, chunk)
    archive = keras.export.ExportArchive()
    archive.track(serving.text_model)
    archive.track(serving.generator)
    archive.add_endpoint(
        name="serving_default", fn=serving.serve,
        input_signature=[tf.TensorSpec([None], tf.string, name="captions")])

    export_dir = os.path.abspath(export_dir)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging = create_staging_folder(parent)
    try:
        archive.write_out(staging, verbose=False)
        info = {
            "image_size": config["image_size"], "num_images": config["num_images"],
            "teacher_preset": config["teacher_preset"], "stage": config["stage"],
            "dataset": config["dataset"], "workdir": os.path.abspath(workdir),
            "text_encoder": config["text_encoder"],
            "max_caption_length": MAX_LENGTH,
        }
        with open(os.path.join(staging, EXPORT_INFO), "w", encoding="utf-8") as file:
            json.dump(info, file, indent=2)
        previous = None
        if os.path.exists(export_dir):
            previous = tempfile.mkdtemp(prefix=".previous-", dir=parent)
            os.rename(export_dir, os.path.join(previous, "model"))
        os.rename(staging, export_dir)
        if previous:
            shutil.rmtree(previous)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    logging.info("Exported %s to %s.", workdir, export_dir)
    return export_dir
