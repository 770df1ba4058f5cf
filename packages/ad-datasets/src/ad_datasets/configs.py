"""Settings of each data set. Kept apart from the readers so listing plugins imports no numpy."""

from __future__ import annotations

from pydantic import Field

from ad_datasets.names import class_names_field
from adcore.api import GOOD_NAMES, PluginConfig


def good_names_field() -> list[str]:
    return Field(
        list(GOOD_NAMES),
        min_length=1,
        description="Names of the test folder of good parts, compared case-insensitively.",
    )


class MvtecConfig(PluginConfig):
    """Settings of the MVTec-AD reader."""

    class_names: dict[str, str] = class_names_field()
    good_names: list[str] = good_names_field()


class VisaConfig(PluginConfig):
    """Settings of the VisA reader."""

    class_names: dict[str, str] = class_names_field()


class FolderConfig(PluginConfig):
    """Settings of the folder reader."""

    class_names: dict[str, str] = class_names_field()
    category: str | None = Field(
        None, description="Name of the category when the root itself holds normal/ or train/."
    )
    normal_test_ratio: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Share of normal/ used as good test images when there is no normal_test/.",
    )
    split_seed: int = Field(0, description="Seed of the normal/ train-test split.")
    good_names: list[str] = good_names_field()


class SyntheticConfig(PluginConfig):
    """Settings of the generated set; all but class_names are part of its cache key."""

    class_names: dict[str, str] = class_names_field()
    seed: int = Field(0, description="Seed of the whole set.")
    image_size: int = Field(256, ge=64, le=2048, description="Side of the square images.")
    train_images: int = Field(16, ge=1, description="Normal train images per category.")
    good_test_images: int = Field(8, ge=1, description="Normal test images per category.")
    images_per_defect: int = Field(3, ge=1, description="Test images per defect type.")


class BenchmarkConfig(PluginConfig):
    """Settings of the readers of BTAD, DAGM, DTD-Synthetic and the medical sets."""

    class_names: dict[str, str] = class_names_field()
