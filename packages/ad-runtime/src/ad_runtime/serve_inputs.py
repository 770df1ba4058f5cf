"""What ``ad-runtime serve`` accepts: request bodies read within a size limit, and uploads
decoded by the toolkit's own rules (:func:`ad_runtime.decoding.read_image_bytes`), each bad
input turned into a status and a one-line reason (:class:`BadInput`), never an exception
that reaches the server. Nothing received is unpickled: bytes go to PIL's image decoders.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np

from ad_runtime.decoding import (
    IMAGE_EXTENSIONS,
    Decoding,
    ImageBytes,
    ImageTooLargeError,
    UndecodableImageError,
    probe,
    read_image_bytes,
)
from ad_runtime.errors import AdError
from ad_runtime.preprocessing import Preprocessing

TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


class BadInput(Exception):
    """A request the server refuses: HTTP ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers or {}


def too_large(size: int, limit: int) -> BadInput:
    return BadInput(
        413,
        f"The request body is {size} bytes or more, over the server's limit of {limit} bytes "
        "(--max-bytes): send a smaller file, or start the server with a higher --max-bytes.",
    )


async def limited(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused with 413 as soon as they pass ``limit`` bytes."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise too_large(total, limit)
        yield chunk


def check_length(headers: Any, limit: int) -> None:
    """Refuse a declared ``Content-Length`` over ``limit`` before reading any of the body."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)


def channel_problem(data: bytes) -> str | None:
    """Why a TIFF that PIL cannot open is refused, when its header says it is its channels:
    the decoding rules read grey, grey+alpha, palette, RGB, RGBA and CMYK (1 to 4 samples per
    pixel in the layouts PIL knows), not e.g. 2 samples without alpha or 5 and more."""
    if data[:4] not in TIFF_MAGIC:
        return None
    from PIL import TiffImagePlugin

    try:
        stream = io.BytesIO(data)
        directory = TiffImagePlugin.ImageFileDirectory_v2(stream.read(8))
        directory.load(stream)
        samples = directory.get(277, 1)
        bits = directory.get(258, (1,))
    except Exception:  # a header too damaged to read: left to the plain message
        return None
    bits = bits if isinstance(bits, tuple) else (bits,)
    return (
        f"a TIFF of {samples} channels ({'/'.join(str(b) for b in bits)} bits per sample), "
        "a channel layout the decoding rules do not read (grey, grey+alpha, palette, RGB, "
        "RGBA or CMYK)"
    )


def decode_upload(
    data: bytes, name: str, decoding: Decoding, preprocessing: Preprocessing
) -> np.ndarray:
    """One upload -> uint8 [S,S,3] as the model sees it; :class:`BadInput` for every bad file:
    400 empty, 413 over the pixel limit, 415 not an image, 422 channels it cannot read."""
    if not data:
        raise BadInput(400, f"{name} is empty (0 bytes): send the image file's bytes.")
    try:
        image = read_image_bytes(data, decoding, name)
        return preprocessing.apply(image)
    except ImageTooLargeError:
        width, height = probe(ImageBytes(data, name), None).size
        raise BadInput(
            413,
            f"{name} is {width}x{height} ({width * height} pixels), over the server's limit of "
            f"{decoding.max_image_pixels} pixels (--max-pixels): send a smaller image.",
        ) from None
    except UndecodableImageError as error:
        channels = channel_problem(data)
        if channels is not None:
            raise BadInput(422, f"{name} cannot be decoded: it is {channels}.") from None
        raise BadInput(
            415,
            f"{name} is not an image the server can decode ({error.reason}): send an image "
            f"file whole, in one of the formats ad eval reads ({', '.join(IMAGE_EXTENSIONS)}).",
        ) from None
    except AdError as error:
        raise BadInput(400, f"{name} cannot be decoded ({error.problem}).") from None
    except Exception as error:  # PIL's decoders raise more kinds than they document
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadInput(400, f"{name} cannot be decoded ({first}).") from None


def serving_decoding(decoding: Decoding, max_pixels: int | None) -> Decoding:
    """The bundle's decoding with the server's pixel limit (the lower of the two)."""
    limits = [v for v in (decoding.max_image_pixels, max_pixels) if v is not None]
    return replace(decoding, max_image_pixels=min(limits) if limits else None)
