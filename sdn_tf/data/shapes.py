"""`shapes`: a procedurally generated text-to-image dataset and its colour evaluator.

Each image shows one saturated object (8 colours x 4 shapes, 3 sizes, 9 positions)
on a low-saturation background (4 light colours by default, 7 light and dark ones
with backgrounds="all"; each solid, shaded or grainy), with 10 captions that each
state the object's colour, shape, size, position and background. The class is
the (colour, shape) combination.
The test split holds out one shape per colour, so its 8 classes are combinations
never seen in training (a zero-shot split), while every colour and every shape
still appears in training.

The dataset is rendered from a seed with Pillow on first use and cached on disk
in the Hugging Face imagefolder layout:

    ROOT/params.json                  parameters the cache was built with
    ROOT/COMPLETE                     written last, so a partial cache is never used
    ROOT/{train,test}/images/NNNNN.png
    ROOT/{train,test}/metadata.jsonl  one JSON object per image: file_name, text
                                      (10 captions), class_id, colour, shape, size,
                                      position, background, background_style

Because the backgrounds have low saturation, the object's colour can be read back
from saturated pixels alone (`colour_of_image`). This gives a cheap check of
whether a generated image has the colour that its caption requests.
"""

from __future__ import annotations

import colorsys
import json
import os
import re
import shutil
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging
from PIL import Image, ImageDraw

from sdn_tf.data.records import ImageRecord

# Bump when rendering or captions change, so older caches are not reused.
# Version 3 draws backgrounds from BACKGROUND_SETS (light ones by default).
FORMAT_VERSION = 3

SPLITS = ("train", "test")

COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
COLOUR_RGB = {
    "red": (220, 30, 30),
    "orange": (255, 125, 0),
    "yellow": (250, 235, 0),
    "green": (40, 190, 50),
    "cyan": (0, 200, 220),
    "blue": (30, 90, 240),
    "purple": (140, 40, 220),
    "pink": (255, 50, 170),
}
# HSV hue in degrees of each colour, computed from COLOUR_RGB. Neighbouring
# hues are at least 27 degrees apart (orange to yellow is the closest pair).
COLOUR_HUES = {
    name: 360.0 * colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0]
    for name, rgb in COLOUR_RGB.items()
}

SHAPES = ("circle", "square", "triangle", "cross")

SIZES = ("small", "medium", "large")
# Object extent as a fraction of the image width.
SIZE_FRACTIONS = {"small": 0.34, "medium": 0.46, "large": 0.6}

POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)

# Low saturation or, for the near-black one, low value, so that no background
# pixel passes the evaluator's saturated-pixel test (see MIN_SATURATION).
BACKGROUND_RGB = {
    "grey": (128, 128, 128),
    "light grey": (190, 190, 190),
    "dark grey": (70, 70, 70),
    "beige": (222, 210, 184),
    "cream": (243, 236, 214),
    "black": (22, 22, 24),
    "white": (245, 245, 245),
}
BACKGROUND_STYLES = ("solid", "gradient", "noise")

# The background palettes a dataset can be built with. On a light background
# every object is darker than its surroundings in the channels its colour
# lacks, so a colour has one pixel signature wherever the object sits. On a
# dark background the same colour shows instead as a rise of the channels it
# has, a second signature the generator must learn separately. We trained the
# generator from exact attribute codes for 3,000 Stage-I steps at 64x64. It
# drew the requested colour on 93 % of seen and 78 % of unseen combinations
# with light backgrounds, and on 33 % and 26 % with all seven. Only the light
# palette is learned within a 30-minute CPU run, so it is the default.
BACKGROUND_SETS = {
    "light": ("white", "cream", "beige", "light grey"),
    "all": tuple(BACKGROUND_RGB),
}
DEFAULT_BACKGROUNDS = "light"

NUM_CAPTIONS = 10
MAX_CAPTION_LENGTH = 200

# Caption vocabulary. Every caption contains the canonical colour and shape
# names, one word of SIZE_WORDS[size], one phrase of POSITION_PHRASES[position]
# and the background, so a caption fixes its image up to the object's jitter
# and brightness. Then a generator trained with a pixel loss can learn every
# part of the image, as it could not for a background that captions omit.
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "in the upper left corner"),
    "top": ("at the top", "near the top edge", "at the top centre"),
    "top right": ("in the top right corner", "at the top right", "in the upper right corner"),
    "left": ("on the left", "on the left side", "at the left edge"),
    "centre": ("in the centre", "in the middle", "at the centre"),
    "right": ("on the right", "on the right side", "at the right edge"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left corner"),
    "bottom": ("at the bottom", "near the bottom edge", "at the bottom centre"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right corner"),
}
BACKGROUND_STYLE_PHRASES = {
    "solid": ("{bg}", "plain {bg}"),
    "gradient": ("{bg} gradient", "shaded {bg}"),
    "noise": ("grainy {bg}", "speckled {bg}"),
}
# Placeholders: {size} any size word, {size_adj} the plain size name, {colour},
# {shape}, {pos} a position phrase, {bg} a background phrase. "a" is turned into
# "an" before a vowel after formatting.
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} {pos} on a {bg} background",
    "there is a {size} {colour} {shape} {pos}, the background is {bg}",
    "this picture shows a {size} {colour} {shape} {pos} over a {bg} background",
    "{pos} there is a {size} {colour} {shape} against a {bg} backdrop",
    "an image of a {size} {colour} {shape} placed {pos} on a {bg} background",
    "a {size} {shape} painted {colour}, {pos}, on a {bg} background",
    "the {colour} {shape} is {size_adj} and sits {pos} in front of a {bg} background",
    "we can see a {size} {colour} {shape} {pos} of the picture, with a {bg} background",
    "a simple drawing of a {size} {colour} {shape} {pos}, {bg} all around it",
    "{size} {colour} {shape} {pos}, {bg} background",
    "a single {colour} {shape}, {size_adj} in size, {pos}, and the rest is {bg}",
    "{pos} of a {bg} background, a {size} {colour} {shape} stands out",
    "the picture contains one {size} {colour} {shape} located {pos} on a {bg} background",
    "a {colour} {shape} that is {size_adj}, shown {pos} against a {bg} background",
)

# Evaluator thresholds on HSV saturation and value (both in [0, 1]). Rendered
# background pixels with V >= MIN_VALUE reach at most S 0.21 (beige with a
# gradient or noise), and the rendered object colours have S >= 0.78.
MIN_SATURATION = 0.3
MIN_VALUE = 0.2
# An image needs at least this fraction of saturated pixels to have a colour.
# The smallest rendered object (a small triangle) covers about 3% of the image.
MIN_COLOUR_FRACTION = 0.005

_SUPERSAMPLING = 4
_MARKER_FILE = "COMPLETE"
_PARAMS_FILE = "params.json"
_METADATA_FILE = "metadata.jsonl"
_CACHE_ENTRIES = frozenset({"train", "test", _PARAMS_FILE, _MARKER_FILE})


# --- Classes and the zero-shot split ---------------------------------------


def class_id_of(colour: str, shape: str) -> int:
    """Return the class id of a (colour, shape) combination: colour_index * 4 + shape_index."""
    _check_colour(colour)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def held_out_shape(colour: str) -> str:
    """Return the shape that `colour` appears with only in the test split.

    Colour i holds out shape i mod 4, so each shape is held out for two colours
    and every colour keeps three shapes in training.
    """
    _check_colour(colour)
    return SHAPES[COLOURS.index(colour) % len(SHAPES)]


def split_of_combination(colour: str, shape: str) -> str:
    """Return "test" for a held-out (colour, shape) combination, else "train"."""
    class_id_of(colour, shape)
    return "test" if shape == held_out_shape(colour) else "train"


def combinations_of_split(split: str) -> list:
    """Return the (colour, shape) combinations of `split`, ordered by class id."""
    _check_split(split)
    return [
        (colour, shape)
        for colour in COLOURS
        for shape in SHAPES
        if split_of_combination(colour, shape) == split
    ]


def _check_colour(colour: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {COLOURS}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# --- Rendering -------------------------------------------------------------


def _sample_scene(rng: np.random.Generator, backgrounds: str) -> dict:
    palette = BACKGROUND_SETS[backgrounds]
    return {
        "size": SIZES[rng.integers(len(SIZES))],
        "position": POSITIONS[rng.integers(len(POSITIONS))],
        "background": palette[rng.integers(len(palette))],
        "background_style": BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))],
    }


def _render_background(name: str, style: str, image_size: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Return a float32 [image_size, image_size, 3] background in 0..255."""
    base = np.asarray(BACKGROUND_RGB[name], np.float32)
    image = np.broadcast_to(base, (image_size, image_size, 3)).astype(np.float32)
    # Gradient and noise are added equally to all channels, which shifts the
    # brightness but keeps the chroma (max - min) of the base colour small.
    if style == "gradient":
        offset = float(rng.uniform(20.0, 35.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        ramp = np.linspace(-offset, offset, image_size, dtype=np.float32)
        image = image + ramp[:, None, None]
    elif style == "noise":
        noise = rng.normal(0.0, 7.0, size=(image_size, image_size, 1)).astype(np.float32)
        image = image + noise
    return np.clip(image, 0.0, 255.0)


def _object_centre(extent: float, position: str, image_size: int,
                   rng: np.random.Generator) -> tuple:
    """Return the (x, y) object centre in pixels for a grid position, with jitter."""
    row, column = divmod(POSITIONS.index(position), 3)
    margin = 0.06 * image_size
    anchors = (margin + extent / 2, image_size / 2, image_size - margin - extent / 2)
    jitter = 0.04 * image_size
    low, high = extent / 2 + 1.0, image_size - extent / 2 - 1.0
    x = float(np.clip(anchors[column] + rng.uniform(-jitter, jitter), low, high))
    y = float(np.clip(anchors[row] + rng.uniform(-jitter, jitter), low, high))
    return x, y


def _draw_mask(shape: str, centre: tuple, extent: float, image_size: int) -> np.ndarray:
    """Return the object's coverage in [0, 1], anti-aliased by supersampling."""
    scale = _SUPERSAMPLING
    mask = Image.new("L", (image_size * scale, image_size * scale), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = centre[0] * scale, centre[1] * scale
    half = extent * scale / 2
    if shape == "circle":
        draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=255)
    elif shape == "square":
        # A square of the full extent looks larger than the circle next to it.
        side = 0.9 * half
        draw.rectangle([cx - side, cy - side, cx + side, cy + side], fill=255)
    elif shape == "triangle":
        # Equilateral, pointing up, centred on its bounding box.
        height = half * np.sqrt(3.0)
        draw.polygon([(cx, cy - height / 2), (cx + half, cy + height / 2),
                      (cx - half, cy + height / 2)], fill=255)
    elif shape == "cross":
        arm = half / 3
        draw.rectangle([cx - half, cy - arm, cx + half, cy + arm], fill=255)
        draw.rectangle([cx - arm, cy - half, cx + arm, cy + half], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask = mask.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(mask, np.float32) / 255.0


def render_image(colour: str, shape: str, scene: dict, image_size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Render one uint8 [image_size, image_size, 3] image.

    `scene` contains the size, position, background and background_style names.
    `rng` draws the object's jitter and brightness and the background noise.
    """
    background = _render_background(
        scene["background"], scene["background_style"], image_size, rng)
    extent = SIZE_FRACTIONS[scene["size"]] * image_size
    centre = _object_centre(extent, scene["position"], image_size, rng)
    alpha = _draw_mask(shape, centre, extent, image_size)[..., None]
    # Scaling all channels by one factor varies brightness without changing hue.
    brightness = float(rng.uniform(0.88, 1.0))
    fill = np.asarray(COLOUR_RGB[colour], np.float32) * brightness
    image = background * (1.0 - alpha) + fill * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --- Captions --------------------------------------------------------------


def make_captions(colour: str, shape: str, scene: dict,
                  rng: np.random.Generator) -> list:
    """Return NUM_CAPTIONS distinct captions, each from a different template."""
    template_ids = rng.permutation(len(CAPTION_TEMPLATES))[:NUM_CAPTIONS]
    style_phrases = BACKGROUND_STYLE_PHRASES[scene["background_style"]]
    captions = []
    for template_id in template_ids:
        size_words = SIZE_WORDS[scene["size"]]
        position_phrases = POSITION_PHRASES[scene["position"]]
        style_phrase = style_phrases[rng.integers(len(style_phrases))]
        caption = CAPTION_TEMPLATES[template_id].format(
            size=size_words[rng.integers(len(size_words))],
            size_adj=scene["size"],
            colour=colour,
            shape=shape,
            pos=position_phrases[rng.integers(len(position_phrases))],
            bg=style_phrase.format(bg=scene["background"]),
        )
        captions.append(re.sub(r"\ba (?=[aeiou])", "an ", caption))
    # Templates differ in their fixed words, so the captions are distinct and
    # short by construction. These checks guard later template edits.
    if len(set(captions)) != NUM_CAPTIONS:
        raise AssertionError(f"caption templates produced duplicates: {captions}")
    too_long = [c for c in captions if len(c) > MAX_CAPTION_LENGTH]
    if too_long:
        raise AssertionError(f"captions over {MAX_CAPTION_LENGTH} characters: {too_long}")
    return captions


# --- Building the cache ----------------------------------------------------


def default_shapes_dir() -> str:
    """Return `$SDN_TF_DATA_DIR/shapes-v4`, or `~/.cache/sdn_tf/shapes-v4` when it is unset."""
    data_dir = os.environ.get("SDN_TF_DATA_DIR")
    if data_dir:
        return os.path.join(os.path.expanduser(data_dir), "shapes-v4")
    return os.path.join(os.path.expanduser("~"), ".cache", "sdn_tf", "shapes-v4")


def build_shapes(root=None, seed: int = 0, image_size: int = 128,
                 images_per_class_train: int = 100,
                 images_per_class_test: int = 30,
                 backgrounds: str = DEFAULT_BACKGROUNDS) -> str:
    """Render the dataset unless a complete cache with these parameters exists, and return its folder.

    The folder is `root` (default: `default_shapes_dir()`) when `root` is
    missing, incomplete or already contains these parameters. When `root`
    contains a complete dataset built with other parameters, it is kept, and
    this one goes to the sibling folder
    `<root>-seed<S>-<N>px-train<A>-test<B>[-<backgrounds>]`.
    `backgrounds` names one of BACKGROUND_SETS.

    The dataset is written into a temporary folder next to the target and moved
    into place with os.rename after the COMPLETE marker is written, so readers
    never see a partial dataset.

    Raises:
      ValueError: on an invalid parameter, or when a folder to replace contains
        files that this function did not write.
    """
    params = _validate_params(seed, image_size, images_per_class_train, images_per_class_test,
                              backgrounds)
    root = os.path.abspath(os.fspath(root) if root is not None else default_shapes_dir())

    target = root
    state = _cache_state(target, params)
    if state == "other":
        key = (f"seed{seed}-{image_size}px-train{images_per_class_train}"
               f"-test{images_per_class_test}")
        if backgrounds != DEFAULT_BACKGROUNDS:
            key += f"-{backgrounds}"
        target = f"{root}-{key}"
        logging.info("%s contains a shapes dataset with other parameters; using %s",
                     root, target)
        state = _cache_state(target, params)
        if state == "other":
            raise ValueError(
                f"{target} contains a shapes dataset whose {_PARAMS_FILE} does not match "
                f"{params}; delete that folder and call build_shapes again")
    if state == "match":
        logging.info("using cached shapes dataset at %s", target)
        return target
    if state == "incomplete":
        _remove_incomplete(target)
    _build_into(target, params)
    return target


def open_shapes(data_dir=None) -> str:
    """Return the folder of the shapes dataset that `data_dir` names, building it if needed.

    A `data_dir` that contains a complete build is read as it is, whatever its
    parameters (for example one made with `tools/build_shapes.py
    --backgrounds=all`); the parameters are logged. Otherwise the default
    dataset is built in `data_dir`, or in `default_shapes_dir()` when it is None.
    """
    if data_dir:
        folder = os.path.abspath(os.fspath(data_dir))
        if os.path.isfile(os.path.join(folder, _MARKER_FILE)):
            try:
                stored = _read_params(folder)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"cannot read {_PARAMS_FILE} in the shapes dataset at {folder} ({error}); "
                    "delete the folder to rebuild it, or pass another --data_dir") from error
            logging.info("using the shapes dataset at %s, built with %s", folder, stored)
            if stored.get("format_version") != FORMAT_VERSION:
                logging.warning(
                    "the shapes dataset at %s has format %s, and this sdn_tf builds format "
                    "%d; delete the folder to rebuild it in the current format",
                    folder, stored.get("format_version"), FORMAT_VERSION)
            return folder
    return build_shapes(data_dir or None)


def _validate_params(seed, image_size, images_per_class_train, images_per_class_test,
                     backgrounds=DEFAULT_BACKGROUNDS) -> dict:
    checks = (
        ("seed", seed, 0, "a non-negative integer"),
        ("image_size", image_size, 32, "an integer >= 32"),
        ("images_per_class_train", images_per_class_train, 1, "an integer >= 1"),
        ("images_per_class_test", images_per_class_test, 1, "an integer >= 1"),
    )
    for name, value, minimum, expected in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"invalid {name}={value!r}; pass {expected}")
    if backgrounds not in BACKGROUND_SETS:
        raise ValueError(f"invalid backgrounds={backgrounds!r}; pass one of "
                         f"{', '.join(BACKGROUND_SETS)}")
    return {
        "format_version": FORMAT_VERSION,
        "seed": int(seed),
        "image_size": int(image_size),
        "images_per_class_train": int(images_per_class_train),
        "images_per_class_test": int(images_per_class_test),
        "backgrounds": backgrounds,
    }


def _read_params(folder: str) -> dict:
    with open(os.path.join(folder, _PARAMS_FILE), encoding="utf-8") as f:
        return json.load(f)


def _cache_state(folder: str, params: dict) -> str:
    """Return "missing", "incomplete", "match" or "other" (complete, other parameters)."""
    if not os.path.exists(folder):
        return "missing"
    if not os.path.isfile(os.path.join(folder, _MARKER_FILE)):
        return "incomplete"
    try:
        stored = _read_params(folder)
    except (OSError, ValueError) as error:
        logging.warning("cannot read %s in %s (%s); treating it as incomplete",
                        _PARAMS_FILE, folder, error)
        return "incomplete"
    return "match" if stored == params else "other"


def _remove_incomplete(folder: str) -> None:
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} exists and is not a folder; pass another root")
    unknown = sorted(set(os.listdir(folder)) - _CACHE_ENTRIES)
    if unknown:
        raise ValueError(
            f"{folder} is not a complete shapes dataset and contains files that "
            f"build_shapes did not write ({unknown[:5]}); pass another root or "
            f"remove the folder")
    logging.warning("removing incomplete shapes dataset at %s", folder)
    shutil.rmtree(folder)


def _build_into(target: str, params: dict) -> None:
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    logging.info("building shapes dataset at %s with %s", target, params)
    start = time.monotonic()
    staging = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=parent)
    try:
        counts = {split: _write_split(staging, split, params) for split in SPLITS}
        with open(os.path.join(staging, _PARAMS_FILE), "w", encoding="utf-8") as f:
            json.dump(params, f, indent=2, sort_keys=True)
        with open(os.path.join(staging, _MARKER_FILE), "w", encoding="utf-8") as f:
            json.dump(counts, f, sort_keys=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process may have finished the same dataset first.
            if _cache_state(target, params) != "match":
                raise
            logging.info("another process built %s first; using it", target)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    logging.info("built shapes dataset at %s: %d train and %d test images in %.1f s",
                 target, counts["train"], counts["test"], time.monotonic() - start)


def _write_split(folder: str, split: str, params: dict) -> int:
    """Render one split into `folder/split` and return the number of images."""
    split_dir = os.path.join(folder, split)
    os.makedirs(os.path.join(split_dir, "images"))
    per_class = params[f"images_per_class_{split}"]
    lines = []
    for colour, shape in combinations_of_split(split):
        class_id = class_id_of(colour, shape)
        for index in range(per_class):
            # One generator per image keeps each image independent of the
            # others, so changing a count does not change the existing images.
            rng = np.random.default_rng(
                [params["seed"], SPLITS.index(split), class_id, index])
            scene = _sample_scene(rng, params["backgrounds"])
            image = render_image(colour, shape, scene, params["image_size"], rng)
            captions = make_captions(colour, shape, scene, rng)
            file_name = f"images/{len(lines):05d}.png"
            Image.fromarray(image).save(os.path.join(split_dir, file_name), format="PNG")
            lines.append(json.dumps({
                "file_name": file_name,
                "text": captions,
                "class_id": class_id,
                "colour": colour,
                "shape": shape,
                **scene,
            }))
    with open(os.path.join(split_dir, _METADATA_FILE), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


# --- Reading ---------------------------------------------------------------


_ATTRIBUTE_VALUES = {
    "colour": COLOURS,
    "shape": SHAPES,
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUND_RGB),
    "background_style": BACKGROUND_STYLES,
}


def load_shapes_split(root, split: str) -> list:
    """Read the ImageRecords of one split of a folder returned by `build_shapes`.

    Each record's attributes contain colour, shape, size, position, background
    and background_style. Its name is "<split>/<file stem>".

    Raises:
      FileNotFoundError: the metadata file or an image it names is missing.
      ValueError: a metadata line is not valid JSON or lacks a valid field.
    """
    _check_split(split)
    split_dir = os.path.join(os.path.abspath(os.fspath(root)), split)
    metadata_path = os.path.join(split_dir, _METADATA_FILE)
    fix = "delete the dataset folder and call build_shapes again to rebuild it"
    if not os.path.isfile(metadata_path):
        raise FileNotFoundError(
            f"shapes metadata not found: {metadata_path}; pass the folder returned "
            f"by build_shapes, or {fix}")
    records = []
    with open(metadata_path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{metadata_path}:{line_number}"
            records.append(_parse_metadata_line(line, where, split, split_dir, fix))
    if not records:
        raise ValueError(f"{metadata_path} lists no images; {fix}")
    return records


def _parse_metadata_line(line: str, where: str, split: str, split_dir: str,
                         fix: str) -> ImageRecord:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON at {where} ({error}); {fix}") from None
    if not isinstance(entry, dict):
        raise ValueError(f"expected a JSON object at {where}, got {type(entry).__name__}; {fix}")

    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"missing or invalid 'file_name' at {where}; {fix}")
    captions = entry.get("text")
    if (not isinstance(captions, list) or not captions
            or not all(isinstance(c, str) and c.strip() for c in captions)):
        raise ValueError(
            f"'text' at {where} must be a non-empty list of non-empty captions, "
            f"got {captions!r}; {fix}")
    attributes = {}
    for key, allowed in _ATTRIBUTE_VALUES.items():
        if entry.get(key) not in allowed:
            raise ValueError(
                f"invalid {key} {entry.get(key)!r} at {where}; expected one of {allowed}; {fix}")
        attributes[key] = entry[key]
    class_id = entry.get("class_id")
    expected_id = class_id_of(attributes["colour"], attributes["shape"])
    if isinstance(class_id, bool) or class_id != expected_id:
        raise ValueError(
            f"class_id {class_id!r} at {where} does not match {attributes['colour']} "
            f"{attributes['shape']} (expected {expected_id}); {fix}")

    image_path = os.path.join(split_dir, file_name)
    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image not found: {image_path} (listed at {where}); {fix}")
    return ImageRecord(
        name=f"{split}/{os.path.splitext(os.path.basename(file_name))[0]}",
        image_path=image_path,
        captions=tuple(captions),
        class_id=expected_id,
        attributes=attributes,
    )


# --- Colour evaluator ------------------------------------------------------


def _rgb_to_saturation_value_hue(image: np.ndarray) -> tuple:
    """Return HSV saturation and value in [0, 1] and hue in degrees, per pixel."""
    rgb = image.astype(np.float32) / 255.0
    maximum = rgb.max(axis=-1)
    minimum = rgb.min(axis=-1)
    chroma = maximum - minimum
    saturation = np.where(maximum > 0, chroma / np.maximum(maximum, 1e-6), 0.0)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe_chroma = np.maximum(chroma, 1e-6)
    hue = np.where(
        maximum == red, ((green - blue) / safe_chroma) % 6.0,
        np.where(maximum == green, (blue - red) / safe_chroma + 2.0,
                 (red - green) / safe_chroma + 4.0))
    return saturation, maximum, hue * 60.0


def colour_of_image(image_uint8_rgb) -> Optional[str]:
    """Return the dominant object colour of an image, or None without enough saturated pixels.

    Pixels with HSV saturation >= MIN_SATURATION and value >= MIN_VALUE vote for
    the colour whose hue is nearest (circular distance in degrees), each vote
    weighted by its saturation, so the object's core outweighs the edges it
    shares with the background. At least MIN_COLOUR_FRACTION of the pixels must
    vote.

    Args:
      image_uint8_rgb: uint8 array [height, width, 3].
    """
    image = np.asarray(image_uint8_rgb)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 RGB image of shape [height, width, 3], got dtype "
            f"{image.dtype} and shape {image.shape}; convert floats in [0, 1] with "
            f"np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)")
    saturation, value, hue = _rgb_to_saturation_value_hue(image)
    selected = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
    if selected.sum() < max(1, MIN_COLOUR_FRACTION * selected.size):
        return None

    centres = np.asarray([COLOUR_HUES[c] for c in COLOURS], np.float32)
    distance = np.abs(hue[selected][:, None] - centres[None, :])
    distance = np.minimum(distance, 360.0 - distance)
    nearest = distance.argmin(axis=1)
    votes = np.bincount(nearest, weights=saturation[selected], minlength=len(COLOURS))
    return COLOURS[int(votes.argmax())]


def colour_accuracy(images, colours: Sequence[str]) -> dict:
    """Compare `colour_of_image` of each image with the expected colour name.

    Returns:
      accuracy: fraction of images whose colour is the expected one; an image
        without a colour counts as wrong.
      count: number of images.
      correct: number of images with the expected colour.
      no_colour: number of images where no colour was found.
      per_colour: accuracy per expected colour, for the colours present.
      predictions: colour name or None per image.
    """
    colours = list(colours)
    if len(images) != len(colours):
        raise ValueError(
            f"got {len(images)} images but {len(colours)} colours; pass one colour per image")
    if not colours:
        raise ValueError("no images to evaluate; pass at least one image")
    for colour in colours:
        _check_colour(colour)

    return _summarise_predictions([colour_of_image(image) for image in images], colours)


def _summarise_predictions(predictions: list, colours: list) -> dict:
    hits = np.asarray([p == c for p, c in zip(predictions, colours)])
    per_colour = {}
    for colour in COLOURS:
        mask = np.asarray([c == colour for c in colours])
        if mask.any():
            per_colour[colour] = float(hits[mask].mean())
    return {
        "accuracy": float(hits.mean()),
        "count": len(colours),
        "correct": int(hits.sum()),
        "no_colour": sum(p is None for p in predictions),
        "per_colour": per_colour,
        "predictions": predictions,
    }


def evaluate_colour(images, records: Sequence[ImageRecord]) -> dict:
    """Return `colour_accuracy` over all images and split by seen and unseen combinations.

    A record is "seen" when its (colour, shape) combination is a training class
    and "unseen" when it is held out for the test split. The expected colour and
    the shape come from record.attributes. Groups without images map to None.

    Returns:
      {"all": ..., "seen": ... or None, "unseen": ... or None}, each a
      `colour_accuracy` result.
    """
    records = list(records)
    if len(images) != len(records):
        raise ValueError(
            f"got {len(images)} images but {len(records)} records; pass one record per image")
    groups = {"seen": [], "unseen": []}
    colours = []
    for index, record in enumerate(records):
        attributes = record.attributes or {}
        if "colour" not in attributes or "shape" not in attributes:
            raise ValueError(
                f"record {record.name!r} has no colour and shape attributes; pass "
                f"records from load_shapes_split")
        colour, shape = attributes["colour"], attributes["shape"]
        seen = split_of_combination(colour, shape) == "train"
        groups["seen" if seen else "unseen"].append(index)
        colours.append(colour)

    result = {"all": colour_accuracy(images, colours)}
    predictions = result["all"]["predictions"]
    for group, indices in groups.items():
        if indices:
            result[group] = _summarise_predictions([predictions[i] for i in indices],
                                                   [colours[i] for i in indices])
        else:
            result[group] = None
    return result
