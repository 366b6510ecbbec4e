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
