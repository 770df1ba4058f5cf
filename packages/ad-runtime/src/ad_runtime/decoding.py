"""Image and mask files as users bring them, decoded to what every method expects.

Images become 8-bit RGB, masks binary, both oriented as image viewers show them (the EXIF
orientation tag applied). The rules, chosen so that no file turns into silently wrong
numbers:

- **Formats.** Every extension of :data:`IMAGE_EXTENSIONS` is read (PNG, JPEG, BMP, TIFF,
  WebP, GIF, PNM, TGA, QOI, JPEG 2000, AVIF where Pillow has the codec); the extensions of
  :data:`UNDECODABLE_EXTENSIONS` are images no installed library decodes (HEIC, camera raw,
  ...), named by the data check's inventory instead of being dropped silently. A 0-byte
  file is called empty, not undecodable.
- **Bit depth.** 8-bit modes (L, RGB, RGBA, P, ...) are kept as they are. 16-bit and
  32-bit integer and float images are mapped linearly from an intensity range to 0..255,
  one range for all images of a category (:func:`category_decoding`), so relative
  intensities between images are kept and nothing is clipped: integers use the full scale
  ``2**b - 1`` of the smallest bit depth ``b`` in :data:`BIT_DEPTHS` that holds the
  category's largest value (a 12-bit camera's PNGs: 0..4095); floats use 0..1 when every
  value lies there, else the category's own minimum..maximum. ``data.intensity_range``
  overrides: ``type`` (the container's full scale: 0..65535 for 16 bits, 0..1 for floats)
  or an explicit ``[low, high]`` (values outside are clipped). 16-bit colour (RGB, RGBA)
  files, which Pillow would cut to their high byte, are decoded by OpenCV at full
  precision (``IMREAD_UNCHANGED``, BGR to RGB) and follow the same rule, one range for
  their three channels.
- **Masks.** Any mode. A grey mask with few levels (0/255, 0/1, VisA's defect ids) is
  binarised at ``> 0``; one with more than :data:`LABEL_LEVELS` levels (anti-aliasing) or
  in a lossy format (JPEG, whatever its levels: the compression rings around every edge) is
  thresholded at half its maximum. A colour mask (one colour per defect class) is read
  per pixel through its brightest channel, never its luminance, so a dark blue class is as
  much a defect as a yellow one: with few colours every non-black pixel is a defect; with
  many (anti-aliased or lossy) a pixel is a defect when it reaches half of its own labelled
  colour (the most common colour it is nearest to in hue). The data check names the masks
  thresholded, and those whose thresholding drops labelled (non-zero) pixels.
- **Size limit.** An image of more than ``data.max_image_pixels`` pixels (default PIL's
  own limit) is refused from its header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
import os
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
INTEGER_MODES = frozenset(
    {"I;16", "I;16L", "I;16B", "I;16N", "I", "I;32", "I;32L", "I;32B", "RGB;16", "RGBA;16"}
)
FLOAT_MODES = frozenset({"F", "F;32", "F;32F"})
TYPE_RANGES = dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N", "RGB;16", "RGBA;16"), 65535.0)
LABEL_LEVELS = 16  # more distinct values than this: a grey-level (lossy) mask
SAME_HUE = 0.99  # cosine of two colours taken as one hue (a label and its blend with black)
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


def _decodable(extensions: dict[str, str]) -> tuple[str, ...]:
    """The extensions whose Pillow codec is present (WebP, AVIF and JPEG 2000 are optional)."""
    from PIL import features

    return tuple(e for e, codec in extensions.items() if not codec or features.check(codec))


# the file types data sets and predictions read (lower case), with the codec each needs
IMAGE_EXTENSIONS = _decodable(
    {
        **dict.fromkeys((".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib"), ""),
        **dict.fromkeys((".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"), ""),
        **dict.fromkeys((".tga", ".qoi"), ""),
        ".webp": "webp",
        ".avif": "avif",
        **dict.fromkeys((".jp2", ".j2k", ".jpx"), "jpg_2000"),
    }
)
# images of formats no installed library decodes: named, never read
UNDECODABLE_EXTENSIONS = tuple(
    e
    for e in (
        *(".heic", ".heif", ".avif", ".jxl", ".exr", ".hdr", ".svg"),
        *(".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raw"),  # camera raw
    )
    if e not in IMAGE_EXTENSIONS
)
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "JPEG2000"})  # Pillow's names: masks always thresholded
DEEP_COLOUR = {"RGB": "RGB;16", "RGBA": "RGBA;16"}  # Pillow mode -> ours at 16 bits a channel


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
    levels: int  # distinct values (colours, for a colour mask) in the file
    thresholded: bool  # True: cut at half of the label's value; False: > 0
    oriented: bool
    lost: int = 0  # labelled (non-zero) pixels that thresholding left out
    lossy: bool = False  # a lossy format (JPEG): thresholded whatever its levels


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
    if _is_empty(path):
        raise EmptyFileError(path)
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


def _is_empty(source: Path | IO[bytes]) -> bool:
    """A 0-byte file, or an upload of no bytes."""
    if isinstance(source, io.BytesIO):
        return source.getbuffer().nbytes == 0
    if isinstance(source, (str, os.PathLike)):
        return Path(source).is_file() and Path(source).stat().st_size == 0
    return False


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


class EmptyFileError(DataError):
    """A 0-byte file (an interrupted copy or download): empty, not undecodable."""

    def __init__(self, path: Path) -> None:
        self.reason = "the file is empty: 0 bytes"
        super().__init__(
            f"File {path} is empty (0 bytes; an interrupted copy or download?).", SKIP_HINT
        )


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
    return Probe((width, height), pixel_mode(image), tag != 1)


def pixel_mode(image: Image.Image) -> str:
    """Pillow's mode, or ``RGB;16`` / ``RGBA;16`` for 16-bit colour, which Pillow opens as
    8-bit ``RGB`` keeping only the high byte (its raw mode, from the header, says 16 bits)."""
    if image.mode not in DEEP_COLOUR or not getattr(image, "tile", None):  # read before load
        return image.mode
    args = image.tile[0][3]
    raw = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
    return DEEP_COLOUR[image.mode] if ";16" in raw else image.mode


def read_deep_colour(path: Path | IO[bytes]) -> np.ndarray:
    """[H,W,3] uint16 RGB of a 16-bit colour file (or upload) at full precision (OpenCV,
    unchanged depth, BGR to RGB, alpha dropped); EXIF orientation is applied by the caller."""
    import cv2

    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    if isinstance(path, io.BytesIO):
        values = cv2.imdecode(np.frombuffer(path.getbuffer(), dtype=np.uint8), flags)
    else:
        values = cv2.imread(str(path), flags)
    if values is None or values.ndim != 3:
        raise UndecodableImageError(path, ValueError("OpenCV cannot decode its 16-bit colour"))
    return np.ascontiguousarray(values[..., 2::-1])  # BGR(A) -> RGB


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


def _pixels_rgb(
    image: Image.Image, mode: str, decoding: Decoding, path: Path | IO[bytes]
) -> Image.Image:
    if not is_high_depth(mode):
        return image.convert("RGB")
    # [H,W] uint16 / int32 / float32, or [H,W,3] uint16 for 16-bit colour
    values = read_deep_colour(path) if mode in DEEP_COLOUR.values() else np.asarray(image)
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
        tag, mode = orientation(image), pixel_mode(image)
        if mode in DEEP_COLOUR.values():  # decoded by OpenCV, then turned upright
            return upright(_pixels_rgb(image, mode, decoding, path), tag)
        return _pixels_rgb(upright(_load(image, path), tag), mode, decoding, path)


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
    """[H,W] numbers of a grey mask in any mode, or [H,W,3] uint8 of a colour one (an RGB or
    palette mask whose channels differ somewhere)."""
    if is_high_depth(image.mode) or image.mode in ("L", "1"):
        return np.asarray(image.convert("L") if image.mode == "1" else image)
    rgb = np.asarray(image.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]  # grey saved as colour
    return rgb


def _levels(values: np.ndarray) -> int:
    if values.dtype == np.uint8:
        return int(np.count_nonzero(np.bincount(values.ravel(), minlength=256)))
    return int(np.unique(values).size)


def _colour_labels(rgb: np.ndarray) -> np.ndarray:
    """[H,W,3] -> [H,W] bool: a pixel is a defect when its brightest channel reaches half of
    that of its labelled colour (the labelled colour nearest to it in hue).

    Labelled colours are the common ones among pixels at least a quarter as bright as the
    brightest: colours binned 32 levels a channel (JPEG's noise stays in one bin), each bin
    over 2% of those pixels (at most :data:`LABEL_LEVELS`), as the mean colour of its pixels,
    and of those of one hue (a label and its blends towards black along a long edge) the
    brightest.
    """
    flat = rgb.reshape(-1, 3).astype(np.float32)  # [N,3]
    lit = flat.max(axis=1)  # [N]
    bright = lit > lit.max() / 4.0  # [N]
    if not bright.any():
        return np.zeros(rgb.shape[:2], bool)
    bins = (rgb.reshape(-1, 3)[bright] // 32).astype(np.int64) @ np.array([64, 8, 1])  # [M]
    counts = np.bincount(bins, minlength=512)  # [512]
    order = np.argsort(counts)[::-1][:LABEL_LEVELS]
    order = order[counts[order] >= 0.02 * bright.sum()]
    sums = np.stack([np.bincount(bins, flat[bright, c], 512) for c in range(3)], axis=1)
    labels = sums[order] / counts[order, None]  # [K,3] mean colour of each common bin
    labels = labels[np.argsort(-labels.max(axis=1))]  # brightest first
    unit = labels / np.linalg.norm(labels, axis=1, keepdims=True)  # [K,3]
    # a blend of a label towards black has its hue: keep the brightest colour of each hue
    kept: list[int] = []
    for i in range(len(labels)):
        if all(float(unit[i] @ unit[j]) < SAME_HUE for j in kept):
            kept.append(i)
    labels, unit = labels[kept], unit[kept]
    nearest = np.argmax(flat @ unit.T, axis=1)  # [N] the label closest in hue
    defect = (lit > 0) & (lit >= labels.max(axis=1)[nearest] / 2.0)  # [N]
    return defect.reshape(rgb.shape[:2])


def binarise(values: np.ndarray, lossy: bool = False) -> tuple[np.ndarray, int, bool]:
    """[H,W] grey or [H,W,3] colour -> ([H,W] bool, distinct levels or colours, thresholded?).

    ``lossy``: the file's format is lossy (JPEG), so it is thresholded whatever its levels.
    """
    if values.ndim == 3:  # a colour-coded mask
        levels = int(np.unique(values.reshape(-1, 3), axis=0).shape[0])
        if levels > LABEL_LEVELS or lossy:
            return _colour_labels(values), levels, True
        return values.max(axis=2) > 0, levels, False
    levels = _levels(values)
    if levels > LABEL_LEVELS or lossy:
        return values > float(values.max()) / 2.0, levels, True
    return values > 0, levels, False


def decode_mask(path: Path, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedMask:
    """A mask file as an upright binary mask, with how it was binarised."""
    with open_image(path, max_image_pixels) as image:
        tag = orientation(image)
        lossy = image.format in LOSSY_FORMATS
        values = mask_values(upright(_load(image, path), tag))
        mask, levels, thresholded = binarise(values, lossy)
        lit = values.max(axis=2) > 0 if values.ndim == 3 else values > 0
        # JPEG's ringing is not a label: only lossless files can lose labelled pixels
        lost = 0 if lossy else int(np.count_nonzero(lit & ~mask))
        return DecodedMask(mask, levels, thresholded, tag != 1, lost, lossy)


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
        mode = pixel_mode(image)
        if not is_high_depth(mode):
            return None
        if mode in DEEP_COLOUR.values():
            values = read_deep_colour(path)
            return mode, float(values.min()), float(values.max())
        low, high = _load(image, path).getextrema()
        return mode, float(low), float(high)


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
