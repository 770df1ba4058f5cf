"""Decoding and resizing, done once for every data set, in DataLoader workers.

Images become uint8 [3,S,S] tensors through the method's declared preprocessing (resize with
its filter, then centre crop: :class:`adcore.preprocessing.Preprocessing`); masks get the
same geometry with nearest-neighbour resizing, so a pixel of the map and a pixel of the mask
always describe the same place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from adcore.dataset import Sample
from adcore.errors import DataError
from adcore.preprocessing import Preprocessing

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise DataError(
            f"File {path} does not exist.", "Check the data set root and its layout."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(
            f"File {path} cannot be decoded as an image ({error}).",
            "Replace or remove the file, or rerun with --skip-bad-samples to leave it out.",
        ) from None
    return image


def read_image(path: Path) -> Image.Image:
    """Decode any image as RGB (grayscale categories such as MVTec's grid become RGB)."""
    return _open(path).convert("RGB")


def read_mask(path: Path | None, size: tuple[int, int]) -> Image.Image:
    """A binary mask as an 'L' image with values 0/1; ``None`` is all-normal of ``size`` (w,h).

    Masks are binarised with ``> 0``: VisA stores defect ids, MVTec stores 255.
    """
    if path is None:
        return Image.new("L", size, 0)
    mask = np.asarray(_open(path).convert("L")) > 0
    return Image.fromarray(mask.astype(np.uint8))


class SampleImages:
    """A map-style dataset over samples: decoded, resized, as uint8 tensors."""

    def __init__(
        self,
        samples: Sequence[Sample],
        geometry: Preprocessing,
        original_masks: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.geometry = geometry
        self.original_masks = original_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        sample = self.samples[index]
        image = read_image(sample.image_path)
        mask = read_mask(sample.mask_path, image.size)
        if mask.size != image.size:
            raise DataError(
                f"Mask {sample.mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                f"{sample.image_path} is {image.size[0]}x{image.size[1]}.",
                "Fix or remove the pair, or rerun with --skip-bad-samples.",
            )
        pixels = self.geometry.apply(image)  # [S,S,3]
        item: dict[str, Any] = {
            "image": torch.from_numpy(pixels.copy()).permute(2, 0, 1),  # [3,S,S] uint8
            "mask": torch.from_numpy(
                self.geometry.apply(mask, mask=True).copy()
            ),  # [S,S] uint8 0/1
            "label": sample.label,
            "index": index,
        }
        if self.original_masks:
            item["original_mask"] = np.asarray(mask, dtype=bool)  # [H,W]
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep variable-size original masks as a list."""
    import torch

    batch: dict[str, Any] = {
        "image": torch.stack([item["image"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "label": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
    if "original_mask" in items[0]:
        batch["original_mask"] = [item["original_mask"] for item in items]
    return batch


def make_loader(
    samples: Sequence[Sample],
    geometry: Preprocessing,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    original_masks: bool = False,
    pin_memory: bool = False,
) -> Any:
    """A DataLoader yielding dicts: image uint8 [B,3,S,S], mask uint8 [B,S,S], label, index."""
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        SampleImages(samples, geometry, original_masks),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
