"""Training schemes of the SDN ablation (Yuan & Peng, ACM MM 2018, Table 3).

A scheme fixes which loss terms one sdn-train run sums (`LossTerms`):

* sdn: the stage chosen with --stage (Stage-I, or Stage-II usually started
  from a Stage-I run with --init_from). The full SDN is two such runs.
* image_only: the image term mean|I - G(s)| alone.
* stage1: the Stage-I loss (Eq. 1-2) alone, from scratch.
* stage2: the Stage-II loss (Eq. 3) alone, from scratch.
* stage1_plus_stage2: image term + Stage-I taps + Stage-II taps, summed in one
  run from the start.
* diverse: Stage-I or Stage-II with n > 1 images per caption, whose image
  terms take the per-example minimum of Eq. 4-5.

Table 3 reports the CUB Inception score of each scheme, as listed in
`PAPER_TABLE_3`.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional

from sdn_tf.losses import LossTerms, stage_terms

SCHEMES = ("sdn", "image_only", "stage1", "stage2", "stage1_plus_stage2", "diverse")
DEFAULT_SCHEME = "sdn"

# Inception score on CUB per scheme, Table 3 of Yuan & Peng (ACM MM 2018).
PAPER_TABLE_3 = {
    "image_only": 2.11,
    "stage1": 3.90,
    "stage2": 4.77,
    "stage1_plus_stage2": 5.98,
    "diverse": 6.84,
    "sdn": 6.89,
}

SCHEME_TITLES = {
    "image_only": "Image term only",
    "stage1": "Stage-I only",
    "stage2": "Stage-II only",
    "stage1_plus_stage2": "Stage-I & II summed",
    "diverse": "Diverse synthesis",
    "sdn": "SDN (Stage-I, then Stage-II)",
}

# The stage a single-stage scheme trains; other schemes take the stage given.
_FIXED_STAGE = {"stage1": 1, "stage2": 2}


def default_stage(scheme: str, stage: int) -> int:
    """Return the stage a run of `scheme` records when --stage was not given.

    stage1 and stage2 fix their stage; the other schemes keep `stage`.
    """
    return _FIXED_STAGE.get(scheme, stage)


def check_scheme(scheme: str, stage: int, num_images: int = 1,
                 init_from: Optional[str] = None, image_weight: float = 1.0) -> None:
    """Raise ValueError when the scheme cannot train with these settings."""
    if scheme not in SCHEMES:
        raise ValueError(f"--scheme={scheme!r} is invalid; use one of {', '.join(SCHEMES)}.")
    fixed = _FIXED_STAGE.get(scheme)
    if fixed is not None and stage != fixed:
        raise ValueError(
            f"--scheme={scheme} trains Stage-{'I' * fixed} only, but --stage={stage} was "
            f"given. Drop --stage, or use --scheme=sdn --stage={stage}.")
    if scheme == "stage2" and init_from:
        raise ValueError(
            f"--scheme=stage2 trains Stage-II from scratch, but --init_from={init_from!r} "
            "was given. For Stage-II started from a Stage-I run, use --scheme=sdn --stage=2.")
    if scheme == "diverse" and num_images < 2:
        raise ValueError(
            f"--scheme=diverse draws several images per caption, but --num_images="
            f"{num_images}. Pass --num_images=2 or more.")
    if scheme == "image_only" and image_weight <= 0:
        raise ValueError(
            f"--scheme=image_only with --image_weight={image_weight} leaves no loss term; "
            "pass a positive --image_weight.")


def scheme_terms(scheme: str, stage: int, tap_weights: Optional[Mapping[str, float]] = None,
                 image_weight: float = 1.0) -> LossTerms:
    """Return the loss terms that `scheme` sums; `stage` matters for sdn and diverse only.

    Raises ValueError for an unknown scheme or, for sdn and diverse, a stage
    other than 1 or 2.
    """
    weights = dict(tap_weights or {})
    if scheme in ("sdn", "diverse"):
        return stage_terms(stage, weights, image_weight)
    if scheme in _FIXED_STAGE:
        return stage_terms(_FIXED_STAGE[scheme], weights, image_weight)
    if scheme == "image_only":
        return LossTerms(image_weight=image_weight, generator_taps=False,
                         teacher_taps_of_fake=False, tap_weights=weights)
    if scheme == "stage1_plus_stage2":
        return LossTerms(image_weight=image_weight, generator_taps=True,
                         teacher_taps_of_fake=True, tap_weights=weights)
    raise ValueError(f"--scheme={scheme!r} is invalid; use one of {', '.join(SCHEMES)}.")


def record_default_scheme(workdir: str, config_file: str = "config.json") -> bool:
    """Add scheme=sdn to the config.json of a run started before schemes existed.

    Such runs trained the plain SDN stage, so resuming them with the default
    --scheme must not fail on a missing key. Returns True when the file changed.
    """
    from sdn_tf.workdir import write_json_atomically

    path = os.path.join(workdir, config_file)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
    except (OSError, json.JSONDecodeError):
        return False  # open_workdir reports the unreadable file with its path
    if not isinstance(stored, dict) or "scheme" in stored or stored.get("kind") != "sdn":
        return False
    stored["scheme"] = DEFAULT_SCHEME
    write_json_atomically(path, stored)
    return True
