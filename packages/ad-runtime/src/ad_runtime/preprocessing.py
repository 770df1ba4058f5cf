"""How an image reaches a method: resize, filter, centre crop and normalisation, as a record.

Each method declares its authors' preprocessing as a :class:`Preprocessing`; the host's
loader workers apply it to images (with the declared PIL filter) and to masks (with the
declared mask filter, nearest-neighbour unless the authors resize masks otherwise), and
``evaluation.resolution: original`` maps anomaly maps back through the same crop
(:meth:`Preprocessing.crop_box`). The arithmetic is torchvision's on PIL images, so a
declaration equals the authors' transform pixel for pixel:

- ``resize="stretch"``: both sides to ``size`` (``transforms.Resize((size, size))``).
- ``resize="shorter_side"``: the shorter side to ``size``, the longer one to
  ``int(size * long / short)`` (``transforms.Resize(size)``); a centre crop then gives a
  square (``crop`` defaults to ``size``).
- centre crop: top-left corner ``int(round((resized - crop) / 2))`` (``transforms.CenterCrop``).
- ``filter``: PIL's resampling filter (what torchvision uses for PIL images).
- ``mask_filter``: the filter for masks, same resize and crop. ``nearest`` (the default)
  keeps them binary. Any other filter resizes the binary mask as a 0/255 image and divides
  by 255 (torchvision's ``Resize`` then ``ToTensor`` on the PIL mask): a soft mask in [0,1],
  which training sees, while evaluation's ground truth is the soft mask ``> 0.5``. AF-CLIP
  (github Faustinaqq/AF-CLIP, ``main.py`` ``target_transform``) and miniCLIP (github
  suniverse77/miniCLIP, ``af_tiny/utils/util.py`` ``load_model``) do this with ``bicubic``;
  their training downsamples the soft mask to the patch grid, their evaluation thresholds it
  at 0.5 (``util/utils.py`` / ``af_tiny/utils/evaluation.py``). PIL leaves an image already
  at the target size unchanged, so a binary mask of the method's side stays binary.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's statistics (open_clip's OPENAI_DATASET_MEAN/STD), used by every CLIP model here
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ResizeMode = Literal["stretch", "shorter_side"]
Filter = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL's convention


def pil_filter(name: str) -> int:
    """PIL's resampling constant for a :data:`Filter` name."""
    from PIL import Image

    return int(getattr(Image.Resampling, name.upper()))


class Preprocessing(BaseModel):
    """A method's input geometry and normalisation; masks follow with ``mask_filter``.

    ``size``: side of the stretched square, or the shorter side; ``crop``: side of the
    centre crop (``None``: none, for ``stretch``); ``filter``: the images' PIL filter;
    ``mask_filter``: the masks' (``nearest``: binary; otherwise soft, see the module
    docstring); ``mean``/``std`` standardise [0,1] RGB.
    """

    model_config = ConfigDict(frozen=True)

    size: int
    resize: ResizeMode = "stretch"
    filter: Filter = "bilinear"
    mask_filter: Filter = "nearest"
    crop: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_open_clip(cls, config: dict[str, Any], size: int) -> Preprocessing:
        """open_clip's own inference preprocessing for a model, at side ``size``.

        ``config`` is ``open_clip.get_model_preprocess_cfg(model)``; as
        ``open_clip.transform.image_transform(size, is_train=False, ...)`` does it:
        ``shortest`` resizes the shorter side then centre-crops, ``squash`` stretches.
        """
        modes = {"shortest": "shorter_side", "squash": "stretch"}
        mode = config.get("resize_mode") or "shortest"
        if mode not in modes:
            raise ValueError(f"open_clip resize_mode {mode!r} (padding) is not supported")
        interpolation = config.get("interpolation") or "bicubic"
        return cls(
            size=size,
            resize=modes[mode],
            filter="bilinear" if interpolation == "bilinear" else "bicubic",
            mean=tuple(config.get("mean") or CLIP_MEAN),
            std=tuple(config.get("std") or CLIP_STD),
        )

    @classmethod
    def from_timm(cls, config: dict[str, Any], size: int | None = None) -> Preprocessing:
        """timm's own eval preprocessing for a model's ``pretrained_cfg``, output side ``size``.

        ``config`` is ``model.pretrained_cfg`` (timm sets it for every tag, also for random
        weights); ``size`` defaults to its ``input_size``. As
        ``timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))``
        does it in eval mode: resize to ``floor(size / crop_pct)`` (``center``: the shorter
        side; ``squash``: both sides) with the configured interpolation, then centre-crop
        ``size``; mean/std are the weights' own (ImageNet, CLIP, ...). Raises ``ValueError``
        for timm's ``border`` crop mode (padding), which has no equivalent here.
        """
        side = int(size if size is not None else config.get("input_size", (3, 224, 224))[-1])
        modes = {"center": "shorter_side", "squash": "stretch"}
        mode = config.get("crop_mode") or "center"
        if mode not in modes:
            raise ValueError(f"timm crop_mode {mode!r} (padding) is not supported")
        interpolation = config.get("interpolation") or "bicubic"
        if interpolation not in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
            raise ValueError(f"timm interpolation {interpolation!r} is not supported")
        return cls(
            size=math.floor(side / float(config.get("crop_pct") or 0.875)),
            resize=modes[mode],
            filter=interpolation,
            crop=side,
            mean=tuple(config.get("mean") or IMAGENET_MEAN),
            std=tuple(config.get("std") or IMAGENET_STD),
        )

    @model_validator(mode="before")
    @classmethod
    def _square_output(cls, values: Any) -> Any:
        # a shorter-side resize leaves a rectangle: the centre crop makes it square
        shorter_side = isinstance(values, dict) and values.get("resize") == "shorter_side"
        if shorter_side and values.get("crop") is None:
            values = {**values, "crop": values.get("size")}
        return values

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.crop is not None and self.crop > self.size:
            raise ValueError(f"crop {self.crop} is larger than the resized size {self.size}")
        return self

    @property
    def output_size(self) -> int:
        """Side of the square image the method sees, and of its anomaly maps."""
        return self.crop if self.crop is not None else self.size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize, before the crop."""
        if self.resize == "stretch":
            return self.size, self.size
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size

    def resized_box(self, width: int, height: int) -> Box:
        """The centre crop in the resized image's pixels."""
        resized_w, resized_h = self.resized_size(width, height)
        side = self.output_size
        left = round((resized_w - side) / 2.0)
        top = round((resized_h - side) / 2.0)
        return left, top, left + side, top + side

    def crop_box(self, width: int, height: int) -> Box:
        """The part of a ``width`` x ``height`` original that the method sees, in its pixels."""
        resized_w, resized_h = self.resized_size(width, height)
        left, top, right, bottom = self.resized_box(width, height)
        scale_x, scale_y = width / resized_w, height / resized_h
        return (
            round(left * scale_x),
            round(top * scale_y),
            round(right * scale_x),
            round(bottom * scale_y),
        )

    def apply(self, image: Image.Image, mask: bool = False) -> np.ndarray:
        """An image -> uint8 [S,S,3]; a 0/1 mask (``mask=True``) -> its evaluation ground
        truth, uint8 0/1 [S,S] (see :meth:`apply_mask`)."""
        if mask:
            return self.apply_mask(image)[0]
        return self._resize_and_crop(image, self.filter)

    def apply_mask(self, mask: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
        """A binary 'L' mask [H,W] (0 normal, nonzero defect) -> (ground truth, soft mask).

        ``nearest``: (the resized mask, uint8 [S,S] with the input's values, None). Other
        filters: the soft mask, float32 [S,S] in [0,1] (the mask as 0/255, resized with
        ``mask_filter`` and divided by 255, as ``ToTensor``), and the ground truth
        ``soft > 0.5`` as uint8 0/1 [S,S].
        """
        if self.mask_filter == "nearest":
            return self._resize_and_crop(mask, "nearest"), None
        from PIL import Image

        scaled = Image.fromarray(np.where(np.asarray(mask) > 0, 255, 0).astype(np.uint8))
        resized = self._resize_and_crop(scaled, self.mask_filter)  # uint8 [S,S], 0..255
        soft = resized.astype(np.float32) / np.float32(255)
        return (soft > 0.5).astype(np.uint8), soft

    def _resize_and_crop(self, image: Image.Image, filter_name: str) -> np.ndarray:
        """The geometry with ``filter_name``: uint8 [S,S] or [S,S,C] as the image's mode."""
        width, height = image.size
        image = image.resize(self.resized_size(width, height), pil_filter(filter_name))
        if self.crop is not None:  # always set for shorter_side
            image = image.crop(self.resized_box(width, height))
        return np.asarray(image)

    def normalize_array(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B,H,W,3] (as :meth:`apply` stacks them) -> float32 [B,3,H,W], scaled to
        [0,1] and standardised: the graph input of an exported bundle, without torch. Equal
        to :meth:`normalize` to float32 rounding (torch divides by a scalar through its
        reciprocal)."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32)
        return (chw / np.float32(255.0) - mean) / std

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float [B,3,H,W], scaled to [0,1] and standardised."""
        import torch

        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std
