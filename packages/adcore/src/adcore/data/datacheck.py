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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, computed_field

from ad_runtime.decoding import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Decoding,
    EmptyFileError,
    ImageTooLargeError,
    IntensityRule,
    Probe,
    UndecodableImageError,
    category_decoding,
    dangling,
    decode_mask,
    is_high_depth,
    open_image,
    probe_open,
    read_image,
)
from adcore.contracts.dataset import DataFiles, Dataset, Sample
from adcore.data.inventory import (
    InventoryEntry,
    counts,
    outside_categories,
    summary,
    take_inventory,
)
from adcore.infra.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console

Problem = Literal[
    "image_missing",
    "image_unreadable",
    "image_too_large",
    "file_empty",
    "mask_missing",
    "mask_ambiguous",
    "mask_unreadable",
    "size_mismatch",
    "mask_empty",
    "mask_on_normal",
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
    high_depth_images: dict[str, int] = {}  # PIL mode of more than 8 bits -> images
    intensity_range: dict[str, list[float]] = {}  # "integer"/"float" -> [low, high] -> 0..255
    oriented_images: int = 0  # images (and masks) carrying an EXIF orientation tag
    grey_level_masks: list[Path] = []  # thresholded at half their maximum
    lossy_masks: dict[str, int] = {}  # thresholded masks that drop labelled pixels -> pixels
    vanishing_masks: int = 0  # anomalous masks left empty at the checked resolution
    bad_samples: list[BadSample] = []
    problems: list[str] = []  # split-level faults: e.g. a test split without anomalies
    warnings: list[str] = []  # worth knowing, but an evaluation can still be right
    notes: list[str] = []  # how the data set read its layout (e.g. the good-class folder)
    inventory: dict[str, int] = {}  # "used", "bad" and each reason of the ignored -> files
    inventory_entries: list[InventoryEntry] = Field(default=[], exclude=True)  # every file

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not self.bad_samples and not self.problems


class DataCheckReport(BaseModel):
    """The data check of a set of categories; ``ok`` False means: do not evaluate."""

    categories: list[CategoryCheck]
    outside: dict[str, int] = {}  # files under the data root outside every category, by reason
    outside_entries: list[InventoryEntry] = Field(default=[], exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.categories)

    @property
    def inventory_entries(self) -> list[InventoryEntry]:
        """Every file: each category's, then those outside every category."""
        listed = [e for check in self.categories for e in check.inventory_entries]
        return listed + self.outside_entries

    @property
    def bad_samples(self) -> list[BadSample]:
        return [bad for check in self.categories for bad in check.bad_samples]


@dataclass
class _Inspection:
    bad: list[BadSample] = field(default_factory=list)
    mask_found: bool = False
    mask_missing: bool = False
    mode: str = ""
    oriented: bool = False
    grey_mask: Path | None = None
    lost_pixels: int = 0  # labelled pixels the mask's thresholding drops
    vanishes: bool = False  # the mask loses every defect pixel at the checked resolution


def probe_image(path: Path, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Probe:
    """Size as shown, mode and orientation of a decodable image, reading as little as the
    format allows.

    PNG: every chunk's CRC is checked (catches truncation and corruption) without inflating
    pixels into an image; JPEG: decoded at 1/8 scale (truncation shows only when decoding);
    anything else: decoded in full with the loader's own reader.
    """
    with open_image(path, max_image_pixels) as image:
        found = probe_open(image)
        if image.format == "PNG":
            image.verify()
            return found
        if image.format == "JPEG":
            width, height = image.size
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
            return found
    read_image(path, Decoding(max_image_pixels))
    return found


def vanishes_at(mask: np.ndarray, side: int) -> bool:
    """True when a non-empty [H,W] mask has no pixel left after a nearest-neighbour
    resize to ``side`` x ``side`` (thin scratches, small spots)."""
    small = Image.fromarray(mask.astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
    return bool(mask.any()) and not np.asarray(small).any()


def _inspect(
    sample: Sample, require_masks: bool, max_image_pixels: int | None, resolution: int | None
) -> _Inspection:
    found = _Inspection()

    def bad(problem: Problem, path: Path, detail: str) -> None:
        found.bad.append(BadSample(sample=sample, problem=problem, path=path, detail=detail))

    image_path = sample.image_path
    if not image_path.is_file():
        bad("image_missing", image_path, f"image file does not exist{dangling(image_path)}")
        return found
    try:
        shown = probe_image(image_path, max_image_pixels)
    except EmptyFileError:
        bad("file_empty", image_path, "image file is empty (0 bytes)")
        return found
    except ImageTooLargeError as error:
        bad("image_too_large", image_path, str(error))
        return found
    except Exception as error:
        bad("image_unreadable", image_path, f"image does not decode ({_reason(error)})")
        return found
    found.mode, found.oriented = shown.mode, shown.oriented
    _inspect_mask(sample, shown, found, bad, require_masks, max_image_pixels, resolution)
    return found


def _inspect_mask(
    sample: Sample,
    shown: Probe,
    found: _Inspection,
    bad: Callable[[Problem, Path, str], None],
    require_masks: bool,
    max_image_pixels: int | None,
    resolution: int | None,
) -> None:
    """The sample's mask: present when needed, decodable, the image's size, and consistent
    with the label (a defect has pixels, a normal image has none)."""
    image_path = sample.image_path
    mask_path = sample.mask_path
    if mask_path is None:
        if sample.label == 1 and require_masks:
            found.mask_missing = True
            bad("mask_missing", image_path, "defective image has no mask")
        return
    if not mask_path.is_file():
        found.mask_missing = True
        bad(
            "mask_missing",
            mask_path,
            f"mask of {image_path.name} does not exist{dangling(mask_path)}",
        )
        return
    try:
        decoded = decode_mask(mask_path, max_image_pixels)
    except EmptyFileError:
        bad("file_empty", mask_path, f"mask of {image_path.name} is empty (0 bytes)")
        return
    except Exception as error:
        bad("mask_unreadable", mask_path, f"mask does not decode ({_reason(error)})")
        return
    found.mask_found = True
    found.oriented = found.oriented or decoded.oriented
    if decoded.thresholded:
        found.grey_mask = mask_path
        found.lost_pixels = decoded.lost
    height, width = decoded.mask.shape
    size = shown.size
    if (width, height) != size:
        bad(
            "size_mismatch",
            mask_path,
            f"mask is {width}x{height} but {image_path.name} is {size[0]}x{size[1]}"
            + (" (after its EXIF orientation)" if shown.oriented or decoded.oriented else ""),
        )
    elif sample.label == 1 and not decoded.mask.any():
        bad("mask_empty", mask_path, f"mask of the anomalous image {image_path.name} is empty")
    elif sample.label == 0 and decoded.mask.any():
        pixels = int(decoded.mask.sum())
        bad(
            "mask_on_normal",
            mask_path,
            f"the normal image {image_path.name} has {pixels} defect pixels in this mask",
        )
    elif sample.label == 1 and resolution:
        found.vanishes = vanishes_at(decoded.mask, resolution)


def _reason(error: Exception) -> str:
    if isinstance(error, UndecodableImageError):  # the listing names the file already
        return error.reason
    if isinstance(error, DataError):
        return error.problem
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def shared_masks(samples: Sequence[Sample]) -> dict[Sample, BadSample]:
    """Samples whose mask file is also another sample's: a mask pairs with one image at
    most, so each is a bad sample naming every image involved (a flat ``masks/000.png``
    beside ``scratch/000.png`` and ``stain/000.png``)."""
    by_mask: dict[str, list[Sample]] = {}
    for sample in samples:
        if sample.mask_path is not None:
            key = os.path.normcase(os.path.abspath(sample.mask_path))
            by_mask.setdefault(key, []).append(sample)
    found: dict[Sample, BadSample] = {}
    for group in by_mask.values():
        images = sorted({s.image_path for s in group})
        if len(images) < 2:
            continue
        listed = ", ".join(str(p) for p in images)
        detail = (
            f"mask would pair with {len(images)} images ({listed}): name each mask after its "
            "image's folder (masks/<defect>/<stem>.png) or its own stem"
        )
        for sample in group:
            found[sample] = BadSample(
                sample=sample, problem="mask_ambiguous", path=sample.mask_path, detail=detail
            )
    return found


def _inspect_all(
    samples: Sequence[Sample],
    require_masks: bool,
    workers: int | None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    resolution: int | None = None,
) -> list[_Inspection]:
    """One inspection per sample (in a thread pool), masks shared by two images included."""
    workers = workers or min(32, 4 * (os.cpu_count() or 1))

    def one(sample: Sample) -> _Inspection:
        return _inspect(sample, require_masks, max_image_pixels, resolution)

    if len(samples) < 2 or workers == 1:
        found = [one(s) for s in samples]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(one, samples))
    shared = shared_masks(samples)
    for sample, inspection in zip(samples, found, strict=True):
        if sample in shared:
            inspection.bad.append(shared[sample])
    return found


def find_bad_samples(
    samples: Sequence[Sample],
    require_masks: bool = False,
    workers: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[BadSample]:
    """Every problem of ``samples``: missing, empty, undecodable or too large files, missing,
    mis-sized or empty masks of anomalous images, masks with defects on normal images, and
    masks that would pair with several images.

    A mask path that names no file is always a problem (benchmark readers name the mask a
    defective image should have). ``require_masks`` also flags defective samples with no
    mask path at all: pass the data set's ``requires_masks``; False suits data sets whose
    masks are optional (then only image metrics apply).
    """
    found = _inspect_all(samples, require_masks, workers, max_image_pixels)
    return [bad for inspection in found for bad in inspection.bad]


def drop_bad_samples(samples: Iterable[Sample], bad: Iterable[BadSample]) -> list[Sample]:
    """``samples`` without the bad ones (for ``--skip-bad-samples``), in their order."""
    excluded = {b.sample for b in bad}
    return [s for s in samples if s not in excluded]


def split_warnings(test: Sequence[Sample]) -> list[str]:
    """Why image and pixel metrics will be n/a, when the test split has one class only."""
    labels = Counter(s.label for s in test)
    if test and not labels[1]:
        return [
            f"the test split has only normal images ({labels[0]}): every metric needs both "
            "classes, so all will be n/a (one class only)"
        ]
    if test and not labels[0]:
        return [
            f"the test split has only anomalous images ({labels[1]}): image metrics need both "
            "classes and will be n/a (one class only)"
        ]
    return []


def _intensities(
    samples: Sequence[Sample],
    found: Sequence[_Inspection],
    intensity_rule: IntensityRule,
    max_image_pixels: int | None,
    warnings: list[str],
) -> tuple[Counter, dict[str, list[float]]]:
    """Images of more than 8 bits per value by mode, and the range they are mapped from."""
    high = Counter(f.mode for f in found if is_high_depth(f.mode))
    ranges: dict[str, list[float]] = {}
    if high:
        paths = [s.image_path for s, f in zip(samples, found, strict=True) if is_high_depth(f.mode)]
        decoding = category_decoding(paths, intensity_rule, max_image_pixels)
        for kind, span in (("integer", decoding.integer_range), ("float", decoding.float_range)):
            if span is not None:
                ranges[kind] = list(span)
        warnings.append(
            f"{sum(high.values())} images have more than 8 bits per value "
            f"({', '.join(f'{m} {n}' for m, n in sorted(high.items()))}): mapped to 0..255 from "
            + (", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in ranges.items()) or "their type")
            + f" (data.intensity_range={intensity_rule!r})"
        )
    return high, ranges


def _file_warnings(
    found: Sequence[_Inspection],
    test: Sequence[Sample],
    resolution: int | None,
    warnings: list[str],
) -> tuple[int, list[Path], int]:
    """Orientation tags, grey-level masks and masks that vanish at ``resolution``."""
    oriented = sum(f.oriented for f in found)
    if oriented:
        warnings.append(
            f"{oriented} images or masks carry an EXIF orientation tag: they are read upright, "
            "as viewers show them"
        )
    grey = [f.grey_mask for f in found if f.grey_mask is not None]
    if grey:
        listed = ", ".join(str(p) for p in grey[:10]) + (" ..." if len(grey) > 10 else "")
        warnings.append(
            f"{len(grey)} masks are in a lossy format (JPEG) or have many grey levels or "
            f"colours (anti-aliasing) and are thresholded at half of their labels' value: "
            f"{listed}"
        )
    losing = [(f.grey_mask, f.lost_pixels) for f in found if f.grey_mask and f.lost_pixels]
    if losing:
        listed = ", ".join(f"{p} ({n} px)" for p, n in losing[:10])
        warnings.append(
            f"{len(losing)} masks lose labelled (non-zero) pixels in thresholding, below half "
            f"of their label's value (anti-aliased edges, or a label much darker than the "
            f"others): {listed}{' ...' if len(losing) > 10 else ''}"
        )
    vanished = sum(f.vanishes for f in found)
    if vanished:
        anomalous = sum(s.label == 1 and s.mask_path is not None for s in test)
        warnings.append(
            f"{vanished} of {anomalous} anomalous images lose their whole mask at {resolution}x"
            f"{resolution} px (nearest-neighbour): their defects would count as normal pixels "
            "(evaluation.resolution: original compares at each mask's own size)"
        )
    return oriented, grey, vanished


def check_category(
    dataset: Dataset,
    category: str,
    require_masks: bool,
    workers: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    intensity_rule: IntensityRule = "category",
    resolution: int | None = None,
) -> CategoryCheck:
    """Counts and problems of one category's train and test splits; ``resolution``: also
    count the masks that vanish when resized to that square side (a method's input)."""
    train = dataset.samples(category, "train")
    test = dataset.samples(category, "test")
    samples = [*train, *test]
    found = _inspect_all(samples, require_masks, workers, max_image_pixels, resolution)
    bad = [b for f in found for b in f.bad]
    problems, warnings = [], []
    undefined = dict(getattr(dataset, "undefined_levels", {}))
    if not test:
        problems.append("the test split is empty")
    if "image" not in undefined:
        warnings += split_warnings(test)
    warnings += [f"{level} metrics n/a: {why}" for level, why in undefined.items()]
    if not train:
        warnings.append("the train split is empty: only zero-shot methods can run")
    if any(s.label for s in train):
        problems.append("the train split holds anomalous images")
    high, ranges = _intensities(samples, found, intensity_rule, max_image_pixels, warnings)
    oriented, grey, vanished = _file_warnings(found, test, resolution, warnings)
    files = dataset_files(dataset, category)
    entries = take_inventory(category, {"train": train, "test": test}, files, told(bad))
    return CategoryCheck(
        notes=list(files.notes),
        inventory=counts(entries),
        inventory_entries=entries,
        lossy_masks={
            str(f.grey_mask): f.lost_pixels for f in found if f.grey_mask and f.lost_pixels
        },
        category=category,
        vanishing_masks=vanished,
        train_images=len(train),
        test_images=dict(sorted(Counter(s.defect_type for s in test).items())),
        masks_found=sum(f.mask_found for f in found),
        masks_missing=sum(f.mask_missing for f in found),
        images_missing=sum(b.problem == "image_missing" for b in bad),
        unreadable=sum(
            b.problem in ("image_unreadable", "mask_unreadable", "image_too_large", "file_empty")
            for b in bad
        ),
        size_mismatches=sum(b.problem == "size_mismatch" for b in bad),
        high_depth_images=dict(sorted(high.items())),
        intensity_range=ranges,
        oriented_images=oriented,
        grey_level_masks=grey,
        bad_samples=bad,
        problems=problems,
        warnings=warnings,
    )


def told(bad: Sequence[BadSample]) -> dict[Sample, str]:
    """Each bad sample's problems in one line (the detail alone where the file at fault is
    the image itself), for the inventory."""
    found: dict[Sample, str] = {}
    for item in bad:
        text = item.detail if item.path == item.sample.image_path else str(item)
        found[item.sample] = "; ".join(filter(None, [found.get(item.sample), text]))
    return found


def dataset_files(dataset: Dataset, category: str) -> DataFiles:
    """What the data set reports about ``category``'s files; nothing for one written
    before the contract had :meth:`~adcore.contracts.dataset.Dataset.data_files`."""
    report = getattr(dataset, "data_files", None)
    files = report(category) if report is not None else None
    return files if isinstance(files, DataFiles) else DataFiles()


def check_dataset(
    dataset: Dataset,
    categories: Sequence[str] | None = None,
    require_masks: bool | None = None,
    workers: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    intensity_rule: IntensityRule = "category",
    resolution: int | None = None,
) -> DataCheckReport:
    """The data check of ``categories`` (all when None).

    ``require_masks`` defaults to the data set's ``requires_masks`` attribute (True if absent).
    """
    if require_masks is None:
        require_masks = bool(getattr(dataset, "requires_masks", True))
    chosen = list(categories) if categories is not None else dataset.categories()
    checks = [
        check_category(
            dataset, c, require_masks, workers, max_image_pixels, intensity_rule, resolution
        )
        for c in chosen
    ]
    report = DataCheckReport(categories=checks)
    root = getattr(dataset, "root", None)
    if categories is None and isinstance(root, Path) and root.is_dir():  # the whole data set
        stray = outside_categories(root, report.inventory_entries)
        report = DataCheckReport(categories=checks, outside=counts(stray), outside_entries=stray)
    return report


def render_report(report: DataCheckReport, console: Console, max_listed: int = 50) -> None:
    """The report as a table per category, then each bad file, problem and warning."""
    from rich.table import Table

    table = Table(
        title="Data check",
        caption="bad files: all of them (images missing / unreadable or empty / mask size "
        "wrong), each named below",
    )
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
            f"{len(check.bad_samples)} ({check.images_missing}/{check.unreadable}/"
            f"{check.size_mismatches})",
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
        for note in check.notes:
            console.print(f"[cyan]note[/] {check.category}: {note}", highlight=False)
        if check.inventory:
            console.print(
                f"[cyan]{check.category}[/] {summary(check.inventory_entries)}", highlight=False
            )
        for problem in check.problems:
            console.print(f"[red]problem[/] {check.category}: {problem}", highlight=False)
        for warning in check.warnings:
            console.print(f"[yellow]warning[/] {check.category}: {warning}", highlight=False)
    if report.outside:
        listed = ", ".join(f"{n} {reason}" for reason, n in report.outside.items())
        console.print(f"[cyan]data root[/] {listed} (ignored)", highlight=False)
    verdict = (
        "[green]Data OK.[/]"
        if report.ok
        else "[red]Data would make an evaluation wrong:[/] fix or remove the files named "
        "above, or evaluate without them with --skip-bad-samples (each one left out is named)."
    )
    console.print(verdict)
