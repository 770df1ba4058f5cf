"""Heatmap overlays: what a detector saw, next to what was there.

For a few test images per category (the highest- and lowest-scoring anomalies and normals,
so both successes and failures show) a PNG holds the image, the anomaly map blended over it
on a colour scale shared by the whole category, the ground-truth outline, and the outline of
the region predicted at the category's F1-optimal pixel threshold. The composite is drawn in
numpy at the map's own pixels (upscaled by an integer factor), so what is shown is exactly
the map; matplotlib only adds titles, the colour bar and the legend.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.decoding import Decoding
from ad_runtime.outputkeys import FILE_NAME_BYTES, short_name
from ad_runtime.preprocessing import Preprocessing
from adcore.infra.files import atomic_write_bytes, atomic_write_text
from adcore.metrics import image_f1_threshold, pixel_f1_threshold
from adcore.outputs.outputkeys import check_distinct, output_keys
from adcore.outputs.reporting import CategoryOutputs, Reporter, RunContext
from adcore.outputs.results import CategoryResult

COLORMAP = "inferno"  # dark -> yellow: no green or blue, so both outlines stand out
TRUTH_COLOUR = (0, 230, 0)  # ground truth, drawn just outside the region
PREDICTED_COLOUR = (0, 170, 255)  # predicted region, drawn just inside it
HEAT_ALPHA = (0.3, 0.8)  # opacity of the heat at the scale's bottom and top: normal areas
# stay readable as image, hot ones show their colour
DISPLAY_SIDE = 256  # images are upscaled by an integer factor to at least this many pixels
THRESHOLDS_FILE = "thresholds.json"


def choose_examples(scores: np.ndarray, labels: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` images: alternately anomalous and normal, each class taken from
    both ends of its ranking (best detected, worst missed; most and least suspicious)."""
    labels = np.asarray(labels).astype(bool)
    queues = []
    for members in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        ranked = members[np.argsort(-scores[members], kind="stable")]  # high to low
        ends = np.empty(ranked.size, ranked.dtype)
        ends[0::2] = ranked[: (ranked.size + 1) // 2]
        ends[1::2] = ranked[::-1][: ranked.size // 2]
        queues.append(list(ends))
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop(0)))
    return chosen


def _outline(region: np.ndarray, width: int, outside: bool) -> np.ndarray:
    """Pixels of a band ``width`` wide along the region's border, outside or inside it."""
    from scipy import ndimage

    if not region.any():
        return np.zeros_like(region)
    if outside:
        return ndimage.binary_dilation(region, iterations=width) & ~region
    return region & ~ndimage.binary_erosion(region, iterations=width, border_value=0)


def colour_scale(value_range: tuple[float, float], threshold: float | None) -> Any:
    """The shared scale; with a threshold inside the range, two linear pieces put it at the
    middle, so warm colours always mean "above the threshold" whatever the map's range."""
    from matplotlib.colors import Normalize, TwoSlopeNorm

    low, high = value_range
    if threshold is not None and low < threshold < high:
        return TwoSlopeNorm(vcenter=threshold, vmin=low, vmax=high)
    return Normalize(low, high if high > low else low + 1.0)


COLOUR_BAR_LABEL = "anomaly map value (pixel score)"
SCALE_NOTE = (
    "Colours: the anomaly map's pixel values on one scale per category, in two linear pieces "
    "that meet at the pixel threshold. The image score is the method's own image-level score "
    "(e.g. the maximum of unsmoothed patch scores) and may lie outside this scale."
)


def colour_bar_ticks(value_range: tuple[float, float], threshold: float | None) -> list[float]:
    """Five ticks evenly spaced along the bar: the range's ends, the threshold at the middle
    when it lies inside the range, and the middle of each piece."""
    low, high = value_range
    if threshold is not None and low < threshold < high:
        return [*np.linspace(low, threshold, 3), *np.linspace(threshold, high, 3)[1:]]
    return list(np.linspace(low, high, 5))


def tick_format(ticks: list[float]) -> str:
    """The shortest ``{x:.Ng}`` (3 to 8 significant digits) that gives every tick its own
    label: a threshold close to another tick must not print as the same number."""
    for digits in range(3, 9):
        if len({f"{t:.{digits}g}" for t in ticks}) == len(ticks):
            return f"{{x:.{digits}g}}"
    return "{x:.8g}"


def colourise(anomaly_map: np.ndarray, scale: Any) -> tuple[np.ndarray, np.ndarray]:
    """[H,W] float -> colours [H,W,3] in [0,1] and scaled values [H,W] in [0,1]."""
    from matplotlib import colormaps

    scaled = np.clip(np.ma.getdata(scale(anomaly_map.astype(np.float64))), 0.0, 1.0)
    return colormaps[COLORMAP](scaled)[..., :3], scaled


def compose_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None,
    threshold: float | None,
    value_range: tuple[float, float],
    scale: int = 1,
) -> np.ndarray:
    """image [S,S,3] uint8, map [S,S], mask [S,S] bool -> [S*scale,S*scale,3] uint8.

    The map blended over the image, the ground truth outlined outside its border and the
    region ``map >= threshold`` outlined inside its border, so coinciding borders both show.
    The heat's opacity grows with its value, so the image stays readable where all is well.
    """
    heat, scaled = colourise(anomaly_map, colour_scale(value_range, threshold))
    alpha = (HEAT_ALPHA[0] + (HEAT_ALPHA[1] - HEAT_ALPHA[0]) * scaled)[..., None]  # [S,S,1]
    blended = (1 - alpha) * image / 255.0 + alpha * heat
    out = np.round(255 * blended).astype(np.uint8)
    out = out.repeat(scale, 0).repeat(scale, 1)  # [S*scale,S*scale,3]
    width = max(1, scale // 2 + 1)
    if threshold is not None:
        predicted = (anomaly_map >= threshold).repeat(scale, 0).repeat(scale, 1)
        out[_outline(predicted, width, outside=False)] = PREDICTED_COLOUR
    if mask is not None:  # last, so the reference is never hidden
        truth = mask.astype(bool).repeat(scale, 0).repeat(scale, 1)
        out[_outline(truth, width, outside=True)] = TRUTH_COLOUR
    return out


def display_scale(side: int) -> int:
    return max(1, math.ceil(DISPLAY_SIDE / side))


@dataclass
class OverlayImage:
    """One picture: what is shown and how it is named."""

    image: np.ndarray  # [S,S,3] uint8
    anomaly_map: np.ndarray  # [S,S]
    mask: np.ndarray | None  # [S,S] bool, None when unknown
    title: str
    subtitle: str


def render_png(
    item: OverlayImage,
    value_range: tuple[float, float],
    threshold: float | None,
    threshold_label: str,
) -> bytes:
    """The image beside its overlay, a colour bar with the threshold marked, and a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    scale = display_scale(item.image.shape[0])
    plain = item.image.repeat(scale, 0).repeat(scale, 1)
    overlay = compose_overlay(
        item.image, item.anomaly_map, item.mask, threshold, value_range, scale
    )
    figure = Figure(figsize=(8.4, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for axes, picture, name in ((left, plain, "image"), (right, overlay, "anomaly map")):
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(name, fontsize=10)
        axes.set_axis_off()
    bar = figure.colorbar(
        ScalarMappable(colour_scale(value_range, threshold), COLORMAP),
        ax=right,
        fraction=0.046,
        pad=0.03,
    )
    ticks = colour_bar_ticks(value_range, threshold)
    bar.set_ticks(ticks)
    bar.set_label(COLOUR_BAR_LABEL, fontsize=8)
    bar.ax.tick_params(labelsize=8)
    bar.ax.yaxis.set_major_formatter(tick_format(ticks))
    handles = []
    if item.mask is not None:
        none = "" if item.mask.any() else " (none here)"
        handles.append(
            Line2D([], [], color=np.array(TRUTH_COLOUR) / 255, lw=3, label=f"true defect{none}")
        )
    if threshold is not None:
        bar.ax.axhline(threshold, color=np.array(PREDICTED_COLOUR) / 255, lw=2.5)
        none = "" if (item.anomaly_map >= threshold).any() else ", none here"
        label = f"predicted region (map >= {threshold:.4g}, {threshold_label}{none})"
        handles.append(Line2D([], [], color=np.array(PREDICTED_COLOUR) / 255, lw=3, label=label))
    if handles:
        figure.legend(
            handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.05), ncol=len(handles),
            fontsize=9,
        )  # fmt: skip
    figure.suptitle(f"{item.title}\n{item.subtitle}", fontsize=11)
    figure.text(0.5, 0.005, SCALE_NOTE, ha="center", va="bottom", fontsize=6.5, wrap=True)
    figure.subplots_adjust(left=0.02, right=0.86, top=0.84, bottom=0.14, wspace=0.05)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def safe_name(text: str) -> str:
    """Letters (any script), digits and ``._+-`` kept; every other run becomes ``_``."""
    return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "image"


def overlay_name(rank: int, key: str, label: str, score: float) -> str:
    """``03_scratch_017_anomalous_score0.8123.png``: order, the image's output key (its path
    below the split folder: ``scratch/017``, ``abnormal/lineA/000``), label, score.

    The rank makes names unique within a category whatever the keys become once sanitised;
    a long key is cut with a digest, so the name stays within the filesystem's limit.
    """
    tail = safe_name(f"_{label}_score{score:.4g}")
    head = short_name(safe_name(f"{rank:02d}_{key}"), FILE_NAME_BYTES - len(tail) - 8)
    return f"{head}_{tail}.png"


def read_at_geometry(
    path: Path, geometry: Preprocessing, decoding: Decoding | None = None
) -> np.ndarray:
    """The image as the method saw it: [S,S,3] uint8."""
    from adcore.data.loading import read_image

    return geometry.apply(read_image(path, decoding))


def value_range_of(maps: np.ndarray) -> tuple[float, float]:
    """One colour scale for a category: from its lowest to its highest map value."""
    low, high = float(np.min(maps)), float(np.max(maps))
    return (low, high if high > low else low + 1.0)


def describe(label: int, score: float, decision_threshold: float | None) -> str:
    text = f"score {score:.4g}"
    if decision_threshold is None:
        return text
    verdict = "anomalous" if score >= decision_threshold else "normal"
    flagged = score >= decision_threshold
    outcome = "correct" if flagged == bool(label) else ("false alarm" if flagged else "missed")
    return f"{text}, predicted {verdict} at image threshold {decision_threshold:.4g} ({outcome})"


def write_category_overlays(
    folder: Path,
    category: str,
    outputs: CategoryOutputs,
    count: int,
) -> list[Path]:
    """Choose, render and write ``count`` overlays plus ``thresholds.json`` under ``folder``."""
    side = outputs.maps.shape[-1]
    geometry = outputs.geometry or Preprocessing(size=side)
    labels = np.array([s.label for s in outputs.samples], dtype=bool)
    pixel = pixel_f1_threshold(outputs.maps, outputs.masks)
    image = image_f1_threshold(outputs.scores, labels)
    value_range = value_range_of(outputs.maps)
    summary: dict[str, Any] = {
        "pixel_threshold": pixel,
        "image_threshold": image,
        "map_min": value_range[0],
        "map_max": value_range[1],
        "note": "F1-optimal thresholds on this category's test set; colour scale min..max.",
    }
    atomic_write_text(folder / THRESHOLDS_FILE, json.dumps(summary, indent=2) + "\n")
    written = []
    keys = output_keys(outputs.samples)
    chosen = choose_examples(outputs.scores, labels, count)
    paths = [
        folder
        / overlay_name(rank, keys[i], "anomalous" if labels[i] else "normal", outputs.scores[i])
        for rank, i in enumerate(chosen)
    ]
    check_distinct(paths)
    for index, path in zip(chosen, paths, strict=True):
        sample = outputs.samples[index]
        label = "anomalous" if sample.label else "normal"
        score = float(outputs.scores[index])
        item = OverlayImage(
            image=read_at_geometry(sample.image_path, geometry, outputs.decoding),
            anomaly_map=outputs.maps[index],
            mask=outputs.masks[index],
            title=f"{category} / {keys[index]}: {label}",
            subtitle=describe(sample.label, score, image),
        )
        atomic_write_bytes(path, render_png(item, value_range, pixel, "F1-optimal"))
        written.append(path)
    return written


class OverlayReporter(Reporter):
    """``<category>/overlays/*.png`` when ``visualization.save_overlay`` is true."""

    def on_category(
        self, result: CategoryResult, outputs: CategoryOutputs | None, context: RunContext
    ) -> None:
        settings = context.config.base.visualization
        if not settings.save_overlay or outputs is None or settings.num_examples == 0:
            return
        folder = context.layout.category(result.category) / "overlays"
        for stale in folder.glob("*.png"):
            stale.unlink()  # a rerun chooses its own examples
        write_category_overlays(folder, result.category, outputs, settings.num_examples)


def overlay_files(category_dir: Path) -> Sequence[Path]:
    """A category's overlays in the order they were chosen."""
    return sorted((category_dir / "overlays").glob("*.png"))
