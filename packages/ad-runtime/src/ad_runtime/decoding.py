"""Image and mask files as users bring them, decoded to what every method expects.

Images become 8-bit RGB, masks binary, both oriented as image viewers show them (the EXIF
orientation tag applied). The rules, chosen so that no file turns into silently wrong
numbers:

- **Bit depth.** 8-bit modes (L, RGB, RGBA, P, ...) are kept as they are. 16-bit and
  32-bit integer and float images are mapped linearly from an intensity range to 0..255,
  one range for all images of a category (:func:`category_decoding`), so relative
  intensities between images are kept and nothing is clipped: integers use the full scale
  ``2**b - 1`` of the smallest bit depth ``b`` in :data:`BIT_DEPTHS` that holds the
  category's largest value (a 12-bit camera's PNGs: 0..4095); floats use 0..1 when every
  value lies there, else the category's own minimum..maximum. ``data.intensity_range``
  overrides: ``type`` (the container's full scale: 0..65535 for 16 bits, 0..1 for floats)
  or an explicit ``[low, high]`` (values outside are clipped).
- **Masks.** Any mode. Few grey levels (0/255, 0/1, VisA's defect ids) are binarised at
  ``> 0``; more than :data:`LABEL_LEVELS` levels mean lossy compression or anti-aliasing,
  and such masks are thresholded at half their maximum (the data check names them).
- **Size limit.** An image of more than ``data.max_image_pixels`` pixels (default PIL's
  own limit) is refused from its header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from ad_runtime.errors import DataError

DEFAULT_MAX_IMAGE_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
INTEGER_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "I;32", "I;32L", "I;32B"})
FLOAT_MODES = frozenset({"F", "F;32", "F;32F"})
TYPE_RANGES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}
LABEL_LEVELS = 16  # more distinct values than this: a grey-level (lossy) mask
ORIENTATION_TAG = 0x0112
TRANSPOSES = {  # EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose)
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SKIP_HINT = "Replace or remove the file, or rerun with --skip-bad-samples to leave it out."

_UNLIMITED = threading.Lock()  # guards the moment PIL's global limit is lifted
IntensityRule = Literal["category", "type"] | tuple[float, float]


# the file types data sets and predictions read (lower case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Decoding:
    """How a category's files are decoded; picklable, so DataLoader workers get it.

    ``integer_range`` / ``float_range``: (low, high) mapped to 0..255 for images of more
    than 8 bits; None means the container's full scale (16-bit 0..65535, float 0..1, other
    integers their own bit depth).
    """

    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    integer_range: tuple[float, float] | None = None
    float_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Probe:
    """What a file's header says: size as shown (after orientation), mode, orientation."""

    size: tuple[int, int]  # (width, height) as viewers show it
    mode: str
    oriented: bool  # an EXIF orientation tag other than "upright" was present


@dataclass(frozen=True)
class DecodedMask:
    """A mask and how it was binarised."""

    mask: np.ndarray  # [H,W] bool
    levels: int  # distinct values in the file
    thresholded: bool  # True: grey levels, cut at half the maximum; False: > 0
    oriented: bool


class ImageTooLargeError(DataError):
    """An image over ``data.max_image_pixels``."""


def too_large_error(path: Path, size: tuple[int, int], limit: int) -> DataError:
    pixels = size[0] * size[1]
    return ImageTooLargeError(
        f"Image {path} is {size[0]}x{size[1]} ({pixels / 1e6:.0f} Mpx), over the decode limit "
        f"data.max_image_pixels={limit}.",
        f"Raise it (--set data.max_image_pixels={pixels}, or null for no limit) if the file is "
        "trusted and memory allows, downscale the file, or rerun with --skip-bad-samples.",
    )


def open_image(
    path: Path | IO[bytes], max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open ``path`` lazily (header only), refusing it when over ``max_image_pixels``."""
    try:
        with _UNLIMITED:  # PIL's own bomb check is off while the header is read: ours follows
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except FileNotFoundError:
        raise DataError(
            f"File {path} does not exist{dangling(path)}.",
            "Check the data set root and its layout.",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UndecodableImageError(path, error) from None
    if max_image_pixels is not None and image.size[0] * image.size[1] > max_image_pixels:
        image.close()
        raise too_large_error(path, image.size, max_image_pixels)
    return image


class UndecodableImageError(DataError):
    """A file PIL cannot decode; ``reason`` is PIL's complaint without the path in it."""

    def __init__(self, path: Path, error: BaseException) -> None:
        reason = str(error)
        for shown in (repr(str(path)), str(path)):
            reason = reason.replace(shown, "")
        reason = reason.strip(" :.") or type(error).__name__
        if reason == "cannot identify image file":
            reason = "PIL recognises no image format in it"
        self.reason = reason
        super().__init__(f"File {path} cannot be decoded as an image ({reason}).", SKIP_HINT)


def dangling(path: Path) -> str:
    """' (a symbolic link to T, which does not exist)' for a dangling link, else ''."""
    if path.is_symlink() and not path.exists():
        return f" (a symbolic link to {path.readlink()}, which does not exist)"
    return ""


def _load(image: Image.Image, path: Path) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UndecodableImageError(path, error) from None
    return image


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag from the header (1 upright, 2..8 mirrored and/or rotated).

    PNGs are asked only for an eXIf chunk already read with the header, so that asking never
    decodes the pixels (viewers ignore a chunk after the image data too).
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        tag = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1
    return tag if tag in TRANSPOSES else 1


def upright(image: Image.Image, tag: int) -> Image.Image:
    """The decoded image as viewers show it under orientation ``tag``."""
    method = TRANSPOSES.get(tag)
    return image if method is None else image.transpose(method)


def probe(path: Path, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Probe:
    """Size as shown, mode and orientation from the header; no pixels decoded."""
    with open_image(path, max_image_pixels) as image:
        return probe_open(image)


def probe_open(image: Image.Image) -> Probe:
    """The :class:`Probe` of an image opened with :func:`open_image`."""
    tag = orientation(image)
    width, height = image.size
    if tag in (5, 6, 7, 8):  # transposed or rotated by 90 degrees
        width, height = height, width
    return Probe((width, height), image.mode, tag != 1)


def is_high_depth(mode: str) -> bool:
    return mode in INTEGER_MODES or mode in FLOAT_MODES


def bit_depth_range(maximum: float) -> tuple[float, float]:
    """(0, 2**b - 1) for the smallest ``b`` in BIT_DEPTHS holding ``maximum``."""
    for bits in BIT_DEPTHS:
        if maximum <= 2**bits - 1:
            return (0.0, float(2**bits - 1))
    return (0.0, float(2 ** BIT_DEPTHS[-1] - 1))


def type_range(mode: str) -> tuple[float, float]:
    """The container's full scale: 0..65535 for 16 bits, 0..1 for floats, 0..2**31-1 for I."""
    if mode in FLOAT_MODES:
        return (0.0, 1.0)
    return (0.0, TYPE_RANGES.get(mode, float(2**31 - 1)))


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """[H,W] numbers -> [H,W] uint8, ``low`` -> 0 and ``high`` -> 255 linearly, clipped."""
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = (values.astype(np.float64) - low) * scale
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _pixels_rgb(image: Image.Image, decoding: Decoding) -> Image.Image:
    mode = image.mode
    if not is_high_depth(mode):
        return image.convert("RGB")
    values = np.asarray(image)  # [H,W] uint16 / int32 / float32
    if mode in FLOAT_MODES:
        low, high = decoding.float_range or type_range(mode)
    else:
        low, high = decoding.integer_range or (
            type_range(mode) if mode in TYPE_RANGES else bit_depth_range(float(values.max()))
        )
    return Image.fromarray(to_uint8(values, low, high)).convert("RGB")


def read_image(path: Path | IO[bytes], decoding: Decoding | None = None) -> Image.Image:
    """Decode any image as upright 8-bit RGB (see the module's rules for >8-bit modes)."""
    decoding = decoding or Decoding()
    with open_image(path, decoding.max_image_pixels) as image:
        tag = orientation(image)
        return _pixels_rgb(upright(_load(image, path), tag), decoding)


class ImageBytes(io.BytesIO):
    """An image file's bytes (an upload) where decoding takes a file; ``name`` stands for the
    path in every message."""

    def __init__(self, data: bytes, name: str = "upload") -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # PIL names an unidentified file by its repr
        return repr(self.name)


def read_image_bytes(
    data: bytes, decoding: Decoding | None = None, name: str = "upload"
) -> Image.Image:
    """The bytes of an image file decoded exactly as :func:`read_image` decodes the file
    (``ad serve``'s uploads); the same errors, naming ``name``."""
    return read_image(ImageBytes(data, name), decoding)


def mask_values(image: Image.Image) -> np.ndarray:
    """[H,W] numbers of a mask in any mode (colour modes through their luminance)."""
    if is_high_depth(image.mode) or image.mode == "L":
        return np.asarray(image)
    return np.asarray(image.convert("L"))


def binarise(values: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """[H,W] -> ([H,W] bool, distinct levels, thresholded at half the maximum?)."""
    if values.dtype == np.uint8:
        levels = int(np.count_nonzero(np.bincount(values.ravel(), minlength=256)))
    else:
        levels = int(np.unique(values).size)
    if levels > LABEL_LEVELS:
        return values > float(values.max()) / 2.0, levels, True
    return values > 0, levels, False


def decode_mask(path: Path, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedMask:
    """A mask file as an upright binary mask, with how it was binarised."""
    with open_image(path, max_image_pixels) as image:
        tag = orientation(image)
        mask, levels, thresholded = binarise(mask_values(upright(_load(image, path), tag)))
        return DecodedMask(mask, levels, thresholded, tag != 1)


def read_mask(
    path: Path | None, size: tuple[int, int], decoding: Decoding | None = None
) -> Image.Image:
    """A binary mask as an 'L' image with values 0/1; ``None`` is all-normal of ``size`` (w,h)."""
    if path is None:
        return Image.new("L", size, 0)
    limit = (decoding or Decoding()).max_image_pixels
    return Image.fromarray(decode_mask(path, limit).mask.astype(np.uint8))


def image_size(path: Path, decoding: Decoding | None = None) -> tuple[int, int]:
    """(width, height) as shown, from the header."""
    return probe(path, (decoding or Decoding()).max_image_pixels).size


def extrema(path: Path, max_image_pixels: int | None) -> tuple[str, float, float] | None:
    """(mode, min, max) of an image of more than 8 bits; None for 8-bit modes (not decoded)."""
    with open_image(path, max_image_pixels) as image:
        if not is_high_depth(image.mode):
            return None
        low, high = _load(image, path).getextrema()
        return image.mode, float(low), float(high)


def category_decoding(
    paths: Sequence[Path],
    rule: IntensityRule = "category",
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int = 4,
) -> Decoding:
    """The decoding of one category's images under ``rule`` (see the module docstring).

    Only files of more than 8 bits are decoded here; unreadable files are left to the
    data check, which reports them.
    """
    if not isinstance(rule, str):
        low, high = float(rule[0]), float(rule[1])
        return Decoding(max_image_pixels, (low, high), (low, high))
    if rule == "type":
        return Decoding(max_image_pixels)
    from concurrent.futures import ThreadPoolExecutor

    def safe(path: Path) -> tuple[str, float, float] | None:
        try:
            return extrema(path, max_image_pixels)
        except DataError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = [e for e in pool.map(safe, paths) if e is not None]
    integers = [e for e in found if e[0] in INTEGER_MODES]
    floats = [e for e in found if e[0] in FLOAT_MODES]
    integer_range = bit_depth_range(max(e[2] for e in integers)) if integers else None
    float_range = None
    if floats:
        low, high = min(e[1] for e in floats), max(e[2] for e in floats)
        float_range = (0.0, 1.0) if low >= 0 and high <= 1 else (low, high)
        if not math.isfinite(float_range[0]) or not math.isfinite(float_range[1]):
            float_range = None
    return Decoding(max_image_pixels, integer_range, float_range)
