"""adcore.metrics against scikit-learn, a straightforward official AUPRO and hand counts."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adcore.contracts.records import EmptyConfig
from adcore.infra.errors import ConfigError, DataError
from adcore.metrics import (
    aupro,
    image_ap,
    image_auroc,
    image_f1_max,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
)
from adcore.metrics.evaldata import EvalData
from adcore.metrics.specs import ProConfig, metric_specs
from tolerances import sum_bound

# Each metric is a sum over at most every pixel of terms in [0, 1], divided by the FPR limit
# for AUPRO (smallest used: 0.05); ours and the reference sum in other orders, in float64.
PIXELS = 12 * 40 * 40  # random_category's largest category
TOL = sum_bound(np.float64, PIXELS, 1 / 0.05)


def reference_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """The MVTec AD evaluation script, spelled out: sort, cumulative sums, trapezoid."""
    fp_change, pro_change, scores = [], [], []
    n_ok = n_regions = 0
    for anomaly_map, mask in zip(maps, masks, strict=True):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        n_regions += count
        ok = labeled == 0
        n_ok += ok.sum()
        pro = np.zeros(mask.shape)
        for k in range(1, count + 1):
            region = labeled == k
            pro[region] = 1.0 / region.sum()
        fp_change.append(ok.ravel().astype(np.float64))
        pro_change.append(pro.ravel())
        scores.append(anomaly_map.ravel().astype(np.float64))
    scores_all = np.concatenate(scores)
    order = np.argsort(scores_all, kind="stable")[::-1]
    scores_sorted = scores_all[order]
    fprs = np.cumsum(np.concatenate(fp_change)[order]) / n_ok
    pros = np.cumsum(np.concatenate(pro_change)[order]) / n_regions
    keep = np.append(np.diff(scores_sorted) != 0, True)
    x = np.concatenate([[0.0], np.clip(fprs[keep], None, 1), [1.0]])
    y = np.concatenate([[0.0], np.clip(pros[keep], None, 1), [1.0]])
    correction = 0.0
    if limit not in x:
        ins = bisect_right(list(x), limit)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (limit - x[ins - 1])
    inside = x <= limit
    x, y = x[inside], y[inside]
    return (float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1]))) + correction) / limit


def reference_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def random_category(
    seed: int, n: int = 12, size: int = 40, heavy: bool = False, ties: bool = False
):
    """Maps with several blob regions per defective image, some good images, optional ties."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for index in range(n):
        mask = np.zeros((size, size), bool)
        if index % 3:  # two of three images are defective
            for _ in range(rng.integers(1, 5)):
                r, c = rng.integers(0, size - 6, 2)
                h, w = rng.integers(1, 7, 2)
                mask[r : r + h, c : c + w] = True
            mask[rng.random((size, size)) < 0.01] = True  # specks: single-pixel regions
        noise = rng.standard_cauchy((size, size)) if heavy else rng.normal(size=(size, size))
        anomaly_map = noise + 1.5 * mask
        if ties:
            anomaly_map = np.round(anomaly_map * 2) / 2
        maps.append(anomaly_map.astype(np.float32))
        masks.append(mask)
    return np.stack(maps), np.stack(masks)


CASES = [
    {"seed": 0},
    {"seed": 1, "heavy": True},
    {"seed": 2, "ties": True},
    {"seed": 3, "heavy": True, "ties": True},
]


@pytest.mark.parametrize("case", CASES)
def test_pixel_metrics_match_sklearn_and_reference(case):
    maps, masks = random_category(**case)
    flat_scores, flat_truth = maps.ravel(), masks.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(
        roc_auc_score(flat_truth, flat_scores), abs=TOL
    )
    assert pixel_ap(maps, masks) == pytest.approx(
        average_precision_score(flat_truth, flat_scores), abs=TOL
    )
    assert pixel_f1_max(maps, masks) == pytest.approx(
        reference_f1_max(flat_truth, flat_scores), abs=TOL
    )
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, limit) == pytest.approx(
            reference_aupro(list(maps), list(masks), limit), abs=TOL
        )


@pytest.mark.parametrize("case", CASES)
def test_image_metrics_match_sklearn(case):
    rng = np.random.default_rng(case["seed"])
    labels = rng.random(300) < 0.4
    scores = (rng.standard_cauchy(300) if case.get("heavy") else rng.normal(size=300)) + labels
    if case.get("ties"):
        scores = np.round(scores)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert image_ap(scores, labels) == pytest.approx(
        average_precision_score(labels, scores), abs=TOL
    )
    assert image_f1_max(scores, labels) == pytest.approx(reference_f1_max(labels, scores), abs=TOL)


def test_maps_of_different_sizes_and_torch_inputs():
    maps, masks = random_category(seed=5, heavy=True)
    ragged_maps = [maps[0], maps[1, :30, :25], maps[2, :20], *maps[3:]]
    ragged_masks = [masks[0], masks[1, :30, :25], masks[2, :20], *masks[3:]]
    flat_scores = np.concatenate([m.ravel() for m in ragged_maps])
    flat_truth = np.concatenate([m.ravel() for m in ragged_masks])
    assert pixel_auroc(ragged_maps, ragged_masks) == pytest.approx(
        roc_auc_score(flat_truth, flat_scores), abs=TOL
    )
    assert pixel_f1_max(ragged_maps, ragged_masks) == pytest.approx(
        reference_f1_max(flat_truth, flat_scores), abs=TOL
    )
    assert aupro(ragged_maps, ragged_masks) == pytest.approx(
        reference_aupro(ragged_maps, ragged_masks), abs=TOL
    )
    tensor_maps, tensor_masks = torch.from_numpy(maps), torch.from_numpy(masks).to(torch.uint8)
    assert pixel_ap(tensor_maps, tensor_masks) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=TOL
    )
    assert aupro(tensor_maps.to(torch.bfloat16), tensor_masks) == pytest.approx(
        reference_aupro(list(tensor_maps.to(torch.bfloat16).float().numpy()), list(masks)),
        abs=TOL,
    )


def test_rank_metrics_are_invariant_under_increasing_transforms():
    maps, masks = random_category(seed=7, heavy=True, ties=True)
    # arcsinh then a cubic: strictly increasing, reshapes gaps wildly; float64 keeps order.
    warped = np.arcsinh(maps.astype(np.float64) * 50.0) ** 3 + 1e3
    for metric in (pixel_auroc, pixel_ap, pixel_f1_max, aupro):
        assert abs(metric(warped, masks) - metric(maps, masks)) <= TOL
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2))
    for metric in (image_auroc, image_ap, image_f1_max):
        assert (
            abs(metric(np.arctan(scores.astype(np.float64) / 100), labels) - metric(scores, labels))
            <= TOL
        )


def test_hand_computed_tiny_cases():
    # normal 0.1, 0.4, 0.4 ; anomalous 0.4, 0.8. Pairs won: 0.4 beats 0.1 and ties two
    # (2 x 1/2), 0.8 beats all three -> U = 5 of 6.
    scores = np.array([0.1, 0.4, 0.4, 0.4, 0.8])
    labels = np.array([0, 0, 0, 1, 1])
    assert image_auroc(scores, labels) == pytest.approx(5 / 6, abs=TOL)
    # Thresholds 0.8: P=1, R=1/2 ; 0.4: P=2/4, R=1. AP = 1/2*1 + 1/2*1/2 = 3/4.
    assert image_ap(scores, labels) == pytest.approx(0.75, abs=TOL)
    # F1 at 0.8: 2*1*0.5/1.5 = 2/3 ; at 0.4: 2*0.5*1/1.5 = 2/3.
    assert image_f1_max(scores, labels) == pytest.approx(2 / 3, abs=TOL)

    # One 1x4 map, pixels [0.9, 0.2, 0.5, 0.1], region = first pixel (one region).
    # Curve: t=0.9 (FPR 0, PRO 1), then FPR 1/3, 2/3, 1 with PRO 1: area to 0.3 is 0.3.
    anomaly_map = np.array([[[0.9, 0.2, 0.5, 0.1]]])
    mask = np.array([[[True, False, False, False]]])
    assert aupro(anomaly_map, mask) == pytest.approx(1.0, abs=TOL)
    # Region scores below two normals: curve (1/3, 0) -> (2/3, 0) -> (2/3, 1) -> (1, 1),
    # so AUPRO(0.3) = 0 and AUPRO(1) = 1/3.
    anomaly_map = np.array([[[0.3, 0.9, 0.5, 0.1]]])
    assert aupro(anomaly_map, mask) == pytest.approx(0.0, abs=TOL)
    assert aupro(anomaly_map, mask, fpr_limit=1.0) == pytest.approx(1 / 3, abs=TOL)
    # Two regions (8-connected diagonal pixels form ONE region; these two are apart).
    # 1x5 map: regions {0}, {4}; normals 1..3 score 0.5. Region 0 scores 1 (PRO 1/2 at FPR 0),
    # region 4 ties the normals: the segment to FPR 1 rises from 1/2 to 1.
    # Area to 0.3: 0.3 * (0.5 + (0.5 + 0.5 * 0.3)) / 2 = 0.1725 -> /0.3 = 0.575.
    anomaly_map = np.array([[[1.0, 0.5, 0.5, 0.5, 0.5]]])
    mask = np.array([[[True, False, False, False, True]]])
    assert aupro(anomaly_map, mask) == pytest.approx(0.575, abs=TOL)


def test_eight_connectivity_joins_diagonal_pixels():
    # Defect pixels (0,0), (0,1) and (1,2): one region of 3 under 8-connectivity, regions of
    # 2 and 1 under 4-connectivity. The diagonal pixel scores 0.1: below the normal 0.5,
    # above the five normals at 0.
    anomaly_map = np.array([[[0.9, 0.9, 0.0], [0.0, 0.0, 0.1], [0.5, 0.0, 0.0]]])
    mask = np.zeros((1, 3, 3), bool)
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 1, 2] = True
    # Curve (FPR, PRO): (0, 2/3) -> (1/6, 2/3) -> (1/6, 1) -> (1, 1).
    # Area to 0.3 = 1/6 * 2/3 + (0.3 - 1/6) * 1 = 11/45; / 0.3 = 22/27 (4-connectivity: 13/18).
    assert aupro(anomaly_map, mask) == pytest.approx(22 / 27, abs=TOL)


def test_undefined_cases_return_nan_and_bad_inputs_raise():
    good_maps = np.random.default_rng(0).random((3, 8, 8))
    no_defect = np.zeros((3, 8, 8), bool)
    for metric in (pixel_auroc, pixel_ap, pixel_f1_max, aupro):
        assert np.isnan(metric(good_maps, no_defect))
    assert np.isnan(image_auroc([0.1, 0.2], [0, 0]))
    assert np.isnan(image_auroc([0.1, 0.2], [1, 1]))
    assert image_ap([0.1, 0.2], [1, 1]) == 1.0
    with pytest.raises(DataError):
        pixel_auroc(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])
    with pytest.raises(DataError):
        aupro(np.full((1, 2, 2), np.nan), np.eye(2, dtype=bool)[None])
    with pytest.raises(DataError):
        pixel_auroc(good_maps, no_defect[:, :4])
    with pytest.raises(DataError):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ConfigError):
        aupro(good_maps, no_defect, fpr_limit=0.0)


def test_metric_specs_evaluate_eval_data():
    maps, masks = random_category(seed=11)
    scores, labels = maps.max(axis=(1, 2)), masks.any(axis=(1, 2)).astype(int)
    data = EvalData(scores=scores, labels=labels, maps=maps, masks=masks)
    specs = {spec.name: spec for spec in metric_specs()}
    assert set(specs) == {
        "image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pro"
    }  # fmt: skip
    assert specs["image_auroc"].factory(EmptyConfig())(data) == pytest.approx(
        roc_auc_score(labels, scores), abs=TOL
    )
    assert specs["pixel_ap"].factory(EmptyConfig())(data) == pytest.approx(
        average_precision_score(masks.ravel(), maps.ravel()), abs=TOL
    )
    pro = specs["pro"].factory(ProConfig(fpr_limit=0.1))(data)
    assert pro == pytest.approx(reference_aupro(list(maps), list(masks), 0.1), abs=TOL)
    assert specs["pro"].config().fpr_limit == 0.3
