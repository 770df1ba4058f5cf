"""Layouts as users bring them: nested folders with repeating names, symbolic links,
spreadsheet-saved VisA CSVs, and thin defects that vanish at a method's input resolution."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from adcore.contracts.dataset import Sample
from adcore.data.datacheck import check_dataset
from adcore.outputs.outputkeys import output_keys, relative_keys
from adtest import eval_args, fast_flags, run_ad
from test_datasets_visa import COUNTS, write_visa

SIZE = 48


def part(path: Path, rng: np.random.Generator, defect: bool = False) -> np.ndarray | None:
    """A textured part (PNG); with ``defect`` a bright square, whose 0/255 mask is returned."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    texture = 100 + 40 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    pixels = np.clip(texture[..., None] + rng.normal(0, 4, (SIZE, SIZE, 3)), 0, 255)
    pixels = pixels.astype(np.uint8)
    mask = None
    if defect:
        top, left = rng.integers(4, SIZE - 16, 2)
        pixels[top : top + 10, left : left + 10] = 250
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[top : top + 10, left : left + 10] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return mask


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def folder_open(root: Path):
    from ad_datasets.configs import FolderConfig
    from ad_datasets.folder import factory

    return factory(FolderConfig(), root)


def mvtec_open(root: Path):
    from ad_datasets.configs import MvtecConfig
    from ad_datasets.mvtec import factory

    return factory(MvtecConfig(), root)


# --- unique output paths --------------------------------------------------------------------


def test_output_keys_are_relative_paths_and_never_clash(tmp_path):
    paths = [
        tmp_path / "abnormal/lineA/000.png",
        tmp_path / "abnormal/lineB/000.png",
        tmp_path / "normal_test/lineA/000.png",
        tmp_path / "normal_test/lineA/001.png",
        tmp_path / "normal_test/lineA/001.jpg",  # same stem, other extension
        tmp_path / "normal_test/lineA/A.png",
        tmp_path / "normal_test/lineA/a.png",  # differs by case only
    ]
    samples = [Sample(image_path=p, label=0, category="c") for p in paths]
    keys = output_keys(samples)
    assert keys == [
        "abnormal/lineA/000",
        "abnormal/lineB/000",
        "normal_test/lineA/000",
        "normal_test/lineA/001.png",
        "normal_test/lineA/001.jpg",
        "normal_test/lineA/A.png",
        "normal_test/lineA/a.png-2",  # would share A.png's file on a case-insensitive disk
    ]
    assert len({k.casefold() for k in keys}) == len(keys)
    assert relative_keys([tmp_path / "x" / "000.png"]) == ["000"]


def test_repeating_stems_in_nested_folders_write_every_map_and_overlay(tmp_path):
    """Two production lines whose files share names: 8 test images give 8 distinct maps and
    8 overlays, each named by its path below the split folder (which line it came from)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "parts"
    for line in ("lineA", "lineB"):
        for i in range(4):
            part(root / "normal" / line / f"{i:03d}.png", rng)
        for i in range(2):
            part(root / "normal_test" / line / f"{i:03d}.png", rng)
            mask = part(root / "abnormal" / line / f"{i:03d}.png", rng, defect=True)
            save_mask(root / "masks" / line / f"{i:03d}.png", mask)
    args = [
        *eval_args(root, tmp_path / "out", "all", "folder"),
        *fast_flags(SIZE),
        "--save-maps",
        "--set",
        "visualization.save_overlay=true",
        "--set",
        "visualization.num_examples=8",
    ]
    result = run_ad(*args)
    assert result.returncode == 0, result.stderr
    category = tmp_path / "out/folder/pixel-gaussian/default/parts"
    maps = sorted(p.relative_to(category / "maps").as_posix() for p in category.rglob("*.tiff"))
    expected = [
        f"{split}/{line}/{i:03d}.tiff"
        for split in ("abnormal", "normal_test")
        for line in ("lineA", "lineB")
        for i in range(2)
    ]
    assert maps == expected
    digests = {hashlib.sha256((category / "maps" / m).read_bytes()).hexdigest() for m in maps}
    assert len(digests) == 8  # eight different maps, none overwritten by another
    overlays = sorted(p.name for p in (category / "overlays").glob("*.png"))
    assert len(overlays) == 8
    for split in ("abnormal", "normal_test"):
        for line in ("lineA", "lineB"):
            named = [o for o in overlays if f"_{split}_{line}_" in o]
            assert len(named) == 2, overlays  # both images of this line, told apart
    rows = list(csv.DictReader((category / "scores.csv").open()))
    assert len({r["path"] for r in rows}) == 8


# --- symbolic links -------------------------------------------------------------------------


def link_trees(tmp_path: Path) -> tuple[Path, Path]:
    """The same parts in the folder and the MVTec layout: one defect type (3 images and its
    masks) a linked folder kept elsewhere, one linked folder whose target moved, one linked
    file whose target moved."""
    rng = np.random.default_rng(1)
    elsewhere = tmp_path / "elsewhere"
    for i in range(3):
        mask = part(elsewhere / "crack" / f"c{i}.png", rng, defect=True)
        save_mask(elsewhere / "crack_masks" / f"c{i}_mask.png", mask)
    folder, mvtec = tmp_path / "folder" / "parts", tmp_path / "mvtec" / "parts"
    for i in range(6):
        part(folder / "normal" / f"n{i}.png", rng)
        part(mvtec / "train/good" / f"n{i}.png", rng)
    for i in range(3):
        part(folder / "normal_test" / f"g{i}.png", rng)
        part(mvtec / "test/good" / f"g{i}.png", rng)
        mask = part(folder / "abnormal/scratch" / f"s{i}.png", rng, defect=True)
        save_mask(folder / "masks/scratch" / f"s{i}_mask.png", mask)
        part(mvtec / "test/scratch" / f"s{i}.png", rng, defect=True)
        save_mask(mvtec / "ground_truth/scratch" / f"s{i}_mask.png", mask)
    pairs = ((folder / "abnormal", folder / "masks"), (mvtec / "test", mvtec / "ground_truth"))
    for tests, masks in pairs:
        os.symlink(elsewhere / "crack", tests / "crack")
        os.symlink(elsewhere / "crack_masks", masks / "crack")
        os.symlink(tmp_path / "moved" / "dent", tests / "dent")  # target moved away
        os.symlink(tmp_path / "moved" / "s9.png", tests / "scratch" / "s9.png")
    return folder.parent, mvtec.parent


def test_linked_folders_are_followed_alike_and_dangling_links_are_bad_samples(tmp_path):
    folder_root, mvtec_root = link_trees(tmp_path)
    reports = [check_dataset(folder_open(folder_root)), check_dataset(mvtec_open(mvtec_root))]
    for report in reports:
        (check,) = report.categories
        assert sum(check.test_images.values()) == 11  # 3 good, 3 scratch, 3 crack, 2 links
        assert check.masks_found == 6 and check.masks_missing == 0
        assert not report.ok
        bad = sorted(b.path.name for b in check.bad_samples)
        assert bad == ["dent", "s9.png"]
        assert all("symbolic link" in b.detail for b in check.bad_samples)
    folder_check, mvtec_check = (r.categories[0] for r in reports)
    assert folder_check.test_images["crack"] == mvtec_check.test_images["crack"] == 3

    shown = run_ad("data", "check", "--dataset", "folder", "--data-root", str(folder_root))
    assert shown.returncode == 1
    assert "dent" in shown.stdout and "symbolic link" in shown.stdout
    skipped = run_ad(*eval_args(folder_root, tmp_path / "out", "all", "folder"),
                     *fast_flags(SIZE), "--skip-bad-samples")  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    metrics = tmp_path / "out/folder/pixel-gaussian/default/parts/metrics.csv"
    row = next(csv.DictReader(metrics.open()))
    assert (row["num_skipped"], row["num_test"], row["num_anomalous"]) == ("2", "9", "6")


# --- VisA CSV saved from a spreadsheet ------------------------------------------------------


def test_a_visa_csv_with_byte_order_mark_and_windows_separators_reads_like_the_original(
    tmp_path,
):
    from ad_datasets.configs import VisaConfig
    from ad_datasets.visa import factory

    root = write_visa(tmp_path / "visa")
    original = factory(VisaConfig(), root)
    expected = {c: (original.samples(c, "train"), original.samples(c, "test")) for c in COUNTS}
    csv_file = root / "split_csv" / "1cls.csv"
    rows = list(csv.reader(csv_file.open(newline="")))
    windows = [row[:3] + [cell.replace("/", "\\") for cell in row[3:]] for row in rows]
    with csv_file.open("w", newline="", encoding="utf-8-sig") as handle:  # "CSV UTF-8"
        csv.writer(handle, lineterminator="\r\n").writerows(windows)
    assert csv_file.read_bytes().startswith(b"\xef\xbb\xbfobject")
    assert b"candle\\Data\\Images" in csv_file.read_bytes()
    reread = factory(VisaConfig(), root)
    assert reread.categories() == original.categories()
    for category, (train, test) in expected.items():
        assert reread.samples(category, "train") == train
        assert reread.samples(category, "test") == test
    check = run_ad("data", "check", "--dataset", "visa", "--data-root", str(root))
    assert check.returncode == 0, check.stdout


# --- thin defects ---------------------------------------------------------------------------


def write_scratches(root: Path) -> dict[str, list[np.ndarray]]:
    """256 px parts with 1-2 px scratches. 'some': two vanish at 128 px, two stay; 'all':
    every scratch 1 px on an even row (nearest-neighbour keeps odd rows)."""
    rng = np.random.default_rng(2)
    side = 256
    layouts = {
        "some": [(40, 1), (100, 1), (151, 1), (200, 2)],  # (row, thickness)
        "all": [(40, 1), (100, 1), (150, 1)],
    }
    masks: dict[str, list[np.ndarray]] = {}
    yy, xx = np.mgrid[0:side, 0:side]
    for category, scratches in layouts.items():
        base = root / category

        def normal() -> np.ndarray:
            texture = 100 + 40 * np.sin(xx / 6.0) * np.cos(yy / 10.0)
            noise = rng.normal(0, 3, (side, side, 3))
            return np.clip(texture[..., None] + noise, 0, 255).astype(np.uint8)

        for split, count in (("train/good", 4), ("test/good", 2)):
            (base / split).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(normal()).save(base / split / f"{i:03d}.png")
        (base / "test/scratch").mkdir(parents=True)
        (base / "ground_truth/scratch").mkdir(parents=True)
        masks[category] = []
        for i, (row, thickness) in enumerate(scratches):
            image, mask = normal(), np.zeros((side, side), np.uint8)
            image[row : row + thickness, 60:200] = 255
            mask[row : row + thickness, 60:200] = 255
            Image.fromarray(image).save(base / "test/scratch" / f"{i:03d}.png")
            Image.fromarray(mask).save(base / "ground_truth/scratch" / f"{i:03d}_mask.png")
            masks[category].append(mask)
    return masks


def test_masks_that_vanish_at_the_input_resolution_are_counted_and_explained(tmp_path):
    """At 128 px the loader's nearest-neighbour resize keeps every second row: the count of
    vanished masks is the hand count of masks with no pixel on a kept row (checked against
    PIL's resize); 'all' vanishing makes pixel metrics n/a with that reason; at the original
    resolution nothing vanishes."""
    masks = write_scratches(tmp_path / "data")
    for category, expected in (("some", 2), ("all", 3)):
        kept = []
        for mask in masks[category]:
            small = np.asarray(Image.fromarray(mask).resize((128, 128), Image.Resampling.NEAREST))
            assert np.array_equal(small, mask[1::2, 1::2])  # which pixels nearest keeps
            kept.append(mask[1::2, 1::2].any())
        assert kept.count(False) == expected

    check = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(tmp_path / "data"),
                   "--resolution", "128")  # fmt: skip
    assert check.returncode == 0, check.stdout
    assert "2 of 4 anomalous images lose their whole mask at 128x128" in check.stdout
    assert "3 of 3 anomalous images lose" in check.stdout

    args = [*eval_args(tmp_path / "data", tmp_path / "out", "all"), *fast_flags(128)]
    result = run_ad(*args)
    assert result.returncode == 0, result.stderr
    assert "2 of 4 anomalous images lost their whole mask" in result.stdout
    run_dir = tmp_path / "out/mvtec/pixel-gaussian/default"
    some = next(csv.DictReader((run_dir / "some/metrics.csv").open()))
    assert some["num_vanished_masks"] == "2"
    assert "evaluation.resolution: original" in some["notes"]
    every = next(csv.DictReader((run_dir / "all/metrics.csv").open()))
    assert every["num_vanished_masks"] == "3" and every["pixel_auroc"] == "nan"
    assert "pixel_auroc" in every["notes"] and "vanished" in every["notes"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["num_vanished_masks"] for c in summary["categories"]] == [3, 2]

    original = run_ad(*eval_args(tmp_path / "data", tmp_path / "out_original", "all"),
                      *fast_flags(128), "--set", "evaluation.resolution=original")  # fmt: skip
    assert original.returncode == 0, original.stderr
    row = next(csv.DictReader(
        (tmp_path / "out_original/mvtec/pixel-gaussian/default/all/metrics.csv").open()
    ))  # fmt: skip
    assert row["num_vanished_masks"] == "0" and row["pixel_auroc"] != "nan"
