"""Each method's declared preprocessing equals its authors' transform, pixel for pixel.

References, run here on the same non-square images (no network, no weights):
- PatchCore: amazon-science/patchcore-inspection @ fcaa92f1, ``datasets/mvtec.py``:
  ``Resize(resize)`` (shorter side, torchvision's default bilinear), ``CenterCrop``,
  ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``; rebuilt here from torchvision itself.
  Its mean/std are the weights' own: ``Preprocessing.from_timm`` equals timm's own
  ``create_transform(**resolve_data_config(pretrained_cfg=...))`` (timm 1.0.31).
- WinCLIP: open_clip's own ``image_transform(size, is_train=False, ...)`` for the model's
  preprocess config (bicubic shorter side, centre crop, OpenAI statistics).
- AnomalyDINO: dammsi/AnomalyDINO @ b3435f0, ``src/backbones.py`` ``DINOv2Wrapper``:
  ``Resize(resolution, BICUBIC, antialias=True)`` (shorter side), ``ToTensor``, ImageNet
  ``Normalize``; they keep the whole rectangle, the host sees its centre square
  (``CenterCrop``), which is what is compared (the cut to whole patches is the model's).
- AF-CLIP / miniCLIP: Faustinaqq/AF-CLIP @ bb7edec4 ``main.py`` and suniverse77/miniCLIP
  @ e8ffb70f ``af_tiny/utils/util.py``: ``Resize((s, s), BICUBIC)``, ``CenterCrop(s)``, CLIP
  statistics; rebuilt here from torchvision. Their masks: ``Resize((s, s), BICUBIC)`` and
  ``ToTensor`` (soft), ground truth ``> 0.5``; every other method's masks: nearest-neighbour.
Tolerance 1e-6 on the normalised floats (our uint8 -> float on the device against
torchvision's ``ToTensor``: the same arithmetic in another order).
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import timm
import timm.data
import torch
from PIL import Image
from timm.models import get_pretrained_cfg
from torchvision import transforms

from ad_afclip.plugin import adcore_methods
from ad_dino.config import AnomalyDinoConfig
from ad_dino.plugin import factory as anomalydino_factory
from ad_patchcore.config import PatchCoreConfig
from ad_patchcore.plugin import factory as patchcore_factory
from ad_runtime.preprocessing import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
)
from ad_winclip.config import WinClipConfig
from ad_winclip.plugin import factory as winclip_factory
from adcore.contracts.dataset import Sample
from adcore.contracts.method import Runtime
from adcore.data.loading import SampleImages, collate
from adcore.run.resolution import to_original_resolution

TINY = "preprocessing-test-tiny-vit"


def write_image(path, width: int, height: int, seed: int = 0) -> None:
    """A smooth gradient plus noise: every filter gives a visibly different result."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) % 97 * 2.5], axis=-1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nonsquare")
    paths = []
    for index, (width, height) in enumerate([(301, 203), (190, 333), (256, 256)]):
        path = folder / f"{index}.png"
        write_image(path, width, height, seed=index)
        paths.append(path)
    return paths


def ours(path, geometry: Preprocessing) -> torch.Tensor:
    """The host's loader then the method's normalisation -> float [3,S,S]."""
    item = SampleImages([Sample(image_path=path, label=0, category="c")], geometry)[0]
    return geometry.normalize(item["image"][None])[0]


def theirs(path, transform) -> torch.Tensor:
    with Image.open(path) as image:
        return transform(image.convert("RGB"))


def test_patchcore_equals_the_released_transforms(images):
    config = PatchCoreConfig(backbone="resnet18", pretrained="none")  # resize 256, crop 224
    geometry = patchcore_factory(config, Runtime()).geometry
    reference = transforms.Compose([
        transforms.Resize(config.resolution),
        transforms.CenterCrop(config.crop),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    for path in images:
        expected = theirs(path, reference)
        assert expected.shape == (3, 224, 224)
        torch.testing.assert_close(ours(path, geometry), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("wide_resnet50_2.tv_in1k", {}),  # bilinear, crop_pct 0.875, ImageNet statistics
        ("convnext_base.clip_laion2b", {}),  # bicubic, crop_pct 1.0, CLIP statistics
        ("resnet18.a1_in1k", {"crop_mode": "squash", "input_size": (3, 160, 160)}),
    ],
)
def test_from_timm_equals_timms_own_eval_transform(images, name, overrides):
    config = {**get_pretrained_cfg(name).to_dict(), **overrides}
    reference = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=config))
    geometry = Preprocessing.from_timm(config)
    for path in images:
        expected = theirs(path, reference)
        assert expected.shape == (3, *config["input_size"][1:])
        torch.testing.assert_close(ours(path, geometry), expected, atol=1e-6, rtol=0)


def test_from_timm_refuses_the_padding_crop_mode():
    with pytest.raises(ValueError, match="border"):
        Preprocessing.from_timm({"crop_mode": "border", "input_size": (3, 224, 224)})


def test_patchcore_normalises_with_its_weights_own_statistics(images):
    """A CLIP-trained ConvNeXt gets CLIP's mean/std (timm's pretrained config), with the
    released code's resize and crop; the default weights keep ImageNet's."""
    config = PatchCoreConfig(
        backbone="convnext_base.clip_laion2b", pretrained="none", layers=["stages.1", "stages.2"]
    )
    geometry = patchcore_factory(config, Runtime()).geometry
    assert (geometry.mean, geometry.std) == (CLIP_MEAN, CLIP_STD)
    reference = transforms.Compose([
        transforms.Resize(config.resolution),
        transforms.CenterCrop(config.crop),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])  # fmt: skip
    for path in images:
        torch.testing.assert_close(ours(path, geometry), theirs(path, reference), atol=1e-6, rtol=0)


def test_winclip_equals_open_clips_own_preprocessing(images, tiny_vit):
    config = WinClipConfig(backbone=tiny_vit, pretrained="none", resolution=48, scales=[2, 3])
    method = winclip_factory(config, Runtime())
    cfg = open_clip.get_model_preprocess_cfg(open_clip.create_model(tiny_vit, pretrained=None))
    assert (cfg["resize_mode"], cfg["interpolation"]) == ("shortest", "bicubic")
    reference = open_clip.image_transform(
        48, is_train=False, mean=cfg["mean"], std=cfg["std"],
        resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"],
    )  # fmt: skip
    for path in images:
        torch.testing.assert_close(ours(path, method.geometry), theirs(path, reference),
                                   atol=1e-6, rtol=0)  # fmt: skip


def test_anomalydino_sees_the_centre_of_the_authors_bicubic_resize(images):
    config = AnomalyDinoConfig(backbone="test_vit", pretrained="none", resolution=48)
    method = anomalydino_factory(config, Runtime())
    reference = transforms.Compose([
        transforms.Resize(48, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(48),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    for path in images:
        torch.testing.assert_close(ours(path, method.geometry), theirs(path, reference),
                                   atol=1e-6, rtol=0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 48, "layers": 4, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    (folder / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    return TINY


def bicubic_stretch(side: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize((side, side), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(side),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("afclip", {"pretrained": "none", "resolution": 48, "layers": [2, 4]}),
        ("miniclip", {"pretrained": "none", "resolution": 64}),
    ],
)
def test_afclip_and_miniclip_declare_the_authors_bicubic_stretch(images, tiny_vit, name, settings):
    spec = next(s for s in adcore_methods() if s.name == name)
    if name == "afclip":
        settings = {**settings, "backbone": tiny_vit}
    method = spec.factory(spec.config(**settings), Runtime())
    side = settings["resolution"]
    assert method.geometry.mask_filter == "bicubic"  # masks: their target_transform
    for path in images:
        torch.testing.assert_close(ours(path, method.geometry), theirs(path, bicubic_stretch(side)),
                                   atol=1e-6, rtol=0)  # fmt: skip


def test_masks_follow_the_image_geometry_with_nearest_neighbour(tmp_path):
    mask = np.zeros((203, 301), np.uint8)
    mask[20:60, 10:50] = 255  # left of the crop: must vanish
    mask[100:150, 140:200] = 255  # inside
    Image.fromarray(mask).save(tmp_path / "0_mask.png")
    write_image(tmp_path / "0.png", 301, 203)
    geometry = Preprocessing(size=64, resize="shorter_side", filter="bicubic")
    sample = Sample(image_path=tmp_path / "0.png", label=1, category="c",
                    mask_path=tmp_path / "0_mask.png")  # fmt: skip
    item = SampleImages([sample], geometry)[0]
    reference = transforms.Compose([
        transforms.Resize(64, interpolation=transforms.InterpolationMode.NEAREST),
        transforms.CenterCrop(64),
    ])  # fmt: skip
    expected = np.asarray(reference(Image.fromarray((mask > 0).astype(np.uint8))))
    assert item["mask"].shape == (64, 64)
    np.testing.assert_array_equal(item["mask"].numpy(), expected)


def write_mask(path, height: int, width: int, defect) -> None:
    """A 0/255 mask file, as MVTec-AD's, with rows top:bottom and columns left:right set."""
    mask = np.zeros((height, width), np.uint8)
    top, bottom, left, right = defect
    mask[top:bottom, left:right] = 255
    Image.fromarray(mask).save(path)


def test_bicubic_masks_equal_the_authors_target_transform(tmp_path):
    """AF-CLIP's ``main.py`` / af_tiny's ``load_model``: ``Resize((S, S), BICUBIC)`` on the PIL
    mask, then ``ToTensor`` (soft, what their training downsamples to the patch grid); their
    evaluation ground truth is that ``> 0.5``. A mask already S x S comes out unchanged, a
    normal image's (no file) all zeros; ``nearest`` (every other method) stays as it was."""
    side = 48
    shapes = [(45, 61, (8, 30, 15, 45)), (61, 40, (0, 13, 7, 33)), (side, side, (24, 48, 0, 16))]
    samples = []
    for index, (height, width, defect) in enumerate(shapes):
        write_image(tmp_path / f"{index}.png", width, height, seed=index)
        write_mask(tmp_path / f"{index}_mask.png", height, width, defect)
        samples.append(Sample(image_path=tmp_path / f"{index}.png", label=1, category="c",
                              mask_path=tmp_path / f"{index}_mask.png"))  # fmt: skip
    write_image(tmp_path / "normal.png", 61, 45, seed=9)
    samples.append(Sample(image_path=tmp_path / "normal.png", label=0, category="c"))
    target_transform = transforms.Compose([
        transforms.Resize((side, side), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
    ])  # fmt: skip
    nearest = transforms.Resize((side, side), interpolation=transforms.InterpolationMode.NEAREST)
    geometry = Preprocessing(size=side, filter="bicubic", mask_filter="bicubic")
    loaded = SampleImages(samples, geometry, soft_masks=True)
    bicubic = collate([loaded[i] for i in range(len(samples))])
    evaluation = SampleImages(samples, geometry)[0]  # evaluation loaders: no soft mask
    assert "soft_mask" not in evaluation and torch.equal(evaluation["mask"], bicubic["mask"][0])
    plain = collate(
        [SampleImages(samples, Preprocessing(size=side), soft_masks=True)[i] for i in range(4)]
    )
    assert "soft_mask" not in plain
    assert bicubic["soft_mask"].dtype == torch.float32 and bicubic["mask"].dtype == torch.uint8
    for row, sample in enumerate(samples):
        if sample.mask_path is None:
            file = Image.new("L", (61, 45), 0)
        else:
            file = Image.open(sample.mask_path)
        soft = target_transform(file)[0]  # [S, S] in [0, 1]
        assert torch.equal(bicubic["soft_mask"][row], soft)
        assert torch.equal(bicubic["mask"][row], (soft > 0.5).to(torch.uint8))
        expected = np.asarray(nearest(file)) > 0
        np.testing.assert_array_equal(plain["mask"][row].numpy(), expected)
    soft = bicubic["soft_mask"]
    assert ((soft > 0) & (soft < 1))[0].sum() > 0  # the stretched edges are soft
    assert torch.equal(soft[2], bicubic["mask"][2].float())  # already S x S: unchanged
    assert torch.equal(bicubic["mask"][2], plain["mask"][2])
    assert soft[3].sum() == 0


def test_training_batches_carry_the_soft_mask(tmp_path):
    """``ad train`` hands a method the soft mask where the geometry declares one."""
    from adcore.contracts.method import TrainingSettings
    from adcore.run.training import _batches

    write_image(tmp_path / "0.png", 61, 45)
    write_mask(tmp_path / "0_mask.png", 45, 61, (8, 30, 15, 45))
    samples = [Sample(image_path=tmp_path / "0.png", label=1, category="c",
                      mask_path=tmp_path / "0_mask.png")]  # fmt: skip
    settings = TrainingSettings(epochs=1, batch_size=1)
    for mask_filter in ("nearest", "bicubic"):
        geometry = Preprocessing(size=48, mask_filter=mask_filter)
        item = SampleImages(samples, geometry, soft_masks=True)[0]
        (batch,) = _batches(samples, geometry, settings, 0, Runtime(), {}, 0)
        expected = item["soft_mask"] if mask_filter == "bicubic" else item["mask"].float()
        assert batch.masks.dtype == torch.float32
        assert torch.equal(batch.masks[0], expected)


def test_crop_box_by_hand():
    geometry = Preprocessing(size=64, resize="shorter_side")
    # 301x203: resized to int(64*301/203)=94 x 64; crop left round(15.0)=15 of 94
    assert geometry.resized_size(301, 203) == (94, 64)
    assert geometry.resized_box(301, 203) == (15, 0, 79, 64)
    # back in original pixels: x * 301/94 -> 48.03.., 252.97..; y * 203/64 -> 0, 203
    assert geometry.crop_box(301, 203) == (48, 0, 253, 203)
    stretched = Preprocessing(size=256, crop=224)
    assert stretched.crop_box(512, 300) == (32, 19, 480, 281)  # 16/256 and 240/256 of each side
    assert Preprocessing(size=64).crop_box(90, 70) == (0, 0, 90, 70)


def test_original_resolution_maps_back_through_the_same_crop(tmp_path):
    """A map that is 1 exactly on the mask's pixels seen by the method comes back on them."""
    width, height = 301, 203
    write_image(tmp_path / "0.png", width, height)
    mask = np.zeros((height, width), np.uint8)
    mask[:, 150:] = 255  # right half of the image
    Image.fromarray(mask).save(tmp_path / "0_mask.png")
    sample = Sample(image_path=tmp_path / "0.png", label=1, category="c",
                    mask_path=tmp_path / "0_mask.png")  # fmt: skip
    geometry = Preprocessing(size=64, resize="shorter_side")
    seen = SampleImages([sample], geometry)[0]["mask"].numpy().astype(np.float32)  # [64,64]
    maps, masks = to_original_resolution(seen[None], [sample], geometry)
    left, top, right, bottom = geometry.crop_box(width, height)
    assert masks[0].shape == maps[0].shape == (bottom - top, right - left)
    np.testing.assert_array_equal(masks[0], mask[top:bottom, left:right] > 0)
    # the boundary column moves by less than one input pixel (301/94 original pixels)
    agree = (maps[0] > 0.5) == masks[0]
    assert agree.mean() > 1 - 4 / (right - left)
