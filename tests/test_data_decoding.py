"""Files as users bring them: bit depth, EXIF orientation, lossy masks, label/mask consistency,
huge images and undefined metrics.

Each test builds its own small MVTec-layout tree, in which the example plugin's
``pixel-gaussian`` finds the planted squares perfectly, and compares a transformed copy with
the clean copy's metrics (or a hand count), so any shortfall comes from how files are read.
"""

from __future__ import annotations

import csv
import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ad_runtime.decoding import Decoding, category_decoding, decode_mask, probe, read_image
from adcore.config.files import build_raw_config
from adcore.config.problems import validate_base
from adcore.config.resolve import resolve
from adcore.contracts.dataset import Sample
from adcore.data.datacheck import check_dataset, find_bad_samples
from adcore.infra.errors import DataError
from adcore.outputs.results import CategoryResult
from adcore.plugins.registry import get_registry
from adcore.run.runner import Evaluation, RunOptions
from adtest import eval_args, fast_flags, run_ad, write_mvtec_tree

METRICS = "evaluation.metrics=[image_auroc,pixel_auroc,pixel_f1_max,pro]"
EXIF_ORIENTATION = 0x0112


def evaluate(root: Path, output: Path, *extra: str, k_shot: str = "all") -> CategoryResult:
    """``ad eval`` in-process: pixel-gaussian at the images' own 64 px, one category."""
    raw = build_raw_config(
        None,
        assignments=[
            "model.name=pixel-gaussian",
            "model.resolution=64",
            "data.dataset=mvtec",
            f"data.root={root}",
            f"data.k_shot={k_shot}",
            "data.num_workers=0",
            f"experiment.output_root={output}",
            "evaluation.latency.enabled=false",
            METRICS,
            *extra,
        ],
    )
    config = resolve(validate_base(raw), get_registry())
    run = Evaluation(config, get_registry(), RunOptions(show_progress=False)).run()
    (result,) = run.categories
    return result


def copy_tree(
    source: Path,
    target: Path,
    image: Callable[[np.ndarray, Path], None] | None = None,
    mask: Callable[[np.ndarray, Path], None] | None = None,
) -> Path:
    """A copy of an MVTec tree whose images and/or masks are rewritten by ``image``/``mask``
    (given the pixels and the target path without extension)."""
    for path in sorted(source.rglob("*.png")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        is_mask = "ground_truth" in path.parts
        writer = mask if is_mask else image
        if writer is None:
            shutil.copyfile(path, out)
        else:
            writer(np.asarray(Image.open(path)), out.with_suffix(""))
    return target


def clean_tree(tmp_path: Path, size: int = 64) -> Path:
    return write_mvtec_tree(tmp_path / "clean", categories=("widget",), size=size)


def mvtec(root: Path):
    from ad_datasets.configs import MvtecConfig
    from ad_datasets.mvtec import factory

    return factory(MvtecConfig(), root)


def grey(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).convert("L"))


def assert_same_metrics(result: CategoryResult, reference: CategoryResult) -> None:
    assert result.metrics == pytest.approx(reference.metrics, abs=1e-12)


# --- bit depth ------------------------------------------------------------------------------


def test_16_bit_12_bit_and_float_images_read_like_their_8_bit_copy(tmp_path):
    """16-bit (I;16 PNG, v*257) and float TIFFs (v/255) give the 8-bit copy's metrics exactly
    (the full-scale maps are exact: 65535/257 = 255); 12-bit values (v*16, in 16-bit PNGs)
    are read on the category's 0..4095 scale, not as near-black 0..16."""
    clean = clean_tree(tmp_path)
    grey8 = copy_tree(
        clean, tmp_path / "grey8", image=lambda a, p: Image.fromarray(grey(a)).save(f"{p}.png")
    )
    sixteen = copy_tree(
        clean,
        tmp_path / "sixteen",
        image=lambda a, p: Image.fromarray(grey(a).astype(np.uint16) * 257).save(f"{p}.png"),
    )
    floats = copy_tree(
        clean,
        tmp_path / "float",
        image=lambda a, p: Image.fromarray(grey(a).astype(np.float32) / 255).save(f"{p}.tiff"),
    )
    twelve = copy_tree(
        clean,
        tmp_path / "twelve",
        image=lambda a, p: Image.fromarray(grey(a).astype(np.uint16) * 16).save(f"{p}.png"),
    )
    some = next((sixteen / "widget/test/square").glob("*.png"))
    assert Image.open(some).mode == "I;16"
    assert Image.open(next((floats / "widget/test/square").glob("*.tiff"))).mode == "F"

    reference = evaluate(grey8, tmp_path / "out8")
    assert reference.metrics["image_auroc"] == 1.0  # the planted squares are found perfectly
    assert reference.metrics["pixel_auroc"] > 0.99
    assert_same_metrics(evaluate(sixteen, tmp_path / "out16"), reference)
    assert_same_metrics(evaluate(floats, tmp_path / "outf"), reference)
    result12 = evaluate(twelve, tmp_path / "out12")
    assert result12.metrics["image_auroc"] == 1.0
    assert result12.metrics == pytest.approx(reference.metrics, abs=5e-3)

    # the rule, by hand: the smallest bit depth holding the category's maximum
    paths = sorted((twelve / "widget").rglob("*.png"))
    decoding = category_decoding(paths)
    assert decoding.integer_range == (0.0, 4095.0)
    expected = np.rint(
        grey(np.asarray(Image.open(clean / "widget/test/square/000.png"))).astype(float)
        * (16 * 255 / 4095)
    )
    image = np.asarray(read_image(twelve / "widget/test/square/000.png", decoding))
    assert np.array_equal(image[..., 0], expected.astype(np.uint8))
    # an explicit range overrides the rule
    fixed = category_decoding(paths, (0, 65535))
    assert fixed.integer_range == (0.0, 65535.0)

    (check,) = check_dataset(mvtec(twelve)).categories
    assert check.ok
    assert check.high_depth_images == {"I;16": 12}
    assert check.intensity_range == {"integer": [0.0, 4095.0]}


def test_bit_depth_rule_by_hand(tmp_path):
    """32-bit integers (mode I) and floats outside 0..1 follow the category rule; 'type'
    takes the container's scale; the expected pixels are computed here with numpy."""
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (2, 6, 5))
    paths = []
    for i, v in enumerate(values):
        Image.fromarray((v * 257).astype(np.int32), mode="I").save(tmp_path / f"i{i}.tiff")
        paths.append(tmp_path / f"i{i}.tiff")
    assert Image.open(paths[0]).mode == "I"
    decoding = category_decoding(paths)
    assert decoding.integer_range == (0.0, 65535.0)  # largest value 65535 or less: 16 bits
    for path, v in zip(paths, values, strict=True):
        assert np.array_equal(np.asarray(read_image(path, decoding))[..., 1], v)

    floats = [rng.uniform(-1, 3, (6, 5)).astype(np.float32) for _ in range(2)]
    for i, f in enumerate(floats):
        Image.fromarray(f, mode="F").save(tmp_path / f"f{i}.tiff")
    decoding = category_decoding([tmp_path / "f0.tiff", tmp_path / "f1.tiff"])
    low, high = min(f.min() for f in floats), max(f.max() for f in floats)
    assert decoding.float_range == (pytest.approx(low), pytest.approx(high))
    expected = np.clip(np.rint((floats[1].astype(float) - low) * 255 / (high - low)), 0, 255)
    assert np.array_equal(np.asarray(read_image(tmp_path / "f1.tiff", decoding))[..., 0], expected)

    Image.fromarray(np.full((4, 4), 4095, np.uint16)).save(tmp_path / "d.png")
    assert category_decoding([tmp_path / "d.png"], "type").integer_range is None
    assert np.asarray(read_image(tmp_path / "d.png", Decoding()))[0, 0, 0] == 16  # 4095/257


# --- orientation ----------------------------------------------------------------------------


def stored_for_tag(upright: Image.Image, tag: int) -> Image.Image:
    """What a camera stores for ``tag`` so that viewers show ``upright`` (undoing each
    viewer transform: mirrors, 180 degrees and the transposes undo themselves)."""
    inverse = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    return upright.transpose(inverse[tag])


def with_orientation(tag: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = tag
    return exif.tobytes()


def oriented_writer(fmt: str) -> Callable[[np.ndarray, Path], None]:
    counter = iter(range(10_000))

    def write(pixels: np.ndarray, path: Path) -> None:
        tag = 2 + next(counter) % 7  # every tag 2..8 in turn
        stored = stored_for_tag(Image.fromarray(pixels), tag)
        if fmt == "png":
            stored.save(f"{path}.png", exif=with_orientation(tag))
        else:
            stored.save(f"{path}.jpg", quality=95, exif=with_orientation(tag))
        # as every viewer shows it (PIL's exif_transpose), the picture is the original
        shown = ImageOps.exif_transpose(Image.open(f"{path}.{fmt.replace('jpeg', 'jpg')}"))
        if fmt == "png":
            assert np.array_equal(np.asarray(shown), pixels)

    return write


def test_exif_orientation_is_applied_to_images_as_viewers_do(tmp_path):
    """PNGs stored rotated/mirrored with an orientation tag (all of 2..8), masks drawn on the
    upright view: the clean copy's metrics exactly; the data check counts the tags."""
    clean = clean_tree(tmp_path)
    reference = evaluate(clean, tmp_path / "out")
    oriented = copy_tree(clean, tmp_path / "oriented", image=oriented_writer("png"))
    assert_same_metrics(evaluate(oriented, tmp_path / "out_oriented"), reference)

    (check,) = check_dataset(mvtec(oriented)).categories
    assert check.ok and check.oriented_images == 12  # 6 train + 3 good + 3 anomalous
    assert any("EXIF orientation" in w for w in check.warnings)


def test_exif_orientation_of_non_square_jpegs(tmp_path):
    """Phone JPEGs of 64x48 stored as 48x64 with tags 2..8: no size mismatch, and the
    metrics of the same JPEGs saved upright (JPEG blocks differ: 5e-3)."""
    clean = write_mvtec_tree(tmp_path / "square", categories=("widget",))
    wide = copy_tree(
        clean, tmp_path / "wide", lambda a, p: Image.fromarray(a[8:56]).save(f"{p}.png"),
        lambda a, p: Image.fromarray(a[8:56]).save(f"{p}.png"),
    )  # fmt: skip
    upright = copy_tree(
        wide, tmp_path / "upright", lambda a, p: Image.fromarray(a).save(f"{p}.jpg", quality=95)
    )
    oriented = copy_tree(wide, tmp_path / "oriented", image=oriented_writer("jpg"))
    reference = evaluate(upright, tmp_path / "out")
    result = evaluate(oriented, tmp_path / "out_oriented")
    assert result.metrics["image_auroc"] == reference.metrics["image_auroc"] == 1.0
    assert result.metrics == pytest.approx(reference.metrics, abs=5e-3)


# --- mask values ----------------------------------------------------------------------------


def test_lossy_jpeg_masks_are_thresholded_at_half_their_maximum(tmp_path):
    """Masks saved as JPEG (quality 75): the lossless copy's metrics, and the data check names
    each mask; a `> 0` rule would take the compression ringing for defect."""
    clean = clean_tree(tmp_path)
    lossy = copy_tree(
        clean,
        tmp_path / "lossy",
        mask=lambda a, p: Image.fromarray(a).save(f"{p}.jpg", quality=75),
    )
    jpeg_mask = lossy / "widget/ground_truth/square/000_mask.jpg"
    values = np.asarray(Image.open(jpeg_mask))
    original = np.asarray(Image.open(clean / "widget/ground_truth/square/000_mask.png")) > 0
    assert ((values > 0) != original).sum() > 0  # ringing: `> 0` would be wrong
    decoded = decode_mask(jpeg_mask)
    assert decoded.thresholded and np.array_equal(decoded.mask, original)

    assert_same_metrics(evaluate(lossy, tmp_path / "out_lossy"), evaluate(clean, tmp_path / "out"))

    (check,) = check_dataset(mvtec(lossy)).categories
    assert check.ok and len(check.grey_level_masks) == 3
    assert any(str(jpeg_mask) in w and "half of their labels" in w for w in check.warnings)


def test_label_valued_and_16_bit_masks_are_binarised_above_zero(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3], labels[5:7, 5:7] = 1, 38  # VisA: defect ids
    Image.fromarray(labels).save(tmp_path / "ids.png")
    Image.fromarray(labels.astype(np.uint16) * 1000).save(tmp_path / "deep.png")
    for name in ("ids.png", "deep.png"):
        decoded = decode_mask(tmp_path / name)
        assert not decoded.thresholded and np.array_equal(decoded.mask, labels > 0)


# --- label/mask consistency -----------------------------------------------------------------


def test_an_empty_mask_of_an_anomalous_image_is_a_bad_sample(tmp_path):
    """Refused before model work; skipped and counted, the metrics are those of the tree
    without that image."""
    clean = clean_tree(tmp_path)
    broken = copy_tree(clean, tmp_path / "broken")
    empty = broken / "widget/ground_truth/square/001_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(empty)
    with pytest.raises(DataError, match=r"001_mask\.png.*empty"):
        evaluate(broken, tmp_path / "out")
    skipped = evaluate(broken, tmp_path / "out_skip", "data.skip_bad_samples=true")
    assert skipped.num_skipped == 1
    without = copy_tree(clean, tmp_path / "without")
    (without / "widget/test/square/001.png").unlink()
    (without / "widget/ground_truth/square/001_mask.png").unlink()
    assert_same_metrics(skipped, evaluate(without, tmp_path / "out_without"))


def test_a_normal_image_with_defect_pixels_in_its_mask_is_a_bad_sample(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    Image.fromarray(mask).save(tmp_path / "good_mask.png")
    sample = Sample(
        image_path=tmp_path / "good.png",
        label=0,
        category="c",
        mask_path=tmp_path / "good_mask.png",
    )
    (bad,) = find_bad_samples([sample])
    assert bad.problem == "mask_on_normal" and "4 defect pixels" in bad.detail


# --- huge images ----------------------------------------------------------------------------


def write_png_header_only_big(path: Path, width: int, height: int) -> None:
    """A valid all-black grey PNG of width x height, streamed (a few hundred kB on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + black pixels
    parts = [compressor.compress(row * 256) for _ in range(height // 256)]
    parts.append(compressor.compress(row * (height % 256)) + compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def test_a_huge_image_is_a_bad_sample_with_the_fix_in_data_check_and_eval(tmp_path):
    """16384 x 11000 (180 Mpx, over twice PIL's limit, where PIL itself raises): one bad
    sample naming data.max_image_pixels, no traceback; --skip-bad-samples leaves it out."""
    root = clean_tree(tmp_path)
    huge = root / "widget/test/good/huge.png"
    write_png_header_only_big(huge, 16384, 11000)
    assert probe(huge, max_image_pixels=None).size == (16384, 11000)  # null: no limit
    with pytest.raises(DataError, match="max_image_pixels=180224000"):
        probe(huge)
    check = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(root))
    assert check.returncode == 1
    assert "Traceback" not in check.stdout + check.stderr
    assert "huge.png" in check.stdout and "data.max_image_pixels" in check.stdout

    args = [*eval_args(root, tmp_path / "out", "all"), *fast_flags(64)]
    stopped = run_ad(*args)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "data.max_image_pixels" in stopped.stderr
    skipped = run_ad(*args, "--skip-bad-samples")
    assert skipped.returncode == 0, skipped.stderr
    metrics = tmp_path / "out/mvtec/pixel-gaussian/default/widget/metrics.csv"
    assert next(csv.DictReader(metrics.open()))["num_skipped"] == "1"


def test_the_decode_limit_is_a_setting(tmp_path):
    """64x64 images (4096 px) over a limit of 4000 are bad samples; at 4096 they are read."""
    root = clean_tree(tmp_path)
    with pytest.raises(DataError, match="max_image_pixels"):
        evaluate(root, tmp_path / "out", "data.max_image_pixels=4000")
    assert evaluate(root, tmp_path / "out2", "data.max_image_pixels=4096").num_test == 6
    image = root / "widget/test/good/000.png"
    with pytest.raises(DataError, match="over the decode limit"):
        read_image(image, Decoding(max_image_pixels=4095))


# --- undefined metrics ----------------------------------------------------------------------


def test_a_test_split_of_one_class_gives_n_a_with_its_reason_everywhere(tmp_path):
    """Only good test images: exit 0, every metric n/a and "one class only" in the console,
    metrics.csv, the summaries and summary.json; the data check warns without failing."""
    root = write_mvtec_tree(tmp_path / "data", categories=("widget",))
    shutil.rmtree(root / "widget/test/square")
    shutil.rmtree(root / "widget/ground_truth")
    check = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(root))
    assert check.returncode == 0, check.stdout
    assert "only normal images (3)" in check.stdout

    result = run_ad(*eval_args(root, tmp_path / "out", "all"), *fast_flags(32))
    assert result.returncode == 0, result.stderr
    assert "one class only" in result.stdout + result.stderr
    run_dir = tmp_path / "out/mvtec/pixel-gaussian/default"
    row = next(csv.DictReader((run_dir / "widget/metrics.csv").open()))
    assert "one class only" in row["notes"] and "image_auroc" in row["notes"]
    summary = json.loads((run_dir / "summary.json").read_text())
    (category,) = summary["categories"]
    assert all(v is None for v in category["metrics"].values())
    assert any("one class only" in n for n in category["notes"])
    rows = list(csv.DictReader((run_dir / "summary_metrics.csv").open()))
    assert "one class only" in rows[0]["notes"] and "n/a where" in rows[1]["notes"]
    assert "one class only" in (run_dir / "summary_metrics_pretty.md").read_text()


def test_data_check_reports_each_kind_in_the_console(tmp_path):
    """One tree, one category per kind: `ad data check` names 16-bit images and their range,
    orientation tags, grey-level masks, and an empty mask (exit 1 for the last only)."""
    clean = clean_tree(tmp_path)
    root = tmp_path / "kinds"
    copy_tree(
        clean / "widget",
        root / "deep",
        image=lambda a, p: Image.fromarray(grey(a).astype(np.uint16) * 257).save(f"{p}.png"),
    )
    copy_tree(clean / "widget", root / "turned", image=oriented_writer("png"))
    copy_tree(
        clean / "widget",
        root / "lossy",
        mask=lambda a, p: Image.fromarray(a).save(f"{p}.jpg", quality=75),
    )
    copy_tree(clean / "widget", root / "empty")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(
        root / "empty/ground_truth/square/002_mask.png"
    )
    result = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(root))
    text = " ".join(result.stdout.split())  # rich wraps long lines
    assert result.returncode == 1 and "Traceback" not in text
    assert "12 images have more than 8 bits per value (I;16 12)" in text
    assert "integer 0..65535" in text
    assert "12 images or masks carry an EXIF orientation tag" in text
    assert "3 masks are in a lossy format" in text and "000_mask.jpg" in text
    assert "mask_empty" in text and "002_mask.png" in text
    bad = [line for line in result.stdout.splitlines() if line.startswith("bad ")]
    assert len(bad) == 1  # only the empty mask is an error


def test_an_upload_decodes_as_its_file_16_bit_colour_and_empty_included(tmp_path):
    """``read_image_bytes`` (``ad serve``'s uploads) runs the file rules on the bytes: a
    16-bit colour PNG (OpenCV's layout, BGR) maps by the full 16-bit scale, without a
    category range, as the file does, and no bytes at all is an empty file, not an
    undecodable one."""
    import cv2

    from ad_runtime.decoding import EmptyFileError, read_image, read_image_bytes

    rng = np.random.default_rng(0)
    deep = rng.integers(0, 4096, size=(9, 7, 3), dtype=np.uint16)  # 12-bit camera values
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), deep)
    from_file = np.asarray(read_image(path))
    from_bytes = np.asarray(read_image_bytes(path.read_bytes(), name="deep.png"))
    assert np.array_equal(from_file, from_bytes)
    expected = np.rint(deep[..., ::-1].astype(np.float64) * 255 / 65535)
    assert np.array_equal(from_bytes, expected.astype(np.uint8))
    with pytest.raises(EmptyFileError):
        read_image_bytes(b"", name="empty.png")
