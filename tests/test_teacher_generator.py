"""Teacher taps, generator taps, and the shape match between them."""

import h5py
import numpy as np
import pytest
import tensorflow as tf

from sdn_tf import generator as generator_lib
from sdn_tf import teacher as teacher_lib


@pytest.mark.parametrize("size", [64, 128, 224])
def test_every_tap_shape_matches(size):
    teacher = teacher_lib.build_teacher(size, "random")
    generator = generator_lib.build_generator(size, embedding_dim=32)
    assert len(teacher_lib.TAP_NAMES) == 21
    for tap in teacher_lib.TAP_NAMES:
        teacher_shape = tuple(teacher.output[tap].shape[1:])
        generator_shape = tuple(generator.output[tap].shape[1:])
        assert teacher_shape == generator_shape, tap
        assert teacher_shape == teacher_lib.tap_shapes(size)[tap], tap
    assert tuple(generator.output["image"].shape[1:]) == (size, size, 3)


def test_generator_layer_names_follow_taps():
    generator = generator_lib.build_generator(64, embedding_dim=8)
    names = {layer.name for layer in generator.layers}
    for tap in teacher_lib.TAP_NAMES:
        assert f"g_{tap}" in names, tap
    assert {"g_fc7", "g_fc6", "g_img"} <= names


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_nearest_upsampling_matches_upsampling2d(dtype):
    """The generator's resize layer gives UpSampling2D(2)'s values and gradients."""
    import keras

    from sdn_tf.layers import NearestUpsampling

    rng = np.random.default_rng(3)
    inputs = tf.Variable(tf.cast(rng.normal(size=(2, 3, 5, 4)), dtype))
    upstream = tf.cast(rng.integers(-4, 5, size=(2, 6, 10, 4)), dtype)
    results = []
    for layer in (keras.layers.UpSampling2D(2, interpolation="nearest"), NearestUpsampling()):
        with tf.GradientTape() as tape:
            outputs = tf.cast(layer(inputs), dtype)
            total = tf.reduce_sum(tf.cast(outputs * upstream, tf.float32))
        results.append((outputs, tape.gradient(total, inputs)))
    (expected, expected_gradient), (outputs, gradient) = results
    assert outputs.shape == (2, 6, 10, 4)
    np.testing.assert_array_equal(tf.cast(outputs, tf.float32).numpy(),
                                  tf.cast(expected, tf.float32).numpy())
    # Sums of four small integers are exact in bfloat16 too.
    np.testing.assert_array_equal(tf.cast(gradient, tf.float32).numpy(),
                                  tf.cast(expected_gradient, tf.float32).numpy())
    assert np.any(tf.cast(gradient, tf.float32).numpy() != 0)


def test_kernel_gradient_matches_native():
    """The nine matrix products give Conv2DBackpropFilter's kernel gradient."""
    from sdn_tf.layers import _conv3x3_kernel_gradient

    rng = np.random.default_rng(5)
    inputs = tf.constant(rng.normal(size=(2, 5, 6, 3)), tf.float32)
    output_gradient = tf.constant(rng.normal(size=(2, 5, 6, 4)), tf.float32)
    expected = tf.raw_ops.Conv2DBackpropFilter(
        input=inputs, filter_sizes=[3, 3, 3, 4], out_backprop=output_gradient,
        strides=[1, 1, 1, 1], padding="SAME")
    gradient = _conv3x3_kernel_gradient(inputs, output_gradient)
    assert gradient.shape == (3, 3, 3, 4)
    np.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side, channels, expected_path", [(8, 256, True), (32, 256, False),
                                                            (8, 64, False)])
def test_small_map_conv_matches_conv2d(side, channels, expected_path):
    """SmallMapConv2D has Conv2D's outputs, gradients and weight names under bfloat16."""
    import keras

    from sdn_tf.layers import SmallMapConv2D

    rng = np.random.default_rng(7)
    inputs = tf.constant(rng.normal(size=(2, side, side, channels)), tf.float32)
    small = SmallMapConv2D(256, 3, padding="same", activation="relu", dtype="mixed_bfloat16",
                           name="conv")
    plain = keras.layers.Conv2D(256, 3, padding="same", activation="relu",
                                dtype="mixed_bfloat16", name="conv")
    small.build(inputs.shape)
    plain.build(inputs.shape)
    plain.set_weights(small.get_weights())
    assert small.matmul_kernel_gradient is expected_path
    assert [w.path for w in small.weights] == [w.path for w in plain.weights]

    results = []
    for layer in (plain, small):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.cast(layer(inputs), tf.float32)
            total = tf.reduce_sum(outputs * tf.sin(outputs))
        results.append((outputs, tape.gradient(total, [inputs] + layer.trainable_variables)))
    (expected, expected_gradients), (outputs, gradients) = results
    np.testing.assert_array_equal(outputs.numpy(), expected.numpy())
    for gradient, expected_gradient in zip(gradients, expected_gradients):
        scale = float(np.max(np.abs(expected_gradient.numpy())))
        assert scale > 0
        # Both kernels accumulate in float32 and round the result to bfloat16.
        np.testing.assert_allclose(tf.cast(gradient, tf.float32).numpy(),
                                   tf.cast(expected_gradient, tf.float32).numpy(),
                                   atol=0.02 * scale)


def test_small_map_conv_rejects_stride():
    from sdn_tf.layers import SmallMapConv2D

    layer = SmallMapConv2D(4, 3, strides=2, padding="same", name="g_strided")
    with pytest.raises(ValueError, match="g_strided: SmallMapConv2D supports only 3x3"):
        layer.build((None, 8, 8, 4))


def test_generator_uses_matrix_kernel_gradient():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        generator = generator_lib.build_generator(64, embedding_dim=8)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    chosen = {layer.name for layer in generator.layers
              if getattr(layer, "matmul_kernel_gradient", False)}
    if tf.config.list_physical_devices("GPU"):
        assert not chosen
    else:
        # Blocks 5 and 4 (4x4 and 8x8 maps) and block 3 (16x16, 256 channels).
        assert {"g_conv5_1", "g_pool4", "g_conv4_1", "g_pool3", "g_conv3_1"} <= chosen
        assert not chosen & {"g_pool2", "g_conv2_1", "g_pool1", "g_conv1_1"}


def test_generator_diverse_output_channels():
    generator = generator_lib.build_generator(64, embedding_dim=8, num_images=3)
    images = generator(np.zeros((2, 8), np.float32))["image"]
    assert images.shape == (2, 64, 64, 9)
    assert images.dtype == tf.float32


def test_generator_initialisers_follow_released_code():
    generator = generator_lib.build_generator(64, embedding_dim=1024, seed=1)
    dense = generator.get_layer("g_fc6").kernel.numpy()
    conv = generator.get_layer("g_conv3_2").kernel.numpy()
    assert abs(dense.std() - 0.1) < 0.005
    assert abs(conv.std() - 0.02) < 0.001
    assert not generator.get_layer("g_conv3_2").bias.numpy().any()


def test_generator_he_init():
    generator = generator_lib.build_generator(64, embedding_dim=1024, seed=1, init="he")
    dense = generator.get_layer("g_fc6").kernel.numpy()
    conv = generator.get_layer("g_conv3_2").kernel.numpy()
    np.testing.assert_allclose(dense.std(), np.sqrt(2.0 / 4096), rtol=0.05)
    np.testing.assert_allclose(conv.std(), np.sqrt(2.0 / (9 * 256)), rtol=0.05)
    # The linear output layer keeps the released initialiser.
    assert abs(generator.get_layer("g_img").kernel.numpy().std() - 0.02) < 0.002


def test_image_gain_scales_only_the_image():
    plain = generator_lib.build_generator(64, embedding_dim=8, seed=3)
    gained = generator_lib.build_generator(64, embedding_dim=8, seed=3, image_gain=64.0)
    gained.set_weights(plain.get_weights())
    embeddings = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    a, b = plain(embeddings), gained(embeddings)
    np.testing.assert_allclose(b["image"].numpy(), 64.0 * a["image"].numpy(), rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(b["conv1_1"].numpy(), a["conv1_1"].numpy())


def test_embedding_normalisation_statistics():
    generator = generator_lib.build_generator(64, embedding_dim=8, normalise_embeddings=True)
    rng = np.random.default_rng(0)
    # Tiny embeddings around an offset, as a DS-SJE text encoder can emit.
    embeddings = (0.5 + 0.003 * rng.normal(size=(200, 8)) * np.arange(1, 9)).astype(np.float32)
    mean, scale = generator_lib.set_embedding_statistics(generator, embeddings)
    normalised = generator.get_layer(generator_lib.EMBEDDING_NORM_LAYER)(embeddings).numpy()
    np.testing.assert_allclose(normalised.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.mean(normalised.var(axis=0)), 1.0, rtol=1e-3)
    # One common scale keeps the dimensions' relative sizes.
    stds = normalised.std(axis=0)
    assert stds[-1] > 4 * stds[0]
    np.testing.assert_allclose(mean, embeddings.mean(axis=0), rtol=1e-5)
    assert scale > 0


def test_embedding_whitening_equalises_directions():
    generator = generator_lib.build_generator(64, embedding_dim=16, whiten_embeddings=True)
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    # A direction with 100 times the variance of a second one, tiny noise in
    # the others and an offset: the second attribute is then learned last.
    strong, weak = 5.0 * rng.normal(size=(4000, 1)), 0.5 * rng.normal(size=(4000, 1))
    embeddings = (strong * basis[0] + weak * basis[1] + 0.5
                  + 0.001 * rng.normal(size=(4000, 16))).astype(np.float32)
    mean, directions = generator_lib.set_embedding_statistics(generator, embeddings)
    whitened = generator.get_layer(generator_lib.EMBEDDING_WHITEN_LAYER)(embeddings).numpy()
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.mean(whitened.var(axis=0)), 1.0, rtol=1e-3)
    variances = [np.var(whitened @ basis[k]) for k in range(3)]
    # The ratio of 100 shrinks to below 3; the noise stays far below both.
    assert variances[0] / variances[1] < 3.0
    assert variances[2] < 0.01 * variances[1]
    # Decorrelated: the two directions' whitened values are uncorrelated.
    assert abs(np.corrcoef(whitened @ basis[0], whitened @ basis[1])[0, 1]) < 0.05
    assert 1.0 < directions < 2.5
    np.testing.assert_allclose(mean, embeddings.mean(axis=0), rtol=1e-4)


def test_whitening_replaces_normalisation():
    with pytest.raises(ValueError, match="--whiten_embeddings replaces --normalise_embeddings"):
        generator_lib.build_generator(64, embedding_dim=8, normalise_embeddings=True,
                                      whiten_embeddings=True)


def test_embedding_normalisation_rejects_constant():
    generator = generator_lib.build_generator(64, embedding_dim=8, normalise_embeddings=True)
    with pytest.raises(ValueError, match="normalise"):
        generator_lib.set_embedding_statistics(generator, np.ones((10, 8), np.float32))


@pytest.mark.parametrize("kwargs, message", [
    ({"init": "glorot"}, "generator_init='glorot'"),
    ({"image_gain": 0.0}, "image_gain=0.0"),
])
def test_generator_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generator_lib.build_generator(64, embedding_dim=8, **kwargs)


@pytest.mark.parametrize("size", [32, 48, 100, 256])
def test_generator_rejects_bad_size(size):
    with pytest.raises(ValueError, match=f"image_size={size}"):
        generator_lib.build_generator(size)


def test_teacher_rejects_size_not_multiple_of_32():
    with pytest.raises(ValueError, match="100"):
        teacher_lib.build_teacher(100, "random")


def test_teacher_is_frozen():
    teacher = teacher_lib.build_teacher(64, "random")
    assert teacher.trainable_variables == []
    assert len(teacher.non_trainable_variables) == 32  # 16 kernels + 16 biases


def test_released_preset_pools_by_average():
    teacher = teacher_lib.build_teacher(64, "random", "released_code")
    images = tf.random.uniform((1, 64, 64, 3), 0, 255, seed=0)
    taps = teacher(images)
    expected = tf.nn.avg_pool2d(taps["conv1_2"], 2, 2, "VALID")
    np.testing.assert_allclose(taps["pool1"].numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_keras_preset_pools_by_max():
    teacher = teacher_lib.build_teacher(64, "random", "keras")
    images = tf.random.uniform((1, 64, 64, 3), 0, 255, seed=0)
    taps = teacher(images)
    expected = tf.nn.max_pool2d(taps["conv1_2"], 2, 2, "VALID")
    np.testing.assert_allclose(taps["pool1"].numpy(), expected.numpy())


def test_teacher_space_round_trip():
    rgb = tf.random.uniform((2, 8, 8, 3), 0, 255, seed=1)
    for preset in teacher_lib.PRESETS:
        back = teacher_lib.teacher_space_to_rgb(teacher_lib.rgb_to_teacher_space(rgb, preset),
                                                preset)
        np.testing.assert_allclose(back.numpy(), rgb.numpy(), atol=1e-4)


def test_released_preset_feeds_raw_bgr():
    rgb = tf.constant([[[[10.0, 20.0, 30.0]]]])
    converted = teacher_lib.rgb_to_teacher_space(rgb, "released_code").numpy()
    assert converted.ravel().tolist() == [30.0, 20.0, 10.0]


def test_keras_preset_matches_preprocess_input():
    import keras

    rgb = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype(np.float32)
    expected = keras.applications.vgg19.preprocess_input(rgb.copy())
    converted = teacher_lib.rgb_to_teacher_space(tf.constant(rgb), "keras").numpy()
    np.testing.assert_allclose(converted, expected, rtol=1e-5, atol=1e-4)


def test_teacher_loads_local_weights_file(tmp_path):
    source = teacher_lib._load_vgg19(64, "random")
    path = str(tmp_path / "vgg19_notop.weights.h5")
    source.save_weights(path)
    teacher = teacher_lib.build_teacher(64, path)
    expected = source.get_layer("block3_conv2").kernel.numpy()
    loaded = teacher.get_layer("block3_conv2").kernel.numpy()
    np.testing.assert_array_equal(loaded, expected)


def test_teacher_missing_weights_file_names_path(tmp_path):
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        teacher_lib.build_teacher(64, missing)


def test_teacher_weights_folder_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a folder, not a file.*random"):
        teacher_lib.build_teacher(64, str(tmp_path))


def test_teacher_unreadable_weights_file(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"this is not an HDF5 file")
    with pytest.raises(ValueError, match="broken.h5"):
        teacher_lib.build_teacher(64, str(path))


def test_teacher_wrong_weights_file(tmp_path):
    path = tmp_path / "other.weights.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("unrelated", data=np.zeros(3))
    with pytest.raises(ValueError, match="other.weights.h5"):
        teacher_lib.build_teacher(64, str(path))


def test_failed_download_names_alternatives(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.applications, "VGG19", offline)
    with pytest.raises(RuntimeError, match="--teacher_weights=random"):
        teacher_lib.build_teacher(64, "imagenet")


def test_flop_counts_match_vgg19():
    # VGG19's convolutions cost about 19.6 GMACs at 224x224.
    assert abs(teacher_lib.count_teacher_flops(224) / 2e9 - 19.5) < 0.2
    assert generator_lib.count_generator_flops(224) > teacher_lib.count_teacher_flops(224)


def test_random_teacher_is_reproducible():
    first = teacher_lib.build_teacher(64, "random")
    second = teacher_lib.build_teacher(64, "random")
    for name in ("block1_conv1", "block5_conv4"):
        np.testing.assert_array_equal(first.get_layer(name).kernel.numpy(),
                                      second.get_layer(name).kernel.numpy())
