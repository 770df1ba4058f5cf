"""MVTec-AD as distributed: read in place, one folder per category."""

from __future__ import annotations

from pathlib import Path

from ad_datasets.configs import MvtecConfig
from ad_datasets.layout import MvtecTree, require_root
from ad_datasets.names import MVTEC_NAMES


def factory(config: MvtecConfig, root: Path | None) -> MvtecTree:
    root = require_root(root, "mvtec")
    return MvtecTree(root, config.class_names, MVTEC_NAMES, good=config.good_names)
