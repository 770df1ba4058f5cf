"""PatchCore: coreset, search, eq. 7, maps and save/load, checked against brute force.

A random-weight resnet18 at 64-80 px stands in for wide_resnet50_2; nothing is downloaded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ad_patchcore.backbone import build_backbone, resolve_out_indices
from ad_patchcore.config import PatchCoreConfig
from ad_patchcore.coreset import approximate_greedy_coreset, greedy_coreset
from ad_patchcore.model import local_aggregation, reweighted_score
from ad_patchcore.plugin import adcore_methods, factory
from adcore.contracts.method import FitContext, Runtime
from adcore.contracts.records import Capability
from adcore.infra.errors import ConfigError, PluginError, WeightsError
from adcore.toolkit.maps import gaussian_blur
from adcore.toolkit.neighbors import FlatL2Index, nearest_neighbours
from test_patchcore_fidelity import authors_patch_features  # the validated transcription
from tolerances import sum_bound

F32 = torch.float32

SIZE = 64


def small_config(**overrides) -> PatchCoreConfig:
    """The paper's fidelity: Euclidean scores, checked here against eq. 6 and eq. 7 by brute
    force (the released code's settings are tested in test_patchcore_fidelity.py)."""
    settings = {
        "backbone": "resnet18",
        "pretrained": "none",
        "resolution": 72,
        "crop": SIZE,
        "fidelity": "paper",
    }
    return PatchCoreConfig(**{**settings, **overrides})


def images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)


@pytest.fixture(scope="module")
def fitted():
    method = factory(small_config(coreset_ratio=0.25), Runtime(seed=0))
    train = images(6, seed=1)
    method.fit(FitContext("toy", "toy", 6, [train[:4], train[4:]]))
    return method, train


def distance_bound(queries: torch.Tensor, bank: torch.Tensor, nearest: float) -> float:
    """How far a float32 Euclidean distance may lie from the float64 one: its square is a
    ``D + 2``-term sum (``|q|^2 + |b|^2 - 2 q.b``) of magnitude at most ``(|q| + |b|)^2``,
    and a square root halves a relative error: ``delta(d) = delta(d^2) / (2 d)`` at the
    smallest distance compared, ``nearest``."""
    reach = float(queries.norm(dim=-1).max() + bank.norm(dim=-1).max())
    return sum_bound(F32, queries.shape[-1] + 2, reach**2) / (2 * nearest)


def brute_force_patch_scores(method, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min Euclidean distance of each patch to the bank, by torch.cdist in float64."""
    with torch.no_grad():
        features, grid = method.model(method.geometry.normalize(batch))
    distances = torch.cdist(features.double(), method.bank.double()[None])  # [B, n, M]
    return distances.min(2).values.reshape(len(batch), *grid), features


def test_spec_declares_few_and_full_shot_and_geometry():
    (spec,) = adcore_methods()
    assert spec.name == "patchcore"
    assert spec.capabilities == {Capability.FEW_SHOT, Capability.FULL_SHOT, Capability.EXPORTABLE}
    defaults = PatchCoreConfig()
    assert (defaults.backbone, defaults.pretrained) == ("wide_resnet50_2", "tv_in1k")
    assert defaults.layers == ["layer2", "layer3"]
    assert (defaults.resolution, defaults.crop, defaults.coreset_ratio) == (256, 224, 0.1)


def test_greedy_coreset_is_farthest_point_selection():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(300, 16, generator=generator)
    anchors = torch.tensor([3, 50, 120, 200, 299])
    chosen = greedy_coreset(points, 40, anchors).tolist()
    assert len(set(chosen)) == 40
    exact = points.double()
    running = torch.cdist(exact, exact[anchors]).mean(1)  # the authors' anchor start
    for index in chosen:
        # farthest up to float32 rounding of the distances near the farthest one
        tolerance = distance_bound(points, points, float(running.max()))
        assert running[index] >= running.max() - tolerance
        running = torch.minimum(running, torch.cdist(exact, exact[[index]])[:, 0])


def test_coreset_ratio_size_seed_and_full_ratio():
    points = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    first = approximate_greedy_coreset(points, 0.1, seed=3)
    assert len(first) == 50 and torch.equal(first, approximate_greedy_coreset(points, 0.1, seed=3))
    assert torch.equal(approximate_greedy_coreset(points, 1.0, seed=3), torch.arange(500))


def test_faiss_search_equals_brute_force():
    generator = torch.Generator().manual_seed(2)
    bank = torch.randn(400, 32, generator=generator)
    queries = torch.randn(150, 32, generator=generator)
    distances, indices = nearest_neighbours(queries, FlatL2Index(bank), 3, "l2", chunk=40)
    expected = torch.cdist(queries.double(), bank.double()).topk(3, largest=False)
    assert torch.equal(indices, expected.indices)
    tolerance = distance_bound(queries, bank, float(expected.values.min()))
    assert torch.allclose(distances.double(), expected.values, rtol=0, atol=tolerance)


def test_reweighted_score_matches_hand_computation():
    # s* = 2, ||m_test - m*|| = 1, N_b(m*) at distances 1, 2, 3 from m_test:
    # s = (1 - e / (e + e^2 + e^3)) * 2 = (1 - 1 / 11.107337927) * 2 = 1.819938
    score = reweighted_score(
        torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([[1.0, 2.0, 3.0]])
    )
    expected = (1 - math.e / (math.e + math.e**2 + math.e**3)) * 2
    # float32: three exponentials summed, a division, a subtraction and a product
    assert score.item() == pytest.approx(expected, rel=sum_bound(F32, 3 + 3, 1.0))


def test_reweighted_method_follows_eq_7(fitted):
    method, _ = fitted
    reweighting = factory(small_config(coreset_ratio=0.25, scoring="reweighted"), Runtime(seed=0))
    reweighting.load_fitted_state(method.fitted_state())
    test = images(2, seed=5)
    patch, features = brute_force_patch_scores(method, test)
    bank = method.bank.double()
    for i in range(len(test)):
        worst = patch[i].flatten().argmax()
        m_test = features[i, worst].double()
        to_bank = torch.linalg.vector_norm(bank - m_test, dim=1)
        m_star = bank[to_bank.argmin()]
        neighbourhood = torch.linalg.vector_norm(bank - m_star, dim=1).topk(9, largest=False)
        denominator = torch.exp(to_bank[neighbourhood.indices]).sum()
        expected = (1 - math.exp(to_bank.min().item()) / denominator) * to_bank.min()
        # s = (1 - w) d0 with w in [0, 1] and |dw/dd_k| <= w: s moves by at most
        # (1 + 2 d0) times the largest error of the float32 distances
        delta = distance_bound(features[i], method.bank, float(to_bank.min()))
        assert reweighting.predict(test[i : i + 1]).scores.item() == pytest.approx(
            expected.item(), abs=delta * (1 + 2 * float(to_bank.min()))
        )


def test_maps_at_input_size_smoothed_and_scores_are_max(fitted):
    method, _ = fitted
    test = images(3, seed=7)
    prediction = method.predict(test)
    assert prediction.scores.shape == (3,) and prediction.maps.shape == (3, SIZE, SIZE)
    patch, features = brute_force_patch_scores(method, test)
    delta = distance_bound(features, method.bank, float(patch.min()))
    assert torch.allclose(
        prediction.scores.double(), patch.flatten(1).max(1).values, rtol=0, atol=delta
    )
    upsampled = F.interpolate(patch[:, None], size=(SIZE, SIZE), mode="bilinear")[:, 0]
    expected = np.stack([gaussian_filter(m, sigma=4.0) for m in upsampled.numpy()])
    # bilinear weights and the Gaussian's taps (2 passes of 33) are convex: the scores'
    # error carries over, plus float32 rounding of those sums
    blur = sum_bound(F32, 2 + 2 * 33, float(patch.max()))
    assert np.abs(prediction.maps.numpy() - expected).max() <= delta + blur


@pytest.mark.parametrize(("shape", "sigma"), [((37, 50), 4.0), ((10, 7), 4.0), ((20, 20), 1.5)])
def test_gaussian_blur_equals_scipy(shape, sigma):
    maps = torch.rand(2, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma=sigma) for m in maps.numpy()])
    taps = 2 * (2 * int(4.0 * sigma + 0.5) + 1)  # two separable passes, truncated at 4 sigma
    tolerance = sum_bound(np.float64, taps, float(maps.abs().max()))
    assert np.allclose(gaussian_blur(maps, sigma).numpy(), expected, rtol=0, atol=tolerance)


def test_saved_and_loaded_models_give_identical_scores(fitted, tmp_path):
    method, _ = fitted
    test = images(2, seed=9)
    before = method.predict(test)
    torch.save(method.fitted_state(), tmp_path / "bank.pt")
    state = torch.load(tmp_path / "bank.pt", weights_only=True)
    restored = factory(small_config(coreset_ratio=0.25), Runtime(seed=0))
    restored.load_fitted_state(state)
    after = restored.predict(test)
    assert torch.equal(before.scores, after.scores) and torch.equal(before.maps, after.maps)
    assert restored.memory_bank_bytes() == method.bank.numel() * 4
    with pytest.raises(PluginError, match="other settings"):
        factory(small_config(patch_size=5), Runtime(seed=0)).load_fitted_state(state)
    with pytest.raises(PluginError, match="other backbone weights"):
        factory(small_config(coreset_ratio=0.25), Runtime(seed=1)).load_fitted_state(state)


def test_full_ratio_bank_is_every_patch_feature(fitted):
    method, train = fitted
    full = factory(small_config(coreset_ratio=1.0), Runtime(seed=0))
    full.fit(FitContext("toy", "toy", 6, [train[:4], train[4:]]))
    with torch.no_grad():  # in fit's batches: another batch size may round differently
        batches = [method.model(method.geometry.normalize(b))[0] for b in (train[:4], train[4:])]
    features = torch.cat(batches).reshape(-1, batches[0].shape[-1]).double()
    # The same forward pass on the same batches, up to the order the CNN's kernels sum in:
    # row for row, each bank row is far nearer its own feature than any other feature is.
    assert full.bank.shape == features.shape
    between = torch.cdist(features, features) + torch.diag(torch.full((len(features),), math.inf))
    own = (full.bank.double() - features).norm(dim=1)  # [N]
    assert (own < between.min(1).values / 2).all()
    # the coreset bank is a subset of those features, of the authors' size int(N * ratio)
    assert len(method.bank) == int(len(features) * 0.25)
    to_features = torch.cdist(method.bank.double(), features)  # [M, N]
    nearest = to_features.min(1)
    assert (nearest.values < between.min(1).values[nearest.indices] / 2).all()
    assert len(set(nearest.indices.tolist())) == len(method.bank)


@pytest.mark.parametrize("ratio", [0.25, 1.0])
def test_features_kept_on_disk_give_the_same_bank(ratio):
    """``feature_store: disk`` keeps the fit's features in a mapped temporary file: the same
    values go through the same products, so the bank is the in-memory fit's, bit for bit."""
    train = images(6, seed=1)
    banks = []
    for store in ("memory", "disk"):
        method = factory(small_config(coreset_ratio=ratio, feature_store=store), Runtime(seed=0))
        method.fit(FitContext("toy", "toy", 6, [train[:4], train[4:]]))
        banks.append(method.bank)
    assert torch.equal(banks[0], banks[1])
    with pytest.raises(PluginError, match="no training images"):
        method.fit(FitContext("toy", "toy", 0, []))


def test_fit_without_images_is_a_plugin_error(fitted):
    method, _ = fitted
    with pytest.raises(PluginError, match="no training images"):
        method.fit(FitContext("toy", "toy", 0, []))


def test_more_neighbours_than_bank_rows_is_a_config_error(fitted):
    method, _ = fitted
    rows = len(method.bank)
    crowded = factory(small_config(coreset_ratio=0.25, num_neighbors=rows + 1), Runtime(seed=0))
    with pytest.raises(ConfigError, match=f"category 'toy' holds {rows} patch features"):
        crowded.fit(FitContext("toy", "toy", 6, [images(6, seed=1)]))
    with pytest.raises(ConfigError, match=f"at most {rows}"):
        crowded.load_fitted_state(method.fitted_state())


def test_local_aggregation_is_a_3x3_mean_when_pooling_keeps_channels():
    maps = torch.randn(2, 16, 9, 7, generator=torch.Generator().manual_seed(4))
    expected = F.avg_pool2d(maps.double(), 3, stride=1, padding=1, count_include_pad=True)
    tolerance = sum_bound(F32, 9, float(maps.abs().max()))  # a mean of 9 float32 values
    assert torch.allclose(local_aggregation(maps, 3, 16).double(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    ("channels", "patch", "dim"),
    [(512, 3, 1024), (1024, 3, 1024), (128, 3, 1024), (2048, 1, 1024), (96, 5, 384), (7, 2, 10),
     (100, 3, 64)],  # an even patch; a wide group (automatic choice: unfold)
)  # fmt: skip
def test_local_aggregation_equals_unfold_then_adaptive_pooling(channels, patch, dim):
    """The grouped convolution against the definition (the authors' ``F.unfold`` then
    ``F.adaptive_avg_pool1d`` per position), in float64 so only the summation order differs."""
    maps = torch.randn(2, channels, 9, 7, generator=torch.Generator().manual_seed(5)).double()
    unfolded = F.unfold(maps, kernel_size=patch, padding=(patch - 1) // 2)  # [B, C*p*p, P]
    per_position = unfolded.transpose(1, 2).reshape(-1, 1, unfolded.shape[1])
    pooled = F.adaptive_avg_pool1d(per_position, dim).reshape(2, -1, dim).transpose(1, 2)
    side = 9 + 2 * ((patch - 1) // 2) - patch + 1, 7 + 2 * ((patch - 1) // 2) - patch + 1
    for grouped in (None, True, False):
        ours = local_aggregation(maps, patch, dim, grouped=grouped)
        assert ours.shape == (2, dim, *side)
        tolerance = sum_bound(torch.float64, channels * patch * patch, float(maps.abs().max()))
        torch.testing.assert_close(ours.flatten(2), pooled, rtol=0, atol=tolerance)


def test_patch_features_match_authors_code_and_shapes():
    config = small_config(pretrain_embed_dimension=96, target_embed_dimension=80)
    method = factory(config, Runtime(seed=0))
    batch = method.geometry.normalize(images(2, seed=11))
    with torch.no_grad():
        features, grid = method.model(batch)
        maps = method.model.backbone(batch)
    assert [m.shape[1:] for m in maps] == [(128, 8, 8), (256, 4, 4)]
    assert grid == (8, 8) and features.shape == (2, 64, 80)
    expected = authors_patch_features([m.double() for m in maps], 96, 80).reshape(2, 64, 80)
    # float32 means over a layer's 3x3 neighbourhoods (256 x 9 values at most), then over the
    # two pooling stages, against the same means in float64
    terms = max(m.shape[1] for m in maps) * 9 * 2
    tolerance = sum_bound(F32, terms, float(max(m.abs().max() for m in maps)))
    assert torch.allclose(features.double(), expected, rtol=0, atol=tolerance)


def test_layer_names_resolve_through_feature_info():
    names = ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert resolve_out_indices(names, ["layer2", "layer3"]) == (2, 3)
    with pytest.raises(ConfigError, match="layer9"):
        resolve_out_indices(names, ["layer9"])
    with pytest.raises(ConfigError, match="shallow to deep"):
        resolve_out_indices(names, ["layer3", "layer2"])


def test_local_checkpoint_loads_and_missing_tag_names_cache(tmp_path, monkeypatch):
    torch.manual_seed(5)
    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    backbone, identity = build_backbone("resnet18", str(tmp_path / "resnet18.pth"), ["layer2"], 0)
    assert torch.equal(
        backbone.state_dict()["layer2.0.conv1.weight"], source.layer2[0].conv1.weight
    )
    assert identity["random_backbone"] is False
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as caught:
        build_backbone("resnet18", "a1_in1k", ["layer2"], 0)
    message = str(caught.value)
    assert "resnet18.a1_in1k" in message and str(tmp_path / "hub") in message
    assert "pretrained=True" in message
