"""WinCLIP / WinCLIP+ on a tiny random open_clip ViT (80 px, 16 px patches: a 5x5 grid).

Each stage is checked against an independent computation: open_clip's own tower with an
attention mask, hand-computed harmonic means, the paper's prompt counts, and the exact
locality of window embeddings (which a sequence-first / batch-first mix-up breaks).
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from pydantic import ValidationError

from ad_winclip import prompts
from ad_winclip.config import WinClipConfig
from ad_winclip.model import visual_association
from ad_winclip.plugin import adcore_methods, factory
from ad_winclip.windows import covering_windows, harmonic_aggregation, window_indices
from adcore.contracts.method import FitContext, Runtime
from adcore.contracts.records import Capability
from adcore.infra.errors import ConfigError, WeightsError
from tolerances import sum_bound

TINY = "winclip-test-tiny"
SIZE = 80
GRID = 5
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": SIZE, "layers": 3, "width": 64, "head_width": 16,
                   "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY


def make_method(name: str, pretrained: str = "none", seed: int = 0):
    config = WinClipConfig(backbone=name, pretrained=pretrained, resolution=SIZE)
    return factory(config, Runtime(seed=seed))


@pytest.fixture(scope="module")
def method(tiny_model_name: str):
    built = make_method(tiny_model_name)
    built.fit(FitContext(category="bottle", class_name="bottle", num_images=0))
    return built


def random_images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)


def paste_defect(images: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """A bright square filling one 16 px patch of the grid."""
    out = images.clone()
    out[:, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = 255
    out[:, 1, row * 16 + 4 : row * 16 + 12, col * 16 + 4 : col * 16 + 12] = 0
    return out


# --- prompts -----------------------------------------------------------------------------


def test_prompt_ensemble_has_the_papers_size() -> None:
    assert len(prompts.NORMAL_STATES) == 7
    assert len(prompts.ANOMALOUS_STATES) == 4
    assert len(prompts.TEMPLATES) == 21
    assert len(set(prompts.TEMPLATES)) == 21
    normal, anomalous = prompts.prompt_ensemble("bottle")
    assert (len(normal), len(anomalous)) == (7 * 21, 4 * 21)
    assert "a cropped photo of the bottle." in normal
    assert "a photo of a flawless bottle for visual inspection." in normal
    assert "a jpeg corrupted photo of a bottle without damage." in normal
    assert "a photo of the damaged bottle for anomaly detection." in anomalous
    assert "a close-up photo of a bottle with defect." in anomalous
    assert not set(normal) & set(anomalous)


# --- windows -----------------------------------------------------------------------------


def test_prompt_average_normalized_and_raw_equal_an_independent_computation(
    tiny_model_name,
) -> None:
    """Prototypes = normalise(mean of a state's prompt embeddings), each embedding normalised
    first (default) or raw (anomalib's ``collect_text_embeddings``, caoyunkang's V1); the
    reference encodes the prompts in one pass and averages in float64."""
    prototypes = {}
    for average in ("normalized", "raw"):
        config = WinClipConfig(
            backbone=tiny_model_name, pretrained="none", resolution=SIZE, prompt_average=average
        )
        built = factory(config, Runtime(seed=0))
        normal, anomalous = prompts.prompt_ensemble("bottle")
        with torch.no_grad():
            embeddings = [
                built.model.clip.encode_text(built.model.tokenizer(group)).double()
                for group in (normal, anomalous)
            ]
        if average == "normalized":
            embeddings = [e / e.norm(dim=-1, keepdim=True) for e in embeddings]
        means = torch.stack([e.mean(0) for e in embeddings])
        expected = means / means.norm(dim=-1, keepdim=True)
        prototypes[average] = built.model.encode_text("bottle").double()
        # float32: a mean over the prompts and up to two D-term norms of unit vectors
        terms = len(normal) + 2 * expected.shape[-1]
        tolerance = sum_bound(torch.float32, terms, 1.0)
        assert torch.allclose(prototypes[average], expected, rtol=0, atol=tolerance)
    assert (prototypes["normalized"] - prototypes["raw"]).abs().max() > 1e-3


def test_visual_association_is_the_halved_cosine_distance_to_the_nearest_reference() -> None:
    generator = torch.Generator().manual_seed(5)
    query, bank = (
        torch.randn(2, 30, 16, generator=generator),
        torch.randn(70, 16, generator=generator),
    )
    q = query.double() / query.double().norm(dim=-1, keepdim=True)
    b = bank.double() / bank.double().norm(dim=-1, keepdim=True)
    expected = ((1 - (q @ b.T).amax(-1)) / 2).clamp_min(0)
    tolerance = sum_bound(torch.float32, 2 * 16, 1.0)  # two 16-term norms, a dot product of units
    ours = visual_association(query, bank, chunk=32).double()
    assert torch.allclose(ours, expected, rtol=0, atol=tolerance)


def test_window_indices_by_hand() -> None:
    assert window_indices((3, 3), 2).tolist() == [
        [0, 1, 3, 4],
        [1, 2, 4, 5],
        [3, 4, 6, 7],
        [4, 5, 7, 8],
    ]
    assert window_indices((2, 3), 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5]]
    assert window_indices((15, 15), 3).shape == (13 * 13, 9)


def test_harmonic_aggregation_by_hand() -> None:
    scores = torch.tensor([[0.5, 0.25, 0.2, 0.1]])  # the four 2x2 windows of a 3x3 grid
    expected = [
        0.5,  # (0,0): window 0 only
        2 / (2 + 4),  # (0,1): windows 0, 1
        0.25,
        2 / (2 + 5),  # (1,0): windows 0, 2
        4 / (2 + 4 + 5 + 10),  # centre: all four
        2 / (4 + 10),
        0.2,
        2 / (5 + 10),
        0.1,
    ]
    result = harmonic_aggregation(scores, covering_windows((3, 3), 2))
    torch.testing.assert_close(result, torch.tensor([expected]))
    with_zero = harmonic_aggregation(
        torch.tensor([[0.0, 0.25, 0.2, 0.1]]), covering_windows((3, 3), 2)
    )
    assert with_zero[0, [0, 1, 3, 4]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert with_zero[0, 8] == pytest.approx(0.1)


# --- window embeddings -------------------------------------------------------------------


def restricted_tower(visual: torch.nn.Module, images: torch.Tensor, window: list[int]):
    """open_clip's own tower where every token may attend only to [class] + the window."""
    tokens = visual._embeds(images)  # [B, 1+P, C]
    allowed = torch.zeros(tokens.shape[1], dtype=torch.bool)
    allowed[[0, *(p + 1 for p in window)]] = True
    mask = torch.zeros(tokens.shape[1], tokens.shape[1])
    mask[:, ~allowed] = float("-inf")
    pooled, _ = visual._pool(visual.transformer(tokens, attn_mask=mask))
    return pooled @ visual.proj  # [B, D]


def test_window_embedding_equals_open_clip_on_the_window_alone(method) -> None:
    model = method.model
    visual = model.clip.visual
    images = method.geometry.normalize(random_images(2))
    with torch.no_grad():
        tokens = model.embed_tokens(images)
        qkv = model.first_block_qkv(tokens)
        assert qkv is not None  # the shared first-block path is the one under test
        for shared in (qkv, None):
            for patches in (True, False):
                image_embedding, _ = model.encode_full(tokens, shared, patches=patches)
                torch.testing.assert_close(image_embedding, visual(images), atol=1e-5, rtol=1e-4)
            for k in (2, 3):
                ours = model.window_embeddings(tokens, k, shared)  # [B, W, D]
                for w in (0, 7, ours.shape[1] - 1):
                    row, col = divmod(w, GRID - k + 1)
                    window = [(row + i) * GRID + col + j for i in range(k) for j in range(k)]
                    expected = restricted_tower(visual, images, window)
                    torch.testing.assert_close(ours[:, w], expected, atol=1e-5, rtol=1e-4)


def test_own_block_arithmetic_equals_open_clips_blocks(method, monkeypatch) -> None:
    """Plain blocks run through ``residual_block``; any other block runs as open_clip's own
    module. Treating every block as not plain must give the same embeddings."""
    import ad_winclip.model as winclip_model

    model = method.model
    with torch.no_grad():
        tokens = model.embed_tokens(method.geometry.normalize(random_images(2, seed=4)))
        own = {k: model.window_embeddings(tokens, k) for k in (2, 3)}
        image, patches = model.encode_full(tokens)
        monkeypatch.setattr(winclip_model, "plain_block", lambda block: False)
        assert model.first_block_qkv(tokens) is None
        for k in (2, 3):
            torch.testing.assert_close(
                model.window_embeddings(tokens, k), own[k], atol=1e-5, rtol=1e-4
            )
        their_image, their_patches = model.encode_full(tokens)
    torch.testing.assert_close(their_image, image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(their_patches, patches, atol=1e-5, rtol=1e-4)


def test_window_embedding_ignores_other_windows_and_images(method) -> None:
    """Fails when window sequences reach the blocks in the wrong layout (seq- vs batch-first).

    A window's embedding may depend on its own patches only: changing a far patch, or the
    other images of the batch, must leave it bit-for-bit alike (up to float rounding).
    """
    model = method.model
    clean = random_images(2, seed=1)
    changed = paste_defect(clean, GRID - 1, GRID - 1)
    with torch.no_grad():
        tokens = model.embed_tokens(method.geometry.normalize(torch.cat([clean, changed])))
        qkv = model.first_block_qkv(tokens)
        embeddings = model.window_embeddings(tokens, 2, qkv)  # [4, 16, D]
        alone = model.window_embeddings(tokens[2:3], 2, qkv[2:3])
        # The mistake this guards against: the same sequences fed sequence-first.
        gathered = tokens[:, model.window_tokens_2[0]]  # [4, 5, C] window 0 of each image
        wrong = model.run_blocks(gathered.transpose(0, 1), class_only=True)  # [5, C]
    far = embeddings[:, 0]  # top-left window, far from the changed bottom-right patch
    torch.testing.assert_close(far[2:], far[:2], atol=1e-5, rtol=1e-4)
    assert (embeddings[2:, -1] - embeddings[:2, -1]).abs().amax() > 1e-3
    torch.testing.assert_close(alone[0], embeddings[2], atol=1e-5, rtol=1e-4)
    wrong = model._project(model.clip.visual.ln_post(wrong[:1]))  # its "window 0"
    assert (wrong - far[:1]).abs().amax() > 1e-3


# --- scores and maps ---------------------------------------------------------------------


def test_zero_shot_maps_localise_a_pasted_defect(method) -> None:
    clean = random_images(1, seed=2)
    defect = paste_defect(clean, 0, 0)
    with torch.no_grad():
        before = method.model(method.geometry.normalize(clean))
        after = method.model(method.geometry.normalize(defect))
        prediction = method.predict(defect)
    assert prediction.maps.shape == (1, SIZE, SIZE)
    assert prediction.scores.shape == (1,)
    assert float(prediction.maps.amax() - prediction.maps.amin()) > 1e-4
    assert 0.0 <= float(prediction.scores[0]) <= 1.0
    # A k x k window scale changes only at patches reachable from (0, 0) by a window.
    change = (after.zero_shot_scale_maps - before.zero_shot_scale_maps).abs()[0]  # [S, P]
    for scale, k in enumerate((2, 3)):
        grid = change[scale].view(GRID, GRID)
        assert grid[:k, :k].amax() > 1e-6
        assert grid[k:, :].amax() < 1e-6 and grid[:, k:].amax() < 1e-6


def test_few_shot_query_equal_to_reference_scores_zero(method, tiny_model_name) -> None:
    few = make_method(tiny_model_name)
    reference = random_images(1, seed=3)
    few.fit(FitContext(category="bottle", class_name="bottle", num_images=1, batches=[reference]))
    assert few.memory_bank_bytes() > 0
    with torch.no_grad():
        same = few.model(few.geometry.normalize(reference))
        other = few.model(few.geometry.normalize(paste_defect(reference, 0, 0)))
    assert same.visual_maps.shape == (1, 3, GRID * GRID)
    assert float(same.visual_maps.abs().amax()) < 1e-5
    torch.testing.assert_close(same.maps.view(1, -1), same.zero_shot_map / 2)
    # Window levels: only patches whose every covering window holds the defect move.
    windows = other.visual_maps[0, 1:].view(2, GRID, GRID)
    assert float(windows[:, 0, 0].amin()) > 1e-5
    windows[:, 0, 0] = 0.0
    assert float(windows.abs().amax()) < 1e-5


def test_fitted_state_round_trip(tiny_model_name) -> None:
    first = make_method(tiny_model_name)
    first.fit(FitContext("screw", "screw", 2, batches=[random_images(2, seed=4)]))
    second = make_method(tiny_model_name)
    second.load_fitted_state(first.fitted_state())
    query = random_images(2, seed=5)
    with torch.no_grad():
        a, b = first.predict(query), second.predict(query)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.maps, b.maps)


# --- plugin record and weights ----------------------------------------------------------


def test_plugin_record_and_config_defaults() -> None:
    (spec,) = adcore_methods()
    assert spec.name == "winclip"
    assert spec.capabilities == {Capability.ZERO_SHOT, Capability.FEW_SHOT, Capability.EXPORTABLE}
    config = WinClipConfig()
    assert (config.backbone, config.pretrained, config.resolution) == (
        "ViT-B-16-plus-240",
        "laion400m_e31",
        240,
    )
    assert config.scales == [2, 3]
    assert config.temperature == 0.07
    with pytest.raises(ValidationError):
        WinClipConfig(windows=[2])
    with pytest.raises(ValidationError):
        WinClipConfig(scales=[2, 2])


def test_missing_weights_offline_names_model_and_tag(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsError) as caught:
        make_method("ViT-B-16-plus-240", pretrained="laion400m_e31")
    message = str(caught.value)
    assert "ViT-B-16-plus-240" in message and "laion400m_e31" in message
    assert "model.pretrained" in message and str(tmp_path) in message
    with pytest.raises(ConfigError):
        make_method("ViT-B-16-plus-240", pretrained="no_such_tag")


def test_local_checkpoint_loads_the_same_weights(tiny_model_name, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = make_method(tiny_model_name, seed=7)
    path = tmp_path / "tiny.pt"
    torch.save(source.model.clip.state_dict(), path)
    loaded = make_method(tiny_model_name, pretrained=str(path), seed=8)
    identity = loaded.weights_identity()
    assert identity["random_backbone"] is False and len(identity["digest"]) == 16
    for (name, a), (_, b) in zip(
        source.model.clip.state_dict().items(),
        loaded.model.clip.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    with pytest.raises(WeightsError):
        make_method(tiny_model_name, pretrained=str(tmp_path / "absent.pt"))
