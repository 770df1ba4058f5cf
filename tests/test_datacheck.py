"""The data check names every kind of bad data and counts what each category holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from ad_datasets.plugin import adcore_datasets
from adcore.contracts.dataset import Sample
from adcore.data.datacheck import check_dataset, drop_bad_samples, find_bad_samples, render_report


def save(path: Path, size: tuple[int, int] = (20, 16), mode: str = "RGB", fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, shape, dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path, format=fmt)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_tree(root: Path) -> Path:
    """Category 'part': one bad file of each kind; category 'clean': nothing wrong."""
    for category in ("clean", "part"):
        base = root / category
        for i in range(3):
            save(base / "train" / "good" / f"{i}.png")
        save(base / "test" / "good" / "0.png")
        save(base / "test" / "dent" / "0.png")
        save(base / "ground_truth" / "dent" / "0_mask.png", mode="L")
    base = root / "part"
    truncate(base / "train" / "good" / "1.png")  # does not decode
    (base / "test" / "good" / "1.png").write_text("not an image")  # does not decode
    save(base / "test" / "good" / "2.jpg", fmt="JPEG")
    truncate(base / "test" / "good" / "2.jpg")  # a cut-off JPEG
    save(base / "test" / "dent" / "1.png")  # its mask is missing
    save(base / "test" / "crack" / "0.png")
    save(base / "ground_truth" / "crack" / "0_mask.png", size=(10, 8), mode="L")  # wrong size
    save(base / "test" / "crack" / "1.png")
    save(base / "ground_truth" / "crack" / "1_mask.png", mode="L")
    truncate(base / "ground_truth" / "crack" / "1_mask.png")  # mask does not decode
    return root


def mvtec(root: Path):
    spec = next(s for s in adcore_datasets() if s.name == "mvtec")
    return spec.factory(spec.config(), root)


def test_each_kind_of_bad_data_is_named(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data")
    dataset = mvtec(root)
    samples = dataset.samples("part", "train") + dataset.samples("part", "test")
    found = {(b.problem, b.path.relative_to(root).as_posix()) for b in find_bad_samples(samples)}
    assert found == {
        ("image_unreadable", "part/train/good/1.png"),
        ("image_unreadable", "part/test/good/1.png"),
        ("image_unreadable", "part/test/good/2.jpg"),
        ("mask_missing", "part/ground_truth/dent/1_mask.png"),
        ("size_mismatch", "part/ground_truth/crack/0_mask.png"),
        ("mask_unreadable", "part/ground_truth/crack/1_mask.png"),
    }
    clean = dataset.samples("clean", "train") + dataset.samples("clean", "test")
    assert find_bad_samples(clean) == []
    bad = find_bad_samples(samples, workers=1)
    kept = drop_bad_samples(samples, bad)
    assert len(kept) == len(samples) - 6
    assert [s.image_path.name for s in kept if s.defect_type == "dent"] == ["0.png"]


def test_report_counts(tmp_path: Path) -> None:
    report = check_dataset(mvtec(write_tree(tmp_path / "data")), ["clean", "part"])
    assert not report.ok
    clean, part = report.categories
    assert clean.ok and clean.train_images == 3
    assert clean.test_images == {"dent": 1, "good": 1}
    assert (clean.masks_found, clean.masks_missing, clean.unreadable) == (1, 0, 0)
    assert not part.ok
    assert part.train_images == 3
    assert part.test_images == {"crack": 2, "dent": 2, "good": 3}
    assert part.masks_found == 2  # dent/0 and crack/0 (the wrong-sized one decodes)
    assert part.masks_missing == 1
    assert part.unreadable == 4
    assert part.size_mismatches == 1
    assert len(report.bad_samples) == 6
    assert "mask is 10x8 but 0.png is 20x16" in str(
        next(b for b in part.bad_samples if b.problem == "size_mismatch")
    )
    assert '"ok":false' in report.model_dump_json()

    console = Console(record=True, width=200)
    render_report(report, console)
    text = console.export_text()
    assert "crack 2, dent 2, good 3" in text
    assert "size_mismatch" in text and "part/ground_truth/crack/1_mask.png" in text
    assert "would make an evaluation wrong" in text


def test_missing_files_and_optional_masks(tmp_path: Path) -> None:
    image = save(tmp_path / "a.png")
    samples = [
        Sample(image_path=tmp_path / "gone.png", label=0, category="c"),
        Sample(image_path=image, label=1, category="c", defect_type="scratch"),
    ]
    problems = [b.problem for b in find_bad_samples(samples, require_masks=True)]
    assert problems == ["image_missing", "mask_missing"]
    assert [b.problem for b in find_bad_samples(samples)] == ["image_missing"]


def test_split_problems(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(root / "only_good" / "test" / "good" / "0.png")
    (root / "only_good" / "train").mkdir()
    report = check_dataset(mvtec(root))
    (check,) = report.categories
    assert report.ok  # metrics will be n/a with their reason, not wrong
    assert check.bad_samples == []
    assert any("only normal images (1)" in w and "one class only" in w for w in check.warnings)
    assert any("train split is empty" in w for w in check.warnings)


def test_folder_without_masks_is_ok(tmp_path: Path) -> None:
    root = tmp_path / "line"
    for i in range(5):
        save(root / "normal" / f"{i}.png")
    save(root / "abnormal" / "x.png", fmt="PNG")
    spec = next(s for s in adcore_datasets() if s.name == "folder")
    report = check_dataset(spec.factory(spec.config(), root))
    assert report.ok
    assert report.categories[0].masks_missing == 0
    assert report.categories[0].test_images == {"abnormal": 1, "good": 1}
