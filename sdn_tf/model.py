"""The SDN training model: a frozen teacher, a trainable generator, one loss function.

`SDNModel.compute_losses` is the single forward pass shared by `train_step`
and `test_step`; the stage only changes which loss terms it sums (see
`sdn_tf.losses.LossTerms`). Only the generator's variables receive gradients.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sdn_tf.distribute import all_replicas_finite, apply_if, scale_for_replicas
from sdn_tf.losses import LossTerms, sdn_loss, split_images
from sdn_tf.teacher import TAP_NAMES, rgb_to_teacher_space


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

    @property
    def metrics(self):
        return list(self.loss_trackers.values()) + [self.skipped_steps]

    def call(self, embeddings, training=False):
        return self.generator(embeddings, training=training)

    def compute_losses(self, images: tf.Tensor, embeddings: tf.Tensor, training: bool) -> dict:
        """Run D and G on one batch and return the loss dict of `sdn_loss`."""
        real = rgb_to_teacher_space(tf.cast(images, tf.float32), self.preset)
        real_taps = {tap: tf.stop_gradient(value)
                     for tap, value in self.teacher(real, training=False).items()}
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
        images, embeddings = data
        variables = self.generator.trainable_variables
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, embeddings, training=True)
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
