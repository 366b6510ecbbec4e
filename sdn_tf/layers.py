"""Small Keras layers shared by the text encoder and the generator."""

from __future__ import annotations

import keras
import numpy as np


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
