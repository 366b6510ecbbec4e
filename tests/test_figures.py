"""Figures (comparison grid, diverse grid, interpolation strip) and sentence interpolation."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sdn_tf import figures, interpolate

SIZE = 16


def images(count, value=0, shape=(SIZE, SIZE)):
    return np.full((count, *shape, 3), value, np.uint8)


def test_comparison_grid_layout():
    sheet = figures.comparison_grid(["a", "b"], images(2, 10),
                                    {"sdn": images(2, 200), "image_only": images(2, 100)})
    cell = max(SIZE, 64) + figures.GAP
    assert sheet.size == (figures.TEXT_WIDTH + 3 * cell,
                          figures.HEADER_HEIGHT + 2 * (SIZE + figures.GAP))
    pixels = np.asarray(sheet)
    top = figures.HEADER_HEIGHT
    assert tuple(pixels[top + 1, figures.TEXT_WIDTH + 1]) == (10, 10, 10)
    assert tuple(pixels[top + 1, figures.TEXT_WIDTH + cell + 1]) == (200, 200, 200)
    assert tuple(pixels[top + 1, figures.TEXT_WIDTH + 2 * cell + 1]) == (100, 100, 100)


def test_comparison_grid_without_real():
    sheet = figures.comparison_grid(["a"], None, {"sdn": images(1, 50)})
    pixels = np.asarray(sheet)
    assert tuple(pixels[figures.HEADER_HEIGHT + 1, figures.TEXT_WIDTH + 1]) == (50, 50, 50)


def test_comparison_grid_count_mismatch():
    with pytest.raises(ValueError, match="3 images for 2 captions"):
        figures.comparison_grid(["a", "b"], None, {"sdn": images(3)})


def test_comparison_grid_size_mismatch():
    with pytest.raises(ValueError, match="resize"):
        figures.comparison_grid(["a"], images(1), {"sdn": images(1, shape=(8, 8))})


def test_comparison_grid_rejects_float():
    with pytest.raises(ValueError, match="dtype float32"):
        figures.comparison_grid(["a"], None, {"sdn": images(1).astype(np.float32)})


def test_comparison_grid_needs_method():
    with pytest.raises(ValueError, match="at least one method"):
        figures.comparison_grid(["a"], images(1), {})


def test_diverse_grid_draws_each_image():
    grid = np.zeros((2, 3, SIZE, SIZE, 3), np.uint8)
    for k in range(3):
        grid[:, k] = 60 * (k + 1)
    sheet = figures.diverse_grid(["first", "second"], grid)
    pixels = np.asarray(sheet)
    y = figures.HEADER_HEIGHT + SIZE + figures.GAP + 1  # second row
    for k in range(3):
        x = figures.TEXT_WIDTH + k * (SIZE + figures.GAP) + 1
        assert tuple(pixels[y, x]) == (60 * (k + 1),) * 3


def test_diverse_grid_rejects_4d():
    with pytest.raises(ValueError, match=r"\[N, n, H, W, 3\]"):
        figures.diverse_grid(["a"], images(1))


def test_strip_orders_steps():
    steps = np.stack([np.full((SIZE, SIZE, 3), 30 * i, np.uint8) for i in range(4)])
    strip = figures.interpolation_strip(steps, "left", "right", [0, 1 / 3, 2 / 3, 1])
    pixels = np.asarray(strip)
    top = 2 * figures.LINE_HEIGHT + 6
    for i in range(4):
        assert tuple(pixels[top + 1, i * (SIZE + figures.GAP) + 1]) == (30 * i,) * 3


def test_strip_rows_for_diverse():
    steps = np.zeros((3, 2, SIZE, SIZE, 3), np.uint8)
    steps[:, 1] = 90
    strip = figures.interpolation_strip(steps, "a", "b")
    pixels = np.asarray(strip)
    top = 2 * figures.LINE_HEIGHT + 6
    assert tuple(pixels[top + SIZE + figures.GAP + 1, 1]) == (90, 90, 90)
    assert strip.size[1] == top + 2 * (SIZE + figures.GAP)


def test_strip_weight_count_mismatch():
    with pytest.raises(ValueError, match="2 values for 3 images"):
        figures.interpolation_strip(images(3), "a", "b", [0.0, 1.0])


def test_interpolation_weights_ends():
    weights = interpolate.interpolation_weights(5)
    np.testing.assert_allclose(weights, [0, 0.25, 0.5, 0.75, 1.0])


def test_interpolation_needs_two_steps():
    with pytest.raises(ValueError, match="steps=1"):
        interpolate.interpolation_weights(1)


def test_interpolate_embeddings_linear():
    a = np.array([0.0, 2.0, -1.0])
    b = np.array([4.0, 2.0, 1.0])
    result = interpolate.interpolate_embeddings(a, b, np.array([0.0, 0.25, 1.0]))
    np.testing.assert_allclose(result[0], a)
    np.testing.assert_allclose(result[1], [1.0, 2.0, -0.5])
    np.testing.assert_allclose(result[2], b)


def test_interpolate_embeddings_size_mismatch():
    with pytest.raises(ValueError, match="sizes 3 and 2"):
        interpolate.interpolate_embeddings(np.zeros(3), np.zeros(2), np.array([0.5]))


def test_export_without_info(tmp_path):
    with pytest.raises(FileNotFoundError, match="sdn_export.json"):
        interpolate.workdir_of_export(str(tmp_path))


# --- Interpolation from a workdir with untrained weights ---------------------------------


@pytest.fixture(scope="module")
def untrained_workdir(tmp_path_factory, write_text_encoder):
    """Write text encoder and sdn-train workdirs as finished runs leave them, untrained."""
    from sdn_tf.generator import build_generator
    from sdn_tf.train import GENERATOR_WEIGHTS

    root = tmp_path_factory.mktemp("interpolate")
    text = root / "text"
    write_text_encoder(text, embedding_dim=8)

    run = root / "sdn"
    run.mkdir()
    config = {"kind": "sdn", "text_embeddings": "encoder", "text_encoder": str(text),
              "image_size": 64, "embedding_dim": 8, "num_images": 2,
              "teacher_preset": "released_code", "stage": 1, "dataset": "shapes"}
    (run / "config.json").write_text(json.dumps(config))
    build_generator(64, 8, 2).save_weights(str(run / GENERATOR_WEIGHTS))
    return str(run)


def test_interpolation_images_shape(untrained_workdir):
    config, text_encoder, generator = interpolate.load_trained_models(untrained_workdir)
    result, weights = interpolate.interpolation_images(
        text_encoder, generator, config, "a red circle", "a blue square", steps=4)
    assert result.shape == (4, 2, 64, 64, 3)
    assert result.dtype == np.uint8
    np.testing.assert_allclose(weights, [0, 1 / 3, 2 / 3, 1], rtol=1e-6)


def test_interpolation_ends_match_captions(untrained_workdir):
    # The first and last images must be those of captions A and B alone.
    from sdn_tf.train import to_uint8_rgb

    config, text_encoder, generator = interpolate.load_trained_models(untrained_workdir)
    result, _ = interpolate.interpolation_images(
        text_encoder, generator, config, "a red circle", "a blue square", steps=3)
    direct = generator(text_encoder.embed(["a blue square"]), training=False)["image"]
    expected = to_uint8_rgb(direct[..., :3], config["teacher_preset"]).numpy()[0]
    assert np.abs(result[-1, 0].astype(int) - expected.astype(int)).max() <= 1


def test_interpolation_rejects_empty_caption(untrained_workdir):
    config, text_encoder, generator = interpolate.load_trained_models(untrained_workdir)
    with pytest.raises(ValueError, match="caption_b is empty"):
        interpolate.interpolation_images(text_encoder, generator, config, "a", " ")


@pytest.mark.slow
def test_interpolate_cli_writes_strip(tmp_path, untrained_workdir):
    output = tmp_path / "strip.png"
    result = subprocess.run(
        [sys.executable, "-m", "sdn_tf.interpolate", f"--model_workdir={untrained_workdir}",
         "--caption_a=a red circle", "--caption_b=a blue square", "--steps=3",
         f"--output={output}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.is_file()


@pytest.mark.slow
def test_interpolate_cli_needs_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdn_tf.interpolate", "--caption_a=a", "--caption_b=b"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--model_workdir" in result.stderr
