"""Checks of a data set's files before any model work, the same for every data set.

A defective image whose mask is missing would count as all-normal and a mask of the wrong
size would be compared with the wrong pixels: both make metrics wrong without an error.
So the host checks every sample first, cheaply: sizes come from headers, PNGs are verified
by their chunk checksums and JPEGs decoded at 1/8 scale, in a thread pool (PIL releases the
GIL while it reads and inflates).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, computed_field

from adcore.dataset import Dataset, Sample
from adcore.errors import DataError
from adcore.loading import read_image, read_mask

if TYPE_CHECKING:
    from rich.console import Console

Problem = Literal[
    "image_missing", "image_unreadable", "mask_missing", "mask_unreadable", "size_mismatch"
]
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError, DataError)


class BadSample(BaseModel):
    """One sample that would make an evaluation wrong, and the file at fault."""

    model_config = ConfigDict(frozen=True)

    sample: Sample
    problem: Problem
    path: Path
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class CategoryCheck(BaseModel):
    """What one category holds, and what is wrong with it."""

    category: str
    train_images: int
    test_images: dict[str, int]  # defect type ("good" included) -> images
    masks_found: int
    masks_missing: int
    images_missing: int
    unreadable: int
    size_mismatches: int
    bad_samples: list[BadSample] = []
    problems: list[str] = []  # split-level faults: e.g. a test split without anomalies
    warnings: list[str] = []  # worth knowing, but an evaluation can still be right

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not self.bad_samples and not self.problems


class DataCheckReport(BaseModel):
    """The data check of a set of categories; ``ok`` False means: do not evaluate."""

    categories: list[CategoryCheck]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.categories)

    @property
    def bad_samples(self) -> list[BadSample]:
        return [bad for check in self.categories for bad in check.bad_samples]


@dataclass
class _Inspection:
    bad: list[BadSample] = field(default_factory=list)
    mask_found: bool = False
    mask_missing: bool = False


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) of a decodable image, reading as little as the format allows.

    PNG: every chunk's CRC is checked (catches truncation and corruption) without inflating
    pixels into an image; JPEG: decoded at 1/8 scale (truncation shows only when decoding);
    anything else: decoded in full with the loader's own reader.
    """
    with Image.open(path) as image:
        size = image.size
        if image.format == "PNG":
            image.verify()
            return size
        if image.format == "JPEG":
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
            return size
    return read_image(path).size


def _probe_mask(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        if image.format == "PNG":
            size = image.size
            image.verify()
            return size
    return read_mask(path, (1, 1)).size


def _inspect(sample: Sample, require_masks: bool) -> _Inspection:
    found = _Inspection()

    def bad(problem: Problem, path: Path, detail: str) -> None:
        found.bad.append(BadSample(sample=sample, problem=problem, path=path, detail=detail))

    image_path = sample.image_path
    if not image_path.is_file():
        bad("image_missing", image_path, "image file does not exist")
        return found
    try:
        size = probe_image(image_path)
    except UNREADABLE as error:
        bad("image_unreadable", image_path, f"image does not decode ({error})")
        return found
    mask_path = sample.mask_path
    if mask_path is None:
        if sample.label == 1 and require_masks:
            found.mask_missing = True
            bad("mask_missing", image_path, "defective image has no mask")
        return found
    if not mask_path.is_file():
        found.mask_missing = True
        bad("mask_missing", mask_path, f"mask of {image_path.name} does not exist")
        return found
    try:
        mask_size = _probe_mask(mask_path)
    except UNREADABLE as error:
        bad("mask_unreadable", mask_path, f"mask does not decode ({error})")
        return found
    found.mask_found = True
    if mask_size != size:
        bad(
            "size_mismatch",
            mask_path,
            f"mask is {mask_size[0]}x{mask_size[1]} but {image_path.name} is {size[0]}x{size[1]}",
        )
    return found


def _inspect_all(
    samples: Sequence[Sample], require_masks: bool, workers: int | None
) -> list[_Inspection]:
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    if len(samples) < 2 or workers == 1:
        return [_inspect(s, require_masks) for s in samples]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: _inspect(s, require_masks), samples))


def find_bad_samples(
    samples: Sequence[Sample], require_masks: bool = False, workers: int | None = None
) -> list[BadSample]:
    """Every problem of ``samples`` (missing or undecodable files, missing or mis-sized masks).

    A mask path that names no file is always a problem (benchmark readers name the mask a
    defective image should have). ``require_masks`` also flags defective samples with no
    mask path at all: pass the data set's ``requires_masks``; False suits data sets whose
    masks are optional (then only image metrics apply).
    """
    return [bad for found in _inspect_all(samples, require_masks, workers) for bad in found.bad]


def drop_bad_samples(samples: Iterable[Sample], bad: Iterable[BadSample]) -> list[Sample]:
    """``samples`` without the bad ones (for ``--skip-bad-samples``), in their order."""
    excluded = {b.sample for b in bad}
    return [s for s in samples if s not in excluded]


def check_category(
    dataset: Dataset, category: str, require_masks: bool, workers: int | None = None
) -> CategoryCheck:
    """Counts and problems of one category's train and test splits."""
    train = dataset.samples(category, "train")
    test = dataset.samples(category, "test")
    found = _inspect_all([*train, *test], require_masks, workers)
    bad = [b for f in found for b in f.bad]
    labels = Counter(s.label for s in test)
    problems, warnings = [], []
    undefined = dict(getattr(dataset, "undefined_levels", {}))
    if not test:
        problems.append("the test split is empty")
    elif not labels[1]:
        problems.append("the test split has no anomalous images: detection metrics are undefined")
    elif not labels[0] and "image" not in undefined:
        problems.append("the test split has no normal images: detection metrics are undefined")
    warnings += [f"{level} metrics n/a: {why}" for level, why in undefined.items()]
    if not train:
        warnings.append("the train split is empty: only zero-shot methods can run")
    if any(s.label for s in train):
        problems.append("the train split holds anomalous images")
    return CategoryCheck(
        category=category,
        train_images=len(train),
        test_images=dict(sorted(Counter(s.defect_type for s in test).items())),
        masks_found=sum(f.mask_found for f in found),
        masks_missing=sum(f.mask_missing for f in found),
        images_missing=sum(b.problem == "image_missing" for b in bad),
        unreadable=sum(b.problem in ("image_unreadable", "mask_unreadable") for b in bad),
        size_mismatches=sum(b.problem == "size_mismatch" for b in bad),
        bad_samples=bad,
        problems=problems,
        warnings=warnings,
    )


def check_dataset(
    dataset: Dataset,
    categories: Sequence[str] | None = None,
    require_masks: bool | None = None,
    workers: int | None = None,
) -> DataCheckReport:
    """The data check of ``categories`` (all when None).

    ``require_masks`` defaults to the data set's ``requires_masks`` attribute (True if absent).
    """
    if require_masks is None:
        require_masks = bool(getattr(dataset, "requires_masks", True))
    chosen = list(categories) if categories is not None else dataset.categories()
    return DataCheckReport(
        categories=[check_category(dataset, c, require_masks, workers) for c in chosen]
    )


def render_report(report: DataCheckReport, console: Console, max_listed: int = 50) -> None:
    """The report as a table per category, then each bad file, problem and warning."""
    from rich.table import Table

    table = Table(title="Data check", caption="images missing / unreadable / mask size wrong")
    table.add_column("category")
    for column in ("train", "test", "masks", "no mask", "bad files", "status"):
        table.add_column(column, justify="right")
    table.add_column("test images by defect type", overflow="fold")
    for check in report.categories:
        table.add_row(
            check.category,
            str(check.train_images),
            str(sum(check.test_images.values())),
            str(check.masks_found),
            str(check.masks_missing),
            f"{check.images_missing}/{check.unreadable}/{check.size_mismatches}",
            "[green]ok[/]" if check.ok else "[red]bad[/]",
            ", ".join(f"{d} {n}" for d, n in check.test_images.items()) or "none",
        )
    console.print(table)
    bad = report.bad_samples
    for item in bad[:max_listed]:
        console.print(f"[red]bad[/] {item.problem}: {item}", highlight=False)
    if len(bad) > max_listed:
        console.print(f"... and {len(bad) - max_listed} more bad samples (see --json)")
    for check in report.categories:
        for problem in check.problems:
            console.print(f"[red]problem[/] {check.category}: {problem}", highlight=False)
        for warning in check.warnings:
            console.print(f"[yellow]warning[/] {check.category}: {warning}", highlight=False)
    verdict = "[green]Data OK.[/]" if report.ok else "[red]Data would make an evaluation wrong.[/]"
    console.print(verdict)
