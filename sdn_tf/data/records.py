"""Dataset records shared by every reader: one image with all of its captions."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a split with its captions and class.

    Attributes:
      name: identifier unique within the dataset, such as
        "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18".
      image_path: path of the encoded image file (JPEG or PNG).
      captions: every caption of the image, in file order, none of them empty.
      class_id: class label; splits are class-disjoint.
      embeddings: optional precomputed text embeddings, float32
        [num_captions, dim], aligned with `captions` when both exist.
      bbox: optional (x, y, width, height) in pixels of the original image.
      attributes: reader-specific facts (colour and shape for `shapes`).
    """

    name: str
    image_path: str
    captions: Sequence[str]
    class_id: int
    embeddings: Optional[np.ndarray] = None
    bbox: Optional[tuple] = None
    attributes: Optional[dict] = None


@dataclasses.dataclass
class SkipReport:
    """Items a reader left out, each with its reason, so nothing is dropped silently."""

    items: list = dataclasses.field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.items.append((name, reason))

    def __len__(self) -> int:
        return len(self.items)

    def reasons(self) -> dict:
        """Return the number of skipped items per reason."""
        counts: dict = {}
        for _, reason in self.items:
            counts[reason] = counts.get(reason, 0) + 1
        return counts
