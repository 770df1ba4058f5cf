"""AnomalyDINO stage by stage against a transcription of the authors' pipeline.

Reference: github dammsi/AnomalyDINO @ b3435f0 and the DINOv2 hub model it loads
(facebookresearch/dinov2 @ e1277af), transcribed in ``tests/anomalydino_reference.py``.
Shared seeded random weights in DINOv2's own format (a 2-block, width-32, patch-14 ViT with
a 17 x 17 position table, read at 15 x 15 as ViT-S/14's 37 x 37 is read at 32 x 32) are
saved as a DINOv2 ``.pth`` file and loaded by our timm backbone through its file path, so
the state-dict mapping is part of every comparison. Inputs: MVTec-like PNG files written
here, 210 x 210 px, and non-square ones for the preprocessing.

Validation of the transcription (once, by a script outside the repository, CPU, against
the authors' modules imported from b3435f0 with OpenCV 4.10.0.84, scikit-learn 1.5.2,
faiss-cpu 1.15.1 and their ``torch.hub.load`` answered by DINOv2's own
``DinoVisionTransformer`` built from these weights, at e1277af and again at b8931f7):
``prepare_image`` bitwise equal (210 x 210, 300 x 229 and 130 x 97 files); features
(``get_intermediate_layers``) 9e-16 relative in float64, 9e-7 in float32; background masks
identical (their randomized PCA, seeded, is 4e-7 from the exact component; the nearest
component value lay 0.09 from the threshold); every rotation bitwise equal;
``dists2map`` 4e-16; ``mean_top1p`` equal; ``run_anomaly_detection`` end to end (masking
with and without masked references, rotation, 1 and 3 neighbours; no masking, no
rotation): patch distances, TIFF maps and image scores within 1.4e-6 of the largest patch
distance (their float32 faiss search against float64 here).

Tolerances. Float64 stage comparisons (features, bank rows, PCA component, score and map
from given distances): 1e-10 relative to the largest value (float64's 2.2e-16 times the
longest reduction here, 4 x 32 MLP inputs through 226 tokens and two blocks, is ~1e-13;
measured 1e-14). The nearest-neighbour search runs in float32 (adcore's kNN, as faiss in
theirs), so patch distances from float64 features are held to D float32 roundings,
32 x 1.2e-7 absolute. Our float32 method end to end (bank, scores, maps) against the
float64 transcription: 1e-4 relative to the largest patch distance (measured 1.1e-6).
Masks and rotations: exactly equal, with the component's distance to the threshold asserted
larger than rounding so the comparison cannot flip a patch. Preprocessing: 1e-6 on the
normalised floats (the preprocessing tests' tolerance: uint8 -> float in another order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import anomalydino_reference as ref
from ad_dino.backbone import build_vit
from ad_dino.config import AnomalyDinoConfig
from ad_dino.method import AnomalyDino
from ad_dino.model import (
    DinoPatchFeatures,
    background_mask,
    first_principal_component,
    normalise_bank,
    patch_distances,
    patch_map,
    rotate,
    top_fraction_score,
)
from adcore.contracts.dataset import Sample
from adcore.contracts.method import FitContext, Runtime
from adcore.data.loading import SampleImages

SIZE = 210  # a 15 x 15 grid: the top 1 % is the mean of int(2.25) = 2 patches
HEADS = ref.TINY["heads"]
F64 = 1e-10
F32 = 1e-4
ARCH = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 238}


@pytest.fixture(scope="module")
def state():
    return ref.dinov2_state(0)


@pytest.fixture(scope="module")
def vit_file(state, tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "tiny_dinov2_pretrain.pth"
    torch.save(state, path)
    return path


def tiny_vit(path):
    vit, identity = build_vit("vit_small_patch14_dinov2", str(path), 0, **ARCH)
    assert identity["source"] == "file"
    return vit


@pytest.fixture(scope="module")
def features64(vit_file):
    return DinoPatchFeatures(tiny_vit(vit_file)).double()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("part")
    images = {
        "train": ref.object_image(SIZE, 10),
        "good": ref.object_image(SIZE, 11),
        "scratch": ref.object_image(SIZE, 13, defect=True),
        "wide": ref.object_image(300, 3, height=229),
        "tall": ref.object_image(97, 4, height=130),
    }
    paths = {}
    for name, pixels in images.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    return paths


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def loaded(path, geometry) -> torch.Tensor:
    """The host's loader: uint8 [3, S, S]."""
    return SampleImages([Sample(image_path=path, label=0, category="part")], geometry)[0]["image"]


def close(ours, theirs, tol) -> float:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    assert error <= tol, error
    return error


# --- preprocessing ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def geometry(vit_file):
    return AnomalyDino(
        AnomalyDinoConfig(resolution=SIZE), Runtime(), vit=tiny_vit(vit_file)
    ).geometry


@pytest.mark.parametrize("name", ["train", "wide", "tall"])
def test_preprocessing_is_the_authors_within_our_view(files, geometry, name):
    """Square files: their tensor exactly. Non-square: they keep the whole rectangle (cut to
    whole patches at the bottom/right), the host a centre square; inside that square the
    pixels are theirs."""
    ours = geometry.normalize(loaded(files[name], geometry)[None])[0]
    rgb = pixels(files[name])
    theirs = ref.resized_image(rgb, SIZE)
    left, top, right, bottom = geometry.resized_box(rgb.shape[1], rgb.shape[0])
    close(ours, theirs[:, top:bottom, left:right], 1e-6)
    if name == "train":
        assert tuple(theirs.shape[1:]) == (SIZE, SIZE) == tuple(ours.shape[1:])
    assert (geometry.resize, geometry.filter, geometry.output_size) == (
        "shorter_side", "bicubic", SIZE
    )  # fmt: skip


# --- features: our timm ViT against DINOv2's get_intermediate_layers ---------------------


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (238, 238), (SIZE, 266), (220, 150)])
def test_features_equal_dinov2_hub_model(state, features64, shape):
    """Interpolated table (15 x 15), the stored one (17 x 17), rectangles (15 x 19), and a
    size that is cut to whole patches (15 x 10 from 220 x 150)."""
    images = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1))
    ours, grid = features64(images.double())
    cut = images[..., : shape[0] // 14 * 14, : shape[1] // 14 * 14]
    theirs = ref.dinov2_features(state, cut, HEADS)
    assert grid == (shape[0] // 14, shape[1] // 14)
    close(ours, theirs, F64)


def test_float32_features_within_rounding(state, vit_file):
    image = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    ours, _ = DinoPatchFeatures(tiny_vit(vit_file))(image)
    assert ours.dtype == torch.float32
    close(ours, ref.dinov2_features(state, image, HEADS), F32)


# --- rotation ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (48, 64), (97, 130)])
def test_rotations_are_opencv_4_pixel_for_pixel(shape):
    image = ref.object_image(shape[1], 5, height=shape[0])
    ours = rotate(torch.from_numpy(image).permute(2, 0, 1)[None])  # [8, 3, H, W]
    for index, angle in enumerate(ref.ANGLES):
        theirs = ref.rotate_image(image, angle)
        np.testing.assert_array_equal(ours[index].permute(1, 2, 0).numpy(), theirs)


# --- masking -------------------------------------------------------------------------------


def test_background_mask_is_the_authors(files, features64):
    """Both signs of the features, so both sides of the centre test are taken."""
    tensor, grid = ref.prepare_image(pixels(files["scratch"]), SIZE, 14)
    features, _ = features64(tensor[None].double())
    flips = set()
    for sign in (1.0, -1.0):
        x = sign * features
        component = first_principal_component(x)[0].numpy()
        exact = ref.first_pc(x[0].numpy())
        close(component, exact, F64)
        assert np.abs(exact - 10.0).min() > 1e-3  # far beyond rounding: no patch can flip
        theirs = ref.background_mask(x[0].numpy(), grid)
        np.testing.assert_array_equal(background_mask(x, grid)[0].numpy(), theirs)
        centre = (exact > 10).reshape(grid)[3:12, 3:12]
        flips.add(bool(centre.sum() <= centre.size * 0.35))
        assert 0.1 < theirs.mean() < 0.9
    assert flips == {True, False}


# --- patch scores, image score, map (float64 stages) --------------------------------------


def test_scores_and_map_stages_in_float64(state, files, features64):
    train, _ = ref.prepare_image(pixels(files["train"]), SIZE, 14)
    test, grid = ref.prepare_image(pixels(files["scratch"]), SIZE, 14)
    bank = ref.reference_bank(state, [pixels(files["train"])], SIZE, HEADS, rotation=False)
    reference = ref.patch_scores(state, bank, pixels(files["scratch"]), SIZE, HEADS, k=3)
    ours_bank = normalise_bank(features64(train[None].double())[0][0], "cosine")
    close(ours_bank, bank, F64)
    distances = patch_distances(features64(test[None].double())[0], ours_bank, 3, "cosine")
    # the search runs in float32 (adcore's kNN, as faiss in theirs): |q|^2 + |b|^2 - 2 q.b of
    # unit vectors is exact to D float32 roundings
    limit = ours_bank.shape[1] * np.finfo(np.float32).eps
    assert np.abs(distances.reshape(grid).numpy() - reference).max() <= limit
    # score and map from the same float64 distances
    exact = torch.from_numpy(reference).reshape(1, -1)
    close(top_fraction_score(exact, 0.01), ref.mean_top1p(reference), F64)
    close(patch_map(exact, grid, (SIZE, SIZE), 4.0)[0], ref.dists2map(reference, (SIZE, SIZE)), F64)
    odd = torch.from_numpy(np.random.default_rng(0).random((1, 7 * 9)))  # 63 patches: the max
    close(top_fraction_score(odd, 0.01), ref.mean_top1p(odd.numpy()), F64)
    close(
        patch_map(odd, (7, 9), (50, 64), 4.0)[0],
        ref.dists2map(odd.numpy().reshape(7, 9), (50, 64)),
        F64,
    )


# --- the method end to end, float32, through the host's loader ----------------------------


@pytest.mark.parametrize(
    ("settings", "masking", "mask_references", "rotation", "k"),
    [
        ({"masking": "on"}, True, False, True, 1),
        ({"masking": "on", "mask_references": True, "num_neighbors": 3}, True, True, True, 3),
        ({"masking": "off", "rotation": "off"}, False, False, False, 1),
    ],
)
def test_method_end_to_end(state, files, vit_file, settings, masking, mask_references, rotation, k):
    config = AnomalyDinoConfig(resolution=SIZE, **settings)
    method = AnomalyDino(config, Runtime(), vit=tiny_vit(vit_file))
    reference_image = loaded(files["train"], method.geometry)
    method.fit(FitContext("part", "part", 1, batches=[reference_image[None]]))
    bank = ref.reference_bank(
        state, [pixels(files["train"])], SIZE, HEADS, rotation=rotation,
        masking=mask_references,
    )  # fmt: skip
    assert method.bank.shape == bank.shape
    close(method.bank, bank, F32)
    names = ["good", "scratch"]
    prediction = method.predict(torch.stack([loaded(files[n], method.geometry) for n in names]))
    for index, name in enumerate(names):
        theirs = ref.patch_scores(state, bank, pixels(files[name]), SIZE, HEADS, masking, k)
        scale = np.abs(theirs).max()
        map_error = np.abs(prediction.maps[index].numpy() - ref.dists2map(theirs, (SIZE, SIZE)))
        assert map_error.max() / scale <= F32
        assert abs(float(prediction.scores[index]) - ref.mean_top1p(theirs)) / scale <= F32
    assert prediction.scores[1] > prediction.scores[0]  # the scratch scores higher
