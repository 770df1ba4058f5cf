"""The data set contract: lazy lists of samples, no pixels.

A data set plugin only knows its on-disk layout. Decoding, resizing and batching are the
host's job (:mod:`adcore.data.loading`), so every data set gets the same fast loader.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict

Split = Literal["train", "test"]
GOOD = "good"


class Sample(BaseModel):
    """One image of a category. ``mask_path`` None means an all-normal mask."""

    model_config = ConfigDict(frozen=True)

    image_path: Path
    label: int  # 0 normal, 1 anomalous
    category: str
    defect_type: str = GOOD
    mask_path: Path | None = None


class Dataset(abc.ABC):
    """A benchmark or a user's folder, read as categories of train and test samples.

    ``requires_masks``: every anomalous test image must have a mask (benchmarks); users'
    folders may have none, and then pixel-level metrics are not computed.
    ``undefined_levels``: metric levels (``"image"``, ``"pixel"``) the data set cannot
    support, each with the reason shown in place of their values, e.g. a segmentation set
    whose every test image is anomalous has no image-level metrics.
    """

    requires_masks: bool = True
    undefined_levels: Mapping[str, str] = MappingProxyType({})

    @abc.abstractmethod
    def categories(self) -> list[str]:
        """Categories present in this data set, in a stable order."""

    @abc.abstractmethod
    def samples(self, category: str, split: Split) -> list[Sample]:
        """Samples of one split, sorted by path so runs are reproducible."""

    def class_name(self, category: str) -> str:
        """Natural-language name of the object, used in CLIP prompts."""
        return category.replace("_", " ")
