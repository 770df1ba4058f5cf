"""Overlays: example choice, F1-optimal thresholds, the composite's pixels, and real PNGs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore.metrics import image_f1_threshold
from adcore.outputs.reporters.overlay import (
    HEAT_ALPHA,
    PREDICTED_COLOUR,
    TRUTH_COLOUR,
    choose_examples,
    compose_overlay,
)
from adtest import eval_args, fast_flags, run_ad, write_mvtec_tree


def test_f1_optimal_threshold_by_hand():
    # scores 0.1 0.4 | 0.35 0.8: at 0.35 TP=2 FP=1 -> F1 4/5; at 0.8 TP=1 FP=0 -> F1 2/3
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert image_f1_threshold(scores, labels) == 0.35
    assert image_f1_threshold(np.array([1.0, 2.0]), np.array([0, 0])) is None


def test_f1_optimal_threshold_matches_a_threshold_sweep():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # ties on purpose
    best = image_f1_threshold(scores, labels)
    sweep = {t: f1_score(labels, scores >= t) for t in np.unique(scores)}
    top = max(sweep.values())
    assert sweep[best] == pytest.approx(top)
    assert best == min(t for t, f in sweep.items() if f == pytest.approx(top))


def test_examples_show_both_classes_from_both_ends():
    scores = np.array([0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7])
    labels = np.array([1, 0, 1, 0, 1, 0, 0])
    # anomalous high->low: 0 (0.9), 4 (0.8), 2 (0.5); normal: 6 (0.7), 3 (0.3), 5 (0.2), 1 (0.1)
    assert choose_examples(scores, labels, 4) == [0, 6, 2, 1]
    assert choose_examples(scores, labels, 7) == [0, 6, 2, 1, 4, 3, 5]
    assert choose_examples(scores, labels, 20) == [0, 6, 2, 1, 4, 3, 5]


def test_composite_heat_follows_the_map_and_outlines_follow_the_regions():
    side = 16
    image = np.full((side, side, 3), 100, np.uint8)
    flat = np.zeros((side, side), np.float32)
    hot = flat.copy()
    hot[4:8, 4:8] = 1.0
    plain = compose_overlay(image, flat, None, None, (0.0, 1.0))
    heated = compose_overlay(image, hot, None, None, (0.0, 1.0))
    changed = np.any(plain != heated, axis=-1)
    expected = np.zeros((side, side), bool)
    expected[4:8, 4:8] = True
    np.testing.assert_array_equal(changed, expected)
    # inferno maps 0 to near black: the blend there is the image dimmed by the alpha
    assert np.all(np.abs(plain[0, 0].astype(int) - round(100 * (1 - HEAT_ALPHA[0]))) <= 2)

    mask = np.zeros((side, side), bool)
    mask[10:13, 2:6] = True
    out = compose_overlay(image, hot, mask, 0.5, (0.0, 1.0))
    truth = np.all(out == TRUTH_COLOUR, axis=-1)
    predicted = np.all(out == PREDICTED_COLOUR, axis=-1)
    ring = np.zeros((side, side), bool)
    ring[9:14, 1:7] = True
    ring[10:13, 2:6] = False  # one pixel outside the defect, 4-connected dilation
    ring[[9, 9, 13, 13], [1, 6, 1, 6]] = False
    np.testing.assert_array_equal(truth, ring)
    inner = expected.copy()
    inner[5:7, 5:7] = False  # one pixel inside the predicted square
    np.testing.assert_array_equal(predicted, inner)

    big = compose_overlay(image, hot, mask, 0.5, (0.0, 1.0), scale=4)
    assert big.shape == (64, 64, 3)
    assert np.all(big[40:52, 8:24] != TRUTH_COLOUR)  # inside the scaled defect: no outline
    assert np.all(big[37:40, 8:24] == TRUTH_COLOUR)  # just above it: the outline, 3 px


@pytest.fixture(scope="module")
def overlay_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("overlays")
    data = write_mvtec_tree(root / "mvtec", categories=("plate",), num_good=4, num_bad=3)
    result = run_ad(
        *eval_args(str(data), str(root / "out"), "3"),
        "--save-maps",
        *fast_flags(),
        "--set",
        "visualization.save_overlay=true",
        "--set",
        "visualization.num_examples=4",
    )
    assert result.returncode == 0, result.stderr
    return root / "out/mvtec/pixel-gaussian/default"


NAME = re.compile(r"^(\d\d)_(good|square)_(\d{3})_(normal|anomalous)_score(.+)\.png$")


def test_overlay_files_named_sized_and_showing_both_classes(overlay_run):
    with (overlay_run / "plate/scores.csv").open() as stream:
        scores = {
            (Path(r["path"]).parent.name, Path(r["path"]).stem): r for r in csv.DictReader(stream)
        }
    files = sorted((overlay_run / "plate/overlays").glob("*.png"))
    assert len(files) == 4
    labels = []
    for rank, path in enumerate(files):
        match = NAME.match(path.name)
        assert match, path.name
        order, defect, stem, label, score = match.groups()
        assert int(order) == rank
        row = scores[(defect, stem)]
        assert label == ("anomalous" if row["label"] == "1" else "normal")
        assert float(score) == pytest.approx(float(row["score"]), rel=1e-3)
        labels.append(label)
        with Image.open(path) as image:
            assert image.size == (840, 440) and image.mode == "RGBA"
            pixels = np.asarray(image.convert("RGB"))[:380]  # above the legend
        has_truth = np.all(pixels == TRUTH_COLOUR, axis=-1).any()
        assert has_truth == (label == "anomalous"), path.name
    assert labels == ["anomalous", "normal", "anomalous", "normal"]


def test_saved_pixel_threshold_reaches_the_pixel_f1_max(overlay_run):
    """F1 of map >= t, from the saved TIFF maps and the original masks, is the run's F1-max."""
    saved = json.loads((overlay_run / "plate/overlays/thresholds.json").read_text())
    maps, masks = [], []
    with (overlay_run / "plate/scores.csv").open() as stream:
        for row in csv.DictReader(stream):
            path = Path(row["path"])
            tiff = overlay_run / "plate/maps" / row["defect_type"] / f"{path.stem}.tiff"
            maps.append(np.asarray(Image.open(tiff), np.float32))
            truth = path.parents[2] / "ground_truth" / row["defect_type"] / f"{path.stem}_mask.png"
            if truth.exists():
                mask = Image.open(truth).resize((32, 32), Image.Resampling.NEAREST)
                masks.append(np.asarray(mask) > 0)
            else:
                masks.append(np.zeros((32, 32), bool))
    predicted = np.stack(maps) >= saved["pixel_threshold"]
    truth = np.stack(masks)
    tp = np.sum(predicted & truth)
    f1 = 2 * tp / (predicted.sum() + truth.sum())
    with (overlay_run / "plate/metrics.csv").open() as stream:
        f1_max = float(next(csv.DictReader(stream))["pixel_f1_max"])
    assert f1 == pytest.approx(f1_max, abs=1e-9)
    assert saved["map_min"] == pytest.approx(min(m.min() for m in maps))
    assert saved["map_max"] == pytest.approx(max(m.max() for m in maps))


def test_no_overlays_unless_asked(tmp_path):
    data = write_mvtec_tree(tmp_path / "mvtec", categories=("plate",))
    result = run_ad(
        *eval_args(str(data), str(tmp_path / "out"), "2"),
        *fast_flags(),
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "out/mvtec/pixel-gaussian/default/plate/overlays").exists()


def test_colour_bar_ticks_are_evenly_spaced_along_the_bar_with_the_threshold_in_the_middle():
    from adcore.outputs.reporters.overlay import colour_bar_ticks, colour_scale

    for value_range, threshold in (((0.0, 3.0), 1.2), ((0.1, 0.3), 0.28), ((2.0, 6.0), None)):
        ticks = colour_bar_ticks(value_range, threshold)
        positions = np.asarray(colour_scale(value_range, threshold)(np.array(ticks)))
        np.testing.assert_allclose(positions, [0, 0.25, 0.5, 0.75, 1], atol=1e-12)
        assert ticks[0] == value_range[0] and ticks[-1] == value_range[1]
        if threshold is not None:
            assert ticks[2] == pytest.approx(threshold)


def test_tick_labels_stay_distinct_when_the_threshold_is_near_another_tick():
    """The case seen on a WinCLIP overlay: range 0.508-0.516, threshold 0.5148."""
    from adcore.outputs.reporters.overlay import colour_bar_ticks, tick_format

    ticks = colour_bar_ticks((0.508, 0.5163), 0.5148)
    assert len({f"{t:.3g}" for t in ticks}) < len(ticks)  # three digits would repeat a label
    labels = [tick_format(ticks).format(x=t) for t in ticks]
    assert len(set(labels)) == len(ticks)
    assert tick_format([0.0, 0.25, 0.5, 0.75, 1.0]) == "{x:.3g}"  # short when it suffices
