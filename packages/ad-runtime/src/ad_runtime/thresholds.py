"""Decision thresholds from good parts: the rules, their confidence, and ``threshold.json``.

At commissioning a line has good parts and rarely labelled defects, so the image threshold
is set for a target false-positive rate on good images only. Each rule decides "anomalous"
when ``score >= threshold``, on the method's raw scale:

- ``fpr F``: the lowest threshold whose false-positive rate is at most ``F`` with 95 %
  confidence: just above the (k+1)-th highest of the ``n`` good scores, ``k`` the most
  false positives for which the bound below stays at ``F`` (when even ``k = 0`` does not,
  too few images: above the highest good score, with a warning);
- ``quantile Q``: ``numpy.quantile`` of the good scores at ``Q`` (linear interpolation);
- ``recall R`` (needs defects): the highest threshold that keeps at least ``ceil(R m)`` of
  the ``m`` defect scores at or above it: the ``ceil(R m)``-th highest defect score;
- ``f1`` (needs defects): the F1-optimal threshold over good and defect scores (the lowest
  of equal F1, as ``adcore.metrics.image_f1_threshold`` chooses it).

Confidence. A threshold set at the (k+1)-th highest of ``n`` good scores lets through a
true false-positive rate distributed as Beta(k+1, n-k) whatever the score distribution
(order statistics of continuous scores), whose upper quantile is the one-sided
Clopper-Pearson bound for ``k`` false positives in ``n``. So: an FPR target ``F`` is
resolvable only from ``ceil(1/F)`` good images (below that, one false positive is already
more than ``F``), and the 95 % bound reaches ``F`` only from ``ceil(ln 0.05 / ln(1-F))``
images (about ``3/F``: 2995 for 0.001) with none above the threshold; more images let
``k`` grow towards ``F n``. Fewer images give the threshold above the highest good score,
with a warning that says how many are needed. ``quantile`` is the plain empirical rule
(no confidence asked for; warned only when ``1 - Q`` is not resolvable). Map pixels of one image are
correlated, so the pixel threshold (the ``fpr`` rule over good images' map pixels) gets
its achieved rate but no bound.

``threshold.json`` records the value, scale, rule, target, achieved rates, the images
(count and digest), the date and the identity of the model whose scores set it; a file
made for another model is refused (:func:`read_calibration`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from ad_runtime.bundle import Bundle, Threshold
from ad_runtime.errors import DataError, UsageError
from ad_runtime.files import atomic_write_text

THRESHOLD_FILE = "threshold.json"
THRESHOLD_FORMAT_VERSION = 1
CONFIDENCE = 0.95
RULES = ("fpr", "quantile", "recall", "f1")
DEFAULT_FPR = 0.001


@dataclass(frozen=True)
class Rule:
    """How to choose the image threshold: ``kind`` in :data:`RULES`, ``target`` in (0, 1)
    (None for ``f1``)."""

    kind: str
    target: float | None

    @property
    def needs_defects(self) -> bool:
        return self.kind in ("recall", "f1")

    @property
    def fpr_target(self) -> float | None:
        """The false-positive rate the rule aims at (``1 - Q`` for a quantile)."""
        if self.kind == "quantile" and self.target is not None:
            return 1.0 - self.target
        return self.target if self.kind == "fpr" else None


def parse_rule(
    fpr: float | None = None,
    quantile: float | None = None,
    recall: float | None = None,
    f1: bool = False,
    have_defects: bool = False,
) -> Rule:
    """The one rule the options give (default ``fpr 0.001``). Raises ``UsageError`` for
    two rules at once, a target outside (0, 1), or recall/F1 without defects."""
    given = [(k, v) for k, v in (("fpr", fpr), ("quantile", quantile), ("recall", recall)) if v]
    given += [("f1", None)] if f1 else []
    if len(given) > 1:
        names = ", ".join(f"--{k}" for k, _ in given)
        raise UsageError(f"{names}: one rule at a time.", "Give one of --fpr, --quantile, "
                         "--recall or --f1.")  # fmt: skip
    rule = Rule(*given[0]) if given else Rule("fpr", DEFAULT_FPR)
    if rule.target is not None and not 0.0 < rule.target < 1.0:
        raise UsageError(
            f"--{rule.kind} {rule.target:g} is outside (0, 1).",
            "Give a rate such as --fpr 0.001, --quantile 0.999 or --recall 0.95.",
        )
    if rule.needs_defects and not have_defects:
        raise UsageError(
            f"The {rule.kind} rule needs labelled defects.",
            "Give a folder of defect images with --defects, or use --fpr or --quantile.",
        )
    return rule


def fpr_upper_bound(false_positives: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on a rate from ``false_positives`` of ``n``:
    the ``p`` with P(X <= k | n, p) = 1 - confidence (bisection on the binomial CDF)."""
    k = int(false_positives)
    if n <= 0 or k >= n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return 1.0 - alpha ** (1.0 / n)  # closed form of the bisection below
    i = np.arange(k + 1)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log((n - i[1:] + 1) / i[1:]))])  # [k+1]

    def cdf(p: float) -> float:
        terms = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
        top = float(terms.max())
        return math.exp(top) * float(np.exp(terms - top).sum())

    low, high = k / n, 1.0
    for _ in range(80):  # the CDF falls in p; 80 halvings reach float64 resolution
        middle = 0.5 * (low + high)
        low, high = (middle, high) if cdf(middle) > alpha else (low, middle)
    return high


def images_to_resolve(fpr: float) -> int:
    """Good images below which an FPR target cannot be met except by zero false positives."""
    return math.ceil(round(1.0 / fpr, 9))


def images_for_confidence(fpr: float, confidence: float = CONFIDENCE) -> int:
    """Good images for which none above the threshold bounds the FPR at ``fpr`` with
    ``confidence``: ``(1 - fpr)^n <= 1 - confidence`` (about ``3/fpr`` at 95 %)."""
    return math.ceil(math.log(1.0 - confidence) / math.log1p(-fpr))


class Achieved(BaseModel):
    """What the threshold does on the calibration images."""

    false_positive_rate: float
    false_positives: int
    normal: int  # good images (or good map pixels)
    fpr_upper: float | None = None  # the CONFIDENCE one-sided bound (images only)
    confidence: float | None = None
    recall: float | None = None  # on the defects, when there were any
    defects: int | None = None


class LevelThreshold(BaseModel):
    """One threshold (image or pixel) with how it was chosen."""

    value: float
    scale: str = "raw"  # the method's own score; ad_runtime.scorescale normalises it
    rule: str
    target: float | None
    achieved: Achieved
    source: str  # the line printed beside decisions


class ImageSet(BaseModel):
    """The images a calibration scored: how many, the folder, one SHA-256 over them."""

    count: int
    sha256: str
    folders: list[str]


class Calibration(BaseModel):
    """``threshold.json``."""

    format_version: int = THRESHOLD_FORMAT_VERSION
    created: str  # ISO 8601, UTC
    model: dict[str, Any]  # the identity of the model whose scores set it
    image: LevelThreshold
    pixel: LevelThreshold | None = None
    normal_images: ImageSet
    defect_images: ImageSet | None = None
    warnings: list[str] = []


def _achieved(good: np.ndarray, value: float, defects: np.ndarray | None) -> Achieved:
    positives = int(np.count_nonzero(good >= value))
    return Achieved(
        false_positive_rate=positives / good.size,
        false_positives=positives,
        normal=int(good.size),
        fpr_upper=fpr_upper_bound(positives, good.size),
        confidence=CONFIDENCE,
        recall=None if defects is None else float(np.mean(defects >= value)),
        defects=None if defects is None else int(defects.size),
    )


def above_top(sorted_descending: np.ndarray, allowed: int) -> float:
    """The lowest threshold with at most ``allowed`` values at or above it: the next float
    above the (allowed+1)-th highest value."""
    return float(np.nextafter(sorted_descending[allowed], np.inf))


def allowed_positives(rate: float, n: int) -> int:
    """floor(rate n), robust to the rounding of the product (0.001 * 1000 is 1, not 0.999...)."""
    return min(math.floor(round(rate * n, 9)), n - 1)


def confident_positives(fpr: float, n: int, confidence: float = CONFIDENCE) -> int:
    """The most false positives ``k`` of ``n`` whose upper bound stays at ``fpr`` (0 when
    none does): the bound grows with ``k``, so a bisection over ``0 .. floor(fpr n)``."""
    low, high = 0, allowed_positives(fpr, n)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fpr_upper_bound(middle, n, confidence) <= fpr else (
            low, middle - 1)  # fmt: skip
    return low


def f1_threshold(good: np.ndarray, defects: np.ndarray) -> float:
    """F1-optimal threshold: max over distinct defect scores ``t`` of 2TP / (TP + FP + m),
    the lowest ``t`` of equal F1."""
    negatives, positives = np.sort(good), np.sort(defects)
    values = np.unique(positives)  # [U] ascending
    true_pos = positives.size - np.searchsorted(positives, values, side="left")
    false_pos = negatives.size - np.searchsorted(negatives, values, side="left")
    f1 = 2.0 * true_pos / (true_pos + false_pos + positives.size)
    return float(values[int(np.argmax(f1))])


def choose_image_threshold(
    good: np.ndarray, rule: Rule, defects: np.ndarray | None = None
) -> LevelThreshold:
    """The image threshold from good scores [n] (and defect scores [m]) by ``rule``.

    Raises ``DataError`` without good scores, or without defect scores for recall/F1."""
    good = np.asarray(good, dtype=np.float64)
    if good.size == 0:
        raise DataError("No good image was scored.", "Pass a folder of good images with --normal.")
    if defects is not None:
        defects = np.asarray(defects, dtype=np.float64)
    if rule.needs_defects and (defects is None or defects.size == 0):
        raise DataError(f"The {rule.kind} rule needs defect scores.", "Pass --defects DIR.")
    n = good.size
    if rule.kind == "fpr":
        assert rule.target is not None
        value = above_top(np.sort(good)[::-1], confident_positives(rule.target, n))
        source = f"calibrated: fpr {rule.target:g} on {n} good images"
    elif rule.kind == "quantile":
        assert rule.target is not None
        value = float(np.quantile(good, rule.target))
        source = f"calibrated: quantile {rule.target:g} of {n} good images"
    elif rule.kind == "recall":
        assert rule.target is not None and defects is not None
        keep = math.ceil(round(rule.target * defects.size, 9))
        value = float(np.sort(defects)[::-1][keep - 1])
        source = f"calibrated: recall {rule.target:g} on {defects.size} defects, {n} good images"
    else:
        assert defects is not None
        value = f1_threshold(good, defects)
        source = f"calibrated: F1-optimal on {n} good images and {defects.size} defects"
    achieved = _achieved(good, value, defects)
    return LevelThreshold(
        value=value, rule=rule.kind, target=rule.target, achieved=achieved, source=source
    )


def sample_size_warnings(level: LevelThreshold, rule: Rule) -> list[str]:
    """What the number of good images allows for the rule's FPR target, when it falls short."""
    target, achieved = rule.fpr_target, level.achieved
    if target is None:
        return []
    n, resolve, confident = (
        achieved.normal,
        images_to_resolve(target),
        images_for_confidence(target),
    )
    if n < resolve:
        if rule.kind == "quantile":
            return [
                f"{n} good images cannot resolve the quantile {rule.target:g} (one image is "
                f"already 1/{n} of them): {resolve} good images resolve it."
            ]
        return [
            f"{n} good images cannot resolve a false-positive rate of {target:g} (one false "
            f"positive is already 1/{n}): the threshold sits above the highest good score. "
            f"{resolve} good images resolve it, {confident} bound it at {target:g} with "
            f"{CONFIDENCE:.0%} confidence."
        ]
    if rule.kind == "fpr" and achieved.fpr_upper is not None and achieved.fpr_upper > target:
        return [
            f"On {n} good images the false-positive rate is at most {achieved.fpr_upper:.3g} "
            f"with {CONFIDENCE:.0%} confidence, above the target {target:g}: {confident} "
            "good images, none above the threshold, bound it at the target."
        ]
    return []


class PixelTail:
    """The highest map pixels of good images, enough for a pixel FPR threshold: memory
    bounded by ``fpr`` times the pixel count, never the whole maps.

    ``total``: pixels that will be added (images x S x S)."""

    def __init__(self, fpr: float, total: int) -> None:
        self.fpr, self.total = fpr, total
        self.keep = allowed_positives(fpr, total) + 1
        self.values = np.empty(0, dtype=np.float32)
        self.seen = 0

    def add(self, maps: np.ndarray) -> None:
        """Maps [B,S,S] of good images."""
        flat = np.concatenate([self.values, np.asarray(maps, dtype=np.float32).reshape(-1)])
        self.seen += int(np.asarray(maps).size)
        if flat.size > self.keep:
            flat = np.partition(flat, flat.size - self.keep)[flat.size - self.keep :]
        self.values = flat

    def threshold(self, images: int) -> LevelThreshold:
        """The pixel threshold: at most floor(fpr x pixels) good pixels at or above it."""
        top = np.sort(self.values.astype(np.float64))[::-1]
        allowed = allowed_positives(self.fpr, self.seen)
        value = above_top(top, min(allowed, top.size - 1))
        positives = int(np.count_nonzero(top >= value))
        achieved = Achieved(
            false_positive_rate=positives / self.seen, false_positives=positives, normal=self.seen
        )
        source = f"calibrated: pixel fpr {self.fpr:g} on {images} good images' maps"
        return LevelThreshold(
            value=value, rule="fpr", target=self.fpr, achieved=achieved, source=source
        )


def images_digest(paths: Sequence[Path], keys: Sequence[str]) -> str:
    """One SHA-256 over the images: each (key, SHA-256 of the file's bytes), sorted by key."""
    digest = hashlib.sha256()
    for key, path in sorted(zip(keys, paths, strict=True)):
        file_digest = hashlib.sha256()
        with Path(path).open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                file_digest.update(block)
        digest.update(f"{key}\0{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_calibration(folder: Path, calibration: Calibration) -> Path:
    """``folder/threshold.json``, written atomically."""
    path = folder / THRESHOLD_FILE
    atomic_write_text(path, calibration.model_dump_json(indent=2) + "\n")
    return path


def read_calibration(folder: Path, identity: dict[str, Any]) -> Calibration | None:
    """``folder/threshold.json`` when there is one (None otherwise).

    Raises ``DataError`` for a damaged or newer file, or one calibrated on another model
    (its recorded identity differs from ``identity``)."""
    path = folder / THRESHOLD_FILE
    if not path.is_file():
        return None
    fix = f"Calibrate this model again with ad calibrate, or remove {path}."
    try:
        data = json.loads(path.read_text())
        version = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > THRESHOLD_FORMAT_VERSION:
            raise DataError(
                f"{path} has format version {version}; this toolkit reads versions up to "
                f"{THRESHOLD_FORMAT_VERSION}.",
                "Upgrade the toolkit, or " + fix[0].lower() + fix[1:],
            )
        calibration = Calibration.model_validate(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as error:
        first = str(error).strip().splitlines()[0]
        raise DataError(f"{path} is not a readable threshold file ({first}).", fix) from None
    if calibration.model != identity:
        raise DataError(
            f"{path} was calibrated on another model (it records {_identity(calibration.model)}, "
            f"this model is {_identity(identity)}): a threshold holds only for the scores of "
            "the model that set it.",
            fix,
        )
    return calibration


def _identity(identity: dict[str, Any]) -> str:
    return ", ".join(f"{k} {str(v)[:16]}" for k, v in sorted(identity.items()))


def bundle_identity(bundle: Bundle) -> dict[str, Any]:
    """A bundle's model identity: its graph (banks and text features are constants in it)."""
    return {"kind": "bundle", "graph_sha256": bundle.graph_sha256}


def as_thresholds(calibration: Calibration) -> dict[str, Threshold]:
    """The calibration as a bundle's ``thresholds`` (image, and pixel when set)."""
    chosen = {"image": calibration.image, "pixel": calibration.pixel}
    return {
        name: Threshold(value=level.value, source=level.source)
        for name, level in chosen.items()
        if level is not None
    }


def calibrated_bundle(bundle: Bundle, folder: Path) -> Bundle:
    """``bundle`` with the thresholds of ``folder/threshold.json`` when there is one (refused
    when made for another model: :func:`read_calibration`)."""
    calibration = read_calibration(folder, bundle_identity(bundle))
    if calibration is None:
        return bundle
    return bundle.model_copy(
        update={"thresholds": {**bundle.thresholds, **as_thresholds(calibration)}}
    )
