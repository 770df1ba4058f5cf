"""The synthetic set: deterministic, in MVTec layout, varied normals, visible masked defects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_datasets import synthetic
from ad_datasets.plugin import adcore_datasets
from adcore.infra.errors import DataError

SMALL = {"image_size": 96, "train_images": 3, "good_test_images": 2, "images_per_defect": 2}
DEFECTS = {
    "fabric": {"hole", "scratch", "stain"},
    "pill": {"hole", "missing", "scratch", "stain"},
    "washer": {"hole", "missing", "scratch", "stain"},
}


def spec():
    return next(s for s in adcore_datasets() if s.name == "synthetic")


def build(root: Path | None, **config):
    return spec().factory(spec().config(**{**SMALL, **config}), root)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_layout_counts_labels_and_names(tmp_path: Path) -> None:
    assert spec().needs_root is False
    dataset = build(tmp_path / "syn")
    assert dataset.categories() == sorted(DEFECTS)
    for category, defects in DEFECTS.items():
        train = dataset.samples(category, "train")
        assert len(train) == 3 and all(s.label == 0 for s in train)
        test = dataset.samples(category, "test")
        assert len(test) == 2 + 2 * len(defects)
        assert {s.defect_type for s in test if s.label} == defects
        for sample in test:
            assert pixels(sample.image_path).shape == (96, 96, 3)
            if sample.label:
                assert pixels(sample.mask_path).shape == (96, 96)
    assert (tmp_path / "syn" / "washer" / "ground_truth" / "hole" / "000_mask.png").is_file()
    assert dataset.class_name("washer") == "metal washer"
    assert dataset.class_name("fabric") == "fabric"


def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    c = build(tmp_path / "c", seed=1)
    for sa, sb, sc in zip(
        a.samples("pill", "test"), b.samples("pill", "test"), c.samples("pill", "test"), strict=True
    ):
        assert (pixels(sa.image_path) == pixels(sb.image_path)).all()
        assert np.abs(pixels(sa.image_path) - pixels(sc.image_path)).mean() > 1


def test_normal_images_vary(tmp_path: Path) -> None:
    dataset = build(tmp_path / "syn")
    for category in DEFECTS:
        first, second = (pixels(s.image_path) for s in dataset.samples(category, "train")[:2])
        assert np.abs(first - second).mean() > 3  # jitter, lighting and noise, not copies


def test_defects_are_masked_visible_and_moderate(tmp_path: Path) -> None:
    import cv2

    dataset = build(tmp_path / "syn", images_per_defect=3)
    for category in DEFECTS:
        for sample in dataset.samples(category, "test"):
            if not sample.label:
                continue
            image = pixels(sample.image_path).mean(axis=2)
            mask = pixels(sample.mask_path)
            assert set(np.unique(mask)) == {0, 255}
            area = (mask > 0).mean()
            assert 0.0003 < area < 0.06, (sample.image_path, area)
            if sample.defect_type == "hole":  # dark against the 5-pixel ring around it
                inside = mask > 0
                ring = cv2.dilate(inside.astype(np.uint8), np.ones((11, 11), np.uint8)) > 0
                ring &= ~inside
                assert image[ring].mean() - image[inside].mean() > 25, sample.image_path


def test_default_cache_is_written_once_atomically(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AD_CACHE_DIR", str(tmp_path / "cache"))
    dataset = build(None)
    root = dataset.root
    assert root.parent == tmp_path / "cache" / "synthetic"
    assert json.loads((root / "synthetic.json").read_text())["image_size"] == 96
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    assert build(None).root == root
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp
    assert build(None, seed=5).root != root
    assert sorted(p.name.startswith(".") for p in root.parent.iterdir()) == [False, False]


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    def broken(config, out: Path) -> None:
        (out / "fabric").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "generate", broken)
    with pytest.raises(RuntimeError):
        build(tmp_path / "syn")
    assert list(tmp_path.iterdir()) == []


def test_refuses_foreign_or_other_settings_folders(tmp_path: Path) -> None:
    build(tmp_path / "syn")
    with pytest.raises(DataError, match="another --data-root"):
        build(tmp_path / "syn", seed=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a synthetic set"):
        build(tmp_path / "mine")


def test_default_set(tmp_path: Path) -> None:
    """The default: 256 px, 16 train and 8 good test images, 3 per defect type."""
    dataset = spec().factory(spec().config(), tmp_path / "default")
    for category, defects in DEFECTS.items():
        assert len(dataset.samples(category, "train")) == 16
        assert len(dataset.samples(category, "test")) == 8 + 3 * len(defects)
    first = dataset.samples("fabric", "train")[0].image_path
    assert Image.open(first).size == (256, 256)


def test_the_readme_names_the_folder_the_set_is_written_to(tmp_path: Path, monkeypatch) -> None:
    """The README's synthetic row gives the generated folder's pattern; the set is there."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `synthetic` |"))
    told = re.search(r"`\$AD_CACHE_DIR/(synthetic/[^`]*)`", row).group(1)
    pattern = re.escape(told).replace(re.escape("<seed>"), "5")
    pattern = pattern.replace(re.escape("<size>"), "96").replace(re.escape("<key>"), "[0-9a-f]+")
    monkeypatch.setenv("AD_CACHE_DIR", str(tmp_path / "cache"))
    root = build(None, seed=5).root
    assert (root / "synthetic.json").is_file()
    relative = root.relative_to(tmp_path / "cache").as_posix() + "/"
    assert re.fullmatch(pattern, relative), (told, relative)
