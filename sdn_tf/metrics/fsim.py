"""FSIM and FSIMc image quality indices in NumPy.

Follows L. Zhang, L. Zhang, X. Mou and D. Zhang, "FSIM: A Feature Similarity
Index for Image Quality Assessment", IEEE Transactions on Image Processing
20(8), 2011, and the behaviour of the authors' MATLAB reference
(``FeatureSIM.m`` with its ``phasecong2``, which is P. Kovesi's phase
congruency code specialised to the paper's parameters):

- Rows and columns are first averaged with an F x F box filter (MATLAB
  ``conv2(..., 'same')``, zero padding) and subsampled with stride F, where
  F = max(1, round(min(H, W) / 256)) and round() rounds halves away from zero.
- Colour images go to YIQ. Phase congruency (PC) and the Scharr gradient
  magnitude (G) are computed on Y.
- S_PC = (2 PC1 PC2 + T1) / (PC1^2 + PC2^2 + T1),
  S_G = (2 G1 G2 + T2) / (G1^2 + G2^2 + T2),
  FSIM = sum(S_PC S_G PC_m) / sum(PC_m) with PC_m = max(PC1, PC2).
- FSIMc multiplies S_PC S_G by real((S_I S_Q)^lambda), where S_I and S_Q
  are the same similarity on the I and Q channels with T3 and T4.

All arithmetic is float64.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# Log-Gabor filter bank of phasecong2 in the FSIM reference code.
NUM_SCALES = 4
NUM_ORIENTATIONS = 4
MIN_WAVELENGTH = 6
WAVELENGTH_MULT = 2
SIGMA_ON_F = 0.55
D_THETA_ON_SIGMA = 1.2
NOISE_K = 2.0
PC_EPSILON = 1e-4
# Kovesi's low-pass filter applied to every log-Gabor filter: radius 0.45, order 15.
LOWPASS_CUTOFF = 0.45
LOWPASS_ORDER = 15
# phasecong2 divides the noise threshold by 1.7, an empirical correction
# for the PC_2 measure (Kovesi).
NOISE_THRESHOLD_DIVISOR = 1.7

# Similarity constants of S_PC, S_G, S_I and S_Q, and the chromatic exponent lambda.
T1 = 0.85
T2 = 160.0
T3 = 200.0
T4 = 200.0
LAMBDA = 0.03

# YIQ rows as written in FeatureSIM.m (they differ from other published
# YIQ matrices in the third decimal).
_RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.596, -0.274, -0.322],
        [0.211, -0.523, 0.312],
    ]
)

# Scharr kernels of FeatureSIM.m, normalised by 16.
_SCHARR_X = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0
_SCHARR_Y = _SCHARR_X.T.copy()

# Smallest image side accepted after downsampling. This is a chosen limit:
# the smallest log-Gabor wavelength is 6 pixels, so a smaller side spans
# about one period of it.
MIN_SIDE = 8

FSIM_SETTINGS = {
    "reference": (
        "Zhang, Zhang, Mou & Zhang, FSIM, IEEE TIP 2011; behaviour of the "
        "authors' FeatureSIM.m / phasecong2.m"
    ),
    "input": "uint8 RGB (H, W, 3) or greyscale (H, W), values 0..255",
    "downsampling": (
        "F = max(1, round_half_away(min(H, W) / 256)); F x F box filter, "
        "zero-padded 'same' convolution, then stride F"
    ),
    "colour_space": "YIQ (Y = 0.299 R + 0.587 G + 0.114 B)",
    "phase_congruency": {
        "scales": NUM_SCALES,
        "orientations": NUM_ORIENTATIONS,
        "min_wavelength": MIN_WAVELENGTH,
        "mult": WAVELENGTH_MULT,
        "sigma_on_f": SIGMA_ON_F,
        "d_theta_on_sigma": D_THETA_ON_SIGMA,
        "k": NOISE_K,
        "epsilon": PC_EPSILON,
        "lowpass": {"cutoff": LOWPASS_CUTOFF, "order": LOWPASS_ORDER},
        "noise_estimate": "median of |EO|^2 at the smallest scale, per orientation",
    },
    "gradient": "Scharr [3 0 -3; 10 0 -10; 3 0 -3] / 16, zero-padded",
    "T1": T1,
    "T2": T2,
    "T3": T3,
    "T4": T4,
    "lambda": LAMBDA,
    "greyscale_fsimc": "equals FSIM (I and Q are constant, as in FeatureSIM.m)",
}


def fsim(real: np.ndarray, fake: np.ndarray) -> float:
    """Compute FSIM (luminance only) between two uint8 images of equal shape."""
    return fsim_and_fsimc(real, fake)[0]


def fsimc(real: np.ndarray, fake: np.ndarray) -> float:
    """Compute FSIMc (FSIM with the I and Q chrominance terms) between two uint8 images."""
    return fsim_and_fsimc(real, fake)[1]


def fsim_and_fsimc(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """Compute (FSIM, FSIMc) in one pass, sharing the phase congruency maps.

    Both images are uint8 arrays of the same shape, (H, W, 3) RGB or (H, W)
    greyscale. For greyscale input FSIMc equals FSIM, as in FeatureSIM.m.

    Raises:
        ValueError: the images have a wrong dtype, rank or shape, are too
            small, or neither image has any phase congruency (both flat), in
            which case the PC-weighted mean is undefined.
    """
    real = _validate_image(real, "real")
    fake = _validate_image(fake, "fake")
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake images must have the same shape, got {real.shape} "
            f"and {fake.shape}; resize the generated image to the real one's size"
        )

    y1, i1, q1 = _downsampled_yiq(real)
    y2, i2, q2 = _downsampled_yiq(fake)

    pc1 = phase_congruency(y1)
    pc2 = phase_congruency(y2)
    pc_max = np.maximum(pc1, pc2)
    pc_weight = pc_max.sum()
    if pc_weight == 0.0:
        raise ValueError(
            "FSIM is undefined for this pair: neither image has any phase "
            "congruency (both are flat or too smooth), so the PC-weighted mean "
            "has zero weight"
        )

    pc_similarity = _similarity(pc1, pc2, T1)
    gradient_similarity = _similarity(
        gradient_magnitude(y1), gradient_magnitude(y2), T2
    )
    similarity = gradient_similarity * pc_similarity * pc_max
    fsim_value = float(similarity.sum() / pc_weight)

    if i1 is None:
        return fsim_value, fsim_value

    chroma_product = _similarity(i1, i2, T3) * _similarity(q1, q2, T4)
    chroma_term = chroma_weight(chroma_product)
    fsimc_value = float((similarity * chroma_term).sum() / pc_weight)
    return fsim_value, fsimc_value


def chroma_weight(product: np.ndarray) -> np.ndarray:
    """Return real(product ** LAMBDA) with MATLAB's complex power, as FeatureSIM.m computes it.

    A negative S_I S_Q, which needs I or Q values of opposite signs, gives
    |S_I S_Q|^lambda cos(pi lambda) rather than |S_I S_Q|^lambda.
    """
    magnitude = np.abs(product) ** LAMBDA
    return np.where(product >= 0.0, magnitude, magnitude * math.cos(math.pi * LAMBDA))


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
        raise ValueError(
            f"{name} image must have shape (H, W, 3) or (H, W), got {image.shape}"
        )
    factor = downsampling_factor(image.shape[0], image.shape[1])
    downsampled_side = min(-(-image.shape[0] // factor), -(-image.shape[1] // factor))
    if downsampled_side < MIN_SIDE:
        raise ValueError(
            f"{name} image of shape {image.shape} is too small for FSIM: each side "
            f"must be at least {MIN_SIDE} pixels"
        )
    return image


def downsampling_factor(height: int, width: int) -> int:
    """Return F = max(1, round(min(H, W) / 256)), rounding halves away from zero as MATLAB does."""
    return max(1, int(math.floor(min(height, width) / 256.0 + 0.5)))


def _downsampled_yiq(
    image: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    factor = downsampling_factor(image.shape[0], image.shape[1])
    pixels = image.astype(np.float64)
    if pixels.ndim == 2:
        return _box_downsample(pixels, factor), None, None
    yiq = pixels @ _RGB_TO_YIQ.T
    channels = [_box_downsample(yiq[..., c], factor) for c in range(3)]
    return channels[0], channels[1], channels[2]


def _box_downsample(channel: np.ndarray, factor: int) -> np.ndarray:
    """Apply conv2(x, fspecial('average', F), 'same') and keep every F-th row and column.

    MATLAB's 'same' result at index i is the full convolution at i + floor(F/2),
    so it averages x[i + floor(F/2) - F + 1 .. i + floor(F/2)], with zeros
    outside the image.
    """
    if factor == 1:
        return channel
    left = factor - 1 - factor // 2
    right = factor // 2
    padded = np.pad(channel, ((left, right), (left, right)))
    rows = np.lib.stride_tricks.sliding_window_view(padded, factor, axis=0).mean(axis=-1)
    boxed = np.lib.stride_tricks.sliding_window_view(rows, factor, axis=1).mean(axis=-1)
    return boxed[::factor, ::factor]


def gradient_magnitude(channel: np.ndarray) -> np.ndarray:
    """Return the Scharr gradient magnitude with zero padding, as conv2(..., 'same') computes it."""
    padded = np.pad(channel, 1)
    height, width = channel.shape
    gx = np.zeros_like(channel)
    gy = np.zeros_like(channel)
    # Correlation instead of convolution flips the sign of both components,
    # which leaves the magnitude unchanged.
    for dy in range(3):
        for dx in range(3):
            window = padded[dy : dy + height, dx : dx + width]
            if _SCHARR_X[dy, dx] != 0.0:
                gx += _SCHARR_X[dy, dx] * window
            if _SCHARR_Y[dy, dx] != 0.0:
                gy += _SCHARR_Y[dy, dx] * window
    return np.sqrt(gx**2 + gy**2)


def _similarity(a: np.ndarray, b: np.ndarray, constant: float) -> np.ndarray:
    # For a == b, numerator and denominator are the same float, so the
    # similarity is exactly 1 (identical images give FSIM == 1.0).
    return (2.0 * a * b + constant) / (a * a + b * b + constant)


def _normalised_range(n: int) -> np.ndarray:
    """Return the frequency coordinates of phasecong2 for one axis, in [-0.5, 0.5]."""
    if n % 2:
        return np.arange(-(n - 1) / 2, (n - 1) / 2 + 1) / (n - 1)
    return np.arange(-n / 2, n / 2) / n


@functools.lru_cache(maxsize=8)
def _filter_bank(rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """Build the log-Gabor filters (orientation-major, [o, s, rows, cols]) and noise statistics.

    Returns (filters, filter_energy_smallest_scale[o], sum_an2[o], sum_ai_aj[o]).
    The arrays are read-only because the cache shares them between calls.
    """
    x, y = np.meshgrid(_normalised_range(cols), _normalised_range(rows))
    radius = np.sqrt(x**2 + y**2)
    # Negative y gives anticlockwise angles, as in phasecong2.
    theta = np.arctan2(-y, x)

    lowpass = np.fft.ifftshift(1.0 / (1.0 + (radius / LOWPASS_CUTOFF) ** (2 * LOWPASS_ORDER)))
    radius = np.fft.ifftshift(radius)
    theta = np.fft.ifftshift(theta)
    # The zero-frequency point moves to [0, 0]. Setting its radius to 1 avoids
    # log(0), and the filters are set back to 0 there below.
    radius[0, 0] = 1.0
    sin_theta = np.sin(theta)
    cos_theta = np.cos(theta)

    log_gabor = []
    for s in range(NUM_SCALES):
        wavelength = MIN_WAVELENGTH * WAVELENGTH_MULT**s
        centre_frequency = 1.0 / wavelength
        radial = np.exp(
            -(np.log(radius / centre_frequency) ** 2) / (2.0 * math.log(SIGMA_ON_F) ** 2)
        )
        radial = radial * lowpass
        radial[0, 0] = 0.0
        log_gabor.append(radial)

    theta_sigma = math.pi / NUM_ORIENTATIONS / D_THETA_ON_SIGMA
    filters = np.empty((NUM_ORIENTATIONS, NUM_SCALES, rows, cols))
    for o in range(NUM_ORIENTATIONS):
        angle = o * math.pi / NUM_ORIENTATIONS
        # Angular distance via atan2 of sine and cosine differences, which
        # handles the wrap-around at +-pi.
        sin_diff = sin_theta * math.cos(angle) - cos_theta * math.sin(angle)
        cos_diff = cos_theta * math.cos(angle) + sin_theta * math.sin(angle)
        distance = np.abs(np.arctan2(sin_diff, cos_diff))
        spread = np.exp(-(distance**2) / (2.0 * theta_sigma**2))
        for s in range(NUM_SCALES):
            filters[o, s] = log_gabor[s] * spread

    # Spatial filters, rescaled by sqrt(rows * cols) as in phasecong2 to match power.
    spatial = np.real(np.fft.ifft2(filters)) * math.sqrt(rows * cols)
    smallest_scale_energy = (filters[:, 0] ** 2).sum(axis=(-2, -1))
    sum_an2 = (spatial**2).sum(axis=(1, 2, 3))
    sum_ai_aj = np.zeros(NUM_ORIENTATIONS)
    for si in range(NUM_SCALES - 1):
        for sj in range(si + 1, NUM_SCALES):
            sum_ai_aj += (spatial[:, si] * spatial[:, sj]).sum(axis=(-2, -1))

    for array in (filters, smallest_scale_energy, sum_an2, sum_ai_aj):
        array.setflags(write=False)
    return filters, smallest_scale_energy, sum_an2, sum_ai_aj


def phase_congruency(channel: np.ndarray) -> np.ndarray:
    """Compute the phase congruency map of a 2-D float image (phasecong2 of the FSIM code).

    Returns values in [0, 1]. Where the summed amplitude is 0 (a constant
    image) the map is 0, where phasecong2 would divide 0 by 0.
    """
    channel = np.asarray(channel, dtype=np.float64)
    rows, cols = channel.shape
    if np.ptp(channel) == 0.0:
        # Only the zero frequency is non-zero, and every filter is 0 there,
        # so all responses vanish. The FFT would leave round-off residue.
        return np.zeros_like(channel)

    filters, smallest_scale_energy, sum_an2, sum_ai_aj = _filter_bank(rows, cols)
    image_fft = np.fft.fft2(channel)

    energy_all = np.zeros((rows, cols))
    amplitude_all = np.zeros((rows, cols))
    for o in range(NUM_ORIENTATIONS):
        responses = np.fft.ifft2(image_fft[None] * filters[o], axes=(-2, -1))
        even = responses.real
        odd = responses.imag
        amplitude = np.abs(responses)

        # Weighted mean phase direction over the scales.
        sum_even = even.sum(axis=0)
        sum_odd = odd.sum(axis=0)
        norm = np.sqrt(sum_even**2 + sum_odd**2) + PC_EPSILON
        mean_even = sum_even / norm
        mean_odd = sum_odd / norm

        # A_n (cos(phase deviation) - |sin(phase deviation)|), summed over scales.
        energy = (
            even * mean_even
            + odd * mean_odd
            - np.abs(even * mean_odd - odd * mean_even)
        ).sum(axis=0)

        # Noise: the squared amplitude at the smallest scale is Chi-squared
        # with 2 DOF for Gaussian noise, so mean = -median / log(0.5).
        median_e2n = np.median(amplitude[0] ** 2)
        mean_e2n = -median_e2n / math.log(0.5)
        noise_power = mean_e2n / smallest_scale_energy[o]
        noise_energy2 = 2.0 * noise_power * sum_an2[o] + 4.0 * noise_power * sum_ai_aj[o]
        tau = math.sqrt(noise_energy2 / 2.0)  # Rayleigh parameter
        noise_mean = tau * math.sqrt(math.pi / 2.0)
        noise_sigma = math.sqrt((2.0 - math.pi / 2.0) * tau**2)
        threshold = (noise_mean + NOISE_K * noise_sigma) / NOISE_THRESHOLD_DIVISOR

        energy_all += np.maximum(energy - threshold, 0.0)
        amplitude_all += amplitude.sum(axis=0)

    result = np.zeros_like(energy_all)
    np.divide(energy_all, amplitude_all, out=result, where=amplitude_all > 0.0)
    return result
