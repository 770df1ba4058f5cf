"""The mvtec reader against a small tree written in MVTec-AD's distributed layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_datasets.plugin import adcore_datasets
from ad_runtime.preprocessing import Preprocessing
from adcore.data.loading import make_loader
from adcore.infra.errors import ConfigError, DataError

SIZE = 32
# category -> defect -> number of test images; "good" is the normal test split
TREE = {
    "bottle": {"good": 2, "broken_large": 2, "contamination": 1},
    "grid": {"good": 1, "bent": 2},  # grayscale, as MVTec's grid, screw and zipper
    "metal_nut": {"good": 1, "color": 1, "flip": 1, "scratch": 1},
}
TRAIN = {"bottle": 3, "grid": 4, "metal_nut": 2}


def box(i: int) -> tuple[int, int, int, int]:
    """Where defect image i has its defect (top, left, height, width)."""
    return 2 + i, 3 + 2 * i, 5 + i, 4 + i


def write_mvtec(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for category, tests in TREE.items():
        mode = "L" if category == "grid" else "RGB"
        shape = (SIZE, SIZE) if mode == "L" else (SIZE, SIZE, 3)
        base = root / category
        (base / "train" / "good").mkdir(parents=True)
        for i in range(TRAIN[category]):
            pixels = rng.integers(0, 255, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode).save(base / "train" / "good" / f"{i:03d}.png")
        for defect, count in tests.items():
            (base / "test" / defect).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(base / "test" / defect / f"{i:03d}.png")
                if defect == "good":
                    continue
                (base / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                mask = np.zeros((SIZE, SIZE), np.uint8)
                top, left, h, w = box(i)
                mask[top : top + h, left : left + w] = 255
                Image.fromarray(mask).save(base / "ground_truth" / defect / f"{i:03d}_mask.png")
    (root / "readme.txt").write_text("MVTec AD")
    (root / "license").mkdir()
    return root


def spec():
    return next(s for s in adcore_datasets() if s.name == "mvtec")


def open_mvtec(root: Path, **config):
    return spec().factory(spec().config(**config), root)


def test_categories_counts_labels_and_defect_types(tmp_path: Path) -> None:
    dataset = open_mvtec(write_mvtec(tmp_path / "mvtec"))
    assert dataset.categories() == ["bottle", "grid", "metal_nut"]
    for category, tests in TREE.items():
        train = dataset.samples(category, "train")
        assert len(train) == TRAIN[category]
        assert {(s.label, s.defect_type, s.mask_path) for s in train} == {(0, "good", None)}
        test = dataset.samples(category, "test")
        found = {d: sum(s.defect_type == d for s in test) for d in tests}
        assert found == tests
        assert len(test) == sum(tests.values())
        for sample in test:
            assert sample.category == category
            assert sample.label == (sample.defect_type != "good")
            if sample.label:
                expected = (
                    tmp_path
                    / "mvtec"
                    / category
                    / "ground_truth"
                    / sample.defect_type
                    / f"{sample.image_path.stem}_mask.png"
                )
                assert sample.mask_path == expected
            else:
                assert sample.mask_path is None
        assert [s.image_path for s in test] == sorted(s.image_path for s in test)


def test_loader_makes_grayscale_rgb_and_binarises_masks(tmp_path: Path) -> None:
    dataset = open_mvtec(write_mvtec(tmp_path / "mvtec"))
    samples = dataset.samples("grid", "test")
    batch = next(iter(make_loader(samples, Preprocessing(size=SIZE), batch_size=8)))
    assert batch["image"].shape == (3, 3, SIZE, SIZE)
    image = batch["image"].numpy()
    assert (image[:, 0] == image[:, 1]).all() and (image[:, 1] == image[:, 2]).all()
    written = np.asarray(Image.open(samples[1].image_path))
    assert (image[1, 0] == written).all()
    assert batch["label"].tolist() == [1, 1, 0]  # bent/000, bent/001, good/000
    for row, i in ((0, 0), (1, 1)):
        expected = np.zeros((SIZE, SIZE), np.uint8)
        top, left, h, w = box(i)
        expected[top : top + h, left : left + w] = 1
        assert (batch["mask"][row].numpy() == expected).all()
    assert batch["mask"][2].sum() == 0


def test_class_names_and_overrides(tmp_path: Path) -> None:
    root = write_mvtec(tmp_path / "mvtec")
    dataset = open_mvtec(root)
    assert dataset.class_name("metal_nut") == "metal nut"
    assert dataset.class_name("bottle") == "bottle"
    renamed = open_mvtec(root, class_names={"metal_nut": "hex nut"})
    assert renamed.class_name("metal_nut") == "hex nut"
    assert renamed.class_name("grid") == "grid"
    with pytest.raises(ConfigError, match="carpet"):
        open_mvtec(root, class_names={"carpet": "rug"})


def test_missing_mask_keeps_its_expected_path(tmp_path: Path) -> None:
    root = write_mvtec(tmp_path / "mvtec")
    (root / "bottle" / "ground_truth" / "contamination" / "000_mask.png").unlink()
    sample = next(
        s for s in open_mvtec(root).samples("bottle", "test") if s.defect_type == "contamination"
    )
    assert sample.mask_path == root / "bottle" / "ground_truth" / "contamination" / "000_mask.png"
    assert not sample.mask_path.exists()


def test_unknown_category_lists_what_is_there(tmp_path: Path) -> None:
    dataset = open_mvtec(write_mvtec(tmp_path / "mvtec"))
    with pytest.raises(DataError) as error:
        dataset.samples("carpet", "test")
    assert "carpet" in str(error.value)
    assert "bottle, grid, metal_nut" in str(error.value)


def test_missing_root_and_wrong_layout_show_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as missing:
        open_mvtec(tmp_path / "nowhere")
    assert "does not exist" in str(missing.value)
    assert "<category>/ground_truth/<defect>/<image stem>_mask.png" in str(missing.value)

    wrong = tmp_path / "wrong"
    (wrong / "bottle" / "images").mkdir(parents=True)
    (wrong / "notes.txt").write_text("x")
    with pytest.raises(DataError) as layout:
        open_mvtec(wrong)
    assert "bottle/, notes.txt" in str(layout.value)
    assert "<category>/train/good/*.png" in str(layout.value)

    root = write_mvtec(tmp_path / "mvtec")
    with pytest.raises(DataError, match="looks like one category"):
        open_mvtec(root / "bottle")
    with pytest.raises(DataError, match="data root"):
        spec().factory(spec().config(), None)
