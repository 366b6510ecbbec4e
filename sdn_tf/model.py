"""The SDN training model: a frozen teacher, a trainable generator, one loss function.

`SDNModel.compute_losses` is the single forward pass shared by `train_step`
and `test_step`; the stage only changes which loss terms it sums (see
`sdn_tf.losses.LossTerms`). Only the generator's variables receive gradients.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from sdn_tf.distribute import all_replicas_finite, apply_if, scale_for_replicas
from sdn_tf.losses import LossTerms, sdn_loss, split_images
from sdn_tf.teacher import TAP_NAMES, rgb_to_teacher_space, tap_shapes

# The largest share of the machine's memory that TeacherTapCache may take.
TAP_CACHE_MEMORY_SHARE = 0.4


def physical_memory_bytes() -> int:
    """Return the machine's physical memory in bytes, or 0 where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def tap_cache_bytes(num_images: int, image_size: int, compute_dtype: str) -> int:
    """Return the memory TeacherTapCache needs for `num_images` images, in bytes."""
    values = sum(int(np.prod(shape)) for shape in tap_shapes(image_size).values())
    return num_images * values * tf.as_dtype(compute_dtype).size


class TeacherTapCache:
    """The frozen teacher's 21 taps of every training image, computed once.

    Both stages compare the generator's output with the teacher's taps of the
    real image, which are the same at every visit of an image: the teacher is
    frozen and the input pipeline does not augment. Computing them once
    spares one teacher forward pass per step. They are held in memory as
    non-trainable variables in the teacher's compute dtype, outside the
    checkpoint, and gathered per batch by image index.
    """

    def __init__(self, teacher: keras.Model, images: np.ndarray, preset: str,
                 batch_size: int = 32, memory_bytes: Optional[int] = None):
        count, image_size = len(images), int(images.shape[1])
        compute_dtype = teacher.compute_dtype
        needed = tap_cache_bytes(count, image_size, compute_dtype)
        available = physical_memory_bytes() if memory_bytes is None else memory_bytes
        if available and needed > TAP_CACHE_MEMORY_SHARE * available:
            raise ValueError(
                f"--cache_teacher_taps needs {needed / 2**30:.1f} GiB for the teacher's taps "
                f"of {count} images at {image_size}x{image_size} ({compute_dtype}), more "
                f"than {TAP_CACHE_MEMORY_SHARE:.0%} of this machine's "
                f"{available / 2**30:.1f} GiB; train without --cache_teacher_taps or at a "
                "smaller --image_size.")
        start_time = time.perf_counter()

        @tf.function(autograph=False, reduce_retracing=True)
        def teacher_taps(batch):
            real = rgb_to_teacher_space(tf.cast(batch, tf.float32), preset)
            return teacher(real, training=False)

        # Filled in host arrays, then moved into variables one tap at a time,
        # so at most one tap exists twice. For 2,400 images at 64x64 on a
        # 2-core CPU this took 13 s; assigning each batch to slices of the
        # variables took 72 s.
        numpy_dtype = tf.as_dtype(compute_dtype).as_numpy_dtype
        buffers = {tap: np.empty((count,) + tuple(shape), numpy_dtype)
                   for tap, shape in tap_shapes(image_size).items()}
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            for tap, value in teacher_taps(images[start:stop]).items():
                buffers[tap][start:stop] = tf.cast(value, compute_dtype).numpy()
        self.taps = {}
        for tap in list(buffers):
            self.taps[tap] = tf.Variable(buffers.pop(tap), trainable=False, name=f"cached_{tap}")
        logging.info("Cached the teacher's taps of %d training images: %.2f GiB in %.1f s.",
                     count, needed / 2**30, time.perf_counter() - start_time)

    def gather(self, image_index: tf.Tensor) -> dict:
        """Return {tap: the cached taps of the images `image_index` [B]}."""
        return {tap: tf.gather(values, image_index) for tap, values in self.taps.items()}


class SDNModel(keras.Model):
    """Teacher D and generator G trained with the SDN losses.

    Batches are (uint8 RGB images [B, S, S, 3], float32 embeddings [B, D]).

    `fuse_ops` compiles the loss terms and the optimizer update with XLA on
    their own, for steps that are not compiled as a whole (see
    `sdn_tf.precision.Policy.fuse_ops`). Both are memory-bound chains of
    element-wise operations, one pass each without XLA. Only for the default
    strategy: under MirroredStrategy the update must run in the strategy's
    cross-replica context.
    """

    def __init__(self, generator: keras.Model, teacher: keras.Model, terms: LossTerms,
                 preset: str, num_images: int = 1, fuse_ops: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.fuse_ops = fuse_ops
        self._fused_update = None
        self.generator = generator
        self.teacher = teacher
        self.teacher.trainable = False
        self.terms = terms
        self.preset = preset
        self.num_images = num_images
        names = ["loss", "image"]
        if terms.generator_taps:
            names += ["stage1_taps"] + [f"stage1/{tap}" for tap in TAP_NAMES]
        if terms.teacher_taps_of_fake:
            names += ["stage2_taps"] + [f"stage2/{tap}" for tap in TAP_NAMES]
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.skipped_steps = keras.metrics.Sum(name="skipped_steps")
        # Set by training to a TeacherTapCache; batches then carry image indices.
        self.tap_cache = None

    @property
    def metrics(self):
        return list(self.loss_trackers.values()) + [self.skipped_steps]

    def call(self, embeddings, training=False):
        return self.generator(embeddings, training=training)

    def compute_losses(self, images: tf.Tensor, embeddings: tf.Tensor, training: bool,
                       image_index: Optional[tf.Tensor] = None) -> dict:
        """Run D and G on one batch and return the loss dict of `sdn_loss`.

        With `image_index` and a tap cache, the real images' taps come from the
        cache instead of a teacher pass.
        """
        real = rgb_to_teacher_space(tf.cast(images, tf.float32), self.preset)
        if image_index is not None and self.tap_cache is not None:
            real_taps = self.tap_cache.gather(image_index)
        else:
            real_taps = self.teacher(real, training=False)
        real_taps = {tap: tf.stop_gradient(value) for tap, value in real_taps.items()}
        outputs = self.generator(embeddings, training=training)
        fakes = split_images(outputs["image"], self.num_images)
        fake_taps = None
        if self.terms.teacher_taps_of_fake:
            # One teacher pass over all n generated images: [n*B, S, S, 3].
            stacked = self.teacher(tf.concat(fakes, axis=0), training=False)
            parts = {tap: tf.split(value, self.num_images, axis=0) for tap, value in stacked.items()}
            fake_taps = [{tap: parts[tap][k] for tap in parts} for k in range(self.num_images)]
        return sdn_loss(real, real_taps, fakes, self.terms,
                        generator_taps=outputs, fake_taps=fake_taps, fuse_terms=self.fuse_ops)

    def train_step(self, data):
        # (images, embeddings), or with a tap cache (images, embeddings, image index).
        images, embeddings, *image_index = data
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, embeddings, training=True,
                                         image_index=image_index[0] if image_index else None)
            # Under a tf.distribute strategy the optimizer sums the replicas'
            # gradients, so each replica's mean loss is divided by their count.
            scaled = self.optimizer.scale_loss(scale_for_replicas(losses["loss"]))
        gradients = tape.gradient(scaled, variables)
        # A NaN or infinite loss must not reach the weights: skip the update
        # and count the step, so the training loop can stop or restore.
        finite = all_replicas_finite(losses["loss"])
        apply_if(finite, self._apply, (gradients, variables))
        self.skipped_steps.update_state(1.0 - tf.cast(finite, tf.float32))
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(tf.where(finite, losses[name], 0.0),
                                 sample_weight=tf.cast(finite, tf.float32))
        return losses

    def _apply(self, gradients, variables):
        if not self.fuse_ops:
            self.optimizer.apply(gradients, variables)
            return tf.constant(True)
        if self._fused_update is None:
            # Adam's update makes about ten element-wise passes over every
            # weight (140M at 224 pixels). XLA fuses them into a few.
            self._fused_update = tf.function(
                lambda grads: self.optimizer.apply(grads, variables),
                jit_compile=True, autograph=False)
        self._fused_update(gradients)
        return tf.constant(True)

    def test_step(self, data):
        images, embeddings = data
        losses = self.compute_losses(images, embeddings, training=False)
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name])
        return losses
