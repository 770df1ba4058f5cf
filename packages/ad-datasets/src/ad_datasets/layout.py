"""Reading folder trees: the MVTec layout shared by mvtec, synthetic, folder and converted VisA.

Every reader here lists paths only; pixels are decoded later by :mod:`adcore.data.loading`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ad_datasets.guides import MVTEC_LAYOUT
from ad_datasets.names import class_name
from adcore.api import (
    GOOD,
    GOOD_NAMES,
    IMAGE_EXTENSIONS,
    ConfigError,
    DataError,
    DataFiles,
    Dataset,
    Sample,
    Split,
)

MASK_SUFFIX = "_mask"


def require_root(root: Path | None, dataset: str) -> Path:
    """The data root, or an error that says how to give it."""
    if root is None:
        raise DataError(
            f"The {dataset} data set needs a data root.",
            "Pass --data-root; `ad data download --help` says how to obtain the public sets.",
        )
    return Path(root).expanduser()


def is_dangling(path: Path) -> bool:
    """A symbolic link whose target does not exist (moved, renamed, unmounted)."""
    return path.is_symlink() and not path.exists()


def image_files(folder: Path) -> list[Path]:
    """Images directly in ``folder`` (any case of the usual extensions), sorted; none if absent.

    Linked files are followed; a dangling link is listed too, whatever its name, so that the
    data check names it instead of the data silently shrinking.
    """
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if not path.name.startswith(".")
        and ((path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()) or is_dangling(path))
    )


def tree_images(folder: Path) -> list[Path]:
    """Images anywhere under ``folder``, sorted, following linked folders as :func:`image_files`
    follows linked files (each real folder once, so link cycles end); hidden entries are
    skipped and dangling links listed."""
    if not folder.is_dir():
        return []
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(top) / name
            if name.startswith("."):
                continue
            if (path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()) or is_dangling(path):
                found.append(path)
    return sorted(found)


def dangling_entries(folder: Path) -> list[Path]:
    """Dangling links directly in ``folder`` that are not named like images (linked folders)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if is_dangling(p)
        and p.suffix.lower() not in IMAGE_EXTENSIONS
        and not p.name.startswith(".")
    )


def subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def describe(root: Path, limit: int = 12) -> str:
    """What is at ``root``, for error messages: 'does not exist', 'is empty' or its entries."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is a file, not a folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not entries:
        return f"{root} is empty"
    shown = ", ".join(entries[:limit])
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{root} holds {shown}{more}"


def layout_error(root: Path, dataset: str, expected: str, extra_hint: str = "") -> DataError:
    """One message with the layout a reader expects and what it found instead."""
    return DataError(
        f"{root} is not a {dataset} data set: expected\n{expected}\nbut {describe(root)}.",
        extra_hint or "Point --data-root at the folder that holds the categories.",
    )


def is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def mvtec_categories(root: Path) -> list[str]:
    """Subfolders of ``root`` laid out as MVTec categories (train/ and test/ inside)."""
    return [p.name for p in subfolders(root) if is_mvtec_category(p)]


def mask_key(path: Path, base: Path) -> str:
    """``path`` below ``base`` without its extension and ``_mask``: masks pair with images
    by this (``lineA/000`` for ``lineA/000_mask.png``)."""
    relative = path.relative_to(base).with_suffix("")
    stem = relative.name
    stem = stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem
    return relative.with_name(stem).as_posix()


def mask_index(folder: Path) -> dict[str, Path]:
    """Masks anywhere under ``folder`` keyed by the image they belong to (:func:`mask_key`).

    Accepts MVTec's ``<stem>_mask.png`` and converted sets' ``<stem>.png``.
    """
    index: dict[str, Path] = {}
    for path in tree_images(folder):
        index.setdefault(mask_key(path, folder), path)
    return index


def is_good(name: str, good: Sequence[str]) -> bool:
    """Whether a folder's name is one of the good class's names (case-insensitive)."""
    return name.casefold() in {g.casefold() for g in good}


def good_note(folder: Path, category_dir: Path) -> str | None:
    """'test/OK is taken as the good class' for a good folder not named ``good``."""
    if folder.name == GOOD:
        return None
    shown = folder.relative_to(category_dir).as_posix()
    return f"{shown}/ is taken as the good class (normal parts; names in data.good_names)"


def mvtec_samples(
    category_dir: Path,
    split: Split,
    masks_required: bool = True,
    good: Sequence[str] = GOOD_NAMES,
) -> list[Sample]:
    """Samples of one MVTec-layout category; a test folder named as in ``good`` (any case:
    ``good``, ``ok``, ``OK``, ``normal``) holds the normal parts.

    Images are read anywhere below ``train/`` and each ``test/<defect>/`` (sub-folders per
    production line or lot), as the folder layout reads them. A defective test image
    without a mask gets the path its mask should have when masks are required, so the data
    check names the missing file instead of treating it as normal.
    """
    category = category_dir.name
    if split == "train":
        paths = tree_images(category_dir / "train")
        return [Sample(image_path=p, label=0, category=category) for p in paths]
    samples: list[Sample] = []
    for link in dangling_entries(category_dir / "test"):  # a linked defect folder that moved
        label = int(not is_good(link.name, good))
        samples.append(
            Sample(image_path=link, label=label, category=category, defect_type=link.name)
        )
    for defect_dir in subfolders(category_dir / "test"):
        defect = defect_dir.name
        if is_good(defect, good):
            samples += [
                Sample(image_path=p, label=0, category=category) for p in tree_images(defect_dir)
            ]
            continue
        masks_dir = category_dir / "ground_truth" / defect
        masks = mask_index(masks_dir)
        # a missing mask is named as the folder's other masks are: with or without _mask
        plain = bool(masks) and not any(p.stem.endswith(MASK_SUFFIX) for p in masks.values())
        suffix = "" if plain else MASK_SUFFIX
        for path in tree_images(defect_dir):
            key = mask_key(path, defect_dir)
            mask = masks.get(key)
            if mask is None and masks_required:
                mask = masks_dir / f"{key}{suffix}.png"
            samples.append(
                Sample(
                    image_path=path, label=1, category=category, defect_type=defect, mask_path=mask
                )
            )
    return sorted(samples, key=lambda s: s.image_path)


def mvtec_files(category_dir: Path, good: Sequence[str] = GOOD_NAMES) -> DataFiles:
    """The inventory report of an MVTec-layout category: its folder, and the good folders
    whose name is not ``good``."""
    notes = [
        note
        for folder in subfolders(category_dir / "test")
        if is_good(folder.name, good) and (note := good_note(folder, category_dir))
    ]
    return DataFiles(root=category_dir, notes=notes)


class CategoryDataset(Dataset):
    """A data set whose categories are known once its root has been read.

    ``requires_masks`` tells the data check whether a defective image without a mask is an
    error (benchmarks) or expected (a user's folder without masks: image metrics only).
    """

    requires_masks: bool = True

    def __init__(
        self,
        root: Path,
        categories: Iterable[str],
        class_names: Mapping[str, str],
        default_names: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self._categories = list(categories)
        self._class_names = dict(class_names)
        self._default_names = dict(default_names or {})
        unknown = sorted(set(self._class_names) - set(self._categories))
        if unknown:
            raise ConfigError(
                f"class_names names categories that are not in {root}: {', '.join(unknown)}.",
                f"Categories found: {', '.join(self._categories)}.",
            )

    def categories(self) -> list[str]:
        return list(self._categories)

    def require(self, category: str) -> None:
        """Raise a DataError naming the categories that exist when ``category`` does not."""
        if category not in self._categories:
            raise DataError(
                f"Category {category!r} is not in {self.root}.",
                f"Categories found: {', '.join(self._categories) or 'none'}.",
            )

    def class_name(self, category: str) -> str:
        self.require(category)
        return class_name(category, self._class_names, self._default_names)

    def data_files(self, category: str) -> DataFiles:
        """The category's folder (``<root>/<category>``, or the root of a one-category set)
        for the inventory."""
        self.require(category)
        folder = self.root / category
        if folder.is_dir():
            return DataFiles(root=folder)
        return DataFiles(root=self.root) if len(self._categories) == 1 else DataFiles()


class MvtecTree(CategoryDataset):
    """Any root whose subfolders are categories in the MVTec-AD layout."""

    def __init__(
        self,
        root: Path,
        class_names: Mapping[str, str],
        default_names: Mapping[str, str] | None = None,
        dataset: str = "MVTec-AD",
        masks_required: bool = True,
        good: Sequence[str] = GOOD_NAMES,
        layout: str = MVTEC_LAYOUT,
    ) -> None:
        self.good = tuple(good)
        categories = mvtec_categories(root)
        if not categories:
            hint = ""
            if is_mvtec_category(root):
                hint = f"{root} looks like one category; pass its parent folder {root.parent}."
            raise layout_error(root, dataset, layout, hint)
        self.requires_masks = masks_required
        super().__init__(root, categories, class_names, default_names)

    def samples(self, category: str, split: Split) -> list[Sample]:
        self.require(category)
        return mvtec_samples(self.root / category, split, self.requires_masks, self.good)

    def data_files(self, category: str) -> DataFiles:
        self.require(category)
        return mvtec_files(self.root / category, self.good)


def locate(root: Path, folder: str, looks_right: Callable[[Path], bool]) -> Path | None:
    """``root`` itself, or ``root/<folder>`` (the data set's folder inside a directory of
    several, as the AF-CLIP authors' ``--data_dir`` holds them), whichever has the layout."""
    for candidate in (root, root / folder):
        if looks_right(candidate):
            return candidate
    return None
