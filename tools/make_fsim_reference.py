"""Recompute tests/data/fsim_reference.json: piq's FSIM and FSIMc on distorted flower pairs.

The reference values come from piq (PyTorch), an independent implementation
whose fsim module states that it follows the authors' MATLAB FeatureSIM.m.
Keep torch and piq out of the project: run this script from a throwaway
virtual environment, for example

    python -m venv /tmp/piqenv
    /tmp/piqenv/bin/pip install torch==2.13.0 piq numpy pillow
    /tmp/piqenv/bin/python tools/make_fsim_reference.py

piq 0.8.0 pulls in torchvision, whose PyPI wheel is a CUDA build that does not
import beside the CPU build of torch ("operator torchvision::nms does not
exist"). piq's FSIM needs no torchvision, so when ``import piq`` fails this
script imports ``piq.fsim`` without running ``piq/__init__.py``.

The pair recipe (``make_pairs``) has no torch dependency: tests/test_metrics.py
imports it from this file to rebuild the same pixels, and checks them against
the SHA-256 digests stored in the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FLOWERS_DIR = REPO_ROOT.parent / "shared" / "data" / "flowers102" / "jpg"
DEFAULT_OUTPUT = REPO_ROOT / "tests" / "data" / "fsim_reference.json"

# Every 31st photograph in file-name order, so the pairs span several classes.
IMAGE_STRIDE = 31
NUM_SQUARE_PAIRS = 24
# Extra pairs of 384 x 512 (H x W) exercise FSIM's downsampling (F = 2) and
# non-square frequency grids.
NUM_WIDE_PAIRS = 6
WIDE_SIZE = (384, 512)

# (kind, level): Gaussian blur sigma in pixels, additive Gaussian noise sigma
# in grey levels, or JPEG quality. Pair i uses DISTORTIONS[i % 6].
DISTORTIONS = (
    ("blur", 1.0),
    ("blur", 2.5),
    ("noise", 8.0),
    ("noise", 25.0),
    ("jpeg", 10),
    ("jpeg", 40),
)
NOISE_SEED_BASE = 1000

RECIPE_TEXT = (
    "Sorted flowers102/jpg names, every 31st; decode with Pillow, convert to "
    "RGB, resize with Pillow BICUBIC to (height, width); distortion i % 6 of "
    "[blur sigma 1.0, blur sigma 2.5, noise sigma 8, noise sigma 25, JPEG q10, "
    "JPEG q40]. Blur: separable Gaussian, radius ceil(3 sigma), reflect "
    "padding ('symmetric'), rounded to uint8. Noise: "
    "numpy.random.default_rng(1000 + i).normal(0, sigma), added, rounded, "
    "clipped to 0..255. JPEG: Pillow encode at that quality, decode."
)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = int(np.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2.0 * sigma**2))
    kernel /= kernel.sum()
    pixels = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * pixels.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(pixels, pad, mode="symmetric")
        windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.size, axis=axis)
        pixels = windows @ kernel
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _add_noise(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, size=image.shape)
    return np.clip(np.round(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def distort(image: np.ndarray, kind: str, level: float, seed: int) -> np.ndarray:
    """Apply one distortion of the recipe to a uint8 RGB image."""
    if kind == "blur":
        return _gaussian_blur(image, float(level))
    if kind == "noise":
        return _add_noise(image, float(level), seed)
    if kind == "jpeg":
        return _jpeg(image, int(level))
    raise ValueError(f"unknown distortion kind {kind!r}; expected blur, noise or jpeg")


def load_resized(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Read a JPEG as uint8 RGB and resize it to size = (height, width) with bicubic filtering."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
        return np.asarray(rgb)


def pair_recipe() -> list[dict]:
    """Return the pair list: index, image number in the stride, size, distortion and noise seed."""
    recipe = []
    for i in range(NUM_SQUARE_PAIRS + NUM_WIDE_PAIRS):
        kind, level = DISTORTIONS[i % len(DISTORTIONS)]
        size = (256, 256) if i < NUM_SQUARE_PAIRS else WIDE_SIZE
        recipe.append(
            {
                "index": i,
                "image_rank": i * IMAGE_STRIDE,
                "size": list(size),
                "distortion": kind,
                "level": level,
                "seed": NOISE_SEED_BASE + i,
            }
        )
    return recipe


def make_pairs(
    flowers_dir: Path, square_size: int = 256, limit: int | None = None
) -> list[dict]:
    """Build the (real, fake) uint8 pairs of the recipe from the flower photographs.

    square_size replaces the 256 x 256 size of the square pairs (the SSIM test
    uses 128 for speed); limit keeps only the first pairs. Each returned entry
    is the recipe entry plus "file", "real" and "fake".

    Raises:
        FileNotFoundError: flowers_dir has too few JPEG files for the recipe.
    """
    names = sorted(p.name for p in Path(flowers_dir).glob("*.jpg"))
    recipe = pair_recipe()
    if limit is not None:
        recipe = recipe[:limit]
    needed = max(entry["image_rank"] for entry in recipe) + 1
    if len(names) < needed:
        raise FileNotFoundError(
            f"{flowers_dir} contains {len(names)} .jpg files but the recipe needs {needed}; "
            "point --flowers-dir at the Oxford-102 jpg folder"
        )

    pairs = []
    for entry in recipe:
        size = tuple(entry["size"])
        if size == (256, 256):
            size = (square_size, square_size)
        name = names[entry["image_rank"]]
        real = load_resized(Path(flowers_dir) / name, size)
        fake = distort(real, entry["distortion"], entry["level"], entry["seed"])
        pairs.append(dict(entry, size=list(size), file=name, real=real, fake=fake))
    return pairs


def sha256(array: np.ndarray) -> str:
    """Return the SHA-256 of the array's C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _import_piq_fsim():
    """Return piq.fsim.fsim, bypassing piq/__init__.py if it fails on torchvision."""
    try:
        import piq

        return piq.fsim
    except (ImportError, RuntimeError) as error:
        print(f"import piq failed ({error}); importing piq.fsim alone", file=sys.stderr)
    for name in [n for n in sys.modules if n == "piq" or n.startswith("piq.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("piq")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("piq is not installed; pip install piq in a throwaway venv")
    package = types.ModuleType("piq")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["piq"] = package
    from piq.fsim import fsim as piq_fsim

    return piq_fsim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--flowers-dir", type=Path, default=DEFAULT_FLOWERS_DIR,
        help="folder of Oxford-102 image_NNNNN.jpg files",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write"
    )
    args = parser.parse_args(argv)

    import torch

    piq_fsim = _import_piq_fsim()
    torch.set_num_threads(2)

    records = []
    for pair in make_pairs(args.flowers_dir):
        # float64 keeps torch's round-off out of the comparison.
        real = torch.from_numpy(pair["real"].astype(np.float64)).permute(2, 0, 1)[None]
        fake = torch.from_numpy(pair["fake"].astype(np.float64)).permute(2, 0, 1)[None]
        values = {}
        for key, chromatic in (("piq_fsim", False), ("piq_fsimc", True)):
            # piq's x is the distorted image and y the reference; FSIM is
            # symmetric in the two, so the order does not change the value.
            score = piq_fsim(fake, real, data_range=255.0, chromatic=chromatic, reduction="none")
            values[key] = float(score[0])
        record = {k: v for k, v in pair.items() if k not in ("real", "fake")}
        record.update(real_sha256=sha256(pair["real"]), fake_sha256=sha256(pair["fake"]))
        record.update(values)
        records.append(record)
        print(
            f"{record['index']:2d} {record['file']} {record['distortion']:5s} "
            f"{record['level']:>5} FSIM {values['piq_fsim']:.6f} FSIMc {values['piq_fsimc']:.6f}"
        )

    output = {
        "description": (
            "piq.fsim reference values (chromatic False = FSIM, True = FSIMc) "
            "on distorted Oxford-102 pairs, computed in float64 with "
            "data_range=255 and piq's own downsampling"
        ),
        "generator": "tools/make_fsim_reference.py",
        "versions": {
            "piq": importlib.metadata.version("piq"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": importlib.metadata.version("pillow"),
        },
        "recipe": RECIPE_TEXT,
        "pairs": records,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} pairs to {args.output}")


if __name__ == "__main__":
    main()
