"""A category's samples before any model work: the seeded support set and the test set,
with bad files refused (naming each) or left out and counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ad_runtime.decoding import DEFAULT_MAX_IMAGE_PIXELS, Decoding, category_decoding
from adcore.config.sections import DataSection
from adcore.contracts.dataset import Dataset, Sample
from adcore.data.support import choose_support
from adcore.infra.errors import DataError

if TYPE_CHECKING:
    from adcore.data.datacheck import BadSample
    from adcore.data.inventory import InventoryEntry

OUTSIDE_SUPPORT = "train image outside the support set"


@dataclass
class CategoryData:
    """What one category is evaluated on, after the bad-file check."""

    support: list[Sample]
    test: list[Sample]
    num_skipped: int
    notes: list[str] = field(default_factory=list)  # shown with the category's result
    decoding: Decoding = field(default_factory=Decoding)  # the category's bit-depth range
    inventory: list[InventoryEntry] = field(default_factory=list)  # every file, used or not


def screen_samples(
    samples: list[Sample],
    skip: bool,
    require_masks: bool,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[list[Sample], list[BadSample]]:
    """Check files before any model work: stop naming each bad file, or leave them out.

    Returns the samples kept and the problems of those left out (empty when none were).
    """
    from adcore.data import datacheck

    bad = datacheck.find_bad_samples(samples, require_masks, max_image_pixels=max_image_pixels)
    if not bad:
        return samples, []
    if not skip:
        listed = "; ".join(str(b) for b in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{len(bad)} bad sample(s): {listed}{more}.",
            "Fix or remove those files, or rerun with --skip-bad-samples to leave them out "
            "(each file left out is named).",
        )
    return datacheck.drop_bad_samples(samples, bad), bad


def skipped_note(bad: Sequence[BadSample], shown: int = 10) -> str:
    """One line naming the files ``--skip-bad-samples`` left out and why (no semicolons:
    notes are joined with "; " in metrics.csv)."""
    samples = len({b.sample for b in bad})
    listed = ", ".join(f"{b.path} ({b.detail})" for b in bad[:shown]).replace(";", ",")
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    plural = "" if samples == 1 else "s"
    return f"skipped {samples} bad sample{plural}: {listed}{more}"


def dataset_notes(dataset: Dataset, category: str) -> list[str]:
    """How the data set read the category's layout (e.g. which folder is the good class)."""
    from adcore.data.datacheck import dataset_files

    return [note.replace(";", ",") for note in dataset_files(dataset, category).notes]


def prepare_category(dataset: Dataset, category: str, data: DataSection, seed: int) -> CategoryData:
    """The support set chosen by ``seed`` and the test samples, both screened."""
    train = dataset.samples(category, "train")
    support = choose_support(train, data.k_shot, seed, category)
    screened = len(support)
    all_test = dataset.samples(category, "test")
    # support and test screened together, so a refusal names every bad file at once
    kept, bad = screen_samples(
        [*support, *all_test], data.skip_bad_samples, dataset.requires_masks,
        data.max_image_pixels,
    )  # fmt: skip
    in_support = set(support)
    support = [s for s in kept if s in in_support]
    test = [s for s in kept if s not in in_support]
    bad_support = [b for b in bad if b.sample in in_support]
    bad_test = [b for b in bad if b.sample not in in_support]
    skipped = screened - len(support) + len(all_test) - len(test)
    notes = [skipped_note([*bad_support, *bad_test])] if skipped else []
    notes += dataset_notes(dataset, category)
    if not test:
        found = (
            f"all {len(all_test)} of its test images are bad samples ({skipped_note(bad_test)})"
            if all_test
            else "the data set lists no test images for it (its test folders are empty)"
        )
        raise DataError(
            f"Category {category!r} has no usable test images: {found}.",
            "Add readable test images to it (see the data set's layout in the README), or "
            "leave the category out with --category.",
        )
    paths = [s.image_path for s in (*support, *test)]
    decoding = category_decoding(paths, data.intensity_range, data.max_image_pixels)
    inventory = category_inventory(
        dataset, category, train, all_test, support, [*bad_support, *bad_test], data
    )
    if any(e.status != "used" and not e.reason.startswith(OUTSIDE_SUPPORT) for e in inventory):
        from adcore.data.inventory import summary  # files lost beyond the k-shot protocol

        notes.append(f"{summary(inventory)}, every file in inventory.csv")
    return CategoryData(support, test, skipped, notes, decoding, inventory)


def category_inventory(
    dataset: Dataset,
    category: str,
    train: list[Sample],
    test: list[Sample],
    support: list[Sample],
    skipped: Sequence[BadSample],
    data: DataSection,
) -> list[InventoryEntry]:
    """Every file of the category: used, or left out with why (bad files skipped, train
    images outside the k-shot support set, files no rule of the layout reads)."""
    from adcore.data.datacheck import dataset_files
    from adcore.data.inventory import take_inventory

    chosen = set(support)
    left_out = {s: f"{OUTSIDE_SUPPORT} (k_shot={data.k_shot})" for s in train
                if s not in chosen}  # fmt: skip
    for bad in skipped:
        left_out[bad.sample] = f"bad sample left out by --skip-bad-samples: {bad}"
    splits = {"train": train, "test": test}
    return take_inventory(category, splits, dataset_files(dataset, category), left_out=left_out)
