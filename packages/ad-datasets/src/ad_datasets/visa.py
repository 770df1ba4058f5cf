"""VisA as distributed: ``split_csv/1cls.csv`` read in place, or a tree already in MVTec layout.

The CSV (columns object, split, label, image, mask; paths relative to the root) is the
benchmark's own definition of the 1-class split, so it is read directly rather than
converted, and the data is never copied.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from ad_datasets.configs import VisaConfig
from ad_datasets.layout import (
    MVTEC_LAYOUT,
    CategoryDataset,
    MvtecTree,
    layout_error,
    require_root,
)
from ad_datasets.layout import mvtec_categories as find_mvtec_categories
from ad_datasets.names import VISA_NAMES
from adcore.api import GOOD, DataError, DataFiles, Dataset, Sample, Split

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}
ANOMALY = "anomaly"  # the CSV has no defect types; anomalous samples share this one

VISA_LAYOUT = f"""\
  <root>/split_csv/1cls.csv   (columns {", ".join(COLUMNS)}; paths relative to <root>)
  <root>/<category>/Data/Images/{{Normal,Anomaly}}/*.JPG
  <root>/<category>/Data/Masks/Anomaly/*.png
or a tree already converted to the MVTec layout:
{MVTEC_LAYOUT}"""


class VisaCsv(CategoryDataset):
    """VisA read through its split CSV."""

    def __init__(self, root: Path, class_names: Mapping[str, str]) -> None:
        self._samples = read_split_csv(root)
        super().__init__(root, sorted(self._samples), class_names, VISA_NAMES)

    def samples(self, category: str, split: Split) -> list[Sample]:
        self.require(category)
        return list(self._samples[category][split])

    def data_files(self, category: str) -> DataFiles:
        self.require(category)
        split = {self.root / SPLIT_CSV: "the split definition (1-class)"}
        return DataFiles(root=self.root / category, used=split)


def csv_path(text: str) -> str:
    """A relative path of the CSV with Windows separators (``candle\\Data\\...``) as ``/``."""
    return text.strip().replace("\\", "/")


def read_split_csv(root: Path) -> dict[str, dict[str, list[Sample]]]:
    """category -> split -> samples sorted by path, from ``<root>/split_csv/1cls.csv``."""
    path = root / SPLIT_CSV
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark before the header
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in reader.fieldnames]
        if missing:
            raise DataError(
                f"{path} lacks the columns {', '.join(missing)} "
                f"(it has {', '.join(reader.fieldnames or []) or 'none'}).",
                "Use the split_csv/1cls.csv shipped in VisA_20220922.tar.",
            )
        table: dict[str, dict[str, list[Sample]]] = defaultdict(lambda: {"train": [], "test": []})
        for row in reader:
            line = reader.line_num
            absent = [c for c in COLUMNS if row.get(c) is None]
            if absent:
                raise DataError(
                    f"{path}, line {line}: the row has no {', '.join(absent)} field "
                    f"({len([v for v in row.values() if v is not None])} of "
                    f"{len(reader.fieldnames)} fields; a comma lost when the file was edited?).",
                    "Give that row every column of the header (an empty mask field is fine: "
                    "write the comma), or use the split_csv/1cls.csv shipped in "
                    "VisA_20220922.tar.",
                )
            split, label = row["split"].strip(), row["label"].strip()
            if split not in ("train", "test") or label not in LABELS:
                raise DataError(
                    f"{path}, line {line}: split {split!r} / label {label!r} is not one of "
                    "train/test and normal/anomaly.",
                    "Use the split_csv/1cls.csv shipped in VisA_20220922.tar.",
                )
            mask = csv_path(row["mask"])
            table[row["object"].strip()][split].append(
                Sample(
                    image_path=root / csv_path(row["image"]),
                    label=LABELS[label],
                    category=row["object"].strip(),
                    defect_type=ANOMALY if LABELS[label] else GOOD,
                    mask_path=root / mask if mask else None,
                )
            )
    for splits in table.values():
        for samples in splits.values():
            samples.sort(key=lambda s: s.image_path)
    return dict(table)


def open_visa(root: Path, class_names: Mapping[str, str]) -> Dataset:
    """Pick the reader from what is on disk: the split CSV first, else the MVTec layout."""
    if (root / SPLIT_CSV).is_file():
        return VisaCsv(root, class_names)
    if find_mvtec_categories(root):
        return MvtecTree(root, class_names, VISA_NAMES, dataset="VisA")
    raise layout_error(
        root,
        "VisA",
        VISA_LAYOUT,
        "Unpack VisA_20220922.tar into --data-root, "
        "or fetch it with `ad data download visa --to R`.",
    )


def factory(config: VisaConfig, root: Path | None) -> Dataset:
    return open_visa(require_root(root, "visa"), config.class_names)
