"""The char-CNN-RNN text encoder of Reed et al. (2016), its character encoding and DS-SJE loss.

Reed, Akata, Lee and Schiele, "Learning Deep Representations of Fine-Grained
Visual Descriptions" (CVPR 2016) embed a caption with a character-level
convolutional network followed by a recurrent layer (the "hybrid" model):

    one-hot characters [201, 70]
    -> Conv1D 384 width 4, ReLU -> max-pool 3 stride 3        (198 -> 66 steps)
    -> Conv1D 512 width 4, ReLU -> max-pool 3 stride 3        (63 -> 21 steps)
    -> Conv1D 512 width 4, ReLU -> max-pool 3 stride 2        (18 -> 8 steps)
    -> recurrent layer of width 512 over the 8 steps, states averaged
    -> dropout -> linear to the embedding (1024 in StackGAN's CUB embeddings)

The CUB encoder behind StackGAN's precomputed embeddings uses a GRU, so that
is the default here. `rnn="rnn"` gives the plain recurrent layer that Reed's
cvpr2016 code uses by default.

The encoder is trained with the symmetric structured joint embedding loss
(DS-SJE, `ds_sje_loss`) against fixed image features; `sdn_tf.text.train`
does the training.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Union

import keras
import numpy as np
import tensorflow as tf

# Lowercase letters, digits, the 32 ASCII punctuation symbols, space and
# newline. These are every printable ASCII character left after lowercasing,
# plus the line break, which brings the count to the 70 symbols of Reed et
# al.'s one-hot encoding.
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz"
    "0123456789"
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    " \n"
)
MAX_LENGTH = 201  # characters per caption; longer captions are truncated
RNN_TYPES = ("gru", "rnn")
CNN_OUTPUT_STEPS = 8  # time steps that reach the recurrent layer at MAX_LENGTH
WEIGHTS_FILE = "text_encoder.weights.h5"
WORKDIR_KIND = "text_encoder"

assert len(ALPHABET) == 70
assert len(set(ALPHABET)) == 70

# Index of each ASCII code point in ALPHABET, -1 for code points outside it
# (tf.one_hot turns -1 into an all-zero row).
_ASCII_TO_INDEX = np.full(128, -1, np.int32)
for _index, _symbol in enumerate(ALPHABET):
    _ASCII_TO_INDEX[ord(_symbol)] = _index


def _as_caption_tensor(captions) -> tf.Tensor:
    captions = tf.convert_to_tensor(captions, dtype=tf.string)
    if captions.shape.rank != 1:
        raise ValueError(
            f"Captions must be a 1-D batch of strings, got shape {captions.shape}. "
            "Wrap a single caption in a list."
        )
    return captions


def _code_points(captions: tf.Tensor) -> tf.RaggedTensor:
    """Return the Unicode code points of each lowercased caption, one row per caption.

    Invalid UTF-8 bytes (for example Latin-1 text) decode to U+FFFD, which is
    outside the alphabet, so every character takes one position and none
    raises an error.
    """
    lowered = tf.strings.lower(captions)  # ASCII letters only, which is all the alphabet has
    return tf.strings.unicode_decode(lowered, "UTF-8", errors="replace",
                                     replacement_char=0xFFFD)


def captions_to_onehot(captions) -> tf.Tensor:
    """Encode a batch of captions [B] (tf.string) as one-hot characters, float32 [B, 201, 70].

    Captions are lowercased, cut after MAX_LENGTH characters and padded with
    all-zero rows. Characters outside ALPHABET (non-ASCII letters, emoji, tabs)
    also become all-zero rows, so any string encodes without error. Only
    TensorFlow ops are used, so this runs inside tf.function and SavedModels.
    """
    captions = _as_caption_tensor(captions)
    codes = _code_points(captions)[:, :MAX_LENGTH]
    codes = codes.to_tensor(default_value=-1, shape=[None, MAX_LENGTH])  # -1 marks padding
    table = tf.constant(_ASCII_TO_INDEX)
    in_ascii = tf.logical_and(codes >= 0, codes < 128)
    indices = tf.where(in_ascii, tf.gather(table, tf.clip_by_value(codes, 0, 127)), -1)
    return tf.one_hot(indices, len(ALPHABET), dtype=tf.float32)


def caption_lengths(captions) -> tf.Tensor:
    """Return the number of characters of each caption, int32 [B], before truncation."""
    return tf.cast(_code_points(_as_caption_tensor(captions)).row_lengths(), tf.int32)


def caption_length_exceeds(captions) -> tf.Tensor:
    """Return a bool [B] that is True for captions longer than MAX_LENGTH characters.

    `captions_to_onehot` keeps only their first MAX_LENGTH characters, so
    callers can count and report them.
    """
    return caption_lengths(captions) > MAX_LENGTH


def build_text_encoder(embedding_dim: int = 1024, rnn: str = "gru", dropout: float = 0.5,
                       seed: int = 0, dtype: str = "float32",
                       use_cudnn: Union[str, bool] = "auto") -> keras.Model:
    """Build the char-CNN-RNN: one-hot captions [B, 201, 70] to embeddings [B, embedding_dim].

    Args:
      embedding_dim: size of the output embedding.
      rnn: "gru" (StackGAN's CUB encoder) or "rnn" (a plain tanh recurrent
        layer, the cvpr2016 code's default).
      dropout: dropout rate on the averaged recurrent states, active in training.
      seed: seed of every initialiser and of the dropout mask.
      dtype: Keras dtype policy of the hidden layers, such as "mixed_bfloat16".
        It is passed to every layer, so a global Keras policy has no effect.
        The output layer always computes in float32.
      use_cudnn: passed to the GRU. cuDNN kernels cannot be compiled by XLA, so
        pass False when the training step uses jit_compile on a GPU.
    """
    if rnn not in RNN_TYPES:
        raise ValueError(f"Unknown recurrent layer rnn={rnn!r}; use one of {RNN_TYPES}.")
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim={embedding_dim} must be a positive integer.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout} must be in [0, 1).")

    def glorot(offset):
        return keras.initializers.GlorotUniform(seed=seed * 100 + offset)

    inputs = keras.Input((MAX_LENGTH, len(ALPHABET)), name="characters")
    x = inputs
    conv_specs = ((384, 3, 3), (512, 3, 3), (512, 3, 2))  # filters, pool size, pool stride
    for block, (filters, pool_size, pool_stride) in enumerate(conv_specs, start=1):
        x = keras.layers.Conv1D(filters, 4, activation="relu", kernel_initializer=glorot(block),
                                dtype=dtype, name=f"conv{block}")(x)
        x = keras.layers.MaxPooling1D(pool_size, strides=pool_stride, dtype=dtype,
                                      name=f"pool{block}")(x)

    if rnn == "gru":
        recurrent = keras.layers.GRU(
            512, return_sequences=True, kernel_initializer=glorot(4),
            recurrent_initializer=keras.initializers.Orthogonal(seed=seed * 100 + 5),
            use_cudnn=use_cudnn, dtype=dtype, name="gru")
    else:
        recurrent = keras.layers.SimpleRNN(
            512, return_sequences=True, kernel_initializer=glorot(4),
            recurrent_initializer=keras.initializers.Orthogonal(seed=seed * 100 + 5),
            dtype=dtype, name="rnn")
    x = recurrent(x)
    x = keras.layers.GlobalAveragePooling1D(dtype=dtype, name="mean_over_time")(x)
    x = keras.layers.Dropout(dropout, seed=seed * 100 + 6, dtype=dtype, name="dropout")(x)
    outputs = keras.layers.Dense(embedding_dim, kernel_initializer=glorot(7), dtype="float32",
                                 name="embedding")(x)
    return keras.Model(inputs, outputs, name=f"char_cnn_{rnn}")


def cnn_output_steps(model: keras.Model) -> int:
    """Return the number of time steps the convolutions hand to the recurrent layer."""
    return int(model.get_layer("pool3").output.shape[1])


def ds_sje_loss(image_embeddings: tf.Tensor, text_embeddings: tf.Tensor, class_ids: tf.Tensor,
                margin: float = 1.0) -> tuple:
    """Compute the symmetric structured joint embedding loss (DS-SJE) of a batch.

    Reed et al. (2016) score every image i against every caption j with the
    inner product S[i, j] = image_i . text_j; row i's own caption is the
    positive. The image-side term is the hinge max(0, margin + S[i, j] - S[i, i])
    over the captions j whose class differs from image i's. The text-side term
    applies the same hinge to each caption against the images of other classes
    (columns of S). Pairs of the same class are never negatives. Each term is
    the mean over the (i, j) pairs of different classes, and the loss is the
    sum of the two terms.

    Returns:
      (loss, accuracy): float32 scalars. `accuracy` is the fraction of images
      whose highest-scoring caption in the batch belongs to their class.
    """
    image_embeddings = tf.cast(image_embeddings, tf.float32)
    text_embeddings = tf.cast(text_embeddings, tf.float32)
    class_ids = tf.reshape(class_ids, [-1])
    scores = tf.matmul(image_embeddings, text_embeddings, transpose_b=True)
    positives = tf.linalg.diag_part(scores)
    negative_mask = tf.cast(
        tf.not_equal(class_ids[:, None], class_ids[None, :]), tf.float32)
    negative_count = tf.maximum(tf.reduce_sum(negative_mask), 1.0)

    image_side = tf.nn.relu(margin + scores - positives[:, None]) * negative_mask
    text_side = tf.nn.relu(margin + scores - positives[None, :]) * negative_mask
    loss = (tf.reduce_sum(image_side) + tf.reduce_sum(text_side)) / negative_count

    best_caption = tf.argmax(scores, axis=1, output_type=tf.int32)
    hits = tf.equal(tf.gather(class_ids, best_caption), class_ids)
    accuracy = tf.reduce_mean(tf.cast(hits, tf.float32))
    return loss, accuracy


class TextEncoder:
    """A trained char-CNN-RNN with helpers that embed raw caption strings.

    Attributes:
      model: the Keras model on one-hot input [B, 201, 70].
      config: the workdir configuration it was trained with (empty when built
        directly).
    """

    def __init__(self, model: keras.Model, config: Optional[dict] = None):
        self.model = model
        self.config = dict(config or {})
        # autograph=False: the function has no Python control flow to convert,
        # and AutoGraph's source lookup breaks if the file changes on disk.
        self._embed_batch = tf.function(
            self.embed_tensor,
            input_signature=[tf.TensorSpec([None], tf.string)],
            autograph=False,
        )

    @property
    def embedding_dim(self) -> int:
        return int(self.model.output.shape[-1])

    def embed_tensor(self, captions: tf.Tensor) -> tf.Tensor:
        """Embed a string tensor [B] with TensorFlow ops only: float32 [B, D], dropout off."""
        embeddings = self.model(captions_to_onehot(captions), training=False)
        return tf.cast(embeddings, tf.float32)

    def embed(self, captions: Union[Iterable[str], tf.Tensor], batch_size: int = 256
              ) -> np.ndarray:
        """Embed captions in batches of `batch_size`: float32 [N, D] in input order."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer.")
        if isinstance(captions, str):
            raise ValueError("embed() takes a list of captions; wrap a single caption "
                             f"in a list: [{captions!r}].")
        if isinstance(captions, tf.Tensor):
            captions = _as_caption_tensor(captions)
        else:
            captions = _as_caption_tensor(list(captions)) if captions else None
        if captions is None or int(tf.shape(captions)[0]) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        count = int(tf.shape(captions)[0])
        parts = [self._embed_batch(captions[start:start + batch_size]).numpy()
                 for start in range(0, count, batch_size)]
        return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def build_from_config(config: dict, **kwargs) -> keras.Model:
    """Build an untrained encoder with the architecture recorded in a workdir config."""
    return build_text_encoder(
        embedding_dim=int(config["embedding_dim"]),
        rnn=config["rnn"],
        dropout=float(config.get("dropout", 0.5)),
        **kwargs,
    )


def check_encoding_config(config: dict, path: str) -> None:
    """Raise WorkdirError when a workdir's character encoding differs from this code's."""
    from sdn_tf.workdir import WorkdirError

    if config.get("alphabet") != ALPHABET or config.get("max_length") != MAX_LENGTH:
        raise WorkdirError(
            f"The text encoder in {path!r} was trained with alphabet="
            f"{config.get('alphabet')!r} and max_length={config.get('max_length')!r}, "
            f"but this version of sdn_tf encodes captions with alphabet={ALPHABET!r} and "
            f"max_length={MAX_LENGTH}. Retrain it with sdn-train-text."
        )


def load_text_encoder(workdir: str) -> TextEncoder:
    """Load the final encoder of a finished sdn-train-text run.

    Raises:
      WorkdirError: when the workdir has no config.json, contains a run of
        another kind, uses another character encoding, or has no final
        weights file because the run did not finish.
    """
    from sdn_tf.workdir import WorkdirError, check_kind, read_config

    config = read_config(workdir, "--text_encoder")
    check_kind(config, workdir, WORKDIR_KIND, "--text_encoder")
    check_encoding_config(config, workdir)
    weights_path = os.path.join(workdir, WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        raise WorkdirError(
            f"{weights_path!r} not found: the sdn-train-text run in {workdir!r} did not "
            "finish. Rerun sdn-train-text with --workdir pointing there; it resumes from "
            "its newest checkpoint and writes the weights at the end."
        )
    model = build_from_config(config)
    model.load_weights(weights_path)
    return TextEncoder(model, config)


def weights_digest(workdir: str) -> str:
    """Return the first 16 hex digits of the SHA-256 of the finished encoder's weights file.

    sdn-train records it, so a run resumed after the encoder was trained
    further (which rewrites the file) is caught instead of mixing embeddings.
    """
    from sdn_tf.data.tfrecords import sha256_file

    return sha256_file(os.path.join(workdir, WEIGHTS_FILE))[:16]


def save_text_encoder(model: keras.Model, workdir: str) -> str:
    """Write the encoder's weights as `workdir/text_encoder.weights.h5` and return the path.

    The file is written under a temporary name and renamed, so an interrupted
    save never leaves a truncated weights file behind.
    """
    path = os.path.join(workdir, WEIGHTS_FILE)
    temp_path = os.path.join(workdir, ".tmp-" + WEIGHTS_FILE)
    model.save_weights(temp_path)
    os.replace(temp_path, path)
    return path


__all__ = [
    "ALPHABET", "MAX_LENGTH", "RNN_TYPES", "CNN_OUTPUT_STEPS", "WEIGHTS_FILE",
    "weights_digest",
    "WORKDIR_KIND", "captions_to_onehot", "caption_lengths", "caption_length_exceeds",
    "build_text_encoder", "cnn_output_steps", "ds_sje_loss", "TextEncoder",
    "build_from_config", "check_encoding_config", "load_text_encoder", "save_text_encoder",
]
