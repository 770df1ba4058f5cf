"""AnomalyDINO's settings, weights, errors and saved state (the arithmetic is in
``test_anomalydino_parity.py``)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

import anomalydino_reference as ref
from ad_dino.backbone import build_vit
from ad_dino.config import AnomalyDinoConfig
from ad_dino.method import AnomalyDino
from ad_dino.model import DinoPatchFeatures
from adcore.api import ConfigError, PluginError, WeightsError
from adcore.contracts.method import FitContext, Runtime
from weightsfixtures import closed_port, write_hf_cache

ARCH = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 238}
SIZE = 70  # a 5 x 5 grid


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_tiny_pretrain.pth"
    torch.save(ref.dinov2_state(0), path)
    return path


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def tiny_method(path, **settings) -> AnomalyDino:
    vit, _ = build_vit("vit_small_patch14_dinov2", str(path), 0, **ARCH)
    config = AnomalyDinoConfig(resolution=SIZE, **settings)
    return AnomalyDino(config, Runtime(seed=0), vit=vit)


def images(count: int, seed: int) -> torch.Tensor:
    pictures = [ref.object_image(SIZE, seed + i) for i in range(count)]
    return torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()


# --- settings --------------------------------------------------------------------------------


def test_the_authors_tables_decide_masking_and_rotation():
    auto = AnomalyDinoConfig()
    masked = {c for c in ["bottle", "capsule", "screw", "carpet", "pcb1", "macaroni2"]}
    assert {c for c in masked if auto.masks_category(c)} == {
        "capsule",
        "screw",
        "pcb1",
        "macaroni2",
    }
    assert not auto.masks_category("my_part")  # unknown categories: off
    assert auto.rotates_category("bottle")  # agnostic: every category
    informed = AnomalyDinoConfig(rotation="informed")
    assert [informed.rotates_category(c) for c in ("hazelnut", "screw", "bottle")] == [1, 1, 0]
    assert not AnomalyDinoConfig(rotation="off").rotates_category("screw")
    assert AnomalyDinoConfig(masking="on").masks_category("carpet")


def test_yaml_booleans_are_switches_and_bad_values_are_named():
    assert AnomalyDinoConfig(masking=True, rotation=False).masking == "on"
    assert AnomalyDinoConfig(masking=False, rotation=False).rotation == "off"
    with pytest.raises(ValidationError, match="mask_kernel must be odd"):
        AnomalyDinoConfig(mask_kernel=4)
    with pytest.raises(ValidationError):
        AnomalyDinoConfig(top_fraction=0)
    with pytest.raises(ValidationError):
        AnomalyDinoConfig(unknown=1)


# --- weights ---------------------------------------------------------------------------------


def test_timm_tag_from_the_cache_and_dinov2_file_are_the_same_weights(no_network, dinov2_file):
    from_file, identity = build_vit("vit_small_patch14_dinov2", str(dinov2_file), 0, **ARCH)
    save_file(from_file.state_dict(), str(no_network.parent / "model.safetensors"))
    data = (no_network.parent / "model.safetensors").read_bytes()
    write_hf_cache(no_network, "timm/vit_small_patch14_dinov2.lvd142m", {"model.safetensors": data})
    started = time.monotonic()
    from_tag, tag_identity = build_vit("vit_small_patch14_dinov2", "lvd142m", 0, **ARCH)
    assert time.monotonic() - started < 20
    assert tag_identity["source"] == "tag" and identity["source"] == "file"
    assert tag_identity["digest"] == identity["digest"]
    assert not from_tag.training and not any(p.requires_grad for p in from_tag.parameters())


def test_missing_tag_fails_in_seconds_with_the_way_out(no_network):
    started = time.monotonic()
    with pytest.raises(WeightsError) as error:
        build_vit("vit_small_patch14_dinov2", "lvd142m", 0, **ARCH)
    assert time.monotonic() - started < 30
    assert "vit_small_patch14_dinov2.lvd142m" in str(error.value)
    assert error.value.hint


@pytest.mark.parametrize(
    ("backbone", "pretrained", "error", "words"),
    [
        ("vit_nonexistent_patch14", "none", ConfigError, "is not a timm model"),
        ("resnet18", "none", ConfigError, "patch embedding"),
        ("vit_small_patch14_dinov2", "no_such_tag", ConfigError, "not a timm tag"),
    ],
)
def test_unusable_backbones_are_config_errors(backbone, pretrained, error, words):
    with pytest.raises(error, match=words) as raised:
        build_vit(backbone, pretrained, 0)
    assert raised.value.hint


def test_a_file_of_another_architecture_is_a_weights_error(dinov2_file):
    with pytest.raises(WeightsError, match="does not fit") as raised:
        build_vit("vit_small_patch14_dinov2", str(dinov2_file), 0, embed_dim=48, num_heads=2)
    assert raised.value.hint


def test_registers_variant_equals_dinov2_with_registers(tmp_path):
    """DINOv2's *_reg4_pretrain.pth through timm's conversion (class position folded into
    the class token, registers behind it) gives the hub model's patch tokens."""
    state = ref.dinov2_state(1, registers=4)
    torch.save(state, tmp_path / "reg4.pth")
    vit, _ = build_vit("vit_small_patch14_reg4_dinov2", str(tmp_path / "reg4.pth"), 0, **ARCH)
    x = torch.randn(2, 3, 210, 266, generator=torch.Generator().manual_seed(0))
    ours, grid = DinoPatchFeatures(vit).double()(x.double())
    theirs = ref.dinov2_features(state, x, ARCH["num_heads"])
    assert grid == (15, 19)
    # timm's conversion stores class token + its position as one float32 sum (one rounding,
    # <= 6e-8 of it) where DINOv2 adds them in the forward; measured 8e-10 on the outputs
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-6


# --- errors and saved state ------------------------------------------------------------------


def test_errors_name_the_problem_and_the_fix(dinov2_file):
    method = tiny_method(dinov2_file)
    with pytest.raises(PluginError, match="before it was fitted") as raised:
        method.predict(images(1, 0))
    assert raised.value.hint
    with pytest.raises(PluginError, match="no reference images") as raised:
        method.fit(FitContext("part", "part", 0, batches=[]))
    assert "k_shot" in raised.value.hint
    greedy = tiny_method(dinov2_file, rotation="off", num_neighbors=26)
    with pytest.raises(ConfigError, match="holds 25 patch features"):
        greedy.fit(FitContext("part", "part", 1, batches=[images(1, 0)]))
    patch16, _ = build_vit("test_vit", "none", 0)
    with pytest.raises(ConfigError, match="smaller than the backbone's patch size 16"):
        AnomalyDino(AnomalyDinoConfig(resolution=14), Runtime(), vit=patch16)


def test_saved_state_restores_and_refuses_other_settings(dinov2_file):
    method = tiny_method(dinov2_file, masking="on", mask_references=True)
    method.fit(FitContext("part", "part", 2, batches=[images(2, 0)]))
    assert method.memory_bank_bytes() == method.bank.numel() * 4
    test = images(2, 5)
    expected = method.predict(test)
    state = method.fitted_state()
    fresh = tiny_method(dinov2_file, masking="on", mask_references=True)
    fresh.load_fitted_state(state)
    restored = fresh.predict(test)
    assert torch.equal(restored.scores, expected.scores) and torch.equal(
        restored.maps, expected.maps
    )
    other = tiny_method(dinov2_file, masking="on", mask_references=False)
    with pytest.raises(PluginError, match="other settings"):
        other.load_fitted_state(state)
    with pytest.raises(PluginError, match="other backbone weights"):
        fresh.load_fitted_state({**state, "backbone_digest": "0" * 16})


def test_bf16_changes_only_the_backbone(dinov2_file):
    try:
        runtime = Runtime(precision="bf16")
    except ConfigError:
        pytest.skip("this CPU has no native bf16")
    vit, _ = build_vit("vit_small_patch14_dinov2", str(dinov2_file), 0, **ARCH)
    config = AnomalyDinoConfig(resolution=SIZE, masking="off")
    fast, exact = AnomalyDino(config, runtime, vit=vit), tiny_method(dinov2_file, masking="off")
    for method in (fast, exact):
        method.fit(FitContext("part", "part", 1, batches=[images(1, 0)]))
    assert fast.bank.dtype == torch.float32
    low, high = fast.predict(images(2, 7)), exact.predict(images(2, 7))
    assert low.scores.dtype == torch.float32 and low.maps.dtype == torch.float32
    assert torch.allclose(low.scores, high.scores, rtol=0.1)
