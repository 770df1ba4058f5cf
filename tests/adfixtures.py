"""Tiny copies of the nine further sets of AF-CLIP's zero-shot table, in their release layouts.

Each writer lays out a set as its release does (file names, extensions and folder names
included) under ``root/<the folder name the AF-CLIP authors' readers use>`` and returns what
it wrote: category -> split -> sorted ``(image path, label, mask path or None)``, the truth a
reader is checked against.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

Written = dict[str, dict[str, list[tuple[Path, int, Path | None]]]]
SIZE = 40


def _image(rng: np.random.Generator, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    """A noisy texture and its mask; a bright square where ``defect``."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    texture = 110 + 30 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    image = np.clip(texture[..., None] + rng.normal(0, 5, (SIZE, SIZE, 3)), 0, 255)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if defect:
        top, left = rng.integers(2, SIZE - 14, 2)
        image[top : top + 10, left : left + 10] = 245
        mask[top : top + 10, left : left + 10] = 255
    return image.astype(np.uint8), mask


def _save(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    Image.fromarray(array).save(path, format=fmt)
    return path


def _sorted(written: Written) -> Written:
    return {c: {s: sorted(v) for s, v in splits.items()} for c, splits in written.items()}


def write_btad(root: Path, seed: int = 0) -> Written:
    """``btad/<id>/{train/ok,test/ok,test/ko,ground_truth/ko}``; 01 is bmp, 02 png (as released)."""
    rng, base, written = np.random.default_rng(seed), root / "btad", {}
    for category, ext in (("01", ".bmp"), ("02", ".png")):
        train, test = [], []
        for i in range(2):
            train.append(
                (_save(_image(rng, False)[0], base / category / f"train/ok/{i:04d}{ext}"), 0, None)
            )
            test.append(
                (_save(_image(rng, False)[0], base / category / f"test/ok/{i:04d}{ext}"), 0, None)
            )
        for i in range(2):
            image, mask = _image(rng, True)
            path = _save(image, base / category / f"test/ko/{i:04d}{ext}")
            test.append((path, 1, _save(mask, base / category / f"ground_truth/ko/{i:04d}.png")))
        written[category] = {"train": train, "test": test}
    return _sorted(written)


def write_dtd(root: Path, seed: int = 1) -> Written:
    """``DTD-Synthetic/<Texture_NNN>/`` in the MVTec layout with ``bad`` defects."""
    rng, base, written = np.random.default_rng(seed), root / "DTD-Synthetic", {}
    for category in ("Blotchy_099", "Woven_001"):
        folder = base / category
        train = [
            (_save(_image(rng, False)[0], folder / f"train/good/{i:03d}.png"), 0, None)
            for i in range(2)
        ]
        test = [
            (_save(_image(rng, False)[0], folder / f"test/good/{i:03d}.png"), 0, None)
            for i in range(2)
        ]
        for i in range(3):
            image, mask = _image(rng, True)
            path = _save(image, folder / f"test/bad/{i:03d}.png")
            test.append((path, 1, _save(mask, folder / f"ground_truth/bad/{i:03d}_mask.png")))
        written[category] = {"train": train, "test": test}
    return _sorted(written)


def write_dagm(root: Path, seed: int = 2) -> Written:
    """``DAGM_KaggleUpload/Class<N>/{Train,Test}/NNNN.PNG`` with ``Label/NNNN_label.PNG`` for
    defective ones; defective training images are left out of the train split."""
    rng, base, written = np.random.default_rng(seed), root / "DAGM_KaggleUpload", {}
    for category in ("Class1", "Class7"):
        splits: dict[str, list[tuple[Path, int, Path | None]]] = {"train": [], "test": []}
        for split, phase, defective in (("train", "Train", (1,)), ("test", "Test", (0, 2))):
            (base / category / phase / "Label").mkdir(parents=True, exist_ok=True)
            (base / category / phase / "Label" / "Labels.txt").write_text("0\n")
            for i in range(4):
                image, mask = _image(rng, i in defective)
                path = _save(image, base / category / phase / f"{i:04d}.PNG")
                if i in defective:
                    label = _save(mask, base / category / phase / "Label" / f"{i:04d}_label.PNG")
                    if split == "test":
                        splits[split].append((path, 1, label))
                else:
                    splits[split].append((path, 0, None))
        written[category] = splits
    return _sorted(written)


def _image_level(folder: Path, names: dict[str, list[str]], seed: int) -> Written:
    rng, test = np.random.default_rng(seed), []
    for sub, label in (("no", 0), ("yes", 1)):
        for name in names[sub]:
            test.append((_save(_image(rng, bool(label))[0], folder / sub / name), label, None))
    return {folder.name.lower(): {"train": [], "test": sorted(test)}}


def write_brainmri(root: Path, seed: int = 3) -> Written:
    """``BrainMRI/{no,yes}`` with the release's mixed file names and extensions."""
    names = {"no": ["1 no.jpeg", "N1.JPG", "no 3.jpg"], "yes": ["Y1.jpg", "Y2.JPG", "Y3.png"]}
    return _image_level(root / "BrainMRI", names, seed)


def write_br35h(root: Path, seed: int = 4) -> Written:
    """``Br35H/{no,yes}/*.jpg`` plus the unlabelled ``pred/`` folder the release ships."""
    names = {"no": [f"no{i}.jpg" for i in range(3)], "yes": [f"y{i}.jpg" for i in range(4)]}
    written = _image_level(root / "Br35H", names, seed)
    _save(_image(np.random.default_rng(seed), False)[0], root / "Br35H" / "pred" / "pred0.jpg")
    return written


def _pixel_level(
    folder: Path, category: str, images: str, masks: str, mask_name: Callable[[str], str], seed: int
) -> Written:
    rng, test = np.random.default_rng(seed), []
    for i in range(3):
        image, mask = _image(rng, True)
        stem = f"ISIC_{i:07d}" if "ISIC" in images else f"{i + 1}"
        ext = ".jpg" if "ISIC" in images else ".png"
        path = _save(image, folder / images / f"{stem}{ext}")
        test.append((path, 1, _save(mask, folder / masks / mask_name(stem))))
    return {category: {"train": [], "test": sorted(test)}}


def write_isic(root: Path, seed: int = 5) -> Written:
    """``ISIC2016/ISBI2016_ISIC_Part1_Test_Data/ISIC_NNNNNNN.jpg`` and
    ``ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_NNNNNNN_Segmentation.png``."""
    return _pixel_level(
        root / "ISIC2016",
        "isic",
        "ISBI2016_ISIC_Part1_Test_Data",
        "ISBI2016_ISIC_Part1_Test_GroundTruth",
        lambda stem: f"{stem}_Segmentation.png",
        seed,
    )


def _polyp(folder: str, category: str) -> Callable[[Path, int], Written]:
    def write(root: Path, seed: int = 6) -> Written:
        """PraNet's test copy: ``<set>/images/N.png`` and ``<set>/masks/N.png``."""
        return _pixel_level(root / folder, category, "images", "masks", lambda s: f"{s}.png", seed)

    return write


write_colondb = _polyp("CVC-ColonDB", "colon")
write_clinicdb = _polyp("CVC-ClinicDB", "clinic")
write_kvasir = _polyp("Kvasir", "kvasir")

WRITERS: dict[str, Callable[..., Written]] = {
    "btad": write_btad,
    "dtd": write_dtd,
    "dagm": write_dagm,
    "isic": write_isic,
    "clinicdb": write_clinicdb,
    "colondb": write_colondb,
    "brainmri": write_brainmri,
    "br35h": write_br35h,
    "kvasir": write_kvasir,
}
AUTHORS_FOLDERS = {
    "btad": "btad",
    "dtd": "DTD-Synthetic",
    "dagm": "DAGM_KaggleUpload",
    "isic": "ISIC2016",
    "clinicdb": "CVC-ClinicDB",
    "colondb": "CVC-ColonDB",
    "brainmri": "BrainMRI",
    "br35h": "Br35H",
    "kvasir": "Kvasir",
}
