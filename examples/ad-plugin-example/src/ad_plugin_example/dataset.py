"""A data set in a flat layout: ``<root>/<category>/{train,good,bad,masks}/``.

``train/`` and ``good/`` hold normal images (train and test), ``bad/`` the anomalous test
images, ``masks/<stem>.png`` the mask of ``bad/<stem>.*``. The host decodes and resizes;
a data set only lists files.
"""

from pathlib import Path

from adcore.api import IMAGE_EXTENSIONS, DataError, DataFiles, Dataset, Sample, Split


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


class FlatFolders(Dataset):
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise DataError(f"data root {root} is not a folder.", "Give --data-root.")
        self.root = root

    def categories(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())

    def samples(self, category: str, split: Split) -> list[Sample]:
        folder = self.root / category
        normal = "train" if split == "train" else "good"
        good = [Sample(image_path=p, label=0, category=category) for p in _images(folder / normal)]
        if split == "train":
            return good
        bad = [
            Sample(
                image_path=p,
                label=1,
                category=category,
                defect_type="bad",
                mask_path=folder / "masks" / f"{p.stem}.png",
            )
            for p in _images(folder / "bad")
        ]
        return sorted(good + bad, key=lambda s: s.image_path)

    def data_files(self, category: str) -> DataFiles:
        # every file under the category's folder is listed by the host's inventory
        return DataFiles(root=self.root / category)
