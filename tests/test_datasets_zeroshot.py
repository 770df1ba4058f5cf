"""BTAD, DTD-Synthetic, DAGM and the medical sets, each on a tiny tree in its release layout.

The readers are checked against what ``adfixtures`` wrote (paths, labels, masks), against the
AF-CLIP authors' category names (github Faustinaqq/AF-CLIP @ bb7edec, ``dataset/*.py``), and
each set runs through ``ad eval --method afclip`` with a tiny random ViT.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ad_afclip.clip_models import register_model_config
from ad_datasets.download import download_btad, download_isic, unpack_zip
from adcore.cli import app
from adcore.data.datacheck import check_dataset
from adcore.infra.errors import DataError
from adcore.plugins.registry import get_registry
from adfixtures import AUTHORS_FOLDERS, WRITERS
from adtest import run_ad

TINY = "ad-test-tiny-vit"
register_model_config(
    TINY,
    {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    },
)
TINY_AFCLIP = [
    "--set", f"model.backbone={TINY}", "--set", "model.pretrained=none",
    "--set", "model.resolution=32", "--set", "model.layers=[2,4]",
    "--set", "evaluation.latency.enabled=false", "--set", "data.num_workers=0",
]  # fmt: skip
PAPER_METRICS = "[image_auroc,image_ap,image_f1_max,pixel_auroc,pixel_ap,pixel_f1_max,pro]"

# the authors' category lists (dataset/*.py), as far as each fixture writes them
AUTHORS_CATEGORIES = {
    "btad": ["01", "02"],
    "dtd": ["Blotchy_099", "Woven_001"],
    "dagm": ["Class1", "Class7"],
    "isic": ["isic"],
    "clinicdb": ["clinic"],
    "colondb": ["colon"],
    "brainmri": ["brainmri"],
    "br35h": ["br35h"],
    "kvasir": ["kvasir"],
}
IMAGE_ONLY = {"brainmri", "br35h"}
PIXEL_ONLY = {"isic", "clinicdb", "colondb", "kvasir"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """One folder holding all nine sets under the authors' folder names, and what was written."""
    root = tmp_path_factory.mktemp("zeroshot")
    return root, {name: write(root) for name, write in WRITERS.items()}


def open_set(name: str, root: Path):
    spec = get_registry().resolve("dataset", name).spec
    return spec.factory(spec.config(), root)


@pytest.mark.parametrize("name", list(WRITERS))
def test_reader_lists_what_was_written(roots, name: str) -> None:
    root, written = roots
    truth = written[name]
    for where in (root, root / AUTHORS_FOLDERS[name]):  # the authors' data dir, or the set itself
        dataset = open_set(name, where)
        assert dataset.categories() == AUTHORS_CATEGORIES[name]
        for category in dataset.categories():
            for split in ("train", "test"):
                listed = sorted(
                    (s.image_path, s.label, s.mask_path) for s in dataset.samples(category, split)
                )
                assert listed == truth[category][split], (category, split)
                assert all(s.category == category for s in dataset.samples(category, split))
            assert dataset.class_name(category) == category.replace("_", " ")
    levels = dict(dataset.undefined_levels)
    assert set(levels) == (
        {"pixel"} if name in IMAGE_ONLY else {"image"} if name in PIXEL_ONLY else set()
    )
    report = check_dataset(dataset)
    assert report.ok, [c.problems for c in report.categories]
    counts = {c.category: c for c in report.categories}
    for category, splits in truth.items():
        assert counts[category].train_images == len(splits["train"])
        assert counts[category].masks_found == sum(m is not None for _, _, m in splits["test"])


def test_class_names_override_and_errors(roots, tmp_path: Path) -> None:
    root, _ = roots
    spec = get_registry().resolve("dataset", "btad").spec
    dataset = spec.factory(spec.config(class_names={"01": "wooden board"}), root)
    assert dataset.class_name("01") == "wooden board"
    with pytest.raises(DataError, match="not a BTAD data set"):
        open_set("btad", tmp_path)
    with pytest.raises(DataError, match="not a ISIC 2016 data set"):
        open_set("isic", tmp_path)


def test_missing_mask_is_named_by_the_check(tmp_path: Path) -> None:
    written = WRITERS["kvasir"](tmp_path)
    _, _, mask = written["kvasir"]["test"][0]
    mask.unlink()
    report = check_dataset(open_set("kvasir", tmp_path))
    assert not report.ok
    assert [b.problem for b in report.bad_samples] == ["mask_missing"]


def test_data_check_and_download_guide_through_the_cli(roots) -> None:
    root, _ = roots
    checked = run_ad("data", "check", "--dataset", "colondb", "--data-root", str(root))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "image metrics n/a" in checked.stdout
    guide = run_ad("data", "download", "kvasir", "--to", str(root / "new"))
    assert guide.returncode == 1
    assert "github.com/DengPingFan/PraNet" in guide.stdout + guide.stderr
    assert "Traceback" not in guide.stderr


def _zip_of(folder: Path, archive: Path) -> tuple[str, str]:
    """``folder`` zipped as its release is (one top-level folder) -> (file URL, MD5)."""
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            bundle.write(path, path.relative_to(folder.parent).as_posix())
    return archive.as_uri(), hashlib.md5(archive.read_bytes()).hexdigest()


def test_isic_download_verifies_and_unpacks(tmp_path: Path) -> None:
    written = WRITERS["isic"](tmp_path / "release")
    release = tmp_path / "release" / "ISIC2016"
    archives = {
        name: _zip_of(release / name, tmp_path / f"{name}.zip")
        for name in ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth")
    }
    target = download_isic(tmp_path / "got", archives=archives)
    dataset = open_set("isic", target)
    listed = [(s.image_path.relative_to(target), s.mask_path.relative_to(target))
              for s in dataset.samples("isic", "test")]  # fmt: skip
    expected = [(i.relative_to(release), m.relative_to(release))
                for i, _, m in written["isic"]["test"]]  # fmt: skip
    assert listed == expected
    assert not list(target.glob("*.zip"))  # archives removed once unpacked

    url, _ = archives["ISBI2016_ISIC_Part1_Test_Data"]
    wrong = {"ISBI2016_ISIC_Part1_Test_Data": (url, "0" * 32)}
    with pytest.raises(DataError, match="has MD5"):
        download_isic(tmp_path / "bad", archives=wrong)
    assert not (tmp_path / "bad" / "ISBI2016_ISIC_Part1_Test_Data.zip").exists()

    escaping = tmp_path / "evil.zip"
    with zipfile.ZipFile(escaping, "w") as bundle:
        bundle.writestr("ISBI2016_ISIC_Part1_Test_Data/../../outside.txt", "x")
    with pytest.raises(DataError, match="outside"):
        unpack_zip(escaping, tmp_path / "unzip")
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("name", list(WRITERS))
def test_afclip_runs_end_to_end(roots, name: str, tmp_path: Path) -> None:
    root, written = roots
    result = CliRunner().invoke(
        app,
        ["eval", "--method", "afclip", "--dataset", name, "--data-root", str(root),
         "--k-shot", "0", "--output", str(tmp_path),
         "--set", f"evaluation.metrics={PAPER_METRICS}", *TINY_AFCLIP],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = tmp_path / name / "afclip" / "default"
    for category, splits in written[name].items():
        row = next(csv.DictReader((run / category / "metrics.csv").open()))
        assert int(row["num_test"]) == len(splits["test"])
        assert int(row["num_anomalous"]) == sum(label for _, label, _ in splits["test"])
        image = [float(row[m]) for m in ("image_auroc", "image_ap", "image_f1_max")]
        pixel = [float(row[m]) for m in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pro")]
        assert all(math.isnan(v) for v in image) == (name in PIXEL_ONLY)
        assert all(math.isnan(v) for v in pixel) == (name in IMAGE_ONLY)
        assert all(0.0 <= v <= 1.0 for v in image + pixel if not math.isnan(v))
    if name in IMAGE_ONLY | PIXEL_ONLY:  # the reason, in the console and in summary.json
        level = "pixel" if name in IMAGE_ONLY else "image"
        assert f"{level} metrics n/a:" in result.output, result.output
        summary = json.loads((run / "summary.json").read_text())
        notes = [
            n for c in summary["categories"] for n in c["notes"] if not n.startswith("inventory:")
        ]  # Br35H's unused pred/ is counted there
        assert notes and all(n.startswith(f"{level} metrics n/a:") for n in notes)


def test_btad_download_verifies_and_unwraps_the_archive(tmp_path: Path) -> None:
    written = WRITERS["btad"](tmp_path / "release")
    top = tmp_path / "release" / "BTech_Dataset_transformed"
    (tmp_path / "release" / "btad").rename(top)  # the archive's own top-level folder
    archive = tmp_path / "btad.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(top.rglob("*")):
            bundle.write(path, path.relative_to(top.parent).as_posix())
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    target = download_btad(tmp_path / "got", url=archive.as_uri(), sha256=sha256)
    dataset = open_set("btad", target)
    for category, splits in written.items():
        listed = sorted(
            (s.image_path.relative_to(target), s.label) for s in dataset.samples(category, "test")
        )
        old = tmp_path / "release" / "btad"
        assert listed == [(i.relative_to(old), label) for i, label, _ in splits["test"]]
    assert not (target / "btad.zip").exists() and not list(target.glob(".unpack-*"))
    with pytest.raises(DataError, match="SHA256"):
        download_btad(tmp_path / "bad", url=archive.as_uri(), sha256="0" * 64)


def test_training_on_an_image_level_only_set_is_refused(roots) -> None:
    """BrainMRI has no masks: AF-CLIP's map losses would take every lesion pixel as normal."""
    root, written = roots
    anomalous = sum(label for _, label, _ in written["brainmri"]["brainmri"]["test"])
    result = CliRunner().invoke(
        app,
        ["train", "--method", "afclip", "--dataset", "brainmri", "--data-root", str(root),
         "--output", "/nonexistent-output", *TINY_AFCLIP],
    )  # fmt: skip
    assert isinstance(result.exception, DataError), result.output  # `ad` prints it, exit 1
    text = str(result.exception)
    assert f"{anomalous} anomalous training image(s)" in text and "have no mask" in text
    assert "Train on a data set with defect masks" in text
    assert not Path("/nonexistent-output").exists()
