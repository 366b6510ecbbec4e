"""Inception score, Fréchet distance and an Inception-v3 scorer.

Inception score (Salimans et al., "Improved Techniques for Training GANs",
2016): IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the mean of p(y|x) over
one split, computed per split; the result is the mean and standard deviation
over the splits (10 in the SDN, StackGAN and AttnGAN evaluations).

Fréchet distance (Heusel et al., "GANs Trained by a Two Time-Scale Update
Rule Converge to a Local Nash Equilibrium", 2017), used for FID on
Inception-v3 pool features:
d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

The images are scored with ``keras.applications.InceptionV3``.
NOTE: its ImageNet weights are not the 2015 Inception graph (1008 outputs)
that the original Inception-score code loads, so absolute scores need not
equal published ones. The size of that difference has not been measured here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

try:
    import scipy.linalg
except ImportError:  # scikit-image depends on scipy, so this is rare.
    scipy = None

INCEPTION_SIZE = 299
NUM_CLASSES = 1000
POOL_FEATURES = 2048
# Largest imaginary part tolerated on the diagonal of sqrtm(S1 S2), which
# round-off can produce even though the exact root of S1 S2 has a real trace.
MAX_IMAGINARY_COMPONENT = 1e-3
# Tolerance on the row sums of probs passed to inception_score.
PROBABILITY_SUM_TOLERANCE = 1e-3


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Return the (mean, std) of the Inception score over the splits.

    probs is [N, C] class probabilities, one row per image (C = 1000 for
    ImageNet). Split i contains rows [i N // splits, (i + 1) N // splits), as
    in the original code, so up to splits - 1 trailing rows are left out
    when N is not a multiple of splits. Terms with p(y|x) = 0 count as 0
    (the limit of p log p).

    Raises:
        ValueError: probs is not 2-D, has fewer rows than splits, contains
            negative or non-finite values, or has rows that do not sum to 1.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D [N, classes] array, got shape {probs.shape}")
    if not isinstance(splits, (int, np.integer)) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    num_images = probs.shape[0]
    if num_images < splits:
        raise ValueError(
            f"inception_score needs at least one image per split: got {num_images} "
            f"images for {splits} splits; pass fewer splits"
        )
    if not np.all(np.isfinite(probs)) or np.any(probs < 0.0):
        raise ValueError("probs must be finite and non-negative; pass softmax outputs")
    row_sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    if abs(row_sums[worst] - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(
            f"row {worst} of probs sums to {row_sums[worst]:.6f}, not 1; pass "
            "probabilities (apply softmax to logits first)"
        )

    scores = []
    for i in range(splits):
        part = probs[i * num_images // splits : (i + 1) * num_images // splits]
        marginal = part.mean(axis=0)
        log_conditional = np.log(part, out=np.zeros_like(part), where=part > 0.0)
        log_marginal = np.log(marginal, out=np.zeros_like(marginal), where=marginal > 0.0)
        # Where part > 0 the marginal is > 0 too, so both logs are defined there.
        kl = (part * (log_conditional - log_marginal[None, :])).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and the unbiased covariance (N - 1 normalisation) of [N, D] features.

    Raises:
        ValueError: features is not 2-D or has fewer than 2 rows.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(
            f"features must be a 2-D [N, D] array with N >= 2, got shape {features.shape}"
        )
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """Return the squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    The matrix square root comes from scipy.linalg.sqrtm when scipy is
    importable and from an eigendecomposition otherwise. When sqrtm of
    sigma1 @ sigma2 is not finite (singular covariances, e.g. fewer images
    than feature dimensions), eps is added to both diagonals and the root
    recomputed. Imaginary parts left by round-off are dropped if the largest
    one on the diagonal is below 1e-3.

    Raises:
        ValueError: the shapes do not match, or the imaginary part of the
            square root is too large to be round-off.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dims = mu1.shape[0]
    if mu1.shape != (dims,) or mu2.shape != (dims,):
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (dims, dims) or sigma2.shape != (dims, dims):
        raise ValueError(
            f"sigma1 and sigma2 must be {dims}x{dims} to match the means, got "
            f"{sigma1.shape} and {sigma2.shape}"
        )

    diff = mu1 - mu2
    trace_root = _trace_sqrt_product(sigma1, sigma2, eps)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """Return Tr((sigma1 sigma2)^(1/2))."""
    if scipy is None:
        return _trace_sqrt_product_eigh(sigma1, sigma2)

    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(root)):
        offset = eps * np.eye(sigma1.shape[0])
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        largest = float(np.max(np.abs(np.diagonal(root).imag)))
        if largest > MAX_IMAGINARY_COMPONENT:
            raise ValueError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary component of {largest:.3g} on "
                "its diagonal, too large for round-off; check that both covariances "
                "are symmetric positive semi-definite"
            )
        root = root.real
    return float(np.trace(root))


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Return Tr((sigma1 sigma2)^(1/2)) from eigenvalues, without scipy.

    sigma1 sigma2 is similar to A = sigma1^(1/2) sigma2 sigma1^(1/2), which is
    symmetric positive semi-definite, so the trace is the sum of the square
    roots of A's eigenvalues. Negative eigenvalues from round-off are clipped to 0.
    """
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2.0)
    root1 = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    product = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def _is_hub_handle(weights: str) -> bool:
    path = Path(weights)
    return weights.startswith(("http://", "https://")) or (
        path.is_dir() and (path / "saved_model.pb").exists()
    )


class InceptionDownloadError(RuntimeError):
    """Failure to download or load Keras' ImageNet weights of InceptionV3.

    The Keras error is the exception's __cause__.
    """


class InceptionScorer:
    """Inception-v3 class probabilities [N, 1000] and pool features [N, 2048] of uint8 images.

    Images of any size are resized to 299 x 299 bilinearly (no antialiasing)
    and scaled with Inception preprocessing (x / 127.5 - 1) before
    ``keras.applications.InceptionV3``.

    weights selects the network:
      - "imagenet": Keras' ImageNet weights, downloaded once into the Keras cache;
      - a path to a local Keras weights file for InceptionV3 with its top (.h5 or .weights.h5);
      - None: random weights, for tests and offline smoke runs;
      - a TF-Hub handle (URL) or a local SavedModel directory, loaded with
        tensorflow_hub.KerasLayer. The model must map float images in [0, 1]
        (the TF-Hub image convention) of shape [N, 299, 299, 3] to logits
        [N, 1000] or [N, 1001]. With 1001, logit 0 is the TF-Slim background
        class and is dropped before the softmax. Pool features then need
        hub_features, a TF-Hub feature-vector model with the same input that
        returns [N, 2048].
    """

    def __init__(
        self,
        weights: str | None = "imagenet",
        batch_size: int = 32,
        hub_features: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self._keras_model = None
        self._hub_classifier = None
        self._hub_features = None

        if isinstance(weights, str) and weights != "imagenet" and _is_hub_handle(weights):
            import tensorflow_hub as hub

            self._hub_classifier = hub.KerasLayer(weights)
            if hub_features is not None:
                self._hub_features = hub.KerasLayer(hub_features)
        else:
            if hub_features is not None:
                raise ValueError(
                    "hub_features is only used with a TF-Hub classifier in weights; "
                    f"got weights={weights!r}"
                )
            self._keras_model = _build_keras_inception(weights)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (probabilities [N, 1000], pool features [N, 2048]) for uint8 images [N, H, W, 3].

        The features are None for a TF-Hub classifier without hub_features.
        """
        import tensorflow as tf

        images = _validate_images(images)
        probs, features = [], []
        for start in range(0, images.shape[0], self.batch_size):
            batch = tf.convert_to_tensor(images[start : start + self.batch_size])
            batch = tf.image.resize(
                tf.cast(batch, tf.float32),
                (INCEPTION_SIZE, INCEPTION_SIZE),
                method="bilinear",
                antialias=False,
            )
            batch_probs, batch_features = self._run_batch(batch)
            probs.append(batch_probs)
            if batch_features is not None:
                features.append(batch_features)

        features_array = np.concatenate(features) if features else None
        return np.concatenate(probs), features_array

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Return the [N, 1000] class probabilities of uint8 images [N, H, W, 3]."""
        return self.predict(images)[0]

    def pool_features(self, images: np.ndarray) -> np.ndarray:
        """Return the [N, 2048] pool features of uint8 images [N, H, W, 3], as FID uses them.

        Raises:
            ValueError: the scorer is a TF-Hub classifier without hub_features.
        """
        features = self.predict(images)[1]
        if features is None:
            raise ValueError(
                "this scorer has no pool features: pass hub_features, a TF-Hub "
                "Inception-v3 feature-vector handle, or use Keras weights"
            )
        return features

    def _run_batch(self, resized):
        import keras
        import tensorflow as tf

        if self._keras_model is not None:
            inputs = keras.applications.inception_v3.preprocess_input(resized)
            features, probs = self._keras_model(inputs, training=False)
            return np.asarray(probs, dtype=np.float64), np.asarray(features, dtype=np.float64)

        inputs = resized / 255.0
        logits = np.asarray(self._hub_classifier(inputs), dtype=np.float64)
        if logits.ndim != 2 or logits.shape[1] not in (NUM_CLASSES, NUM_CLASSES + 1):
            raise ValueError(
                f"the TF-Hub classifier returned shape {logits.shape}; expected logits "
                f"[N, {NUM_CLASSES}] or [N, {NUM_CLASSES + 1}] (with background)"
            )
        if logits.shape[1] == NUM_CLASSES + 1:
            logits = logits[:, 1:]
        probs = np.asarray(tf.nn.softmax(logits, axis=-1), dtype=np.float64)

        features = None
        if self._hub_features is not None:
            features = np.asarray(self._hub_features(inputs), dtype=np.float64)
            if features.ndim != 2 or features.shape[1] != POOL_FEATURES:
                raise ValueError(
                    f"the TF-Hub feature model returned shape {features.shape}; "
                    f"expected [N, {POOL_FEATURES}]"
                )
        return probs, features


def _build_keras_inception(weights: str | None):
    """Return a Keras model mapping preprocessed 299 x 299 images to (avg_pool features, predictions)."""
    import keras

    if weights is None or weights == "imagenet":
        source = weights
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"InceptionV3 weights file {weights!r} not found; pass 'imagenet', "
                "None for random weights, an existing Keras weights file, or a "
                "TF-Hub handle or SavedModel directory"
            )
        source = str(path)

    try:
        base = keras.applications.InceptionV3(
            include_top=True,
            weights=source,
            input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
        )
    except Exception as error:
        if weights != "imagenet":
            raise
        # keras.utils.get_file raises a bare Exception when the download fails.
        raise InceptionDownloadError(
            "could not download or load the ImageNet weights of InceptionV3 "
            f"({error}). Use a local weights file instead "
            "(InceptionScorer(weights='/path/inception_v3_weights_tf_dim_ordering_tf_kernels.h5')) "
            "or a TF-Hub handle or SavedModel directory "
            "(InceptionScorer(weights='/path/to/inception_v3_saved_model'))"
        ) from error

    return keras.Model(
        inputs=base.input,
        outputs=[base.get_layer("avg_pool").output, base.output],
        name="inception_v3_scorer",
    )


def _validate_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 with values 0..255, got dtype {images.dtype}; "
            "convert with np.clip(x, 0, 255).round().astype(np.uint8)"
        )
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"images must have shape [N, H, W, 3] with N >= 1, got {images.shape}; "
            "convert greyscale images to RGB first"
        )
    return images
