"""Images found, scored and written: ``scores.csv`` with the columns every prediction path
writes (``ad predict --run``, ``ad predict --model``, ``ad-runtime predict``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ad_runtime.decoding import IMAGE_EXTENSIONS
from ad_runtime.errors import DataError
from ad_runtime.files import atomic_write_text, csv_text
from ad_runtime.outputkeys import unique_keys
from ad_runtime.scorescale import ScoreScale

SCORES_HEADER = (
    "path", "score", "normalised_score", "anomalous", "threshold", "map", "threshold_source",
)  # fmt: skip


@dataclass
class PredictedImage:
    """One image's verdict."""

    path: Path
    key: str  # where its outputs go, relative and unique: "good/000"
    score: float
    anomalous: bool
    normalised: float = float("nan")  # 0..1, 0.5 at the threshold (ad_runtime.scorescale)


@dataclass
class Verdicts:
    """How scores become decisions: the threshold, where it came from, the score scale."""

    category: str
    threshold: float
    source: str
    scale: ScoreScale


def find_images(inputs: list[Path]) -> list[tuple[Path, str]]:
    """Files and folders (searched recursively) -> (image path, unique output key), sorted.

    Raises ``DataError`` for an input that does not exist or when no image is found."""
    found: list[tuple[Path, str]] = []
    for given in inputs:
        if given.is_dir():
            files = sorted(
                p
                for p in given.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )  # hidden files (macOS's ._000.png) are not images
            found += [(p, p.relative_to(given).with_suffix("").as_posix()) for p in files]
        elif given.is_file():
            found.append((given, given.stem))
        else:
            raise DataError(f"Input {given} does not exist.", "Pass image files or folders.")
    if not found:
        listed = ", ".join(str(p) for p in inputs)
        raise DataError(
            f"No images found in {listed}.",
            f"Pass files or folders holding {', '.join(IMAGE_EXTENSIONS)} images.",
        )
    keys = unique_keys([key for _, key in found])
    return [(path, key) for (path, _), key in zip(found, keys, strict=True)]


def write_scores(
    images: list[tuple[Path, str]], scores: np.ndarray, verdicts: Verdicts, out_dir: Path
) -> list[PredictedImage]:
    """``scores.csv`` (:data:`SCORES_HEADER`) of the images [N] and their raw scores [N],
    written atomically into ``out_dir``; returns each image's verdict (``anomalous``:
    score >= threshold)."""
    decision = verdicts.threshold
    normalised = verdicts.scale.normalise(scores)  # [N] in [0, 1]
    results = [
        PredictedImage(path, key, float(score), bool(score >= decision), float(norm))
        for (path, key), score, norm in zip(images, scores, normalised, strict=True)
    ]
    rows = [
        [str(r.path), repr(r.score), repr(r.normalised), int(r.anomalous), repr(decision),
         f"maps/{r.key}.tiff", verdicts.source]
        for r in results
    ]  # fmt: skip
    atomic_write_text(out_dir / "scores.csv", csv_text(SCORES_HEADER, rows))
    return results
