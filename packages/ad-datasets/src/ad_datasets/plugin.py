"""The data sets of ad-datasets as records; readers are imported only when a data set is used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ad_datasets.configs import FolderConfig, MvtecConfig, SyntheticConfig, VisaConfig
from ad_datasets.guides import MVTEC_DOWNLOAD_HELP
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
    ]
