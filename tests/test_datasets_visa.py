"""The visa reader against VisA's own layout (split_csv/1cls.csv, .JPG) and a converted tree."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_datasets.plugin import adcore_datasets
from ad_runtime.preprocessing import Preprocessing
from adcore.data.loading import make_loader
from adcore.infra.errors import DataError

SIZE = 24
# category -> (train normals, test normals, test anomalies)
COUNTS = {"candle": (3, 2, 2), "chewinggum": (2, 1, 2), "pcb1": (2, 1, 1), "macaroni2": (1, 1, 1)}
DEFECT_IDS = (38, 1, 255)  # VisA masks store defect ids, not 255


def write_visa(root: Path) -> Path:
    """The layout of VisA_20220922.tar, with its 1-class split file."""
    rng = np.random.default_rng(1)
    rows = []
    for category, (n_train, n_good, n_bad) in COUNTS.items():
        images, masks = root / category / "Data" / "Images", root / category / "Data" / "Masks"
        for folder in (images / "Normal", images / "Anomaly", masks / "Anomaly"):
            folder.mkdir(parents=True)
        for i in range(n_train + n_good):
            name = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name, format="JPEG")
            split = "train" if i < n_train else "test"
            rows.append([category, split, "normal", name, ""])
        for i in range(n_bad):
            name = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
            Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(
                root / name, format="JPEG"
            )
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[2 : 6 + i, 3:9] = DEFECT_IDS[i % 3]
            mask[12:14, 12:20] = DEFECT_IDS[(i + 1) % 3]
            mask_name = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
            Image.fromarray(mask).save(root / mask_name)
            rows.append([category, "test", "anomaly", name, mask_name])
    (root / "split_csv").mkdir()
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def spec():
    return next(s for s in adcore_datasets() if s.name == "visa")


def open_visa(root: Path, **config):
    return spec().factory(spec().config(**config), root)


def test_split_csv_counts_labels_and_paths(tmp_path: Path) -> None:
    root = write_visa(tmp_path / "visa")
    dataset = open_visa(root)
    assert dataset.categories() == sorted(COUNTS)
    for category, (n_train, n_good, n_bad) in COUNTS.items():
        train = dataset.samples(category, "train")
        assert len(train) == n_train
        assert all(s.label == 0 and s.mask_path is None for s in train)
        test = dataset.samples(category, "test")
        assert sum(s.label == 0 for s in test) == n_good
        assert sum(s.label == 1 for s in test) == n_bad
        for sample in test:
            assert sample.image_path.suffix == ".JPG"
            assert sample.image_path.is_file()
            assert sample.defect_type == ("anomaly" if sample.label else "good")
            if sample.label:
                assert sample.mask_path == (
                    root / category / "Data" / "Masks" / "Anomaly" / f"{sample.image_path.stem}.png"
                )
            else:
                assert sample.mask_path is None


def test_masks_with_defect_ids_are_binarised(tmp_path: Path) -> None:
    dataset = open_visa(write_visa(tmp_path / "visa"))
    samples = [s for s in dataset.samples("candle", "test") if s.label]
    batch = next(iter(make_loader(samples, Preprocessing(size=SIZE), batch_size=4)))
    assert batch["image"].shape == (2, 3, SIZE, SIZE)
    for row, i in enumerate((0, 1)):
        expected = np.zeros((SIZE, SIZE), np.uint8)
        expected[2 : 6 + i, 3:9] = 1
        expected[12:14, 12:20] = 1
        assert (batch["mask"][row].numpy() == expected).all()


def test_class_names(tmp_path: Path) -> None:
    root = write_visa(tmp_path / "visa")
    dataset = open_visa(root)
    assert dataset.class_name("pcb1") == "printed circuit board"
    assert dataset.class_name("chewinggum") == "chewing gum"
    assert dataset.class_name("macaroni2") == "macaroni"
    assert dataset.class_name("candle") == "candle"
    assert open_visa(root, class_names={"pcb1": "pcb"}).class_name("pcb1") == "pcb"


def test_converted_mvtec_layout_is_detected(tmp_path: Path) -> None:
    root = tmp_path / "visa_pytorch"
    base = root / "pipe_fryum"
    for folder in ("train/good", "test/good", "test/bad", "ground_truth/bad"):
        (base / folder).mkdir(parents=True)
    pixels = np.zeros((SIZE, SIZE, 3), np.uint8)
    Image.fromarray(pixels).save(base / "train/good/000.JPG", format="JPEG")
    Image.fromarray(pixels).save(base / "test/good/001.JPG", format="JPEG")
    Image.fromarray(pixels).save(base / "test/bad/002.JPG", format="JPEG")
    Image.fromarray(np.full((SIZE, SIZE), 255, np.uint8)).save(base / "ground_truth/bad/002.png")
    dataset = open_visa(root)
    assert dataset.categories() == ["pipe_fryum"]
    assert dataset.class_name("pipe_fryum") == "pipe fryum"
    test = dataset.samples("pipe_fryum", "test")
    assert [(s.label, s.defect_type) for s in test] == [(1, "bad"), (0, "good")]  # by path
    assert test[0].mask_path == base / "ground_truth/bad/002.png"


def test_wrong_layout_and_bad_csv(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as error:
        open_visa(tmp_path / "empty")
    assert "split_csv/1cls.csv" in str(error.value) and "is empty" in str(error.value)

    root = tmp_path / "badcsv"
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\ncandle,train,a.JPG\n")
    with pytest.raises(DataError, match="label, mask"):
        open_visa(root)

    dataset = open_visa(write_visa(tmp_path / "visa"))
    with pytest.raises(DataError, match="candle, chewinggum, macaroni2, pcb1"):
        dataset.samples("pcb4", "train")
