"""Small Keras layers shared by the text encoder and the generator."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class Standardize(keras.layers.Layer):
    """(x - mean) / std with fixed, checkpointed per-dimension statistics."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False,
                                    name="mean")
        self.std = self.add_weight(shape=(dim,), initializer="ones", trainable=False,
                                   name="std")

    def set_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.assign(mean)
        self.std.assign(std)

    def call(self, inputs):
        return (inputs - self.mean) / self.std


class Whiten(keras.layers.Layer):
    """(x - mean) @ matrix with a fixed, checkpointed mean and D x D matrix."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight(shape=(dim,), initializer="zeros", trainable=False,
                                    name="mean")
        self.matrix = self.add_weight(shape=(dim, dim), initializer="identity",
                                      trainable=False, name="matrix")

    def set_statistics(self, mean: np.ndarray, matrix: np.ndarray) -> None:
        self.mean.assign(mean)
        self.matrix.assign(matrix)

    def call(self, inputs):
        return keras.ops.matmul(inputs - self.mean, self.matrix)


class NearestUpsampling(keras.layers.Layer):
    """Nearest-neighbour resize by 2, as keras.layers.UpSampling2D(2) computes it.

    The result is the same, but one resize and, in training, one gradient pass
    replace UpSampling2D's two repeats and their two gradient sums. For a
    [12, 112, 112, 64] bfloat16 map on a 2-core CPU, that took about 40 % less
    time (measured once, forward and backward).
    """

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        return keras.ops.image.resize(inputs, (2 * height, 2 * width),
                                      interpolation="nearest")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, 2 * height, 2 * width, channels)


# When SmallMapConv2D computes its kernel gradient with matrix products: in
# bfloat16 on a CPU, on maps of at most SMALL_MAP_SIDE pixels a side, with at
# least SMALL_MAP_MIN_CHANNELS input channels and filters. We timed oneDNN's
# bfloat16 Conv2DBackpropFilter against the nine products on a 2-core CPU with
# AMX (TensorFlow 2.21, batch 12, fastest of 50 calls). Native against
# products, in ms: 12.6 and 2.5 on a 4x4x512 map with 512 filters, 21.0 and 6.3
# at 8x8x512, 35.0 and 11.8 at 14x14x512, 10.8 and 8.7 at 16x16x256 with 256
# filters.
# The native kernel was as fast or faster with 128 filters at 16x16x256 (5.9
# and 6.2 ms), at 32x32x128 (4.0 and 7.4 ms) and in float32 (13.6 and 14.0 ms
# at 8x8x512).
SMALL_MAP_SIDE = 16
SMALL_MAP_MIN_CHANNELS = 256


def _conv3x3_kernel_gradient(inputs: tf.Tensor, output_gradient: tf.Tensor) -> tf.Tensor:
    """Return d(loss)/d(kernel) of a 3x3, stride-1, "same" convolution, [3, 3, C, K].

    Kernel tap (i, j) multiplies the input shifted by (i - 1, j - 1), so its gradient
    is that shifted input, flattened to [B*H*W, C], transposed and multiplied
    by the output gradient flattened to [B*H*W, K].
    """
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    filters = output_gradient.shape[3]
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    flat_gradient = tf.reshape(output_gradient, [-1, filters])
    taps = [
        tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :], [-1, channels]),
                  flat_gradient, transpose_a=True)
        for i in range(3) for j in range(3)
    ]
    return tf.reshape(tf.stack(taps), [3, 3, channels, filters])


# NOTE: traced in a graph, tf.custom_gradient registers each gradient in
# TensorFlow's global gradient registry, which keeps the traced graph alive.
# A process that trains many bfloat16 generators keeps all of their graphs.
@tf.custom_gradient
def _conv3x3_same(inputs, kernel):
    outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")

    def gradient(output_gradient):
        input_gradient = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(inputs), filter=kernel, out_backprop=output_gradient,
            strides=[1, 1, 1, 1], padding="SAME")
        return input_gradient, _conv3x3_kernel_gradient(inputs, output_gradient)

    return outputs, gradient


@keras.saving.register_keras_serializable(package="sdn_tf")
class SmallMapConv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D (3x3, stride 1, "same") with a faster kernel gradient on small maps.

    The forward pass, the weights and their names are those of Conv2D, so
    checkpoints and exports do not change. Only the kernel gradient differs:
    in bfloat16 on a CPU, for a small map with many channels (see
    SMALL_MAP_SIDE), it is computed as nine matrix products
    (_conv3x3_kernel_gradient), which oneDNN runs faster than its
    Conv2DBackpropFilter there. Elsewhere the layer is plain Conv2D.
    """

    def build(self, input_shape):
        super().build(input_shape)
        if tuple(self.kernel_size) != (3, 3) or tuple(self.strides) != (1, 1) or \
                self.padding != "same" or tuple(self.dilation_rate) != (1, 1) or \
                self.data_format != "channels_last":
            raise ValueError(f"{self.name}: SmallMapConv2D supports only 3x3, stride-1, "
                             "\"same\", channels-last convolutions.")
        side = max(int(input_shape[1]), int(input_shape[2]))
        self.matmul_kernel_gradient = (
            self.compute_dtype == "bfloat16"
            and side <= SMALL_MAP_SIDE
            and min(int(input_shape[3]), self.filters) >= SMALL_MAP_MIN_CHANNELS
            and not tf.config.list_physical_devices("GPU"))

    def convolution_op(self, inputs, kernel):
        if not self.matmul_kernel_gradient:
            return super().convolution_op(inputs, kernel)
        return _conv3x3_same(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))
