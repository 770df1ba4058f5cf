"""MuSc equals the authors' released pipeline, stage by stage and end to end, on shared
seeded random weights of a tiny open_clip ViT (12 blocks of width 32, 8 px patches).

The transcription below (``ref_*``, float64, numpy where it is short) restates in its own
code the arithmetic of github xrli-U/MuSc @ b76b93d:

- backbone (``models/backbone/open_clip``): the model built at the run's image size, its
  position table resized bicubically (``resize_pos_embed``: ``align_corners=False``, no
  antialias); ``encode_image(x, out_layers)``: the residual stream after the chosen blocks
  (class token dropped by LNAMD), and the unit-length projected class token for RsCIN;
- LNAMD (``models/modules/_LNAMD.py``): a fresh ``LayerNorm([C, h, w])`` per image, then
  for r > 1 ``Unfold(r, padding=(r-1)/2)`` and ``adaptive_avg_pool1d`` from C*r*r to C,
  unit length per patch;
- MSM (``models/modules/_MSM.py`` ``compute_scores_fast``): ``cdist`` of image i's patches
  against all other images' patches, the minimum per other image, the mean of the ranks
  [int(0 * (N-1)), int(0.3 * (N-1))) of those minima;
- maps (``models/musc.py``): mean over blocks, then over degrees; bilinear upsampling with
  ``align_corners=True`` (written out here in numpy), no smoothing; image score = the
  upsampled map's maximum;
- RsCIN (``models/modules/_RsCIN.py``): min-max normalised scores, W = E E^T, per window k
  the N-k smallest entries of each row zeroed, rows divided by their sums, P s, averaged.

Validation of the transcription (once, by a script outside the repository, importing the
mirror's ``models/modules/_LNAMD.py``, ``_MSM.py``, ``_RsCIN.py`` and its own modified
open_clip, which needs at least 12 blocks, hence this depth): their ``create_model`` at 48
px with this test's state dict (resized by their ``resize_pos_embed``), ``encode_image``,
``LNAMD._embed``, ``MSM`` and ``RsCIN`` as ``make_category_data`` chains them, on the same
12 images, their model in float32 on the CPU, windows [1, 2, 3] and [1, 8, 9], largest
difference relative to the largest entry: transcription (float64) against theirs, tokens
5.7e-7, class embeddings 3.2e-7, LNAMD features 6.1e-7, MSM scores 9.2e-7, maps 3.5e-7,
image scores 9.3e-7; our method (float32) against theirs, maps 3.7e-7, scores 1.3e-6.

Tolerances: stages in float64 against the float64 transcription, 1e-10; the method end to
end in float32 against it, 1e-4 relative (rtol 1e-4, and 1e-4 of the largest entry for
entries near 0, such as the lowest RsCIN score, which is 0 by construction).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from ad_musc.backbone import ClipPatchTokens
from ad_musc.config import MuscConfig
from ad_musc.method import Musc
from ad_musc.model import lnamd, mutual_scores, rscin, upsampled_maps
from ad_runtime.preprocessing import CLIP_MEAN, CLIP_STD
from adcore.contracts.dataset import Sample
from adcore.contracts.method import FitContext, Runtime
from adcore.data.loading import SampleImages
from test_preprocessing import write_image

TINY = "musc-parity-vit"
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 12, "width": 32, "head_width": 16,
                   "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}  # fmt: skip
SIZE = 48  # run at 48 px: a 6 x 6 grid, the 4 x 4 position table resized
GRID = SIZE // 8
LAYERS = [3, 6, 9, 12]
DEGREES = [1, 3, 5]
COUNT = 12
TOL = 1e-4


# --- the transcription of the authors' pipeline --------------------------------------------


def ref_model(clip: nn.Module, grid: int) -> nn.Module:
    """A float64 copy built for ``grid``: its position table resized as ``resize_pos_embed``."""
    model = copy.deepcopy(clip).double()
    table = model.visual.positional_embedding.detach()
    old = round((table.shape[0] - 1) ** 0.5)
    image = table[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    table = torch.cat([table[:1], image.permute(0, 2, 3, 1).reshape(grid * grid, -1)])
    model.visual.positional_embedding = nn.Parameter(table)
    return model


def ref_encode(model: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], np.ndarray]:
    """-> tokens after each chosen block [B, 1+L, C] (class token kept), unit embeddings."""
    captured: list[torch.Tensor] = []
    blocks = model.visual.transformer.resblocks
    hooks = [
        blocks[i - 1].register_forward_hook(lambda _m, _i, out: captured.append(out))
        for i in LAYERS
    ]
    try:
        with torch.no_grad():
            embedding = model.encode_image(images.double(), normalize=True)
    finally:
        for hook in hooks:
            hook.remove()
    return captured, embedding.numpy()


def ref_lnamd(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """[B, 1+L, C] -> [B, L, C]: LayerNorm over [C, h, w], unfold + mean of each channel's
    r*r values (adaptive_avg_pool1d's bins), unit length."""
    x = tokens[:, 1:]
    b, count, c = x.shape
    side = int(np.sqrt(count))
    x = x.reshape(b, side, side, c).permute(0, 3, 1, 2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    x = (x - mean) / torch.sqrt(var + 1e-5)
    if r > 1:
        unfolded = F.unfold(x, kernel_size=r, padding=(r - 1) // 2)  # [B, C*r*r, L]
        x = unfolded.reshape(b, c, r * r, count).mean(dim=2)
    z = x.reshape(b, c, count).transpose(1, 2)
    return z / z.norm(dim=-1, keepdim=True)


def ref_msm(z: torch.Tensor, low: float = 0.0, high: float = 0.3) -> torch.Tensor:
    """[N, L, C] -> [N, L], one image at a time against all the others, as theirs."""
    n, count, c = z.shape
    k_max, k_min = int((n - 1) * high), int((n - 1) * low)
    rows = []
    for i in range(n):
        others = torch.cat([z[:i], z[i + 1 :]]).reshape(-1, c)
        nearest = torch.cdist(z[i], others).reshape(count, n - 1, count).min(dim=-1).values
        rows.append(nearest.sort(dim=1).values[:, k_min:k_max].mean(dim=1))
    return torch.stack(rows)


def ref_bilinear(grid_scores: np.ndarray, size: int) -> np.ndarray:
    """[N, g, g] -> [N, S, S], bilinear with corner pixels on corner cells (align_corners)."""
    g = grid_scores.shape[-1]
    pos = np.arange(size) * (g - 1) / (size - 1)
    lo = np.minimum(np.floor(pos).astype(int), g - 2)
    t = pos - lo
    rows = grid_scores[:, lo] * (1 - t)[None, :, None] + grid_scores[:, lo + 1] * t[None, :, None]
    return rows[:, :, lo] * (1 - t)[None, None] + rows[:, :, lo + 1] * t[None, None]


def ref_rscin(scores: np.ndarray, embeddings: np.ndarray, windows: list[int]) -> np.ndarray:
    s = (scores - scores.min()) / (scores.max() - scores.min())
    w = embeddings @ embeddings.T
    results = []
    for k in windows:
        masked = w.copy()
        for i in range(len(w)):
            masked[i, np.argsort(w[i])[: len(w) - k]] = 0
        results.append((masked / masked.sum(axis=1, keepdims=True)) @ s)
    return np.mean(results, axis=0)


def ref_musc(clip: nn.Module, images: torch.Tensor, windows: list[int]) -> dict[str, np.ndarray]:
    """Normalised images [N, 3, S, S] -> the authors' maps [N, S, S] and scores [N]."""
    tokens, embeddings = ref_encode(ref_model(clip, GRID), images)
    per_degree = [torch.stack([ref_msm(ref_lnamd(t, r)) for t in tokens]).mean(0) for r in DEGREES]
    patch = torch.stack(per_degree).mean(0).numpy().reshape(-1, GRID, GRID)
    maps = ref_bilinear(patch, SIZE)
    raw = maps.reshape(len(maps), -1).max(axis=1)
    return {"maps": maps, "raw": raw, "scores": ref_rscin(raw, embeddings, windows)}


# --- shared weights and inputs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    for parameter in model.parameters():  # away from the init's zeros and ones
        parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    base = torch.rand(1, 3, SIZE, SIZE, generator=generator).expand(COUNT, -1, -1, -1)
    noise = 0.35 * torch.rand(COUNT, 3, SIZE, SIZE, generator=generator)
    return ((base * 0.65 + noise) * 255).round().to(torch.uint8)  # related, not equal


def make_method(clip: nn.Module, **settings) -> Musc:
    values = {"backbone": TINY, "pretrained": "none", "resolution": SIZE, "layers": LAYERS}
    config = MuscConfig(**{**values, **settings})
    return Musc(config, Runtime(), clip=clip)


def normalised(method: Musc, images: torch.Tensor) -> torch.Tensor:
    return method.geometry.normalize(images)


# --- the tests -------------------------------------------------------------------------------


def test_tokens_and_class_embeddings_equal_the_authors(clip, images) -> None:
    method = make_method(clip)
    x = normalised(method, images)
    tokens, embeddings = ref_encode(ref_model(clip, GRID), x)
    tower = ClipPatchTokens(copy.deepcopy(clip).double().visual, SIZE, LAYERS)
    ours, ours_embeddings = tower(x.double())
    for got, expected in zip(ours, tokens, strict=True):
        torch.testing.assert_close(got, expected[:, 1:], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours_embeddings.numpy(), embeddings, rtol=0, atol=1e-10)


@pytest.mark.parametrize("degree", DEGREES)
def test_lnamd_equals_unfold_and_adaptive_pooling(clip, images, degree) -> None:
    tokens, _ = ref_encode(ref_model(clip, GRID), normalised(make_method(clip), images))
    for block in tokens:
        expected = ref_lnamd(block, degree)
        torch.testing.assert_close(lnamd(block[:, 1:], GRID, degree), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 5, COUNT])
def test_mutual_scoring_equals_theirs_whatever_the_blocks(chunk) -> None:
    generator = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(COUNT, 20, 8, generator=generator, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(mutual_scores(z, 0.0, 0.3, chunk), ref_msm(z), rtol=0, atol=1e-10)
    # an interval away from 0: the ranks [2, 5) of the 11 others
    torch.testing.assert_close(
        mutual_scores(z, 2, 5, chunk), ref_msm(z, 2 / 11 + 1e-9, 5 / 11 + 1e-9), rtol=0, atol=1e-10
    )


def test_upsampling_equals_bilinear_with_aligned_corners() -> None:
    generator = torch.Generator().manual_seed(4)
    patch = torch.rand(3, GRID * GRID, generator=generator, dtype=torch.float64)
    expected = ref_bilinear(patch.numpy().reshape(3, GRID, GRID), SIZE)
    np.testing.assert_allclose(upsampled_maps(patch, GRID, SIZE).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("windows", [(1, 2, 3), (1, 8, 9)])
def test_rscin_equals_theirs(windows) -> None:
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(COUNT, 16, generator=generator, dtype=torch.float64)
    embeddings = F.normalize(embeddings, dim=-1)
    scores = torch.rand(COUNT, generator=generator, dtype=torch.float64)
    expected = ref_rscin(scores.numpy(), embeddings.numpy(), list(windows))
    np.testing.assert_allclose(rscin(scores, embeddings, windows).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize(("category", "windows"), [("bottle", [1, 2, 3]), ("pcb1", [1, 8, 9])])
def test_the_method_end_to_end_equals_the_authors(clip, images, category, windows) -> None:
    method = make_method(clip, score_chunk=5, extract_chunk=3)
    method.fit(FitContext(category, category, 0))
    expected = ref_musc(clip, normalised(method, images), windows)
    with torch.no_grad():
        got = method.predict_set(iter([images[:5], images[5:9], images[9:]]), COUNT)
    for name, ours in (("maps", got.maps), ("scores", got.scores)):
        reference = expected[name]
        atol = TOL * float(np.abs(reference).max())
        np.testing.assert_allclose(ours.numpy(), reference, rtol=TOL, atol=atol, err_msg=name)
    assert float(expected["raw"].std()) > 1e-3  # the images differ: the scores are informative


def test_preprocessing_equals_the_authors_transforms_on_non_square_images(tmp_path) -> None:
    """Their ``image_transform(518, is_train=False)`` (``Resize((s, s), BICUBIC)``,
    ``CenterCrop``, OpenAI statistics) and their masks' ``Resize((s, s))`` (bilinear),
    ``CenterCrop``, ``ToTensor``, rebuilt from torchvision on 61 x 45 and 40 x 61 files."""
    geometry = make_method_geometry()
    side = geometry.output_size
    image_transform = transforms.Compose([
        transforms.Resize((side, side), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop((side, side)),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])  # fmt: skip
    mask_transform = transforms.Compose(
        [transforms.Resize((side, side)), transforms.CenterCrop(side), transforms.ToTensor()]
    )
    for index, (width, height) in enumerate([(61, 45), (40, 61)]):
        path, mask_path = tmp_path / f"{index}.png", tmp_path / f"{index}_mask.png"
        write_image(path, width, height, seed=index)
        mask = np.zeros((height, width), np.uint8)
        mask[height // 3 : height // 2, width // 4 : width // 2 + 3] = 255
        Image.fromarray(mask).save(mask_path)
        item = SampleImages(
            [Sample(image_path=path, mask_path=mask_path, label=1, category="c")], geometry
        )[0]
        with Image.open(path) as image:
            expected = image_transform(image.convert("RGB"))
        ours = geometry.normalize(item["image"][None])[0]
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
        with Image.open(mask_path) as pil_mask:
            soft = mask_transform(pil_mask)[0].numpy()
            truth, ours_soft = geometry.apply_mask(pil_mask)
        np.testing.assert_allclose(ours_soft, soft, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(truth, (soft > 0.5).astype(np.uint8))
        np.testing.assert_array_equal(item["mask"].numpy(), truth)  # what evaluation reads


def make_method_geometry():
    """The declared geometry at the paper's 518 px (no weights needed for it)."""
    from ad_musc.plugin import factory

    config = MuscConfig(backbone="ViT-S-32-alt", pretrained="none", resolution=518, layers=[12])
    return factory(config, Runtime()).geometry
