"""The folder reader: normal/ + abnormal/ (+ masks/) folders, or the MVTec layout, any names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_datasets.plugin import adcore_datasets
from ad_runtime.preprocessing import Preprocessing
from adcore.data.loading import make_loader
from adcore.infra.errors import DataError

SIZE = 16


def image(path: Path, value: int = 90, ext_format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((SIZE, SIZE, 3), value, np.uint8)).save(path, format=ext_format)
    return path


def mask(path: Path, rows: slice) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((SIZE, SIZE), np.uint8)
    pixels[rows] = 255
    Image.fromarray(pixels).save(path)
    return path


def write_normal_abnormal(root: Path, masks: bool = True) -> Path:
    for i in range(10):
        image(root / "normal" / f"n{i:02d}.png")
    image(root / "abnormal" / "scratch" / "s1.jpg")
    image(root / "abnormal" / "scratch" / "s2.jpeg")
    image(root / "abnormal" / "dent" / "d1.bmp")
    image(root / "abnormal" / "loose.tif")
    if masks:
        mask(root / "masks" / "s1_mask.png", slice(0, 4))
        mask(root / "masks" / "scratch" / "s2.png", slice(4, 8))
        mask(root / "masks" / "loose.png", slice(8, 16))
        # d1 has no mask
    return root


def spec():
    return next(s for s in adcore_datasets() if s.name == "folder")


def open_folder(root: Path, **config):
    return spec().factory(spec().config(**config), root)


def test_normal_abnormal_split_defects_and_masks(tmp_path: Path) -> None:
    root = write_normal_abnormal(tmp_path / "line_3")
    dataset = open_folder(root)
    assert dataset.categories() == ["line_3"]
    assert dataset.class_name("line_3") == "line 3"
    train = dataset.samples("line_3", "train")
    test = dataset.samples("line_3", "test")
    normals = {root / "normal" / f"n{i:02d}.png" for i in range(10)}
    test_normals = {s.image_path for s in test if s.label == 0}
    assert len(train) == 8 and len(test_normals) == 2  # normal_test_ratio 0.2 of 10
    assert {s.image_path for s in train} | test_normals == normals
    assert not {s.image_path for s in train} & test_normals
    anomalies = {s.image_path.name: s for s in test if s.label == 1}
    assert {n: s.defect_type for n, s in anomalies.items()} == {
        "s1.jpg": "scratch",
        "s2.jpeg": "scratch",
        "d1.bmp": "dent",
        "loose.tif": "abnormal",
    }
    assert anomalies["s1.jpg"].mask_path == root / "masks" / "s1_mask.png"
    assert anomalies["s2.jpeg"].mask_path == root / "masks" / "scratch" / "s2.png"
    assert anomalies["loose.tif"].mask_path == root / "masks" / "loose.png"
    assert not anomalies["d1.bmp"].mask_path.exists()  # named, so the data check reports it

    again = open_folder(root)
    assert again.samples("line_3", "train") == train
    loader = make_loader(
        [anomalies[n] for n in ("s1.jpg", "s2.jpeg", "loose.tif")], Preprocessing(size=SIZE), 3
    )
    masks = next(iter(loader))["mask"].numpy()
    assert masks.sum(axis=(1, 2)).tolist() == [4 * SIZE, 4 * SIZE, 8 * SIZE]
    assert masks[0, :4].all() and masks[1, 4:8].all() and masks[2, 8:].all()


def test_split_options(tmp_path: Path) -> None:
    root = write_normal_abnormal(tmp_path / "cam", masks=False)
    assert len(open_folder(root, normal_test_ratio=0.5).samples("cam", "train")) == 5
    named = open_folder(root, category="bolts")
    assert named.categories() == ["bolts"]
    test = named.samples("bolts", "test")
    assert all(s.mask_path is None for s in test)  # no masks/: image metrics only
    assert named.requires_masks is False

    for i in range(3):
        image(root / "normal_test" / f"t{i}.png")
    dataset = open_folder(root)
    assert len(dataset.samples("cam", "train")) == 10
    assert sum(s.label == 0 for s in dataset.samples("cam", "test")) == 3


def test_categories_in_either_layout_under_one_root(tmp_path: Path) -> None:
    root = tmp_path / "factory"
    write_normal_abnormal(root / "front_panel")
    base = root / "hinge_side"
    for i in range(3):
        image(base / "train" / "good" / f"{i}.png")
    image(base / "test" / "good" / "g.png")
    image(base / "test" / "bent_pin" / "b.jpg")
    image(base / "test" / "crack" / "c.png")
    mask(base / "ground_truth" / "bent_pin" / "b_mask.png", slice(0, 2))
    (root / "notes").mkdir()
    dataset = open_folder(root)
    assert dataset.categories() == ["front_panel", "hinge_side"]
    assert dataset.class_name("hinge_side") == "hinge side"
    assert len(dataset.samples("hinge_side", "train")) == 3
    test = {s.image_path.name: s for s in dataset.samples("hinge_side", "test")}
    assert {n: (s.label, s.defect_type) for n, s in test.items()} == {
        "g.png": (0, "good"),
        "b.jpg": (1, "bent_pin"),
        "c.png": (1, "crack"),
    }
    assert test["b.jpg"].mask_path == base / "ground_truth" / "bent_pin" / "b_mask.png"
    assert not test["c.png"].mask_path.exists()

    single = open_folder(base)  # a root that is itself one category
    assert single.categories() == ["hinge_side"]
    assert all(s.category == "hinge_side" for s in single.samples("hinge_side", "test"))


def test_wrong_layout(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    image(root / "good" / "a.png")
    with pytest.raises(DataError) as error:
        open_folder(root)
    assert "<root>/normal/*.png" in str(error.value)
    assert "photos holds good/" in str(error.value)


def test_a_category_without_usable_test_images_says_why(tmp_path: Path) -> None:
    """Empty test folders, and test images that are all bad, are two different messages;
    a file PIL cannot read is named once, with PIL's reason and without its path again."""
    from adcore.config.sections import DataSection
    from adcore.run.preparation import prepare_category

    root = tmp_path / "line"
    for i in range(3):
        image(root / "train" / "good" / f"{i}.png")
    (root / "test" / "good").mkdir(parents=True)
    data = DataSection(k_shot="all", skip_bad_samples=True)
    with pytest.raises(DataError, match="lists no test images for it") as empty:
        prepare_category(open_folder(root), "line", data, seed=0)
    assert "--category" in str(empty.value)

    broken = root / "test" / "good" / "x.png"
    broken.write_bytes(b"\x00not an image at all" * 10)
    with pytest.raises(DataError) as bad:
        prepare_category(open_folder(root), "line", data, seed=0)
    text = str(bad.value)
    assert "all 1 of its test images are bad samples" in text
    assert "PIL recognises no image format in it" in text
    assert text.count(str(broken)) == 1
