"""Time pixel AUROC + pixel F1-max + AUPRO on ~2e7 pixels: adcore.metrics vs the usual way.

The usual way is scikit-learn (``roc_auc_score``, F1-max from ``precision_recall_curve``)
plus a straightforward AUPRO (argsort, cumulative sums, trapezoid with interpolation at the
limit, as the MVTec AD evaluation script). Each side runs in a fresh subprocess on the same
seeded data; peak memory is the process's peak resident set (VmHWM) during the metrics,
reset after the data are built by writing 5 to /proc/self/clear_refs, minus the resident
set before (so the shared input arrays count for neither side).

    .venv/bin/python benchmarks/bench_metrics.py [--images 80] [--size 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from bisect import bisect_right

import numpy as np
from _common import pair_ratios, print_machine, shown_ratios


def make_category(n_images: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 maps [N,S,S] and bool masks with 1-6 rectangular/elliptic defects; 1/4 good."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n_images, size, size), np.float32)
    masks = np.zeros((n_images, size, size), bool)
    rows, cols = np.ogrid[:size, :size]
    for index in range(n_images):
        if index % 4:
            for _ in range(rng.integers(1, 7)):
                r, c = rng.integers(0, size, 2)
                a, b = rng.integers(3, size // 8, 2)
                masks[index] |= ((rows - r) / a) ** 2 + ((cols - c) / b) ** 2 <= 1
        maps[index] = rng.standard_normal((size, size), dtype=np.float32)
        maps[index] += 2.0 * masks[index]
    return maps, masks


def baseline_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Straightforward official AUPRO: per-pixel changes, argsort, cumsum, trapezoid."""
    from scipy import ndimage

    fp_change = np.zeros(maps.shape, np.uint32)
    pro_change = np.zeros(maps.shape, np.float64)
    n_ok = n_regions = 0
    for index, mask in enumerate(masks):
        labeled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labeled.ravel(), minlength=count + 1)
        inverse = np.zeros(count + 1)
        inverse[1:] = 1.0 / sizes[1:]
        pro_change[index] = inverse[labeled]
        fp_change[index] = labeled == 0
        n_ok += int(sizes[0])
        n_regions += count
    order = np.argsort(maps.ravel())[::-1]
    scores = maps.ravel()[order]
    fprs = np.cumsum(fp_change.ravel()[order]) / n_ok
    pros = np.cumsum(pro_change.ravel()[order]) / n_regions
    keep = np.append(np.diff(scores) != 0, True)
    x = np.concatenate([[0.0], fprs[keep], [1.0]])
    y = np.concatenate([[0.0], pros[keep], [1.0]])
    ins = bisect_right(x.tolist(), limit)
    y_limit = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1])
    x, y = np.append(x[:ins], limit), np.append(y[:ins], y_limit)
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x))) / limit


def baseline(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import precision_recall_curve, roc_auc_score

    auroc = roc_auc_score(masks.ravel(), maps.ravel())
    precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_max = np.nanmax(2 * precision * recall / (precision + recall))
    return {"pixel_auroc": auroc, "pixel_f1_max": float(f1_max), "pro": baseline_aupro(maps, masks)}


def ours(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from adcore.metrics import aupro, pixel_auroc, pixel_f1_max

    return {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_f1_max": pixel_f1_max(maps, masks),
        "pro": aupro(maps, masks),
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_side(side: str, n_images: int, size: int) -> None:
    """Child process: build the data, reset the peak, compute, print one JSON line."""
    maps, masks = make_category(n_images, size)
    import scipy.ndimage  # noqa: F401  (imports are not part of either side's cost)
    import sklearn.metrics  # noqa: F401

    import adcore.metrics  # noqa: F401

    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    values = (ours if side == "ours" else baseline)(maps, masks)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(json.dumps({"seconds": seconds, "peak_mib": (peak - rss_before) / 1024, **values}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=1, help="alternating baseline/ours pairs")
    parser.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.images, args.size)
        return
    print_machine("before")
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    for _ in range(args.pairs):  # alternating: baseline, ours, baseline, ours, ...
        for side in ("baseline", "ours"):
            command = [sys.executable, __file__, "--side", side]
            command += ["--images", str(args.images), "--size", str(args.size)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[side].append(json.loads(output.strip().splitlines()[-1]))
    results = {side: min(rows, key=lambda r: r["seconds"]) for side, rows in runs.items()}
    print_machine("after")
    pixels = args.images * args.size * args.size
    print(f"{pixels:.2e} pixels ({args.images} maps of {args.size}x{args.size}, float32)")
    print(f"{'':10s}{'seconds':>10s}{'peak MiB':>10s}{'AUROC':>12s}{'F1-max':>12s}{'AUPRO':>12s}")
    for side in ("baseline", "ours"):
        r = results[side]
        print(
            f"{side:10s}{r['seconds']:10.2f}{r['peak_mib']:10.0f}"
            f"{r['pixel_auroc']:12.8f}{r['pixel_f1_max']:12.8f}{r['pro']:12.8f}"
        )
    base, own = results["baseline"], results["ours"]
    speedup = pair_ratios(
        [r["seconds"] for r in runs["baseline"]], [r["seconds"] for r in runs["ours"]]
    )
    print(
        f"speed-up baseline / ours per pair {shown_ratios(speedup)}, "
        f"peak memory ratio ours/baseline {own['peak_mib'] / base['peak_mib']:.2f}"
    )
    worst = max(abs(base[key] - own[key]) for key in ("pixel_auroc", "pixel_f1_max", "pro"))
    print(f"largest difference between the two: {worst:.1e}")


if __name__ == "__main__":
    main()
