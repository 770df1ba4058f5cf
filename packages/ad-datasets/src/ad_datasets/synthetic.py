"""A small data set generated from a seed, so every machine can run the pipeline offline.

Three categories stand in for MVTec's kinds of data: ``fabric`` (a woven texture), ``washer``
(a metal ring on a plain background) and ``pill`` (a speckled capsule-like object). Normal
images vary in position, scale, rotation, colour, lighting and sensor noise; test defects are
scratches, holes, stains and missing pieces of varied size at moderate contrast, each with
its pixel mask. The set is written once in the MVTec layout (atomically: generated in a
temporary folder, then renamed) and read back by the MVTec reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ad_datasets.configs import SyntheticConfig
from ad_datasets.layout import MASK_SUFFIX, MvtecTree
from adcore.api import GOOD, DataError

GENERATOR_VERSION = 1  # part of the cache key: bump when the images change
MARKER = "synthetic.json"

DEFECTS: dict[str, tuple[str, ...]] = {
    "fabric": ("hole", "scratch", "stain"),
    "pill": ("hole", "missing", "scratch", "stain"),
    "washer": ("hole", "missing", "scratch", "stain"),
}
CATEGORIES = tuple(DEFECTS)
NAMES = {"washer": "metal washer"}


Rendered = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, object, background [S,S,3|S,S|S,S,3]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gentle brightness ramp in a random direction times a global gain -> [S,S,1]."""
    yy, xx = _grid(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / size - 0.5
    gain = rng.uniform(0.9, 1.1) * (1 + rng.uniform(0.05, 0.12) * ramp)
    return gain[..., None].astype(np.float32)


def render_fabric(rng: np.random.Generator, size: int) -> Rendered:
    """Plain weave: threads alternate over and under on a checkerboard of crossings."""
    yy, xx = _grid(size)
    period = size / 16 * rng.uniform(0.92, 1.08)
    theta = np.deg2rad(rng.uniform(-4, 4))
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period + rng.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    across = np.sqrt(np.sin(np.pi * (v % 1)))  # horizontal thread profile
    along = np.sqrt(np.sin(np.pi * (u % 1)))
    value = np.where(over, 0.3 + 0.45 * along, 0.27 + 0.45 * across)
    colour = np.array([0.35, 0.45, 0.75], np.float32) * rng.uniform(0.93, 1.07, 3)
    image = value[..., None] * colour * _lighting(rng, size)
    return image, np.ones((size, size), bool), image


def render_washer(rng: np.random.Generator, size: int) -> Rendered:
    """A turned metal ring: radial shading, machining rings, a directional highlight."""
    yy, xx = _grid(size)
    cy, cx = size / 2 + rng.normal(0, 0.03 * size, 2)
    outer, inner = 0.34 * size * rng.uniform(0.95, 1.05), 0.14 * size * rng.uniform(0.92, 1.08)
    radius = np.hypot(xx - cx, yy - cy)
    alpha = np.clip(outer - radius + 0.5, 0, 1) * np.clip(radius - inner + 0.5, 0, 1)
    light = rng.uniform(0, 2 * np.pi)
    azimuth = np.arctan2(yy - cy, xx - cx)
    depth = (radius - inner) / (outer - inner)
    metal = (
        0.55
        + 0.18 * np.cos(azimuth - light) * np.sin(np.pi * np.clip(depth, 0, 1))
        + 0.03 * np.sin(2 * np.pi * radius / (size / 45))
    )
    metal_rgb = metal[..., None] * np.array([1.0, 0.98, 0.93], np.float32)
    background = np.full((size, size, 3), rng.uniform(0.16, 0.22), np.float32) * np.array(
        [0.9, 0.95, 1.0], np.float32
    )
    lighting = _lighting(rng, size)
    image = (alpha[..., None] * metal_rgb + (1 - alpha[..., None]) * background) * lighting
    return image, alpha > 0.5, background * lighting


def render_pill(rng: np.random.Generator, size: int) -> Rendered:
    """A white oblong tablet with red-brown speckles on a dark tray."""
    import cv2

    yy, xx = _grid(size)
    cy, cx = size / 2 + rng.normal(0, 0.025 * size, 2)
    a, b = 0.36 * size * rng.uniform(0.95, 1.05), 0.17 * size * rng.uniform(0.95, 1.05)
    theta = np.deg2rad(rng.uniform(-8, 8))
    px = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    py = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    d = np.sqrt((px / a) ** 2 + (py / b) ** 2)
    alpha = np.clip((1 - d) * b + 0.5, 0, 1)
    body = (0.9 - 0.22 * np.clip(d, 0, 1) ** 2)[..., None] * np.array([1.0, 0.97, 0.92], np.float32)
    specks = np.zeros((size, size), np.uint8)
    count = int(rng.integers(20, 40))
    rr = np.sqrt(rng.uniform(0, 0.8, count))
    phi = rng.uniform(0, 2 * np.pi, count)
    sx = cx + rr * (a * np.cos(phi) * np.cos(theta) - b * np.sin(phi) * np.sin(theta))
    sy = cy + rr * (a * np.cos(phi) * np.sin(theta) + b * np.sin(phi) * np.cos(theta))
    for x, y, r in zip(sx, sy, rng.integers(1, max(2, size // 128) + 1, count), strict=True):
        cv2.circle(specks, (int(x), int(y)), int(r), 1, -1)
    speck_colour = np.array([0.6, 0.3, 0.25], np.float32)
    body = np.where(specks[..., None] > 0, speck_colour, body)
    background = np.full((size, size, 3), rng.uniform(0.08, 0.14), np.float32)
    lighting = _lighting(rng, size)
    image = (alpha[..., None] * body + (1 - alpha[..., None]) * background) * lighting
    return image, alpha > 0.5, background * lighting


RENDERERS: dict[str, Callable[[np.random.Generator, int], Rendered]] = {
    "fabric": render_fabric,
    "pill": render_pill,
    "washer": render_washer,
}


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    """An irregular blob: a few overlapping ellipses around ``centre`` -> bool [S,S]."""
    import cv2

    blob = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(3, 6))):
        c = centre + rng.normal(0, radius / 2.5, 2)
        axes = (
            max(1, int(radius * rng.uniform(0.5, 1))),
            max(1, int(radius * rng.uniform(0.4, 1))),
        )
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(blob, (int(c[0]), int(c[1])), axes, angle, 0, 360, 1, -1)
    return blob > 0


def _pick(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random (x, y) point of a bool region."""
    ys, xs = np.nonzero(region)
    i = rng.integers(len(xs))
    return np.array([xs[i], ys[i]], np.float64)


def _inside(region: np.ndarray, margin: int) -> np.ndarray:
    """``region`` eroded by ``margin`` pixels, so a defect centred there lands on the object."""
    import cv2

    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    eroded = cv2.erode(region.astype(np.uint8), kernel) > 0
    return eroded if eroded.any() else region


def add_defect(
    rng: np.random.Generator, kind: str, rendered: Rendered
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` -> (image [S,S,3] float, mask [S,S] bool)."""
    import cv2

    image, region, background = rendered
    size = image.shape[0]
    image = image.copy()
    if kind == "scratch":
        start = _pick(rng, _inside(region, size // 16))
        length, heading = rng.uniform(0.12, 0.3) * size, rng.uniform(0, 2 * np.pi)
        turns = heading + np.cumsum(rng.normal(0, 0.25, 3))
        points = start + np.cumsum(np.stack([np.cos(turns), np.sin(turns)], 1) * length / 3, axis=0)
        line = np.zeros((size, size), np.uint8)
        thickness = int(rng.integers(1, 3)) * max(1, size // 256)
        cv2.polylines(line, [np.vstack([start, points]).astype(np.int32)], False, 1, thickness)
        mask = (line > 0) & region
        image += (rng.choice([-1, 1]) * rng.uniform(0.18, 0.32)) * mask[..., None]
    elif kind == "hole":
        radius = rng.uniform(0.02, 0.045) * size
        mask = _blob(rng, size, _pick(rng, _inside(region, int(radius))), radius) & region
        dark = rng.uniform(0.04, 0.12)
        image = np.where(mask[..., None], dark + 0.3 * (image - image.mean()), image)
    elif kind == "stain":
        radius = rng.uniform(0.035, 0.08) * size
        mask = _blob(rng, size, _pick(rng, _inside(region, int(radius))), radius) & region
        colour = np.array(
            [[0.55, 0.35, 0.15], [0.75, 0.65, 0.2], [0.35, 0.5, 0.25], [0.5, 0.2, 0.35]],
            np.float32,
        )[rng.integers(4)]
        soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(1.0, radius / 6)) * mask
        strength = (rng.uniform(0.35, 0.6) * soft)[..., None]
        image = image * (1 - strength) + colour * strength
    elif kind == "missing":
        edge = region & ~_inside(region, 2)
        radius = rng.uniform(0.06, 0.12) * size
        mask = _blob(rng, size, _pick(rng, edge), radius) & region
        image = np.where(mask[..., None], background, image)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return image, mask


def _finish(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Sensor noise and quantisation -> uint8 [S,S,3]."""
    noisy = image + rng.normal(0, rng.uniform(0.012, 0.025), image.shape).astype(np.float32)
    return (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = pixels[..., ::-1] if pixels.ndim == 3 else pixels
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr)):
        raise DataError(f"Could not write {path}.", "Check that the folder is writable.")


def generate(config: SyntheticConfig, out: Path) -> None:
    """Write every category in the MVTec layout under ``out``.

    Each image has its own generator seeded by (seed, category, split, index), so any image
    can be regenerated alone and the set does not depend on generation order.
    """
    size = config.image_size
    for c, category in enumerate(CATEGORIES):
        render = RENDERERS[category]

        def rng(split: int, index: int, c: int = c) -> np.random.Generator:
            return np.random.default_rng([config.seed, c, split, index])

        base = out / category
        for i in range(config.train_images):
            r = rng(0, i)
            _write_png(base / "train" / GOOD / f"{i:03d}.png", _finish(r, render(r, size)[0]))
        for i in range(config.good_test_images):
            r = rng(1, i)
            _write_png(base / "test" / GOOD / f"{i:03d}.png", _finish(r, render(r, size)[0]))
        for d, defect in enumerate(DEFECTS[category]):
            for i in range(config.images_per_defect):
                r = rng(2 + d, i)
                image, mask = add_defect(r, defect, render(r, size))
                _write_png(base / "test" / defect / f"{i:03d}.png", _finish(r, image))
                _write_png(
                    base / "ground_truth" / defect / f"{i:03d}{MASK_SUFFIX}.png",
                    mask.astype(np.uint8) * 255,
                )


def parameters(config: SyntheticConfig) -> dict[str, int]:
    """What determines the pixels: the cache key and the marker file hold exactly this."""
    fields = config.model_dump(exclude={"class_names"})
    return {"generator_version": GENERATOR_VERSION, **fields}


def default_root(config: SyntheticConfig) -> Path:
    """``$AD_CACHE_DIR/synthetic/<key>``, else ``~/.cache/ad/synthetic/<key>``."""
    cache = Path(os.environ.get("AD_CACHE_DIR") or Path.home() / ".cache" / "ad").expanduser()
    params = parameters(config)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return cache / "synthetic" / f"seed{config.seed}-{config.image_size}px-{digest}"


def _matches(root: Path, params: dict[str, int]) -> bool:
    """True when ``root`` holds a finished set of these parameters; an error for other data."""
    marker = root / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != params:
            raise DataError(
                f"{root} holds a synthetic set generated with {found}, not {params}.",
                "Use another --data-root, or delete that folder to regenerate it.",
            )
        return True
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root} is not empty and holds no {MARKER}: it is not a synthetic set.",
            "Give an empty or new folder as --data-root for the synthetic data set.",
        )
    return False


def ensure_generated(config: SyntheticConfig, root: Path | None = None) -> Path:
    """The folder holding the set for ``config``, generating it first if needed."""
    root = Path(root).expanduser() if root is not None else default_root(config)
    params = parameters(config)
    if _matches(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the set is ordinary data
    try:
        generate(config, staging)
        (staging / MARKER).write_text(json.dumps(params, sort_keys=True, indent=1))
        try:
            os.rename(staging, root)  # replaces an empty folder; atomic on one file system
        except OSError:
            if not _matches(root, params):  # another process finished first, or a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def factory(config: SyntheticConfig, root: Path | None) -> MvtecTree:
    return MvtecTree(ensure_generated(config, root), config.class_names, NAMES, "synthetic")
