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
# folder names taken as the good class, compared case-insensitively (data sets may add more)
GOOD_NAMES = ("good", "ok", "normal")


class Sample(BaseModel):
    """One image of a category. ``mask_path`` None means an all-normal mask."""

    model_config = ConfigDict(frozen=True)

    image_path: Path
    label: int  # 0 normal, 1 anomalous
    category: str
    defect_type: str = GOOD
    mask_path: Path | None = None


class DataFiles(BaseModel):
    """What a data set says about one category's files, for the host's inventory (every
    file under the data root used, or ignored with its reason). All fields are optional.

    ``root``: the folder holding every file of the category; the host lists each file in it
    that no sample names and ``ignored`` does not explain, with its own reason (hidden file,
    not an image, format no library decodes, orphan mask, ...). ``used``: files read that
    are no sample's image or mask (a split CSV), each with what it is. ``ignored``: files
    the data set saw and left out, each with why. ``notes``: how the layout was read, shown
    by the data check and the run (e.g. which folder was taken as the good class).
    """

    model_config = ConfigDict(frozen=True)

    root: Path | None = None
    used: dict[Path, str] = {}
    ignored: dict[Path, str] = {}
    notes: list[str] = []


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

    def data_files(self, category: str) -> DataFiles:
        """The category's files beyond its samples, for the inventory (see :class:`DataFiles`);
        a data set that reports nothing gets an inventory of the files its samples name."""
        return DataFiles()
