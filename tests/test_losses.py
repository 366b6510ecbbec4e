"""SDN losses against a NumPy reference on small random tensors."""

import numpy as np
import pytest
import tensorflow as tf

from sdn_tf import losses as losses_lib
from sdn_tf.teacher import TAP_NAMES

BATCH = 3


def random_taps(rng, scale=1.0):
    # Small tap shapes keep the test fast; the loss does not care about sizes.
    return {tap: rng.normal(size=(BATCH, 2, 2, 3 + i % 4)).astype(np.float32) * scale
            for i, tap in enumerate(TAP_NAMES)}


def numpy_l1(a, b):
    return np.abs(a - b).reshape(len(a), -1).mean(axis=1)


def numpy_reference(real, real_taps, fakes, g_taps, fake_taps, stage1, stage2, weights,
                    image_weight):
    stage1_sum = np.zeros(BATCH)
    if stage1:
        for tap in TAP_NAMES:
            stage1_sum += weights.get(tap, 1.0) * numpy_l1(real_taps[tap], g_taps[tap])
    per_image = []
    for k, fake in enumerate(fakes):
        value = image_weight * numpy_l1(real, fake)
        if stage2:
            for tap in TAP_NAMES:
                value = value + weights.get(tap, 1.0) * numpy_l1(real_taps[tap],
                                                                fake_taps[k][tap])
        per_image.append(value)
    return np.mean(stage1_sum + np.min(np.stack(per_image), axis=0))


def make_inputs(seed, num_images):
    rng = np.random.default_rng(seed)
    real = rng.uniform(0, 255, (BATCH, 4, 4, 3)).astype(np.float32)
    fakes = [rng.uniform(0, 255, (BATCH, 4, 4, 3)).astype(np.float32) for _ in range(num_images)]
    return rng, real, random_taps(rng), fakes, random_taps(rng), [
        random_taps(rng) for _ in range(num_images)]


@pytest.mark.parametrize("stage", [1, 2])
def test_stage_loss_matches_numpy(stage):
    _, real, real_taps, fakes, g_taps, fake_taps = make_inputs(stage, 1)
    terms = losses_lib.stage_terms(stage)
    result = losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps, fake_taps)
    expected = numpy_reference(real, real_taps, fakes, g_taps, fake_taps,
                               stage == 1, stage == 2, {}, 1.0)
    np.testing.assert_allclose(result["loss"].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("stage", [1, 2])
def test_fused_terms_match_unfused(stage):
    """XLA-fused terms give the NumPy loss and the unfused gradients, also for bfloat16 taps."""
    _, real, real_taps, fakes, g_taps, fake_taps = make_inputs(10 + stage, 1)
    terms = losses_lib.stage_terms(stage)
    expected = numpy_reference(real, real_taps, fakes, g_taps, fake_taps,
                               stage == 1, stage == 2, {}, 1.0)
    variables = {tap: tf.Variable(tf.cast(value, tf.bfloat16)) for tap, value in g_taps.items()}
    fake_variables = {tap: tf.Variable(value) for tap, value in fake_taps[0].items()}
    gradients = {}
    for fuse in (False, True):
        with tf.GradientTape() as tape:
            result = losses_lib.sdn_loss(real, real_taps, fakes, terms, variables,
                                         [fake_variables], fuse_terms=fuse)
        watched = list(variables.values()) + list(fake_variables.values())
        gradients[fuse] = tape.gradient(result["loss"], watched)
        if fuse:
            np.testing.assert_allclose(result["loss"].numpy(), expected, rtol=1e-2)
            assert result["loss"].dtype == tf.float32
    for unfused, fused in zip(gradients[False], gradients[True]):
        if unfused is None:
            assert fused is None
            continue
        assert fused.dtype == unfused.dtype
        np.testing.assert_allclose(tf.cast(fused, tf.float32).numpy(),
                                   tf.cast(unfused, tf.float32).numpy(), rtol=1e-2, atol=1e-6)
        assert np.any(tf.cast(fused, tf.float32).numpy() != 0)


def test_fused_term_gradient_per_example():
    """The fused term's gradient is sign(prediction - target) / N times each example's weight.

    The target (a real image or its teacher tap) gets no gradient.
    """
    rng = np.random.default_rng(5)
    target = tf.Variable(rng.normal(size=(3, 4, 5, 2)).astype(np.float32))
    prediction = tf.Variable(rng.normal(size=(3, 4, 5, 2)).astype(np.float32))
    weights = tf.constant([1.0, -2.0, 0.5])
    with tf.GradientTape() as tape:
        value = losses_lib.fused_per_example_l1(target, prediction)
        total = tf.reduce_sum(weights * value)
    target_gradient, prediction_gradient = tape.gradient(total, [target, prediction])
    difference = prediction.numpy() - target.numpy()
    np.testing.assert_allclose(value.numpy(), np.abs(difference).mean(axis=(1, 2, 3)),
                               rtol=1e-6)
    expected = np.sign(difference) * weights.numpy()[:, None, None, None] / 40
    np.testing.assert_allclose(prediction_gradient.numpy(), expected, rtol=1e-6)
    assert target_gradient is None


def test_stage1_is_plain_mean_of_tensors():
    # With one image, the per-example mean averaged over the batch equals the
    # mean over the whole tensor, as written in the paper's Eq. 1-2.
    _, real, real_taps, fakes, g_taps, _ = make_inputs(3, 1)
    result = losses_lib.sdn_loss(real, real_taps, fakes, losses_lib.stage_terms(1), g_taps)
    expected = np.abs(real - fakes[0]).mean() + sum(
        np.abs(real_taps[tap] - g_taps[tap]).mean() for tap in TAP_NAMES)
    np.testing.assert_allclose(result["loss"].numpy(), expected, rtol=1e-5)


def test_stage2_ignores_generator_taps():
    _, real, real_taps, fakes, g_taps, fake_taps = make_inputs(4, 1)
    terms = losses_lib.stage_terms(2)
    first = losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps, fake_taps)
    shifted = {tap: value + 100.0 for tap, value in g_taps.items()}
    second = losses_lib.sdn_loss(real, real_taps, fakes, terms, shifted, fake_taps)
    assert first["loss"].numpy() == pytest.approx(second["loss"].numpy())
    assert "stage1_taps" not in first


@pytest.mark.parametrize("stage", [1, 2])
def test_diverse_loss_takes_per_example_min(stage):
    _, real, real_taps, fakes, g_taps, fake_taps = make_inputs(10 + stage, 3)
    # Make a different image best for each example, so a batch-level
    # minimum would give another value than the per-example one.
    for example in range(BATCH):
        fakes[example][example] = real[example] + 1.0
    terms = losses_lib.stage_terms(stage)
    result = losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps, fake_taps)
    expected = numpy_reference(real, real_taps, fakes, g_taps, fake_taps,
                               stage == 1, stage == 2, {}, 1.0)
    np.testing.assert_allclose(result["loss"].numpy(), expected, rtol=1e-5)
    if stage == 1:
        np.testing.assert_allclose(result["image"].numpy(), 1.0, rtol=1e-5)


def test_tap_weights_and_image_weight():
    _, real, real_taps, fakes, g_taps, fake_taps = make_inputs(7, 1)
    weights = {"conv1_1": 0.5, "pool5": 3.0, "conv3_2": 0.0}
    terms = losses_lib.stage_terms(1, weights, image_weight=2.0)
    result = losses_lib.sdn_loss(real, real_taps, fakes, terms, g_taps, fake_taps)
    expected = numpy_reference(real, real_taps, fakes, g_taps, fake_taps, True, False,
                               weights, 2.0)
    np.testing.assert_allclose(result["loss"].numpy(), expected, rtol=1e-5)


def test_per_tap_parts_reported():
    _, real, real_taps, fakes, g_taps, fake_taps = make_inputs(8, 1)
    result = losses_lib.sdn_loss(real, real_taps, fakes, losses_lib.stage_terms(1), g_taps)
    for tap in TAP_NAMES:
        expected = np.abs(real_taps[tap] - g_taps[tap]).mean()
        np.testing.assert_allclose(result[f"stage1/{tap}"].numpy(), expected, rtol=1e-5)


def test_bfloat16_taps_reduced_in_float32():
    _, real, real_taps, fakes, g_taps, _ = make_inputs(9, 1)
    low = {tap: tf.cast(value, tf.bfloat16) for tap, value in g_taps.items()}
    result = losses_lib.sdn_loss(real, real_taps, fakes, losses_lib.stage_terms(1), low)
    assert result["loss"].dtype == tf.float32


def test_missing_taps_rejected():
    _, real, real_taps, fakes, _, _ = make_inputs(5, 1)
    with pytest.raises(ValueError, match="Stage-II"):
        losses_lib.sdn_loss(real, real_taps, fakes, losses_lib.stage_terms(2))


def test_parse_tap_weights():
    assert losses_lib.parse_tap_weights("conv1_1=0.5, pool5=2") == {"conv1_1": 0.5, "pool5": 2.0}
    assert losses_lib.parse_tap_weights("") == {}


def test_parse_tap_weights_all():
    weights = losses_lib.parse_tap_weights("all=0.05,pool5=1")
    assert set(weights) == set(TAP_NAMES)
    assert weights["pool5"] == 1.0
    assert all(weights[tap] == 0.05 for tap in TAP_NAMES if tap != "pool5")


@pytest.mark.parametrize("text", ["conv9_1=1", "pool5", "pool5=x", "pool5=-1", "all=-2",
                                  "every=1"])
def test_parse_tap_weights_rejects(text):
    with pytest.raises(ValueError):
        losses_lib.parse_tap_weights(text)


def test_invalid_stage():
    with pytest.raises(ValueError, match="--stage=3"):
        losses_lib.stage_terms(3)


@pytest.mark.parametrize("stage", [1, 2])
def test_fused_step_matches_plain_step(stage):
    """SDNModel(fuse_ops=True) takes the same Adam step as the plain model."""
    import keras

    from sdn_tf.generator import build_generator
    from sdn_tf.model import SDNModel
    from sdn_tf.teacher import build_teacher

    rng = np.random.default_rng(stage)
    images = tf.constant(rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    embeddings = tf.constant(rng.normal(size=(2, 16)).astype(np.float32))
    teacher = build_teacher(64, "random")
    weights, losses = {}, {}
    for fuse in (False, True):
        generator = build_generator(64, 16, init="he")
        model = SDNModel(generator, teacher, losses_lib.stage_terms(stage), "released_code",
                         fuse_ops=fuse)
        model.optimizer = keras.optimizers.Adam(1e-3)
        model.optimizer.build(generator.trainable_variables)
        step = tf.function(model.train_step)
        losses[fuse] = [float(step((images, embeddings))["loss"]) for _ in range(2)]
        weights[fuse] = [v.numpy() for v in generator.trainable_variables]
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    # A changed second loss shows that the fused update reached the weights.
    assert losses[True][1] != losses[True][0]
    for fused, plain in zip(weights[True], weights[False]):
        np.testing.assert_allclose(fused, plain, rtol=1e-3, atol=1e-6)
