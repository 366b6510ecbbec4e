"""SDN losses: mean absolute errors between images and between feature taps.

Notation (SDN paper, Yuan & Peng, ACM MM 2018): D is the frozen teacher, G the
generator, D_t and G_t their taps, I the real image and G(s) the image
generated from sentence s. Every term is a mean absolute error.

* Image term: mean|I - G(s)|.
* Stage-I (Eq. 1-2): image term + sum_t w_t * mean|D_t(I) - G_t(s)|.
* Stage-II (Eq. 3): image term + sum_t w_t * mean|D_t(I) - D_t(G(s))|.
* Diverse synthesis, n images per sentence: Stage-I (Eq. 4) keeps the tap sum
  and takes the minimum of the image term over the n images; Stage-II (Eq. 5)
  takes the minimum over the n images of (tap sum + image term). The minimum
  is taken per example.

The terms are computed per example and averaged over the batch at the end, so
the per-example minimum of the diverse losses is exact and, with n = 1, the
result equals the plain mean over the whole batch tensor.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from sdn_tf.teacher import TAP_NAMES


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """Which terms a training scheme sums, and their weights.

    Attributes:
      image_weight: weight of the image term; 0 leaves it out.
      generator_taps: add the Stage-I tap sum, teacher taps of the real image
        against the generator's own taps.
      teacher_taps_of_fake: add the Stage-II tap sum, teacher taps of the real
        image against teacher taps of the generated image.
      tap_weights: weight per tap name; taps not listed weigh 1.
    """

    image_weight: float = 1.0
    generator_taps: bool = True
    teacher_taps_of_fake: bool = False
    tap_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def weight(self, tap: str) -> float:
        return float(self.tap_weights.get(tap, 1.0))


def stage_terms(stage: int, tap_weights: Optional[Mapping[str, float]] = None,
                image_weight: float = 1.0) -> LossTerms:
    """Return the loss terms of SDN Stage-I (stage=1) or Stage-II (stage=2)."""
    if stage not in (1, 2):
        raise ValueError(f"--stage={stage} is invalid; use 1 (Stage-I) or 2 (Stage-II).")
    return LossTerms(
        image_weight=image_weight,
        generator_taps=stage == 1,
        teacher_taps_of_fake=stage == 2,
        tap_weights=dict(tap_weights or {}),
    )


def per_example_l1(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Return mean|a - b| over every axis but the first, in float32: shape [B]."""
    diff = tf.abs(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))
    return tf.reduce_mean(tf.reshape(diff, [tf.shape(diff)[0], -1]), axis=1)


@tf.function(jit_compile=True, autograph=False)
def _fused_l1_forward(target: tf.Tensor, prediction: tf.Tensor) -> tf.Tensor:
    return per_example_l1(target, prediction)


@tf.function(jit_compile=True, autograph=False)
def _fused_l1_gradient(target: tf.Tensor, prediction: tf.Tensor,
                       upstream: tf.Tensor) -> tf.Tensor:
    # d/d prediction of mean|target - prediction| is sign(prediction - target) / N,
    # times the upstream gradient of each example's term.
    count = tf.cast(tf.reduce_prod(tf.shape(prediction)[1:]), tf.float32)
    scale = tf.reshape(upstream / count, [-1] + [1] * (len(prediction.shape) - 1))
    sign = tf.sign(tf.cast(prediction, tf.float32) - tf.cast(target, tf.float32))
    return tf.cast(sign * scale, prediction.dtype)


@tf.custom_gradient
def fused_per_example_l1(target: tf.Tensor, prediction: tf.Tensor):
    """Return `per_example_l1(target, prediction)` for steps not compiled as a whole.

    Such steps are the CPU default, because oneDNN's convolutions are faster
    there than XLA's. Without XLA, each cast, the subtraction, the absolute value and
    their gradients make a separate pass over a tap tensor. Here XLA compiles
    the forward term and its gradient as two programs. Each reads the two
    tensors once, and the forward pass keeps no float32 difference for the
    backward pass.

    Gradients flow to `prediction` only: `target` (a real image or a teacher
    tap of one) is a constant of the loss, as in every SDN term.
    """
    def gradient(upstream):
        return None, _fused_l1_gradient(target, prediction, upstream)

    return _fused_l1_forward(target, prediction), gradient


def split_images(images: tf.Tensor, num_images: int) -> list:
    """Split the generator's [B, H, W, 3n] output into n images [B, H, W, 3]."""
    return [images[..., 3 * k:3 * k + 3] for k in range(num_images)]


def sdn_loss(real_image: tf.Tensor,
             real_taps: Mapping[str, tf.Tensor],
             fake_images: Sequence[tf.Tensor],
             terms: LossTerms,
             generator_taps: Optional[Mapping[str, tf.Tensor]] = None,
             fake_taps: Optional[Sequence[Mapping[str, tf.Tensor]]] = None,
             fuse_terms: bool = False) -> dict:
    """Compute the SDN loss and its parts for one batch.

    Args:
      real_image: [B, S, S, 3] real images in teacher space.
      real_taps: teacher taps of the real images.
      fake_images: n generated images [B, S, S, 3] in teacher space.
      terms: which terms to sum (see `LossTerms`).
      generator_taps: the generator's own taps; needed when
        `terms.generator_taps` is set.
      fake_taps: teacher taps of each generated image, aligned with
        `fake_images`; needed when `terms.teacher_taps_of_fake` is set.
      fuse_terms: compute each mean absolute error with `fused_per_example_l1`.

    Returns:
      A dict of float32 scalars: "loss" (what the optimiser minimises),
      "image" (the image term), "stage1_taps" and "stage2_taps" (the weighted
      tap sums, present when used), and "stage1/<tap>" / "stage2/<tap>" (each
      tap's unweighted mean absolute error). For diverse synthesis, the
      Stage-II and image parts are those of the image chosen by the minimum.
    """
    l1 = fused_per_example_l1 if fuse_terms else per_example_l1
    num_images = len(fake_images)
    batch = tf.shape(real_image)[0]
    zeros = tf.zeros([batch], tf.float32)

    # Stage-I tap sum: one value per example, independent of the n images.
    stage1_total = zeros
    stage1_parts = {}
    if terms.generator_taps:
        if generator_taps is None:
            raise ValueError("The Stage-I tap term needs the generator's taps.")
        for tap in TAP_NAMES:
            stage1_parts[tap] = l1(real_taps[tap], generator_taps[tap])
            stage1_total += terms.weight(tap) * stage1_parts[tap]

    # Per generated image k: image term and Stage-II tap sum, each [B].
    image_terms = [l1(real_image, fake) for fake in fake_images]
    stage2_parts = [{} for _ in range(num_images)]
    stage2_totals = [zeros for _ in range(num_images)]
    if terms.teacher_taps_of_fake:
        if fake_taps is None or len(fake_taps) != num_images:
            raise ValueError("The Stage-II tap term needs teacher taps of every generated image.")
        for k in range(num_images):
            for tap in TAP_NAMES:
                part = l1(real_taps[tap], fake_taps[k][tap])
                stage2_parts[k][tap] = part
                stage2_totals[k] += terms.weight(tap) * part

    # Eq. 4-5: the minimum over the n images of the per-image terms, per example.
    per_image = tf.stack(
        [terms.image_weight * image_terms[k] + stage2_totals[k] for k in range(num_images)]
    )  # [n, B]
    choice = tf.one_hot(tf.argmin(per_image, axis=0), num_images, axis=0)  # [n, B]

    def chosen(values):
        return tf.reduce_sum(tf.stack(values) * choice, axis=0)

    total = stage1_total + tf.reduce_min(per_image, axis=0)
    losses = {"loss": tf.reduce_mean(total), "image": tf.reduce_mean(chosen(image_terms))}
    if terms.generator_taps:
        losses["stage1_taps"] = tf.reduce_mean(stage1_total)
        for tap, part in stage1_parts.items():
            losses[f"stage1/{tap}"] = tf.reduce_mean(part)
    if terms.teacher_taps_of_fake:
        losses["stage2_taps"] = tf.reduce_mean(chosen(stage2_totals))
        for tap in TAP_NAMES:
            losses[f"stage2/{tap}"] = tf.reduce_mean(
                chosen([stage2_parts[k][tap] for k in range(num_images)])
            )
    return losses


def parse_tap_weights(text: str) -> dict:
    """Parse "conv1_1=0.5,pool5=2" into {"conv1_1": 0.5, "pool5": 2.0}.

    "all=W" sets every tap to W; pairs after it override single taps, so
    "all=0.05,pool5=1" weighs pool5 1 and the other 20 taps 0.05.
    """
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tap, sep, value = item.partition("=")
        tap = tap.strip()
        if not sep or (tap not in TAP_NAMES and tap != "all"):
            raise ValueError(
                f"Invalid tap weight {item!r}: write TAP=WEIGHT with TAP one of "
                f"{', '.join(TAP_NAMES)}, or all=WEIGHT for every tap."
            )
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"Invalid weight {value!r} for tap {tap}: not a number.") from None
        if number < 0:
            raise ValueError(f"Tap weight {tap}={value} is negative; weights must be >= 0.")
        for name in (TAP_NAMES if tap == "all" else (tap,)):
            weights[name] = number
    return weights
