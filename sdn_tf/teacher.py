"""The frozen VGG19 teacher ("source model D") and its 21 feature taps.

The teacher is VGG19's 16 convolution layers with ImageNet weights, frozen in
every stage; the fully connected layers are not used. Each tap is taken after
its ReLU (Keras' VGG19 convolutions carry the ReLU inside the layer) or after a
pooling layer.

Two numerical presets exist:

* ``released_code`` (default): what the SDN authors' TensorFlow 1 code ran, and
  so what produced the published numbers. Pooling is 2x2 *average* pooling and
  pixels go in as raw 0-255 values with no mean subtraction, in BGR order
  (the released code read images with OpenCV, which returns BGR).
* ``keras``: Keras' own VGG19 convention, max pooling and
  ``keras.applications.vgg19.preprocess_input`` (BGR, ImageNet mean removed).

Images travel through the model in "teacher space", the input convention of
the chosen preset. The generator's last layer also outputs teacher space, so
Stage-II can feed generated images to the teacher unchanged.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

TAP_NAMES = (
    "conv1_1", "conv1_2", "pool1",
    "conv2_1", "conv2_2", "pool2",
    "conv3_1", "conv3_2", "conv3_3", "conv3_4", "pool3",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4", "pool4",
    "conv5_1", "conv5_2", "conv5_3", "conv5_4", "pool5",
)  # The 21 taps of the teacher, shallow to deep.

PRESETS = ("released_code", "keras")

# ImageNet mean in BGR order, as subtracted by Keras' "caffe" preprocessing.
_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)


def keras_layer_name(tap: str) -> str:
    """Map a tap name such as "conv3_2" or "pool3" to Keras' VGG19 layer name."""
    kind, _, index = tap.partition("_")
    if kind.startswith("conv"):
        return f"block{kind[4:]}_conv{index}"
    return f"block{tap[4:]}_pool"


def tap_shapes(image_size: int) -> dict:
    """Return each tap's [height, width, channels] for a square input."""
    shapes = {}
    for tap in TAP_NAMES:
        block = int(tap[4])
        channels = (64, 128, 256, 512, 512)[block - 1]
        side = image_size // (2 ** (block - 1))
        if tap.startswith("pool"):
            side //= 2
        shapes[tap] = (side, side, channels)
    return shapes


def rgb_to_teacher_space(rgb: tf.Tensor, preset: str) -> tf.Tensor:
    """Convert float RGB images in [0, 255] to the preset's teacher input."""
    bgr = rgb[..., ::-1]
    if preset == "released_code":
        return bgr
    if preset == "keras":
        return bgr - tf.constant(_IMAGENET_MEAN_BGR, dtype=bgr.dtype)
    raise ValueError(f"Unknown teacher preset {preset!r}; choose one of {PRESETS}.")


def teacher_space_to_rgb(images: tf.Tensor, preset: str) -> tf.Tensor:
    """Invert `rgb_to_teacher_space`; the result is float RGB, not clipped."""
    if preset == "released_code":
        bgr = images
    elif preset == "keras":
        bgr = images + tf.constant(_IMAGENET_MEAN_BGR, dtype=images.dtype)
    else:
        raise ValueError(f"Unknown teacher preset {preset!r}; choose one of {PRESETS}.")
    return bgr[..., ::-1]


def _load_vgg19(image_size: int, weights: str) -> keras.Model:
    """Build Keras' VGG19 without its top and load the requested weights.

    `weights` is "imagenet" (downloaded once into the Keras cache), "random"
    (Glorot-uniform initialisation, for tests and offline smoke runs) or the
    path of a local weights file for the notop model.
    """
    shape = (image_size, image_size, 3)
    if weights == "random":
        model = keras.applications.VGG19(include_top=False, weights=None, input_shape=shape)
        _seed_random_weights(model)
        return model
    if weights == "imagenet":
        try:
            return keras.applications.VGG19(
                include_top=False, weights="imagenet", input_shape=shape
            )
        except Exception as error:  # network, HTTP and file errors all surface here
            raise RuntimeError(
                "Could not download the ImageNet VGG19 weights "
                f"({type(error).__name__}: {error}). Without internet, pass "
                "--teacher_weights=PATH with a local copy of "
                "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5, or "
                "--teacher_weights=random for a smoke run with random weights."
            ) from error
    path = os.path.expanduser(weights)
    if not os.path.isfile(path):
        problem = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(
            f"Teacher weights file {path!r} {problem}. Pass --teacher_weights=imagenet, "
            "--teacher_weights=random, or the path of an existing VGG19 notop weights file."
        )
    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=shape)
    try:
        model.load_weights(path)
    except Exception as error:  # h5py, Keras and OS errors for unreadable files
        raise ValueError(
            f"Could not read teacher weights file {path!r} ({type(error).__name__}: "
            f"{error}). It must hold Keras' VGG19 notop weights "
            "(vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5)."
        ) from error
    return model


def _seed_random_weights(model: keras.Model) -> None:
    """Give random teacher weights fixed values (He-normal, one seed per layer).

    Every program that builds a "random" teacher then gets the same network,
    so a text encoder trained against its features, a resumed run and a
    Stage-II run all see one teacher. He-normal keeps the activation scale
    through the 16 ReLU layers, as trained VGG19 weights roughly do; Keras'
    default Glorot-uniform shrinks it about twofold per layer, which leaves
    pool5 near zero and gives Stage-I nothing to match in the deep taps.
    """
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    for seed, layer in enumerate(convolutions):
        initializer = keras.initializers.HeNormal(seed=1000 + seed)
        layer.kernel.assign(initializer(layer.kernel.shape))
        layer.bias.assign(tf.zeros_like(layer.bias))


def build_teacher(image_size: int, weights: str = "imagenet",
                  preset: str = "released_code") -> keras.Model:
    """Build the frozen teacher: teacher-space images [B, S, S, 3] to a dict of taps.

    The convolution layers are shared with Keras' VGG19 (so its weights load as
    published), and the pooling layers follow the preset.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown teacher preset {preset!r}; choose one of {PRESETS}.")
    if image_size % 32 != 0 or image_size < 32:
        raise ValueError(
            f"Image size {image_size} is not a positive multiple of 32; VGG19 halves "
            "it five times. Use 64, 96, 128, ..., 224."
        )
    vgg = _load_vgg19(image_size, weights)
    inputs = keras.Input((image_size, image_size, 3), name="teacher_image")
    x = inputs
    taps = {}
    for tap in TAP_NAMES:
        if tap.startswith("conv"):
            x = vgg.get_layer(keras_layer_name(tap))(x)
        elif preset == "released_code":
            x = keras.layers.AveragePooling2D(2, name=f"teacher_{tap}")(x)
        else:
            x = keras.layers.MaxPooling2D(2, name=f"teacher_{tap}")(x)
        taps[tap] = x
    teacher = keras.Model(inputs, taps, name="teacher")
    teacher.trainable = False
    return teacher


def count_teacher_flops(image_size: int) -> int:
    """Return the multiply-add FLOPs (2 per MAC) of one teacher forward pass."""
    flops = 0
    in_channels = 3
    for tap, (side, _, channels) in tap_shapes(image_size).items():
        if tap.startswith("conv"):
            flops += 2 * side * side * 9 * in_channels * channels
            in_channels = channels
    return int(flops)


def describe_weights_choice(weights: str) -> str:
    """Return a short log description of a --teacher_weights value."""
    if weights in ("imagenet", "random"):
        return weights
    return f"file {os.path.abspath(os.path.expanduser(weights))}"


__all__ = [
    "TAP_NAMES", "PRESETS", "tap_shapes", "keras_layer_name", "build_teacher",
    "rgb_to_teacher_space", "teacher_space_to_rgb", "count_teacher_flops",
    "describe_weights_choice",
]
