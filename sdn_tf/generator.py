"""The symmetric generator ("target model G"): a text embedding to an image.

G mirrors the teacher layer for layer, so each of its taps has the shape of
the teacher tap of the same name and Stage-I can match them directly (SDN
paper, Eq. 2). The layer list follows the authors' released TensorFlow 1 code:

    g_fc7, g_fc6        dense 4096, ReLU
    g_pool5             dense (S/32)^2 * 512, ReLU, reshaped to S/32 x S/32 x 512
    g_conv5_4           nearest-neighbour resize x2
    g_conv5_3..5_1      3x3 conv 512, ReLU
    g_pool4             3x3 conv 512, ReLU
    g_conv4_4           resize x2, then g_conv4_3..4_1 (512) and g_pool3 (256)
    g_conv3_4           resize x2, then g_conv3_3..3_1 (256) and g_pool2 (128)
    g_conv2_2           resize x2, then g_conv2_1 (128) and g_pool1 (64)
    g_conv1_2           resize x2, then g_conv1_1 (64)
    g_img               3x3 conv 3*n, linear, in teacher space

The paper also names a g_fc8 layer that the released code does not have; it
is left out. There is no noise input: diversity comes from n output images
(the paper's diverse synthesis), read from the 3*n channels of g_img.
"""

from __future__ import annotations

import keras
import numpy as np

from sdn_tf.layers import NearestUpsampling, SmallMapConv2D, Standardize, Whiten
from sdn_tf.teacher import TAP_NAMES, tap_shapes

EMBEDDING_NORM_LAYER = "g_embedding_norm"
EMBEDDING_WHITEN_LAYER = "g_embedding_whiten"
# Shrinkage of the embedding whitening, as a fraction of the embeddings' total
# variance: directions with much less variance than this stay small rather than
# being blown up to unit variance (see set_embedding_statistics).
WHITEN_SHRINKAGE = 0.01

# Released-code initialisers: conv kernels N(0, 0.02), dense kernels N(0, 0.1),
# biases zero (Keras' default bias initialiser).
_CONV_INIT_STDDEV = 0.02
_DENSE_INIT_STDDEV = 0.1
# "released" follows the authors' code. "he" draws every ReLU layer's kernel
# from He et al.'s normal (std sqrt(2 / fan_in)), which keeps the signal's
# scale through the 16 ReLU layers. With N(0, 0.02), the RMS falls from about
# 46 at g_pool5 to 0.2 at g_conv1_1 (unit-variance embeddings, 64x64), and
# short runs learn little beyond a constant image.
GENERATOR_INITS = ("released", "he")


def _relu_initializer(init: str, stddev: float, seed: int):
    if init == "he":
        return keras.initializers.HeNormal(seed=seed)
    return keras.initializers.RandomNormal(stddev=stddev, seed=seed)


def _conv(filters: int, name: str, seed: int, init: str = "released") -> keras.layers.Conv2D:
    return SmallMapConv2D(
        filters, 3, padding="same", activation="relu", name=name,
        kernel_initializer=_relu_initializer(init, _CONV_INIT_STDDEV, seed),
    )


def _dense(units: int, name: str, seed: int, init: str = "released") -> keras.layers.Dense:
    return keras.layers.Dense(
        units, activation="relu", name=name,
        kernel_initializer=_relu_initializer(init, _DENSE_INIT_STDDEV, seed),
    )


def _generator_plan(image_size: int):
    """Yield (tap, op, filters) from deep to shallow, where op is dense, resize or conv."""
    shapes = tap_shapes(image_size)
    yield "pool5", "dense", shapes["pool5"]
    for block in (5, 4, 3, 2, 1):
        last_conv = 4 if block >= 3 else 2
        yield f"conv{block}_{last_conv}", "resize", None
        for index in range(last_conv - 1, 0, -1):
            tap = f"conv{block}_{index}"
            yield tap, "conv", shapes[tap][2]
        if block > 1:
            pool = f"pool{block - 1}"
            yield pool, "conv", shapes[pool][2]


def build_generator(image_size: int, embedding_dim: int = 1024, num_images: int = 1,
                    seed: int = 0, init: str = "released", image_gain: float = 1.0,
                    normalise_embeddings: bool = False,
                    whiten_embeddings: bool = False) -> keras.Model:
    """Build G: embeddings [B, embedding_dim] to a dict of the 21 taps and "image".

    "image" is [B, S, S, 3 * num_images] in teacher space and float32 under any
    mixed-precision policy, so the losses see full precision.

    `init` is one of GENERATOR_INITS. `image_gain` multiplies g_img's output by
    a fixed factor. Teacher space spans 0..255 while g_img's weights start near
    0.02, and Adam moves each weight by about the learning rate per step, so
    the released model needs thousands of steps to reach the pixel scale; a
    gain of 64 lets a short run get there. 1 (no gain) is the released model.

    `normalise_embeddings` puts a fixed standardisation layer (EMBEDDING_NORM_LAYER,
    statistics set with `set_embedding_statistics`) before g_fc7. It is saved
    with the generator's weights, so exports and Stage-II see the same inputs.
    `whiten_embeddings` puts a fixed whitening layer (EMBEDDING_WHITEN_LAYER)
    there instead.
    """
    if normalise_embeddings and whiten_embeddings:
        raise ValueError("--whiten_embeddings replaces --normalise_embeddings; pass only one "
                         "of them.")
    if init not in GENERATOR_INITS:
        raise ValueError(f"--generator_init={init!r} is not supported; use one of "
                         f"{', '.join(GENERATOR_INITS)}.")
    if not image_gain > 0:
        raise ValueError(f"--image_gain={image_gain} must be positive (1 is the released "
                         "model).")
    if image_size % 32 != 0 or not 64 <= image_size <= 224:
        raise ValueError(
            f"--image_size={image_size} is not supported: use a multiple of 32 "
            "from 64 to 224 (64, 96, 128, 160, 192, 224)."
        )
    if num_images < 1:
        raise ValueError(f"--num_images={num_images} must be at least 1.")
    embedding = keras.Input((embedding_dim,), name="embedding")
    x = embedding
    if normalise_embeddings:
        x = Standardize(dtype="float32", name=EMBEDDING_NORM_LAYER)(x)
    elif whiten_embeddings:
        x = Whiten(dtype="float32", name=EMBEDDING_WHITEN_LAYER)(x)
    x = _dense(4096, "g_fc7", seed, init)(x)
    x = _dense(4096, "g_fc6", seed + 1, init)(x)
    taps = {}
    for offset, (tap, op, shape) in enumerate(_generator_plan(image_size), start=2):
        name = f"g_{tap}"
        if op == "dense":
            x = _dense(shape[0] * shape[1] * shape[2], name + "_dense", seed + offset,
                       init)(x)
            x = keras.layers.Reshape(shape, name=name)(x)
        elif op == "resize":
            x = NearestUpsampling(name=name)(x)
        else:
            x = _conv(shape, name, seed + offset, init)(x)
        taps[tap] = x
    # g_img is linear and keeps the released initialiser under either init.
    image = keras.layers.Conv2D(
        3 * num_images, 3, padding="same", name="g_img",
        kernel_initializer=keras.initializers.RandomNormal(stddev=_CONV_INIT_STDDEV,
                                                           seed=seed + 99),
    )(x)
    # Keep the image (and so the image term of every loss) in float32.
    image = keras.layers.Activation("linear", dtype="float32", name="g_img_float32")(image)
    if image_gain != 1.0:
        image = keras.layers.Rescaling(float(image_gain), dtype="float32",
                                       name="g_img_gain")(image)
    outputs = {tap: taps[tap] for tap in TAP_NAMES}
    outputs["image"] = image
    return keras.Model(embedding, outputs, name="generator")


def set_embedding_statistics(generator: keras.Model, embeddings: np.ndarray) -> tuple:
    """Set the generator's fixed embedding normalisation from training embeddings [N, D].

    With EMBEDDING_NORM_LAYER, every dimension is shifted by its mean and all
    are divided by one common scale, the root mean variance, which keeps their
    relative sizes. Text encoders trained with DS-SJE can emit embeddings with
    norms far below 1 (a margin loss fixes only score differences), which
    leaves the ReLU layers behind g_fc7 near zero.

    With EMBEDDING_WHITEN_LAYER, the centred embeddings are also decorrelated:
    each principal direction of variance v is scaled by 1 / sqrt(v + s), where
    s is WHITEN_SHRINKAGE times the total variance. The result is rotated back
    to the embedding's axes (ZCA) and scaled to unit mean variance, so the few
    directions that carry the caption's attributes reach similar variances.
    Gradient descent on the first dense layer learns each input direction at
    a speed that grows with its variance (exactly so for plain gradient
    descent, roughly for Adam when the directions are not the axes). An
    attribute that explains little of the embedding's variance (the colour on
    shapes: about 12 %, against 49 % for the position) would otherwise be
    learned last.

    Returns (mean, scale), where scale is the common scale, or for whitening
    the number of directions it keeps (the sum of v / (v + s)).
    """
    embeddings = np.asarray(embeddings, np.float64)
    mean = embeddings.mean(axis=0)
    variance = float(np.mean(embeddings.var(axis=0)))
    if not np.isfinite(variance) or variance <= 0.0:
        raise ValueError(
            f"the training embeddings have variance {variance!r}, so they cannot be "
            "normalised; check the text encoder, or train without --normalise_embeddings "
            "and --whiten_embeddings.")
    layer_names = {layer.name for layer in generator.layers}
    if EMBEDDING_WHITEN_LAYER in layer_names:
        centred = embeddings - mean
        covariance = centred.T @ centred / len(embeddings)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        shrinkage = WHITEN_SHRINKAGE * float(eigenvalues.sum())
        # Each direction's variance after the shrunk scaling, before the common scale.
        shrunk_variances = eigenvalues / (eigenvalues + shrinkage)
        gains = np.sqrt(len(mean) / shrunk_variances.sum()) / np.sqrt(eigenvalues + shrinkage)
        matrix = (eigenvectors * gains) @ eigenvectors.T
        generator.get_layer(EMBEDDING_WHITEN_LAYER).set_statistics(
            mean.astype(np.float32), matrix.astype(np.float32))
        return mean, float(shrunk_variances.sum())
    scale = float(np.sqrt(variance))
    layer = generator.get_layer(EMBEDDING_NORM_LAYER)
    layer.set_statistics(mean.astype(np.float32), np.full(mean.shape, scale, np.float32))
    return mean, scale


def count_generator_flops(image_size: int, embedding_dim: int = 1024, num_images: int = 1) -> int:
    """Return the FLOPs (2 per multiply-add) of one generator forward pass."""
    shapes = tap_shapes(image_size)
    flops = 2 * (embedding_dim * 4096 + 4096 * 4096)
    pool5 = shapes["pool5"]
    flops += 2 * 4096 * pool5[0] * pool5[1] * pool5[2]
    channels = pool5[2]
    side = pool5[0]
    for tap, op, filters in _generator_plan(image_size):
        if op == "resize":
            side *= 2
        elif op == "conv":
            flops += 2 * side * side * 9 * channels * filters
            channels = filters
    flops += 2 * side * side * 9 * channels * 3 * num_images
    return int(flops)
