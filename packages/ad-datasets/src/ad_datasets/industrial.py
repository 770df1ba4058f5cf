"""BTAD, DTD-Synthetic and DAGM read in place, as their releases lay them out.

BTAD and DTD-Synthetic are MVTec-like trees (BTAD calls its normal folder ``ok`` and its
defect folder ``ko``); DAGM 2007 as uploaded to Kaggle (``DAGM_KaggleUpload``) keeps every
image of a class in ``Train/`` and ``Test/`` and marks a defective one by its label image
``Label/<stem>_label.PNG``, the rule the AF-CLIP authors' ``dataset/dagm.py`` applies. The
train split keeps only DAGM's unlabelled (normal) training images. Categories are the folders
found, named as released and as the authors' readers list them (``01``-``03``,
``Class1``-``Class10``, ``Blotchy_099`` ...); AF-CLIP's prompts are object-agnostic, so these
names reach only methods that prompt with a class name, and ``data.class_names`` overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ad_datasets.configs import BenchmarkConfig
from ad_datasets.guides import BTAD_LAYOUT, DAGM_LAYOUT, DTD_LAYOUT
from ad_datasets.layout import (
    CategoryDataset,
    MvtecTree,
    image_files,
    layout_error,
    locate,
    mvtec_categories,
    require_root,
    subfolders,
)
from adcore.api import Sample, Split

DAGM_DEFECT = "defect"  # DAGM has one defect type per class
DAGM_LABEL_SUFFIX = "_label"


def open_btad(config: BenchmarkConfig, root: Path | None) -> MvtecTree:
    root = require_root(root, "btad")
    found = locate(root, "btad", lambda p: bool(mvtec_categories(p)))
    if found is None:
        raise layout_error(root, "BTAD", BTAD_LAYOUT)
    return MvtecTree(found, config.class_names, dataset="BTAD", good=("ok",), layout=BTAD_LAYOUT)


def open_dtd(config: BenchmarkConfig, root: Path | None) -> MvtecTree:
    root = require_root(root, "dtd")
    found = locate(root, "DTD-Synthetic", lambda p: bool(mvtec_categories(p)))
    if found is None:
        raise layout_error(root, "DTD-Synthetic", DTD_LAYOUT)
    return MvtecTree(found, config.class_names, dataset="DTD-Synthetic", layout=DTD_LAYOUT)


def dagm_classes(root: Path) -> list[str]:
    """Class folders holding ``Train/`` or ``Test/``."""
    return [p.name for p in subfolders(root) if (p / "Test").is_dir() or (p / "Train").is_dir()]


class Dagm(CategoryDataset):
    """DAGM 2007, Kaggle upload: ``Class<N>/{Train,Test}/*.PNG`` and their ``Label/`` folders."""

    def __init__(self, root: Path, class_names: Mapping[str, str]) -> None:
        super().__init__(root, dagm_classes(root), class_names)

    def samples(self, category: str, split: Split) -> list[Sample]:
        self.require(category)
        folder = self.root / category / ("Train" if split == "train" else "Test")
        labels = {
            p.stem.removesuffix(DAGM_LABEL_SUFFIX): p
            for p in image_files(folder / "Label")
            if p.stem.endswith(DAGM_LABEL_SUFFIX)
        }
        samples = []
        for path in image_files(folder):
            mask = labels.get(path.stem)
            if mask is None:
                samples.append(Sample(image_path=path, label=0, category=category))
            elif split == "test":
                samples.append(
                    Sample(
                        image_path=path,
                        label=1,
                        category=category,
                        defect_type=DAGM_DEFECT,
                        mask_path=mask,
                    )
                )
        return samples


def open_dagm(config: BenchmarkConfig, root: Path | None) -> Dagm:
    root = require_root(root, "dagm")
    found = locate(root, "DAGM_KaggleUpload", lambda p: bool(dagm_classes(p)))
    if found is None:
        raise layout_error(root, "DAGM", DAGM_LAYOUT)
    return Dagm(found, config.class_names)
