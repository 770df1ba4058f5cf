"""``evaluation.resolution: original``: maps compared with each mask at its own size.

A method sees its declared crop of the image (:meth:`Preprocessing.crop_box`); its map is
resized (bilinear) to that crop's size in the original pixels and compared with the mask
cropped alike. Mask pixels outside the crop were never seen by the method and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ad_runtime.decoding import Decoding, image_size, read_mask
from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.dataset import Sample


def to_original_resolution(
    maps: np.ndarray,
    samples: Sequence[Sample],
    geometry: Preprocessing,
    decoding: Decoding | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """maps [N,S,S] -> (maps [h_i,w_i], masks bool [h_i,w_i]) at each crop's original size.

    Sizes are as a viewer shows the image (EXIF orientation applied, see
    :mod:`ad_runtime.decoding`), so masks drawn on the upright view line up.
    """
    import torch

    from adcore.toolkit.maps import upsample

    resized_maps, masks = [], []
    for value, sample in zip(maps, samples, strict=True):
        size = image_size(sample.image_path, decoding)
        mask = read_mask(sample.mask_path, size, decoding).crop(geometry.crop_box(*size))
        target = np.asarray(mask, dtype=bool)  # [h,w]
        resized_maps.append(upsample(torch.from_numpy(value)[None], target.shape)[0].numpy())
        masks.append(target)
    return resized_maps, masks
