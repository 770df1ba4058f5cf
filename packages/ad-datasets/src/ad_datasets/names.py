"""Category folders of each benchmark and the natural-language names CLIP prompts use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

# Names as the CLIP anomaly-detection papers prompt them (WinCLIP, AnomalyCLIP): the folder
# name with its underscore, digit or run-together spelling turned into words.
MVTEC_NAMES: dict[str, str] = {"metal_nut": "metal nut"}

VISA_NAMES: dict[str, str] = {
    "chewinggum": "chewing gum",
    "pipe_fryum": "pipe fryum",
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
}


def class_name(
    category: str, overrides: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> str:
    """The user's override, else the benchmark's name, else the folder name in words."""
    if category in overrides:
        return overrides[category]
    if defaults and category in defaults:
        return defaults[category]
    return category.replace("_", " ").strip()


def class_names_field() -> Any:
    """The ``class_names`` config field every data set has: per-category prompt names."""
    return Field(
        default_factory=dict,
        description="Natural-language name per category for CLIP prompts, e.g. "
        '{"metal_nut": "hex nut"}; unset categories keep the built-in name.',
    )
