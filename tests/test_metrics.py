"""Tests of the image metrics: SSIM, FSIM/FSIMc, Inception score and Fréchet distance.

The SSIM and FSIM comparisons use distorted Oxford-102 photographs from
../shared/data/flowers102/jpg (blur, noise and JPEG at fixed levels and
seeds), built by ``make_pairs`` in tools/make_fsim_reference.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from sdn_tf.metrics import fsim as fsim_module
from sdn_tf.metrics.fsim import (
    FSIM_SETTINGS,
    chroma_weight,
    downsampling_factor,
    fsim,
    fsim_and_fsimc,
    fsimc,
)
from sdn_tf.metrics.inception import (
    InceptionScorer,
    feature_statistics,
    frechet_distance,
    inception_score,
)
from sdn_tf.metrics.ssim import LUMA_WEIGHTS, SSIM_SETTINGS, mean_ssim, ssim

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOWERS_DIR = REPO_ROOT.parent / "shared" / "data" / "flowers102" / "jpg"
REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "fsim_reference.json"
TOOL_FILE = REPO_ROOT / "tools" / "make_fsim_reference.py"

needs_flowers = pytest.mark.skipif(
    not FLOWERS_DIR.is_dir(), reason=f"Oxford-102 photographs not found at {FLOWERS_DIR}"
)


def _load_recipe_module():
    spec = importlib.util.spec_from_file_location("make_fsim_reference", TOOL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return _load_recipe_module()


@pytest.fixture(scope="module")
def small_pairs(recipe):
    """24 distorted flower pairs at 128 x 128 for the SSIM comparisons."""
    return recipe.make_pairs(FLOWERS_DIR, square_size=128, limit=24)


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference_pairs(recipe):
    return recipe.make_pairs(FLOWERS_DIR)


@pytest.fixture(scope="module")
def flower(recipe):
    names = sorted(FLOWERS_DIR.glob("*.jpg"))
    return recipe.load_resized(names[0], (96, 96))


# SSIM ---------------------------------------------------------------------


def _tf_ssim(real: np.ndarray, fake: np.ndarray, return_index_map: bool = False) -> np.ndarray:
    import tensorflow as tf

    if real.ndim == 2:
        real, fake = real[..., None], fake[..., None]
    return tf.image.ssim(
        tf.constant(real, tf.float32),
        tf.constant(fake, tf.float32),
        max_val=255.0,
        return_index_map=return_index_map,
    ).numpy()


@needs_flowers
def test_ssim_matches_tf_colour(small_pairs):
    # tf.image.ssim converts its input to float32, so round-off limits the
    # agreement with skimage's float64 result (about 1e-5 seen here).
    assert len(small_pairs) >= 20
    for pair in small_pairs:
        ours = ssim(pair["real"], pair["fake"])
        theirs = float(_tf_ssim(pair["real"], pair["fake"]))
        assert abs(ours - theirs) <= 1e-4, (pair["file"], pair["distortion"], ours, theirs)


@needs_flowers
def test_ssim_matches_tf_greyscale(small_pairs):
    for pair in small_pairs:
        real_luma = pair["real"].astype(np.float64) @ LUMA_WEIGHTS
        fake_luma = pair["fake"].astype(np.float64) @ LUMA_WEIGHTS
        ours = ssim(pair["real"], pair["fake"], greyscale=True)
        theirs = float(_tf_ssim(real_luma, fake_luma))
        assert abs(ours - theirs) <= 1e-4, (pair["file"], pair["distortion"], ours, theirs)


def _valid_ssim_map(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """Compute the SSIM map of one channel with float64 'VALID' Gaussian filtering."""
    from numpy.lib.stride_tricks import sliding_window_view

    offsets = np.arange(11) - 5.0
    taps = np.exp(-(offsets**2) / (2.0 * 1.5**2))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()

    def filtered(x):
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, (11, 11)), kernel)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = filtered(real), filtered(fake)
    var_x = filtered(real * real) - mu_x**2
    var_y = filtered(fake * fake) - mu_y**2
    cov = filtered(real * fake) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


@needs_flowers
def test_ssim_crop_equals_valid_filtering(small_pairs):
    """skimage's 5-pixel crop of its reflect-padded map leaves exactly the 'VALID' map."""
    from skimage.metrics import structural_similarity

    pair = small_pairs[3]
    real = pair["real"][..., 0].astype(np.float64)
    fake = pair["fake"][..., 0].astype(np.float64)
    _, full_map = structural_similarity(
        real, fake, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, full=True,
    )
    valid_map = _valid_ssim_map(real, fake)

    assert valid_map.shape == (real.shape[0] - 10, real.shape[1] - 10)
    np.testing.assert_allclose(full_map[5:-5, 5:-5], valid_map, rtol=0, atol=1e-9)
    assert ssim(pair["real"][..., 0], pair["fake"][..., 0]) == pytest.approx(
        valid_map.mean(), abs=1e-12
    )


@needs_flowers
def test_ssim_map_matches_tf_map(small_pairs):
    # Element-wise, tf's float32 variance (E[x^2] - E[x]^2 on values up to
    # 65025) loses about 1e-3 where variances are small.
    pair = small_pairs[0]
    tf_map = _tf_ssim(pair["real"], pair["fake"], return_index_map=True)
    channel_maps = [
        _valid_ssim_map(pair["real"][..., c].astype(np.float64), pair["fake"][..., c].astype(np.float64))
        for c in range(3)
    ]
    ours = np.mean(channel_maps, axis=0)
    assert tf_map.shape == ours.shape
    assert np.max(np.abs(tf_map - ours)) <= 2e-3


@needs_flowers
def test_ssim_identical_is_one(flower):
    assert ssim(flower, flower) == pytest.approx(1.0, abs=1e-12)


def test_ssim_settings_window():
    assert SSIM_SETTINGS["window_size"] == 2 * int(SSIM_SETTINGS["truncate"] * SSIM_SETTINGS["sigma"] + 0.5) + 1
    assert SSIM_SETTINGS["window_size"] == 11
    assert SSIM_SETTINGS["use_sample_covariance"] is False
    assert (SSIM_SETTINGS["K1"], SSIM_SETTINGS["K2"]) == (0.01, 0.03)


def test_ssim_rejects_float_images():
    image = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="uint8"):
        ssim(image, image)


def test_ssim_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 30, 3), np.uint8))


def test_ssim_rejects_small_image():
    image = np.zeros((10, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 11"):
        ssim(image, image)


@needs_flowers
def test_mean_ssim_averages_pairs(small_pairs):
    pairs = [(p["real"], p["fake"]) for p in small_pairs[:4]]
    expected = np.mean([ssim(real, fake) for real, fake in pairs])
    assert mean_ssim(pairs) == pytest.approx(expected, abs=1e-15)


def test_mean_ssim_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        mean_ssim([])


def test_mean_ssim_names_bad_pair():
    good = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="pair 1"):
        mean_ssim([(good, good), (good, good[:, :12])])


# FSIM ---------------------------------------------------------------------


@needs_flowers
def test_fsim_identical_is_one(flower):
    assert fsim(flower, flower) == 1.0
    assert fsimc(flower, flower) == 1.0


def test_fsim_identical_noise_is_one():
    image = np.random.default_rng(7).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    assert fsim_and_fsimc(image, image) == (1.0, 1.0)


@needs_flowers
def test_fsim_reference_pixels_reproduce(recipe, reference, reference_pairs):
    """The recipe rebuilds the exact pixels the piq values were computed on."""
    assert len(reference["pairs"]) == len(reference_pairs) >= 20
    for stored, pair in zip(reference["pairs"], reference_pairs):
        assert stored["file"] == pair["file"]
        assert recipe.sha256(pair["real"]) == stored["real_sha256"], (
            f"pixels of {pair['file']} differ from the reference (Pillow "
            f"{reference['versions']['pillow']} made them); rerun tools/make_fsim_reference.py"
        )
        assert recipe.sha256(pair["fake"]) == stored["fake_sha256"], pair["file"]


@needs_flowers
def test_fsim_matches_piq(reference, reference_pairs):
    """Agree with piq.fsim within 1e-3 on every pair.

    The reference values are piq 0.8.0's fsim (torch 2.13.0 CPU, float64,
    data_range=255; versions in the JSON), written by
    tools/make_fsim_reference.py. piq's fsim states that it follows the
    MATLAB FeatureSIM.m. Where piq departs from FeatureSIM.m, this
    implementation follows FeatureSIM.m:
      - chroma term: piq takes |S_I S_Q|^lambda, FeatureSIM.m
        real((S_I S_Q)^lambda), which is cos(0.03 pi) = 0.9956 times smaller
        where S_I S_Q < 0 (strongly coloured noise). This is most of the
        FSIMc gap (3.2e-4 at most here; 7e-6 when |.| is used instead);
      - YIQ rows: piq uses 0.5959/-0.2746/-0.3213 and 0.2115/-0.5227/0.3112,
        FeatureSIM.m 0.596/-0.274/-0.322 and 0.211/-0.523/0.312;
      - phase congruency: piq uses machine epsilon where phasecong2 uses
        1e-4, and torch.median's lower middle value where MATLAB's median
        averages the two middle values (FSIM gap 1.9e-5 at most here);
      - downsampling: piq's avg_pool2d and Python's round() equal
        FeatureSIM.m's conv2 'same' + stride only for F = 1 and 2, which are
        the cases in the reference (256 x 256 and 384 x 512).
    """
    fsim_gaps, fsimc_gaps = [], []
    for stored, pair in zip(reference["pairs"], reference_pairs):
        ours_fsim, ours_fsimc = fsim_and_fsimc(pair["real"], pair["fake"])
        fsim_gaps.append(abs(ours_fsim - stored["piq_fsim"]))
        fsimc_gaps.append(abs(ours_fsimc - stored["piq_fsimc"]))
        label = (pair["file"], pair["distortion"], pair["level"])
        assert fsim_gaps[-1] <= 1e-3, (label, ours_fsim, stored["piq_fsim"])
        assert fsimc_gaps[-1] <= 1e-3, (label, ours_fsimc, stored["piq_fsimc"])


@needs_flowers
def test_fsim_symmetric(small_pairs):
    pair = small_pairs[2]
    forward = fsim_and_fsimc(pair["real"], pair["fake"])
    backward = fsim_and_fsimc(pair["fake"], pair["real"])
    assert forward == pytest.approx(backward, abs=1e-12)


@needs_flowers
def test_fsim_drops_with_noise(recipe, flower):
    light = recipe.distort(flower, "noise", 5.0, seed=1)
    heavy = recipe.distort(flower, "noise", 30.0, seed=1)
    assert fsim(flower, heavy) < fsim(flower, light) < 1.0


@needs_flowers
def test_fsimc_greyscale_equals_fsim(recipe, flower):
    grey = flower[..., 1]
    blurred = recipe.distort(flower, "blur", 1.5, seed=0)[..., 1]
    value, chroma_value = fsim_and_fsimc(grey, blurred)
    assert value == chroma_value
    assert value < 1.0


@needs_flowers
def test_fsimc_penalises_colour_shift(flower):
    # Swapping R and B keeps most of Y but changes I and Q.
    swapped = np.ascontiguousarray(flower[..., ::-1])
    value, chroma_value = fsim_and_fsimc(flower, swapped)
    assert chroma_value < value


def test_chroma_weight_complex_power():
    products = np.array([0.7, 1.0, 0.0, -0.3, -1.0])
    expected = np.real(products.astype(np.complex128) ** 0.03)
    np.testing.assert_allclose(chroma_weight(products), expected, rtol=1e-12, atol=0)
    assert chroma_weight(np.array([-1.0]))[0] < 1.0


def test_downsampling_factor_rounds_half_up():
    # MATLAB's round() takes halves away from zero; Python's round(2.5) is 2.
    assert downsampling_factor(256, 256) == 1
    assert downsampling_factor(383, 500) == 1
    assert downsampling_factor(384, 512) == 2
    assert downsampling_factor(640, 700) == 3
    assert downsampling_factor(100, 20) == 1


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_box_downsample_matches_conv2_same(factor):
    # MATLAB's conv(u, v, 'same') keeps the full convolution from index
    # floor(len(v) / 2): its documentation gives
    # conv([-1 2 3 -2 0 1 2], [2 4 -1 1], 'same') = [15 5 -9 7 6 7 -1].
    u = np.array([-1, 2, 3, -2, 0, 1, 2], float)
    assert np.convolve(u, [2, 4, -1, 1])[2:9].tolist() == [15, 5, -9, 7, 6, 7, -1]

    image = np.random.default_rng(factor).uniform(0, 255, (11, 13))
    box = np.ones(factor) / factor
    start = factor // 2
    rows = np.apply_along_axis(lambda r: np.convolve(r, box)[start : start + 13], 1, image)
    expected = np.apply_along_axis(lambda c: np.convolve(c, box)[start : start + 11], 0, rows)
    got = fsim_module._box_downsample(image, factor)
    np.testing.assert_allclose(got, expected[::factor, ::factor], rtol=0, atol=1e-10)


def test_phase_congruency_range():
    image = np.random.default_rng(3).uniform(0, 255, (48, 40))
    pc = fsim_module.phase_congruency(image)
    assert pc.shape == image.shape
    assert pc.min() >= 0.0
    assert pc.max() <= 1.0
    assert pc.max() > 0.0


def test_fsim_rejects_flat_pair():
    flat = np.full((32, 32, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="undefined"):
        fsim(flat, flat)


def test_fsim_rejects_float_images():
    image = np.zeros((32, 32), np.float64)
    with pytest.raises(ValueError, match="uint8"):
        fsim(image, image)


def test_fsim_rejects_small_image():
    image = np.zeros((6, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="at least 8"):
        fsim(image, image)


def test_fsim_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        fsimc(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))


def test_fsim_settings_values():
    pc = FSIM_SETTINGS["phase_congruency"]
    assert (pc["scales"], pc["orientations"], pc["min_wavelength"], pc["mult"]) == (4, 4, 6, 2)
    assert (pc["sigma_on_f"], pc["d_theta_on_sigma"], pc["k"], pc["epsilon"]) == (0.55, 1.2, 2.0, 1e-4)
    assert (FSIM_SETTINGS["T1"], FSIM_SETTINGS["T2"]) == (0.85, 160.0)
    assert (FSIM_SETTINGS["T3"], FSIM_SETTINGS["T4"], FSIM_SETTINGS["lambda"]) == (200.0, 200.0, 0.03)


# Inception score and Fréchet distance -------------------------------------


def test_inception_score_uniform_is_one():
    probs = np.full((50, 1000), 1.0 / 1000)
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("num_classes", [1, 7, 100])
def test_inception_score_one_hot_is_k(num_classes):
    # Every split of 3 * k rows uses each of the k classes three times.
    splits = 10
    labels = np.tile(np.arange(num_classes), 3 * splits)
    probs = np.zeros((labels.size, 1000))
    probs[np.arange(labels.size), labels] = 1.0
    mean, std = inception_score(probs, splits=splits)
    assert mean == pytest.approx(num_classes, abs=1e-6)
    assert std == pytest.approx(0.0, abs=1e-6)


def test_inception_score_split_std():
    # Split 0 uses 2 classes and split 1 uses 4: scores 2 and 4.
    probs = np.zeros((8, 10))
    probs[np.arange(4), [0, 1, 0, 1]] = 1.0
    probs[4 + np.arange(4), [0, 1, 2, 3]] = 1.0
    mean, std = inception_score(probs, splits=2)
    assert mean == pytest.approx(3.0, abs=1e-12)
    assert std == pytest.approx(1.0, abs=1e-12)


def test_inception_score_rejects_logits():
    logits = np.random.default_rng(0).normal(size=(20, 1000))
    with pytest.raises(ValueError, match="softmax"):
        inception_score(logits, splits=2)


def test_inception_score_rejects_few_images():
    with pytest.raises(ValueError, match="at least one image per split"):
        inception_score(np.full((5, 10), 0.1), splits=10)


def test_frechet_identical_is_zero():
    features = np.random.default_rng(1).normal(size=(200, 16))
    mu, sigma = feature_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_positive_for_shift():
    rng = np.random.default_rng(2)
    mu1, sigma1 = feature_statistics(rng.normal(size=(300, 8)))
    mu2, sigma2 = feature_statistics(rng.normal(loc=0.5, scale=2.0, size=(300, 8)))
    distance = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert distance > 1.0


def test_frechet_gaussian_closed_form():
    # For diagonal covariances the distance is sum (m1-m2)^2 + (s1 - s2)^2 over dimensions.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    std1, std2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((std1 - std2) ** 2)
    got = frechet_distance(mu1, np.diag(std1**2), mu2, np.diag(std2**2))
    assert got == pytest.approx(expected, abs=1e-9)


def test_frechet_singular_covariance():
    # 5 samples in 32 dimensions give rank-4 covariances.
    rng = np.random.default_rng(3)
    mu1, sigma1 = feature_statistics(rng.normal(size=(5, 32)))
    mu2, sigma2 = feature_statistics(rng.normal(size=(5, 32)))
    distance = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert math.isfinite(distance)
    assert distance > 0.0


def test_frechet_eigh_matches_sqrtm():
    from sdn_tf.metrics import inception

    rng = np.random.default_rng(4)
    a = rng.normal(size=(40, 12))
    b = rng.normal(size=(40, 12)) * 1.5
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with_scipy = inception._trace_sqrt_product(sigma1, sigma2, 1e-6)
    without_scipy = inception._trace_sqrt_product_eigh(sigma1, sigma2)
    assert with_scipy == pytest.approx(without_scipy, rel=1e-9)


def test_frechet_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="must be 3x3"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_scorer_random_weights_shapes():
    images = np.random.default_rng(5).integers(0, 256, (4, 32, 24, 3), dtype=np.uint8)
    scorer = InceptionScorer(weights=None, batch_size=4)
    probs, features = scorer.predict(images)
    assert probs.shape == (4, 1000)
    assert features.shape == (4, 2048)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def _save_tiny_hub_model(path: Path, outputs: int) -> None:
    """Save a SavedModel mapping [N, 299, 299, 3] images to [N, outputs] (mean pixel times a ramp)."""
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            ramp = np.linspace(0.0, 5.0, outputs, dtype=np.float32)
            ramp[0] = 100.0  # a dominant "background" logit
            self.ramp = tf.Variable(ramp[None, :])

        @tf.function(input_signature=[tf.TensorSpec([None, 299, 299, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, axis=[1, 2, 3])[:, None] * self.ramp

    tf.saved_model.save(Tiny(), str(path))


def test_scorer_hub_drops_background(tmp_path):
    _save_tiny_hub_model(tmp_path / "classifier", 1001)
    _save_tiny_hub_model(tmp_path / "features", 2048)
    scorer = InceptionScorer(
        weights=str(tmp_path / "classifier"), hub_features=str(tmp_path / "features")
    )
    images = np.full((2, 20, 20, 3), 255, np.uint8)
    probs, features = scorer.predict(images)
    assert probs.shape == (2, 1000)
    assert features.shape == (2, 2048)
    # Inputs are scaled to [0, 1]: a white image gives the ramp itself, and
    # without the background logit the largest logit is the last one (5.0).
    assert int(np.argmax(probs[0])) == 999
    np.testing.assert_allclose(features[0, 1:3], np.linspace(0.0, 5.0, 2048)[1:3], rtol=1e-5)


def test_scorer_hub_without_features(tmp_path):
    _save_tiny_hub_model(tmp_path / "classifier", 1000)
    scorer = InceptionScorer(weights=str(tmp_path / "classifier"))
    with pytest.raises(ValueError, match="hub_features"):
        scorer.pool_features(np.zeros((1, 16, 16, 3), np.uint8))


def test_scorer_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="TF-Hub"):
        InceptionScorer(weights=str(tmp_path / "missing.h5"))


def test_scorer_download_failure_names_choices(monkeypatch):
    import keras

    def failing_download(**kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "InceptionV3", failing_download)
    with pytest.raises(RuntimeError) as error:
        InceptionScorer(weights="imagenet")
    assert "local weights file" in str(error.value)
    assert "TF-Hub" in str(error.value)


def test_scorer_rejects_float_images(tmp_path):
    _save_tiny_hub_model(tmp_path / "classifier", 1000)
    scorer = InceptionScorer(weights=str(tmp_path / "classifier"))
    with pytest.raises(ValueError, match="uint8"):
        scorer.predict(np.zeros((1, 16, 16, 3), np.float32))
