"""Decoding and resizing, done once for every data set, in DataLoader workers.

Files are decoded by :mod:`ad_runtime.decoding` (bit depth, orientation, mask values, limits).

Images become uint8 [3,S,S] tensors through the method's declared preprocessing (resize with
its filter, then centre crop: :class:`ad_runtime.preprocessing.Preprocessing`); masks get the
same geometry with the declared mask filter, so a pixel of the map and a pixel of the mask
always describe the same place. ``mask`` is always the binary ground truth that evaluation
scores against; training loaders (``soft_masks=True``) of a geometry whose mask filter is
not nearest-neighbour (the authors' soft bicubic masks) add ``soft_mask``, which training
uses as the mask instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ad_runtime.decoding import IMAGE_EXTENSIONS, Decoding, read_image, read_mask
from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.dataset import Sample
from adcore.infra.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "SampleImages", "collate", "make_loader"]
__all__ += ["Decoding", "read_image", "read_mask"]  # decoding lives in ad_runtime.decoding


class SampleImages:
    """A map-style dataset over samples: decoded, resized, as uint8 tensors."""

    def __init__(
        self,
        samples: Sequence[Sample],
        geometry: Preprocessing,
        original_masks: bool = False,
        decoding: Decoding | None = None,
        soft_masks: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.geometry = geometry
        self.original_masks = original_masks
        self.decoding = decoding or Decoding()
        self.soft_masks = soft_masks  # add soft_mask where the mask filter makes one

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        sample = self.samples[index]
        image = read_image(sample.image_path, self.decoding)
        mask = read_mask(sample.mask_path, image.size, self.decoding)
        if mask.size != image.size:
            raise DataError(
                f"Mask {sample.mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                f"{sample.image_path} is {image.size[0]}x{image.size[1]}.",
                "Fix or remove the pair, or rerun with --skip-bad-samples.",
            )
        pixels = self.geometry.apply(image)  # [S,S,3]
        truth, soft = self.geometry.apply_mask(mask)  # uint8 0/1 [S,S], float [S,S] or None
        item: dict[str, Any] = {
            "image": torch.from_numpy(pixels.copy()).permute(2, 0, 1),  # [3,S,S] uint8
            "mask": torch.from_numpy(truth.copy()),  # [S,S] uint8 0/1
            "label": sample.label,
            "index": index,
        }
        if self.soft_masks and soft is not None:  # what the authors' training sees
            item["soft_mask"] = torch.from_numpy(soft)  # [S,S] float32 in [0,1]
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
    if "soft_mask" in items[0]:
        batch["soft_mask"] = torch.stack([item["soft_mask"] for item in items])
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
    decoding: Decoding | None = None,
    soft_masks: bool = False,
) -> Any:
    """A DataLoader yielding dicts: image uint8 [B,3,S,S], mask uint8 0/1 [B,S,S], label,
    index; with ``soft_masks`` (training), soft_mask float [B,S,S] in [0,1] too where
    ``geometry.mask_filter`` is not nearest.

    ``decoding``: the category's :class:`~ad_runtime.decoding.Decoding` (bit-depth range, size
    limit); the defaults when None.
    """
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        SampleImages(samples, geometry, original_masks, decoding, soft_masks),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def images_on_device(loader: Any, device: str, advance: Any) -> Iterator[Any]:
    """A loader's images moved to ``device`` (uint8 ``[B,3,S,S]``), calling ``advance(B)``
    as the consumer takes each batch, so a progress bar follows the method's pace."""
    for batch in loader:
        yield batch["image"].to(device, non_blocking=True)
        advance(len(batch["image"]))
