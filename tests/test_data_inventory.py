"""Every file accounted for (issue 25): the inventory of a category, and the third round of
files as users bring them, each built from a small generated tree.

Each situation gives the numbers of its clean copy (the example plugin's weight-free
``pixel-gaussian`` scores the planted squares perfectly, so any shortfall comes from how the
files are read) or a refusal naming the file and the fix.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ad_runtime.decoding import binarise, category_decoding, decode_mask, probe, read_image
from ad_runtime.outputkeys import FILE_NAME_BYTES, short_name, unique_keys
from adcore.contracts.dataset import DataFiles, Dataset, Sample, Split
from adcore.data.datacheck import check_dataset
from adcore.data.inventory import counts, take_inventory
from adfixtures import AUTHORS_FOLDERS, WRITERS
from adtest import eval_args, fast_flags, run_ad
from test_data_decoding import (
    assert_same_metrics,
    clean_tree,
    copy_tree,
    evaluate,
    mvtec,
)
from test_datasets_visa import write_visa
from test_datasets_zeroshot import open_set


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def inventory_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def every_file(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# --- the inventory --------------------------------------------------------------------------


def plant_strays(category: Path) -> dict[str, str]:
    """Files a user's tree holds besides its data; each with the reason the inventory gives."""
    strays = {
        "test/square/.DS_Store": "hidden or system file",
        "test/square/._000.png": "hidden or system file",
        "train/good/Thumbs.db": "hidden or system file",
        "test/square/notes.txt": "not an image (.txt)",
        "test/square/000.heic": "image format no installed library decodes (.heic)",
        "ground_truth/square/007_mask.png": "mask that pairs with no image",
        "extra/000.png": "image in a folder the layout does not read",
    }
    for name in strays:
        path = category / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
        else:
            path.write_bytes(b"x")
    return strays


def test_data_check_accounts_for_every_file_with_counts_and_the_whole_list(tmp_path):
    root = clean_tree(tmp_path)
    strays = plant_strays(root / "widget")
    (root / "widget/test/square/003.png").write_bytes(b"")  # 0 bytes: an interrupted copy
    listing = tmp_path / "inventory.csv"
    result = run_ad(
        "data", "check", "--dataset", "mvtec", "--data-root", str(root),
        "--inventory", str(listing),
    )  # fmt: skip
    text = flat(result.stdout)
    # the empty file is a bad sample (its mask path is named as missing): evaluation refused
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "image file is empty (0 bytes)" in text and "does not decode" not in text
    assert "inventory: 15 files used, 1 bad, 1 missing, 7 ignored" in text
    assert "3 hidden or system file" in text and "1 mask that pairs with no image" in text
    rows = inventory_rows(listing)
    missing = str(root / "widget/ground_truth/square/003_mask.png")  # the mask 003.png lacks
    assert {r["path"] for r in rows} == every_file(root) | {missing}  # every file, once
    by_path = {r["path"]: r for r in rows}
    for name, reason in strays.items():
        assert by_path[str(root / "widget" / name)]["reason"] == reason
    image = by_path[str(root / "widget/test/square/000.png")]
    assert (image["status"], image["split"], image["role"], image["label"]) == (
        "used", "test", "image", "anomalous",
    )  # fmt: skip
    assert image["defect_type"] == "square"
    assert image["pairs_with"] == str(root / "widget/ground_truth/square/000_mask.png")
    empty = by_path[str(root / "widget/test/square/003.png")]
    assert empty["status"] == "bad" and "image file is empty (0 bytes)" in empty["reason"]
    assert by_path[missing]["status"] == "missing"


def test_eval_writes_the_inventory_to_the_run_folder_and_counts_it(tmp_path):
    root = clean_tree(tmp_path)
    plant_strays(root / "widget")
    out = tmp_path / "out"
    result = run_ad(*eval_args(root, out, k_shot="2"), *fast_flags())
    assert result.returncode == 0, result.stderr
    text = flat(result.stdout + result.stderr)
    assert "inventory: 11 files used, 11 ignored" in text  # 4 train images outside k=2
    assert "4 train image outside the support set" in text and "1 not an image" in text
    clean = evaluate(clean_tree(tmp_path / "c"), tmp_path / "o2", k_shot="2")
    assert not any("inventory:" in n for n in clean.notes)  # the k-shot protocol loses nothing
    listing = out / "mvtec/pixel-gaussian/default/widget/inventory.csv"
    assert {r["path"] for r in inventory_rows(listing)} == every_file(root)


@pytest.mark.parametrize("name", [*WRITERS, "mvtec", "visa", "folder", "synthetic"])
def test_every_built_in_data_set_accounts_for_every_file_of_its_folder(tmp_path, name):
    from ad_datasets.configs import SyntheticConfig
    from ad_datasets.synthetic import factory as synthetic

    if name == "synthetic":
        dataset = synthetic(SyntheticConfig(image_size=64, train_images=2), tmp_path)
        folder = dataset.root
    else:
        if name in WRITERS:
            WRITERS[name](tmp_path)
            folder = tmp_path / AUTHORS_FOLDERS[name]
        elif name == "visa":
            folder = write_visa(tmp_path / "visa")
        else:
            folder = clean_tree(tmp_path)
        (folder / "notes.txt").write_text("a stray file beside the data")
        dataset = open_set(name, folder)
    report = check_dataset(dataset)
    listed = {str(e.path) for e in report.inventory_entries}
    assert every_file(folder) <= listed, sorted(every_file(folder) - listed)[:5]
    if name != "synthetic":  # a stray file beside the category folders is named too
        (stray,) = [e for e in report.inventory_entries if e.path.name == "notes.txt"]
        assert stray.status == "ignored" and "not an image" in stray.reason
    for check in report.categories:
        used = {e.path for e in check.inventory_entries if e.status == "used"}
        named = {s.image_path for split in ("train", "test")
                 for s in dataset.samples(check.category, split)}  # fmt: skip
        assert named <= used and check.inventory["used"] == len(used)


class PlainFolders(Dataset):
    """A third-party data set: ``<root>/<category>/{train,test}/*.png``, all normal but
    ``test/bad``; it may report its folder for the inventory, or nothing."""

    def __init__(self, root: Path, report: bool) -> None:
        self.root, self.report = root, report

    def categories(self) -> list[str]:
        return ["widget"]

    def samples(self, category: str, split: Split) -> list[Sample]:
        folder = self.root / category / split
        return [
            Sample(image_path=p, label=int(p.parent.name == "bad"), category=category)
            for p in sorted(folder.rglob("*.png"))
        ]

    def data_files(self, category: str) -> DataFiles:
        if not self.report:
            return super().data_files(category)
        return DataFiles(
            root=self.root / category,
            ignored={self.root / category / "test/skip.png": "marked as a duplicate"},
            notes=["read as plain folders"],
        )


def test_a_third_party_data_set_reports_through_the_contract_or_not_at_all(tmp_path):
    for name in ("train/000.png", "test/000.png", "test/bad/001.png", "test/skip.png"):
        path = tmp_path / "widget" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), 9, np.uint8)).save(path)
    (tmp_path / "widget/readme.md").write_text("lot 7")
    (silent,) = check_dataset(PlainFolders(tmp_path, report=False), require_masks=False).categories
    assert silent.inventory == {"used": 4}  # the files its samples name (skip.png is one)
    reported = PlainFolders(tmp_path, report=True)
    reported.samples = lambda category, split, _s=reported.samples: [  # type: ignore[method-assign]
        s for s in _s(category, split) if s.image_path.name != "skip.png"
    ]
    (check,) = check_dataset(reported, require_masks=False).categories
    assert check.inventory == {"used": 3, "marked as a duplicate": 1, "not an image": 1}
    assert check.notes == ["read as plain folders"]


def test_the_example_third_party_plugin_reports_its_category_folder(tmp_path):
    for name in ("train/000.png", "good/000.png", "bad/001.png", "masks/001.png"):
        path = tmp_path / "widget" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 255 * name.startswith("masks"), np.uint8)).save(path)
    (tmp_path / "widget/masks/002.png").write_bytes(b"\x89PNG")  # a mask of no image
    dataset = open_set("flat-folders", tmp_path)
    (check,) = check_dataset(dataset).categories
    assert check.inventory == {"used": 4, "mask that pairs with no image": 1}


def test_the_inventory_of_samples_alone_pairs_images_and_masks(tmp_path):
    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    image.write_bytes(b"x"), mask.write_bytes(b"x")
    sample = Sample(image_path=image, label=1, category="c", defect_type="cut", mask_path=mask)
    entries = take_inventory("c", {"test": [sample]}, DataFiles())
    assert [(e.path, e.role, e.pairs_with) for e in entries] == [
        (image, "image", mask),
        (mask, "mask", image),
    ]
    assert counts(entries) == {"used": 2}


# --- silently wrong -------------------------------------------------------------------------


def write_bgr16(pixels: np.ndarray, stem: Path) -> None:
    """A 16-bit colour PNG as OpenCV writes them from 12/16-bit cameras (BGR order)."""
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    cv2.imwrite(f"{stem}.png", (rgb.astype(np.uint16) * 257)[..., ::-1])


def test_16_bit_colour_pngs_are_read_at_full_precision_like_their_8_bit_copy(tmp_path):
    clean = clean_tree(tmp_path)
    deep = copy_tree(clean, tmp_path / "deep", image=write_bgr16)
    path = deep / "widget/test/square/000.png"
    assert probe(path).mode == "RGB;16"  # Pillow alone would say RGB and keep the high byte
    original = np.asarray(Image.open(clean / "widget/test/square/000.png"))
    assert np.array_equal(np.asarray(read_image(path)), original)  # 65535/257 = 255: exact
    (check,) = check_dataset(mvtec(deep)).categories
    assert check.high_depth_images == {"RGB;16": 12} and check.intensity_range == {
        "integer": [0.0, 65535.0]
    }
    assert_same_metrics(evaluate(deep, tmp_path / "o2"), evaluate(clean, tmp_path / "o1"))
    # a 12-bit camera's values (v*16): Pillow alone would keep the high byte, v/16
    cv2.imwrite(str(tmp_path / "twelve.png"), (original.astype(np.uint16) * 16)[..., ::-1])
    decoding = category_decoding([tmp_path / "twelve.png"])
    assert decoding.integer_range == (0.0, 4095.0)
    expected = np.rint(original.astype(np.float64) * 16 * 255 / 4095).astype(np.uint8)
    assert np.array_equal(np.asarray(read_image(tmp_path / "twelve.png", decoding)), expected)


def test_12_bit_colour_keeps_the_run_range_in_ad_predict(tmp_path):
    """The category's range is stored with the fitted model: one good part alone scores as
    it did in the run, although alone its values (at most ~150*20 = 3000) fit 12 bits and
    the category's (its defects at 250*20 = 5000) 14; a brighter input is named."""
    from adcore.run.predict import predict

    clean = clean_tree(tmp_path)
    twelve = copy_tree(
        clean,
        tmp_path / "twelve",
        image=lambda a, p: cv2.imwrite(f"{p}.png", (a.astype(np.uint16) * 20)[..., ::-1]),
    )
    out = tmp_path / "out"
    run = run_ad(*eval_args(twelve, out, k_shot="all"), "--save-model", *fast_flags(64))
    assert run.returncode == 0, run.stderr
    run_dir = out / "mvtec/pixel-gaussian/default"
    assert json.loads((run_dir / "widget/decoding.json").read_text())["integer_range"] == [
        0.0, 16383.0,
    ]  # fmt: skip
    image = twelve / "widget/test/good/000.png"
    with (run_dir / "widget/scores.csv").open(newline="") as handle:
        (expected,) = [float(r["score"]) for r in csv.DictReader(handle)
                       if Path(r["path"]) == image]  # fmt: skip
    alone = predict(run_dir, [image], tmp_path / "pred", device="cpu", overlays=False)
    assert alone.images[0].score == pytest.approx(expected, rel=1e-5)
    assert alone.notes == []
    bright = tmp_path / "bright.png"
    cv2.imwrite(str(bright), np.full((64, 64, 3), 65535, np.uint16))
    beyond = predict(run_dir, [bright], tmp_path / "pred2", device="cpu", overlays=False)
    assert "outside the intensity range" in beyond.notes[0] and "bright.png" in beyond.notes[0]
    (run_dir / "widget/decoding.json").unlink()  # a run saved before the range was stored
    old = predict(run_dir, [image], tmp_path / "pred3", device="cpu", overlays=False)
    assert old.images[0].score != pytest.approx(expected, rel=0.01)  # what the issue saw
    assert "saved no intensity range" in old.notes[0]


def folder_tree(root: Path, masks: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """normal/ (8 images) and abnormal/<defect>/<stem>.png with a bright square each."""
    from test_data_layouts import part

    for i in range(8):
        part(root / "normal" / f"{i:03d}.png", rng)
    for name, mask in masks.items():
        written = part(root / "abnormal" / name, rng, defect=True)
        masks[name] = written if mask is None else mask


def test_a_flat_mask_whose_number_repeats_across_defect_types_is_a_bad_sample(tmp_path):
    from test_data_layouts import folder_open, save_mask

    rng = np.random.default_rng(0)
    masks: dict[str, np.ndarray] = {"scratch/000.png": None, "stain/000.png": None}
    folder_tree(tmp_path / "parts", masks, rng)
    save_mask(tmp_path / "parts/masks/000.png", masks["scratch/000.png"])
    (check,) = check_dataset(folder_open(tmp_path / "parts")).categories
    ambiguous = [b for b in check.bad_samples if b.problem == "mask_ambiguous"]
    assert not check.ok and len(ambiguous) == 2
    for bad in ambiguous:  # each names the mask and both images
        assert bad.path == tmp_path / "parts/masks/000.png"
        assert "scratch/000.png" in bad.detail and "stain/000.png" in bad.detail
    result = run_ad("data", "check", "--dataset", "folder", "--data-root", str(tmp_path / "parts"))
    assert result.returncode == 1 and "mask_ambiguous" in result.stdout


def test_images_in_sub_folders_of_the_mvtec_layout_are_read(tmp_path):
    clean = clean_tree(tmp_path)
    nested = tmp_path / "nested"
    shutil.copytree(clean, nested)
    widget = nested / "widget"
    for folder in ("train/good", "test/good", "test/square", "ground_truth/square"):
        lot = widget / folder / "lot1"
        lot.mkdir()
        for path in sorted((widget / folder).glob("*.png"))[::2]:
            path.rename(lot / path.name)
    (check,) = check_dataset(mvtec(nested)).categories
    assert check.ok and check.train_images == 6 and check.test_images == {"good": 3, "square": 3}
    assert_same_metrics(evaluate(nested, tmp_path / "o2"), evaluate(clean, tmp_path / "o1"))


def test_webp_images_and_masks_are_read_and_undecodable_formats_named(tmp_path):
    clean = clean_tree(tmp_path)
    webp = copy_tree(
        clean,
        tmp_path / "webp",
        image=lambda a, p: Image.fromarray(a).save(f"{p}.webp", lossless=True),
        mask=lambda a, p: Image.fromarray(a).save(f"{p}.webp", lossless=True),
    )
    (webp / "widget/test/square/009.avif.heic").write_bytes(b"ftypheic")
    (check,) = check_dataset(mvtec(webp)).categories
    assert check.ok and check.test_images == {"good": 3, "square": 3} and check.masks_found == 3
    assert check.inventory == {"used": 15, "image format no installed library decodes": 1}
    assert_same_metrics(evaluate(webp, tmp_path / "o2"), evaluate(clean, tmp_path / "o1"))


def test_a_jpeg_mask_is_thresholded_whatever_its_number_of_grey_levels(tmp_path):
    values = np.zeros((32, 32), np.uint8)
    values[8:24, 8:24] = 255
    values[7, 8:24] = 3  # compression ringing just outside the edge: few levels
    mask, levels, thresholded = binarise(values, lossy=True)
    assert levels == 3 and thresholded and np.array_equal(mask, values == 255)
    assert binarise(values)[2] is False  # a lossless mask of 3 levels stays `> 0`
    Image.fromarray(values).save(tmp_path / "m.jpg", quality=95)
    decoded = decode_mask(tmp_path / "m.jpg")
    assert decoded.lossy and decoded.thresholded
    assert np.array_equal(decoded.mask, values == 255)


def test_ad_predict_names_outputs_within_the_filesystem_limit():
    long = "part_" + "x" * 300
    short = short_name(long)
    assert len(short.encode()) == 200 and short.startswith("part_xxx") and short != long
    assert short_name(long) == short and short_name(long + "y") != short  # stable, distinct
    assert short_name("ä" * 150).encode().decode() == short_name("ä" * 150)  # whole chars
    (key,) = unique_keys([f"lineA/{long}"])
    assert key.startswith("lineA/") and max(len(p.encode()) for p in key.split("/")) <= 200
    assert FILE_NAME_BYTES == 255


# --- crashes --------------------------------------------------------------------------------


def test_file_names_near_the_limit_keep_every_output_and_metrics(tmp_path):
    clean = clean_tree(tmp_path)
    longer = tmp_path / "long"
    shutil.copytree(clean, longer)
    stem = "s" * 240  # with _mask.png: 249 bytes, a legal name near the 255-byte limit
    (longer / "widget/test/square/000.png").rename(longer / f"widget/test/square/{stem}.png")
    (longer / "widget/ground_truth/square/000_mask.png").rename(
        longer / f"widget/ground_truth/square/{stem}_mask.png"
    )
    out = tmp_path / "out"
    result = run_ad(
        *eval_args(longer, out, k_shot="all"), *fast_flags(64), "--save-maps",
        "--set", "visualization.save_overlay=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = next(out.glob("mvtec/pixel-gaussian/*"))
    assert (run_dir / "summary_metrics.csv").is_file()
    names = [p.name for p in run_dir.rglob("*")]
    assert any("~" in n for n in names) and max(len(n.encode()) for n in names) <= 255


def test_a_visa_csv_row_with_a_missing_field_names_the_file_and_line(tmp_path):
    root = write_visa(tmp_path / "visa")
    split = root / "split_csv/1cls.csv"
    lines = split.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:3])  # the image and mask fields lost
    split.write_text("\n".join(lines) + "\n")
    result = run_ad("data", "check", "--dataset", "visa", "--data-root", str(root))
    text = flat(result.stderr + result.stdout)
    assert result.returncode == 1 and "Traceback" not in text and "AttributeError" not in text
    assert f"{split}, line 4: the row has no image, mask field" in text


# --- unclear --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["OK", "Good", "normal"])
def test_a_good_folder_named_ok_good_or_normal_is_the_good_class_and_said(tmp_path, name):
    clean = clean_tree(tmp_path)
    renamed = tmp_path / "renamed"
    shutil.copytree(clean, renamed)
    (renamed / "widget/test/good").rename(renamed / f"widget/test/{name}")
    (check,) = check_dataset(mvtec(renamed)).categories
    assert check.test_images == {"good": 3, "square": 3}
    assert check.notes == [f"test/{name}/ is taken as the good class (normal parts; names in "
                           "data.good_names)"]  # fmt: skip
    result = evaluate(renamed, tmp_path / "o2")
    assert_same_metrics(result, evaluate(clean, tmp_path / "o1"))
    assert any(f"test/{name}/ is taken as the good class" in n for n in result.notes)


def test_the_good_class_names_are_configurable(tmp_path):
    clean = clean_tree(tmp_path)
    (clean / "widget/test/good").rename(clean / "widget/test/pass")
    from ad_datasets.configs import MvtecConfig
    from ad_datasets.mvtec import factory

    default = factory(MvtecConfig(), clean)
    assert "pass" in {s.defect_type for s in default.samples("widget", "test")}
    chosen = factory(MvtecConfig(good_names=["PASS"]), clean)
    assert {s.defect_type for s in chosen.samples("widget", "test")} == {"good", "square"}


def colour_mask(path: Path) -> np.ndarray:
    """Two classes, yellow and a dark blue, anti-aliased by a ring of blends at 10..45% of
    their colour (more than 16 colours); returns the true defect pixels."""
    size = 48
    rgb = np.zeros((size, size, 3), np.float64)
    truth = np.zeros((size, size), bool)
    for (top, left), colour in (((4, 4), (255, 230, 0)), ((26, 26), (0, 0, 90))):
        truth[top : top + 12, left : left + 12] = True
        rgb[top - 1 : top + 13, left - 1 : left + 13] = np.outer(
            np.linspace(0.1, 0.45, 14), colour
        )[:, None, :]  # the ring's blends, row by row
        rgb[top : top + 12, left : left + 12] = colour
    Image.fromarray(rgb.round().astype(np.uint8)).save(path)
    return truth


def test_a_colour_coded_mask_keeps_every_labelled_colour_whatever_its_luminance(tmp_path):
    truth = colour_mask(tmp_path / "mask.png")
    decoded = decode_mask(tmp_path / "mask.png")
    assert decoded.thresholded and decoded.levels > 16
    assert np.array_equal(decoded.mask, truth)  # the dark blue class is kept
    luminance = np.asarray(Image.open(tmp_path / "mask.png").convert("L"))
    assert not (luminance > luminance.max() / 2)[truth].all()  # the old rule lost it
    assert decoded.lost == 2 * (14 * 14 - 12 * 12)  # the rings: labelled but below half


def test_a_mask_that_loses_labelled_pixels_is_named_by_the_data_check(tmp_path):
    clean = clean_tree(tmp_path)
    mask = clean / "widget/ground_truth/square/000_mask.png"
    values = np.asarray(Image.open(mask)).astype(np.float64)
    ring = (cv2.dilate((values > 0).astype(np.uint8), np.ones((3, 3))) > 0) & (values == 0)
    values[ring] = np.linspace(10, 100, int(ring.sum()))  # anti-aliased: many grey levels
    Image.fromarray(values.astype(np.uint8)).save(mask)
    (check,) = check_dataset(mvtec(clean)).categories
    assert check.ok and check.lossy_masks == {str(mask): int(ring.sum())}
    assert any("lose labelled (non-zero) pixels" in w and str(mask) in w for w in check.warnings)


def test_a_tilde_in_path_options_is_the_home_folder(tmp_path):
    root = clean_tree(tmp_path)
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    env = {**os.environ, "HOME": str(home)}
    args = eval_args(root, Path("~/x"), k_shot="2")
    result = run_ad(*args, *fast_flags(), env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert (home / "x/mvtec").is_dir() and not (work / "~").exists()


def test_a_tilde_in_the_runtime_path_options_is_the_home_folder(monkeypatch, tmp_path):
    from ad_runtime.cli import parser

    monkeypatch.setenv("HOME", str(tmp_path))
    args = parser().parse_args(["predict", "~/bundle", "~/in", "--output", "~/out"])
    assert (args.bundle, args.images, args.output) == (
        tmp_path / "bundle", [tmp_path / "in"], tmp_path / "out",
    )  # fmt: skip


def test_an_inventory_path_that_is_a_folder_is_named_with_a_file_to_give(tmp_path):
    from adcore.data.inventory import write_inventory
    from adcore.infra.errors import UsageError

    with pytest.raises(UsageError) as error:
        write_inventory(tmp_path, [])
    assert f"--inventory {tmp_path} is a folder" in str(error.value)
    assert str(tmp_path / "inventory.csv") in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
