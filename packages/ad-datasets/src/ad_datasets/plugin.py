"""The data sets of ad-datasets as records; readers are imported only when a data set is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ad_datasets.configs import (
    BenchmarkConfig,
    FolderConfig,
    MvtecConfig,
    SyntheticConfig,
    VisaConfig,
)
from ad_datasets.guides import DOWNLOAD_HELP, MVTEC_DOWNLOAD_HELP
from adcore.api import DatasetSpec, hookimpl


def _mvtec(config: MvtecConfig, root: Path | None) -> Any:
    from ad_datasets.mvtec import factory

    return factory(config, root)


def _visa(config: VisaConfig, root: Path | None) -> Any:
    from ad_datasets.visa import factory

    return factory(config, root)


def _folder(config: FolderConfig, root: Path | None) -> Any:
    from ad_datasets.folder import factory

    return factory(config, root)


def _synthetic(config: SyntheticConfig, root: Path | None) -> Any:
    from ad_datasets.synthetic import factory

    return factory(config, root)


def _download_visa(root: Path, progress: Any = None) -> Path:
    from ad_datasets.download import download_visa

    return download_visa(root, progress)


def _download_isic(root: Path, progress: Any = None) -> Path:
    from ad_datasets.download import download_isic

    return download_isic(root, progress)


def _download_btad(root: Path, progress: Any = None) -> Path:
    from ad_datasets.download import download_btad

    return download_btad(root, progress)


DOWNLOADS = {"btad": _download_btad, "isic": _download_isic}


def _industrial(name: str) -> Any:
    def factory(config: BenchmarkConfig, root: Path | None) -> Any:
        from ad_datasets import industrial

        return getattr(industrial, f"open_{name}")(config, root)

    return factory


def _medical(name: str) -> Any:
    def factory(config: BenchmarkConfig, root: Path | None) -> Any:
        from ad_datasets import medical

        layout = getattr(medical, name.upper())
        if isinstance(layout, medical.ImageLevelLayout):
            return medical.open_image_level(layout, config, root)
        return medical.open_pixel_level(layout, config, root)

    return factory


# name -> summary, in the order of the AF-CLIP authors' zero-shot table
ZERO_SHOT_SETS = {
    "btad": (
        "BTAD (3 products) read in place: <id>/{train/ok,test/{ok,ko},ground_truth/ko}.",
        _industrial,
    ),
    "dtd": ("DTD-Synthetic (12 textures) read in place, in the MVTec layout.", _industrial),
    "dagm": (
        "DAGM 2007 (10 classes), Kaggle upload: Class<N>/{Train,Test} with Label/.",
        _industrial,
    ),
    "isic": ("ISIC 2016 lesion segmentation test set (pixel metrics only).", _medical),
    "clinicdb": (
        "CVC-ClinicDB polyp segmentation, images/ + masks/ (pixel metrics only).",
        _medical,
    ),
    "colondb": ("CVC-ColonDB polyp segmentation, images/ + masks/ (pixel metrics only).", _medical),
    "brainmri": ("BrainMRI tumour scans, no/ + yes/ (image metrics only).", _medical),
    "br35h": ("Br35H tumour scans, no/ + yes/ (image metrics only).", _medical),
    "kvasir": ("Kvasir-SEG polyp segmentation, images/ + masks/ (pixel metrics only).", _medical),
}


@hookimpl
def adcore_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec(
            name="mvtec",
            summary="MVTec-AD (15 categories) read in place from its distributed layout.",
            config=MvtecConfig,
            factory=_mvtec,
            download_help=MVTEC_DOWNLOAD_HELP,
        ),
        DatasetSpec(
            name="visa",
            summary="VisA (12 categories) through its split_csv/1cls.csv, or in MVTec layout.",
            config=VisaConfig,
            factory=_visa,
            download=_download_visa,
        ),
        DatasetSpec(
            name="folder",
            summary="Your own images: normal/ + abnormal/ (+ masks/) folders, or MVTec layout.",
            config=FolderConfig,
            factory=_folder,
        ),
        DatasetSpec(
            name="synthetic",
            summary="Generated offline from a seed: fabric, pill, washer with drawn defects.",
            config=SyntheticConfig,
            factory=_synthetic,
            needs_root=False,
        ),
        *(
            DatasetSpec(
                name=name,
                summary=summary,
                config=BenchmarkConfig,
                factory=opener(name),
                download=DOWNLOADS.get(name),
                download_help=DOWNLOAD_HELP[name],
            )
            for name, (summary, opener) in ZERO_SHOT_SETS.items()
        ),
    ]
