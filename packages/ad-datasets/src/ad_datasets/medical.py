"""The medical sets of AF-CLIP's zero-shot table, read in place; each is one category.

Two kinds, as the AF-CLIP authors' readers (github Faustinaqq/AF-CLIP, ``dataset/*.py``) use
them, all images in the test split (these sets are for zero-shot evaluation only):

- image-level only, ``no/`` (normal) and ``yes/`` (tumour) folders: BrainMRI, Br35H. No masks,
  so pixel metrics are n/a.
- pixel-level only, an image folder and a mask folder, every image anomalous: ISIC 2016,
  CVC-ColonDB, CVC-ClinicDB, Kvasir. No normal image, so image metrics are n/a.

Masks pair with images by file stem (ISIC's masks add ``_Segmentation``), not by sorted order
as the authors' readers do, so a missing mask is named instead of shifting every pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ad_datasets.configs import BenchmarkConfig
from ad_datasets.layout import CategoryDataset, image_files, layout_error, locate, require_root
from adcore.api import Sample, Split

LESION = "lesion"  # the defect type of every image of a pixel-level set
TUMOUR = "tumour"


@dataclass(frozen=True)
class ImageLevelLayout:
    """``<root>/no/*`` normal, ``<root>/yes/*`` anomalous; no masks."""

    name: str  # the plugin's name
    title: str
    folder: str  # the folder's name in the authors' data directory
    category: str  # the authors' category name


@dataclass(frozen=True)
class PixelLevelLayout:
    """``<root>/<images>/*`` every one anomalous, ``<root>/<masks>/<stem><suffix>.*``."""

    name: str
    title: str
    folder: str
    category: str
    images: str
    masks: str
    mask_suffix: str = ""


BRAINMRI = ImageLevelLayout("brainmri", "BrainMRI", "BrainMRI", "brainmri")
BR35H = ImageLevelLayout("br35h", "Br35H", "Br35H", "br35h")
ISIC = PixelLevelLayout(
    "isic",
    "ISIC 2016",
    "ISIC2016",
    "isic",
    images="ISBI2016_ISIC_Part1_Test_Data",
    masks="ISBI2016_ISIC_Part1_Test_GroundTruth",
    mask_suffix="_Segmentation",
)
COLONDB = PixelLevelLayout("colondb", "CVC-ColonDB", "CVC-ColonDB", "colon", "images", "masks")
CLINICDB = PixelLevelLayout("clinicdb", "CVC-ClinicDB", "CVC-ClinicDB", "clinic", "images", "masks")
KVASIR = PixelLevelLayout("kvasir", "Kvasir", "Kvasir", "kvasir", "images", "masks")


IMAGE_LEVEL_TEXT = (
    "  <root>/no/*.jpg|png   normal scans\n  <root>/yes/*.jpg|png  scans with a tumour"
)


def pixel_level_text(layout: PixelLevelLayout) -> str:
    return (
        f"  <root>/{layout.images}/<name>.png|jpg   every image shows a lesion\n"
        f"  <root>/{layout.masks}/<name>{layout.mask_suffix}.png   its mask"
    )


class ImageLevelSet(CategoryDataset):
    """Normal and anomalous scans labelled per image; pixel metrics are undefined."""

    requires_masks = False

    def __init__(self, root: Path, layout: ImageLevelLayout, names: Mapping[str, str]) -> None:
        self.layout = layout
        self.undefined_levels = {
            "pixel": f"{layout.title} labels whole images only; it has no masks"
        }
        super().__init__(root, [layout.category], names)

    def samples(self, category: str, split: Split) -> list[Sample]:
        self.require(category)
        if split == "train":
            return []
        normal = [Sample(image_path=p, label=0, category=category) for p in self._images("no")]
        anomalous = [
            Sample(image_path=p, label=1, category=category, defect_type=TUMOUR)
            for p in self._images("yes")
        ]
        return normal + anomalous

    def _images(self, folder: str) -> list[Path]:
        return image_files(self.root / folder)


class PixelLevelSet(CategoryDataset):
    """Lesion images with masks, every image anomalous; image metrics are undefined."""

    def __init__(self, root: Path, layout: PixelLevelLayout, names: Mapping[str, str]) -> None:
        self.layout = layout
        self.undefined_levels = {
            "image": f"every image of {layout.title} shows a lesion (a segmentation set), "
            "so there are no normal images to rank against"
        }
        super().__init__(root, [layout.category], names)

    def samples(self, category: str, split: Split) -> list[Sample]:
        self.require(category)
        if split == "train":
            return []
        masks_dir = self.root / self.layout.masks
        suffix = self.layout.mask_suffix
        masks = {
            p.stem.removesuffix(suffix): p
            for p in image_files(masks_dir)
            if p.stem.endswith(suffix)
        }
        return [
            Sample(
                image_path=path,
                label=1,
                category=category,
                defect_type=LESION,
                mask_path=masks.get(path.stem, masks_dir / f"{path.stem}{suffix}.png"),
            )
            for path in image_files(self.root / self.layout.images)
        ]


def _has_image_level(path: Path) -> bool:
    return bool(image_files(path / "no") or image_files(path / "yes"))


def open_image_level(
    layout: ImageLevelLayout, config: BenchmarkConfig, root: Path | None
) -> ImageLevelSet:
    root = require_root(root, layout.name)
    found = locate(root, layout.folder, _has_image_level)
    if found is None:
        raise layout_error(root, layout.title, IMAGE_LEVEL_TEXT)
    return ImageLevelSet(found, layout, config.class_names)


def open_pixel_level(
    layout: PixelLevelLayout, config: BenchmarkConfig, root: Path | None
) -> PixelLevelSet:
    root = require_root(root, layout.name)
    found = locate(root, layout.folder, lambda p: bool(image_files(p / layout.images)))
    if found is None:
        raise layout_error(root, layout.title, pixel_level_text(layout))
    return PixelLevelSet(found, layout, config.class_names)
