"""Users' own data: the MVTec layout under any root, or ``normal/`` + ``abnormal/`` folders.

The second layout is what a line engineer has after sorting images by hand::

    <root>/normal/*.png            good parts; a seeded share goes to the test split
    <root>/normal_test/*.png       optional: good test images (then all of normal/ is train)
    <root>/abnormal/[<defect>/]*.png
    <root>/masks/[<defect>/]<stem>[_mask].png   optional, matched to images by file stem

``<root>`` may also hold several such category folders, in either layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ad_datasets.configs import FolderConfig
from ad_datasets.layout import (
    MASK_SUFFIX,
    MVTEC_LAYOUT,
    CategoryDataset,
    is_mvtec_category,
    layout_error,
    mvtec_files,
    mvtec_samples,
    require_root,
    subfolders,
    tree_images,
)
from adcore.api import IMAGE_EXTENSIONS, DataFiles, Sample, Split

NORMAL, NORMAL_TEST, ABNORMAL, MASKS = "normal", "normal_test", "abnormal", "masks"

FOLDER_LAYOUT = f"""\
  <root>/normal/*.png, <root>/abnormal/[<defect>/]*.png, optional <root>/masks/<stem>.png
  (or one such folder per category under <root>), or the MVTec layout:
{MVTEC_LAYOUT}
  (images: {", ".join(IMAGE_EXTENSIONS)})"""


def is_normal_abnormal(folder: Path) -> bool:
    return (folder / NORMAL).is_dir() and (folder / ABNORMAL).is_dir()


def pair_key(path: Path, base: Path) -> tuple[str, str]:
    """(relative folder, stem without ``_mask``): masks pair with images by these."""
    stem = path.stem[: -len(MASK_SUFFIX)] if path.stem.endswith(MASK_SUFFIX) else path.stem
    return str(path.parent.relative_to(base)), stem


class FolderDataset(CategoryDataset):
    """Categories in either layout; masks are optional, so only image metrics may apply."""

    requires_masks = False

    def __init__(self, root: Path, config: FolderConfig) -> None:
        self.config = config
        if is_normal_abnormal(root) or is_mvtec_category(root):
            self._folders = {config.category or root.name: root}
        else:
            self._folders = {
                p.name: p for p in subfolders(root) if is_normal_abnormal(p) or is_mvtec_category(p)
            }
        if not self._folders:
            raise layout_error(root, "folder", FOLDER_LAYOUT)
        super().__init__(root, sorted(self._folders), config.class_names)

    def samples(self, category: str, split: Split) -> list[Sample]:
        self.require(category)
        folder = self._folders[category]
        if is_mvtec_category(folder):
            has_masks = (folder / "ground_truth").is_dir()
            samples = mvtec_samples(folder, split, has_masks, self.config.good_names)
            return [s.model_copy(update={"category": category}) for s in samples]
        return self._normal_abnormal(folder, category, split)

    def data_files(self, category: str) -> DataFiles:
        self.require(category)
        folder = self._folders[category]
        if is_mvtec_category(folder):
            return mvtec_files(folder, self.config.good_names)
        return DataFiles(root=folder)

    def _normal_abnormal(self, folder: Path, category: str, split: Split) -> list[Sample]:
        normal = tree_images(folder / NORMAL)
        if (folder / NORMAL_TEST).is_dir():
            train, test_normal = normal, tree_images(folder / NORMAL_TEST)
        else:
            order = np.random.default_rng(self.config.split_seed).permutation(len(normal))
            n_test = round(len(normal) * self.config.normal_test_ratio)
            test_normal = sorted(normal[i] for i in order[:n_test])
            train = sorted(normal[i] for i in order[n_test:])
        if split == "train":
            return [Sample(image_path=p, label=0, category=category) for p in train]
        samples = [Sample(image_path=p, label=0, category=category) for p in test_normal]
        samples += self._abnormal(folder, category)
        return sorted(samples, key=lambda s: s.image_path)

    def _abnormal(self, folder: Path, category: str) -> list[Sample]:
        abnormal, masks_dir = folder / ABNORMAL, folder / MASKS
        masks: dict[tuple[str, str], Path] = {}
        by_stem: dict[str, list[Path]] = {}
        for path in tree_images(masks_dir):
            key = pair_key(path, masks_dir)
            masks.setdefault(key, path)
            by_stem.setdefault(key[1], []).append(path)
        samples = []
        for path in tree_images(abnormal):
            relative = path.relative_to(abnormal)
            defect = relative.parts[0] if len(relative.parts) > 1 else ABNORMAL
            if path.suffix.lower() not in IMAGE_EXTENSIONS:  # a dangling link to a folder
                defect = path.name
            mask = masks.get(pair_key(path, abnormal))
            if mask is None and len(by_stem.get(path.stem, [])) == 1:
                mask = by_stem[path.stem][0]
            if mask is None and masks_dir.is_dir():  # masks given, this one absent: name it
                mask = masks_dir / relative.parent / f"{path.stem}{MASK_SUFFIX}.png"
            samples.append(
                Sample(
                    image_path=path, label=1, category=category, defect_type=defect, mask_path=mask
                )
            )
        return samples


def factory(config: FolderConfig, root: Path | None) -> FolderDataset:
    return FolderDataset(require_root(root, "folder"), config)
