"""The inventory of a category: every file under its folder, used or ignored with a reason.

Each rule of a data set's layout was once added for the case that was reported; a file that
no rule reads vanished without a word. The inventory turns that around: every file under the
folder a data set reports for the category (:class:`~adcore.contracts.dataset.DataFiles`) is
listed as used (split, image or mask, label, defect type, what it pairs with), bad (used, but
the data check refuses it) or ignored with its reason, and a file a sample names that does
not exist (the mask a defective image lacks) as missing: nothing that looks like data is
dropped without being named. ``ad data check`` and ``ad eval`` show the counts per reason
and write the whole list (``inventory.csv``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ad_runtime.decoding import IMAGE_EXTENSIONS, UNDECODABLE_EXTENSIONS
from adcore.contracts.dataset import DataFiles, Sample
from adcore.infra.files import atomic_write_text, csv_text

Status = Literal["used", "bad", "missing", "ignored"]

HIDDEN = "hidden or system file"
EMPTY = "empty file (0 bytes)"
DANGLING = "symbolic link to a file that does not exist"
NOT_IMAGE = "not an image"
UNDECODABLE = "image format no installed library decodes"
ORPHAN_MASK = "mask that pairs with no image"
UNREAD = "image in a folder the layout does not read"
OUTSIDE = "outside every category's folder"
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
MASK_FOLDERS = frozenset({"masks", "mask", "ground_truth", "groundtruth", "gt", "label", "labels"})
COLUMNS = (
    "path",
    "category",
    "status",
    "reason",
    "split",
    "role",
    "label",
    "defect_type",
    "pairs_with",
)


class InventoryEntry(BaseModel):
    """One file: how it is used, or why not. ``reason``: why ignored, or why bad."""

    model_config = ConfigDict(frozen=True)

    path: Path
    category: str
    status: Status
    reason: str = ""
    split: str = ""  # train / test
    role: str = ""  # image / mask
    label: str = ""  # normal / anomalous
    defect_type: str = ""
    pairs_with: Path | None = None  # an image's mask, a mask's image

    def row(self) -> list[str]:
        paired = "" if self.pairs_with is None else str(self.pairs_with)
        return [str(self.path), self.category, self.status, self.reason, self.split,
                self.role, self.label, self.defect_type, paired]  # fmt: skip


def _key(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def why_ignored(path: Path, root: Path) -> str:
    """The host's reason for a file under ``root`` that no sample names."""
    parts = path.relative_to(root).parts
    if any(p.startswith(".") for p in parts) or path.name.casefold() in SYSTEM_FILES:
        return HIDDEN
    if path.is_symlink() and not path.exists():
        return DANGLING
    if path.stat().st_size == 0:
        return EMPTY
    extension = path.suffix.lower()
    if extension in UNDECODABLE_EXTENSIONS:
        return f"{UNDECODABLE} ({extension})"
    if extension not in IMAGE_EXTENSIONS:
        return f"{NOT_IMAGE} ({extension or 'no extension'})"
    if any(p.casefold() in MASK_FOLDERS for p in parts[:-1]):
        return ORPHAN_MASK
    return UNREAD


def walk_files(root: Path) -> list[Path]:
    """Every file below ``root``, hidden ones and dangling links included, sorted; linked
    folders are followed once each (so link cycles end)."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(top) / name for name in files]
        found += [Path(top) / d for d in dirs if os.path.islink(Path(top) / d)
                  and not os.path.exists(Path(top) / d)]  # fmt: skip
    return sorted(found)


def take_inventory(
    category: str,
    splits: Mapping[str, Sequence[Sample]],
    files: DataFiles,
    bad: Mapping[Sample, str] | None = None,
    left_out: Mapping[Sample, str] | None = None,
) -> list[InventoryEntry]:
    """The inventory of one category, sorted by path.

    ``splits``: split name -> its samples; ``bad``: samples the data check refuses, with
    why; ``left_out``: samples the run leaves out (bad files skipped, train images outside
    the support set), with why. Files of ``files.ignored`` keep the data set's reason; any
    other file under ``files.root`` gets the host's (:func:`why_ignored`).
    """
    bad, left_out = bad or {}, left_out or {}
    entries: dict[str, InventoryEntry] = {}
    for split, samples in splits.items():
        for sample in samples:
            status: Status = "used"
            reason = ""
            if sample in left_out:
                status, reason = "ignored", left_out[sample]
            elif sample in bad:
                status, reason = "bad", bad[sample]
            common = {"category": category, "reason": reason, "split": split,
                      "label": "anomalous" if sample.label else "normal",
                      "defect_type": sample.defect_type}  # fmt: skip
            pairs = [(sample.image_path, "image", sample.mask_path)]
            if sample.mask_path is not None:
                pairs.append((sample.mask_path, "mask", sample.image_path))
            for path, role, other in pairs:
                found: Status = status if path.exists() or path.is_symlink() else "missing"
                entries.setdefault(
                    _key(path),
                    InventoryEntry(path=path, status=found, role=role, pairs_with=other, **common),
                )
    for path, what in files.used.items():
        entries.setdefault(
            _key(path), InventoryEntry(path=path, category=category, status="used", reason=what)
        )
    for path, reason in files.ignored.items():
        entries.setdefault(
            _key(path),
            InventoryEntry(path=path, category=category, status="ignored", reason=reason),
        )
    if files.root is not None and files.root.is_dir():
        for path in walk_files(files.root):
            if _key(path) not in entries:
                entries[_key(path)] = InventoryEntry(
                    path=path,
                    category=category,
                    status="ignored",
                    reason=why_ignored(path, files.root),
                )
    return sorted(entries.values(), key=lambda e: str(e.path))


def outside_categories(root: Path, entries: Iterable[InventoryEntry]) -> list[InventoryEntry]:
    """Files under the data root ``root`` that no category's inventory lists (a stray file
    beside the category folders), each ignored with its reason."""
    listed = {_key(e.path) for e in entries}
    return [
        InventoryEntry(path=p, category="", status="ignored", reason=f"{OUTSIDE}: {why}")
        for p in walk_files(root)
        if _key(p) not in listed and (why := why_ignored(p, root))
    ]


def counts(entries: Iterable[InventoryEntry]) -> dict[str, int]:
    """'used', 'bad', 'missing' and each reason of the ignored files -> files (reasons with their
    details folded: every '.txt' and '.csv' is one 'not an image')."""
    found: Counter[str] = Counter()
    for entry in entries:
        if entry.status == "ignored":
            found[entry.reason.split(" (")[0].split(":")[0]] += 1
        else:
            found[entry.status] += 1
    first = ("used", "bad", "missing")
    return dict(sorted(found.items(), key=lambda item: (item[0] not in first, item[0])))


def summary(entries: Sequence[InventoryEntry]) -> str:
    """'inventory: 120 files used, 5 ignored (3 hidden or system file, 2 not an image)'."""
    found = counts(entries)
    used, broken, missing = found.pop("used", 0), found.pop("bad", 0), found.pop("missing", 0)
    ignored = sum(found.values())
    text = f"inventory: {used} files used"
    if broken:
        text += f", {broken} bad"
    if missing:
        text += f", {missing} missing"
    if ignored:
        text += f", {ignored} ignored (" + ", ".join(f"{n} {r}" for r, n in found.items()) + ")"
    return text


def write_inventory(path: Path, entries: Iterable[InventoryEntry]) -> None:
    """The inventory as CSV (:data:`COLUMNS`), written atomically.

    Raises ``UsageError`` when ``path`` is a folder (the option takes a file's name)."""
    if path.is_dir():
        from adcore.infra.errors import UsageError

        raise UsageError(
            f"--inventory {path} is a folder; the inventory is one CSV file.",
            f"Give a file name, e.g. --inventory {path / 'inventory.csv'}.",
        )
    atomic_write_text(path, csv_text(COLUMNS, (e.row() for e in entries)))
