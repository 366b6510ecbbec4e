"""SSIM with the reference settings of Wang et al. (2004), via scikit-image.

The settings are those of Wang, Bovik, Sheikh & Simoncelli, "Image Quality
Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004,
and of tf.image.ssim: an 11-tap Gaussian window with sigma 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariance, data range 255.

Boundary handling: skimage.metrics.structural_similarity filters the whole
image with reflect padding and then averages the SSIM map only after cropping
(win_size - 1) // 2 = 5 pixels from every border. Every pixel kept has its
full 11 x 11 window inside the image, so the mean equals that of
tf.image.ssim's 'VALID' filtering, whose map is (H - 10) x (W - 10).

Colour images are compared per RGB channel and the channel values averaged,
as both libraries do. The greyscale option compares BT.601 luma
(0.299 R + 0.587 G + 0.114 B) kept as float, not rounded to uint8.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.metrics import structural_similarity

GAUSSIAN_SIGMA = 1.5
# skimage's window size for gaussian_weights=True: 2 * int(truncate * sigma + 0.5) + 1 = 11.
GAUSSIAN_TRUNCATE = 3.5
WINDOW_SIZE = 11
K1 = 0.01
K2 = 0.03
DATA_RANGE = 255.0
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])

SSIM_SETTINGS = {
    "implementation": "skimage.metrics.structural_similarity",
    "gaussian_weights": True,
    "sigma": GAUSSIAN_SIGMA,
    "truncate": GAUSSIAN_TRUNCATE,
    "window_size": WINDOW_SIZE,
    "K1": K1,
    "K2": K2,
    "use_sample_covariance": False,
    "data_range": DATA_RANGE,
    "colour": "mean over RGB channels (channel_axis=-1)",
    "greyscale": "BT.601 luma 0.299 R + 0.587 G + 0.114 B, float",
    "border": "mean over the map without a 5-pixel border (equals 'VALID' filtering)",
}


def ssim(real: np.ndarray, fake: np.ndarray, greyscale: bool = False) -> float:
    """Compute SSIM between two uint8 images of equal shape, (H, W, 3) or (H, W).

    With greyscale=True, RGB images are first reduced to BT.601 luma.
    Each side must be at least 11 pixels.

    Raises:
        ValueError: wrong dtype, rank or shape, mismatched shapes or too small images.
    """
    real = _validate_image(real, "real")
    fake = _validate_image(fake, "fake")
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake images must have the same shape, got {real.shape} and "
            f"{fake.shape}; resize the generated image to the real one's size"
        )

    real = real.astype(np.float64)
    fake = fake.astype(np.float64)
    if greyscale and real.ndim == 3:
        real = real @ LUMA_WEIGHTS
        fake = fake @ LUMA_WEIGHTS
    channel_axis = -1 if real.ndim == 3 else None
    return float(
        structural_similarity(
            real,
            fake,
            gaussian_weights=True,
            sigma=GAUSSIAN_SIGMA,
            truncate=GAUSSIAN_TRUNCATE,
            use_sample_covariance=False,
            K1=K1,
            K2=K2,
            data_range=DATA_RANGE,
            channel_axis=channel_axis,
        )
    )


def mean_ssim(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]], greyscale: bool = False
) -> float:
    """Return the mean SSIM over (real, fake) pairs.

    Raises:
        ValueError: pairs is empty, or a pair fails ssim's checks (the
            message names the pair's position).
    """
    values = []
    for position, (real, fake) in enumerate(pairs):
        try:
            values.append(ssim(real, fake, greyscale=greyscale))
        except ValueError as error:
            raise ValueError(f"pair {position}: {error}") from error
    if not values:
        raise ValueError("mean_ssim needs at least one (real, fake) pair, got none")
    return float(np.mean(values))


def _validate_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(
            f"{name} image must be uint8 with values 0..255, got dtype "
            f"{image.dtype}; convert with np.clip(x, 0, 255).round().astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"{name} image must have shape (H, W, 3) or (H, W), got {image.shape}")
    if min(image.shape[:2]) < WINDOW_SIZE:
        raise ValueError(
            f"{name} image of shape {image.shape} is smaller than the "
            f"{WINDOW_SIZE}x{WINDOW_SIZE} SSIM window; each side must be at least {WINDOW_SIZE}"
        )
    return image
