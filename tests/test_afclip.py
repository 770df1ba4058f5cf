"""AF-CLIP / miniCLIP on a tiny random open_clip ViT and tiny MVTec-layout data."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import torch
from open_clip.transformer import QuickGELU

from ad_afclip.aggregation import aggregation_weights, spatial_aggregation
from ad_afclip.clip_models import TINYCLIP_CONFIGS, load_clip, register_model_config
from ad_afclip.config import AFCLIPConfig, MiniCLIPConfig
from ad_afclip.losses import focal_loss, patch_alignment_loss, released_focal_loss
from ad_afclip.method import AFCLIPMethod
from ad_afclip.model import FrozenVisualTower, Outputs, interpolate_positional_embedding
from ad_afclip.plugin import adcore_methods
from ad_afclip.tinyclip import TINYCLIP_8M
from ad_runtime.preprocessing import Preprocessing
from adcore.config.sections import weights_fields
from adcore.contracts.dataset import Sample
from adcore.contracts.method import FitContext, Runtime
from adcore.data.loading import SampleImages
from adcore.infra.errors import ConfigError, WeightsError
from adcore.run.training import train_method
from adcore.toolkit.trained import CHECKPOINT_NAME
from adtest import write_mvtec_tree
from tolerances import sum_bound

TINY = "ad-test-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
register_model_config(TINY, TINY_CONFIG)


def tiny_config(**overrides) -> AFCLIPConfig:
    values = {
        "backbone": TINY,
        "pretrained": "none",
        "resolution": 48,
        "layers": [2, 4],
        "batch_size": 4,
        "learning_rate": 3e-3,
        "epochs": 4,
        "seed": 122,
    }
    return AFCLIPConfig(**{**values, **overrides})


def tiny_method(backbone_seed: int = 0, **overrides) -> AFCLIPMethod:
    torch.manual_seed(backbone_seed)  # the random backbone comes from the global RNG
    return AFCLIPMethod(tiny_config(**overrides), Runtime())


def mvtec_samples(root: Path, category: str, split: str) -> list[Sample]:
    """List an MVTec-layout split directly (independent of the data set plugin)."""
    samples = []
    for path in sorted((root / category / split).glob("*/*.png")):
        defect = path.parent.name
        mask = root / category / "ground_truth" / defect / f"{path.stem}_mask.png"
        samples.append(
            Sample(
                image_path=path,
                label=int(defect != "good"),
                category=category,
                defect_type=defect,
                mask_path=mask if defect != "good" else None,
            )
        )
    return samples


def load_images(samples: list[Sample], size: int) -> torch.Tensor:
    """uint8 [B, 3, size, size] through the host's own decoding and resizing."""
    geometry = Preprocessing(size=size)
    return torch.stack([SampleImages(samples, geometry)[i]["image"] for i in range(len(samples))])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvtec_tree(
        tmp_path_factory.mktemp("afclip") / "mvtec", ("widget",), num_good=4, num_bad=4
    )


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory):
    method = tiny_method()
    out = tmp_path_factory.mktemp("run")
    result = train_method(
        method,
        mvtec_samples(data, "widget", "test"),
        method.training_settings(),
        out,
        Runtime(),
        progress=False,
    )
    return method, result


def test_records_declare_both_variants_with_paper_defaults() -> None:
    specs = {spec.name: spec for spec in adcore_methods()}
    assert set(specs) == {"afclip", "miniclip"}
    capabilities = {"afclip": {"zero-shot", "few-shot", "trainable", "exportable"}}
    # af_tiny has no few-shot path
    capabilities["miniclip"] = {"zero-shot", "trainable", "exportable"}
    for name, spec in specs.items():
        assert {c.value for c in spec.capabilities} == capabilities[name]
        schema = spec.config.model_json_schema()["properties"]
        # trained parts are not pretrained weights: --random-weights leaves them as given
        assert "weights" not in schema["checkpoint"]
        assert schema["pretrained"] and "checkpoint" not in weights_fields(spec.config())
    afclip, mini = AFCLIPConfig(), MiniCLIPConfig()
    assert (afclip.backbone, afclip.pretrained, afclip.resolution) == (
        "ViT-L-14-336",
        "openai",
        518,
    )
    assert (afclip.layers, afclip.epochs, afclip.learning_rate) == ([6, 12, 18, 24], 2, 1e-4)
    assert (afclip.betas, afclip.batch_size, afclip.seed) == ((0.5, 0.999), 8, 122)
    assert (mini.backbone, mini.layers, mini.epochs) == (TINYCLIP_8M, [5, 7, 9, 10], 12)
    assert (mini.learning_rate, mini.lambda1, mini.lambda2) == (5e-4, 3.0, 1.0)
    # af_tiny train.sh / main.py: 518 px, batch 8, betas (0.5, 0.999), files at 6/8/10/12.
    assert (mini.resolution, mini.batch_size, mini.betas) == (518, 8, (0.5, 0.999))
    assert (mini.keep_epochs, mini.adaptor_heads, afclip.adaptor_heads) == ([6, 8, 10, 12], 8, 8)


def test_tinyclip_architecture_is_registered_with_open_clip() -> None:
    clip = load_clip(TINYCLIP_8M, "none")
    visual = clip.visual
    assert visual.conv1.kernel_size == (16, 16) and visual.conv1.out_channels == 256
    assert len(visual.transformer.resblocks) == 10
    assert clip.text_projection.shape == (256, 512)
    # TinyCLIP-ViT-8M: the image tower has about 8M parameters (model zoo name).
    assert 7.5e6 < sum(p.numel() for p in visual.parameters()) < 8.5e6


def test_tinyclip_keeps_quick_gelu_when_its_name_was_registered_with_gelu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """af_tiny's CLIP runs QuickGELU in every block; an architecture of the same name that
    another package registered first (with open_clip's default GELU) must not change it."""
    import open_clip.factory

    configs = dict(open_clip.factory._MODEL_CONFIGS)
    configs[TINYCLIP_8M] = {**TINYCLIP_CONFIGS[TINYCLIP_8M], "quick_gelu": False}
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", configs)
    clip = load_clip(TINYCLIP_8M, "none")
    for tower in (clip.visual.transformer, clip.transformer):
        assert all(isinstance(b.mlp.gelu, QuickGELU) for b in tower.resblocks)


def test_missing_weights_offline_name_the_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="yfcc15m"):
        load_clip(TINYCLIP_8M, "yfcc15m")
    with pytest.raises(WeightsError, match=r"local checkpoint file"):
        load_clip(TINYCLIP_8M, "yfcc15m")
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        load_clip("no-such-vit", "none")


def test_positional_embedding_kept_exactly_at_native_size() -> None:
    clip = load_clip(TINY, "none")
    native = clip.visual.positional_embedding.detach()
    assert torch.equal(interpolate_positional_embedding(native, 4), native)
    # A spatially constant embedding stays constant under bilinear resizing.
    constant = torch.cat([torch.zeros(1, 3), torch.ones(16, 3) * 0.5])
    resized = interpolate_positional_embedding(constant, 7)
    assert resized.shape == (50, 3)
    tolerance = sum_bound(torch.float32, 4, 0.5)  # bilinear: 4 weights summing to 1
    assert torch.allclose(resized[1:], torch.full((49, 3), 0.5), rtol=0, atol=tolerance)
    # At the native size the tower is open_clip's own forward: its pooled output matches.
    tower = FrozenVisualTower(clip.visual, 32, [4])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = tower(images)[-1]
        mine = clip.visual.ln_post(tokens[:, 0]) @ clip.visual.proj
        assert torch.allclose(mine, clip.visual(images), atol=1e-5)


def test_spatial_aggregation_equals_hand_computation() -> None:
    grid = torch.arange(1.0, 10.0)  # 3 x 3 grid, one channel, row-major values 1..9
    tokens = torch.cat([torch.tensor([100.0]), grid]).view(1, 1, 10, 1)
    out = spatial_aggregation(tokens, aggregation_weights([1, 3], sigma=4.0))
    assert out.shape == (2, 1, 10, 1)
    assert torch.equal(out[0], tokens[0])  # r = 1 is the identity
    assert out[1, 0, 0, 0] == 100.0  # the class token is kept
    weight = {d: math.exp(-d / 32.0) for d in (0, 1, 2)}  # exp(-(dx^2+dy^2) / (2 * 4^2))
    norm = weight[0] + 4 * weight[1] + 4 * weight[2]
    centre = (5 * weight[0] + (2 + 4 + 6 + 8) * weight[1] + (1 + 3 + 7 + 9) * weight[2]) / norm
    corner = (1 * weight[0] + (2 + 4) * weight[1] + 5 * weight[2]) / norm  # zeros outside
    rel = sum_bound(torch.float32, 9, 1.0)  # 9 positive float32 terms, relative to their sum
    assert out[1, 0, 5, 0].item() == pytest.approx(centre, rel=rel)
    assert out[1, 0, 1, 0].item() == pytest.approx(corner, rel=rel)


def test_patch_alignment_matches_pairwise_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3, 5, 4, generator=generator)
    labels = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]]).float()
    unit = torch.nn.functional.normalize(tokens, dim=-1)
    signs = labels * 2 - 1
    same = (signs[:, :, None] * signs[:, None, :]) > 0  # [B, N, N], self-pairs included
    expected = []
    for s in range(2):
        similarity = unit[s] @ unit[s].transpose(1, 2)
        expected.append(torch.relu(similarity[~same].mean() - similarity[same].mean()))
    value = patch_alignment_loss(tokens, labels)
    # float32 cosines (4-term dot products of unit vectors) averaged over at most 5 x 5 pairs
    tolerance = sum_bound(torch.float32, 4 + 5 * 5, 1.0)
    assert value.item() == pytest.approx(torch.stack(expected).mean().item(), abs=tolerance)
    assert patch_alignment_loss(tokens, torch.zeros(3, 5)).item() == 0.0


SATURATED = 17.0  # logit(abnormal) - logit(normal): softmax rounds p to 1 in float32


def test_released_focal_loss_clamps_its_log_where_the_paper_form_does_not() -> None:
    """A normal element at a logit difference of 17, by hand. Released (softmax of the two
    logits, binary cross-entropy): p = 1 / (1 + e^-17) rounds to 1 in float32, so
    -log(1 - p) is clamped to 100 and (1 - p_t)^4 = 1: loss 100. Its backward: BCE's
    (p - t) / max(p (1 - p), 1e-12) = 1e12 plus the factor's 4 * 100, times the softmax's
    backward, which leaves the abnormal logit 0 and gives the normal one -p_n (1e12 + 400),
    p_n = e^-17 / (1 + e^-17). Paper (log-sigmoid): sigma(17)^4 log(1 + e^17) = 17.0000,
    gradient 4 sigma^4 (1 - sigma) log(1 + e^17) + sigma^5 = 1.0000026 on the difference."""
    sigma = 1 / (1 + math.exp(-SATURATED))
    target = torch.zeros(1)
    pair = torch.tensor([[0.0, SATURATED]], requires_grad=True)
    released = released_focal_loss(pair, target)
    released.backward()
    assert released.item() == 100.0
    p_n = math.exp(-SATURATED) / (1 + math.exp(-SATURATED))
    expected = torch.tensor([[-p_n * (1e12 + 400.0), 0.0]])
    torch.testing.assert_close(pair.grad, expected, rtol=1e-6, atol=0)

    difference = torch.tensor([SATURATED], requires_grad=True)
    paper = focal_loss(difference, target)
    paper.backward()
    log_term = math.log1p(math.exp(SATURATED))
    eps = torch.finfo(torch.float32).eps
    assert paper.item() == pytest.approx(sigma**4 * log_term, rel=4 * eps)
    gradient = 4 * sigma**4 * (1 - sigma) * log_term + sigma**5
    assert difference.grad.item() == pytest.approx(gradient, rel=16 * eps)
    # below saturation the two forms agree (one float32 rounding of p apart)
    moderate = torch.tensor([[0.0, 3.0], [1.0, -2.0]])
    labels = torch.tensor([0.0, 1.0])
    assert released_focal_loss(moderate, labels).item() == pytest.approx(
        focal_loss(moderate[:, 1] - moderate[:, 0], labels).item(), rel=1e-5
    )


@pytest.mark.parametrize(("fidelity", "expected"), [("authors_code", 100.0), ("paper", 17.0)])
def test_fidelity_picks_the_focal_form(fidelity, expected) -> None:
    config = AFCLIPConfig(fidelity=fidelity)
    out = Outputs(
        image_logit=torch.tensor([SATURATED]),
        map_logit=torch.full((1, 2, 2), SATURATED),
        patch_tokens=torch.zeros(1, 1, 4, 8),
        image_logits=torch.tensor([[0.0, SATURATED]]),
        map_logits=torch.tensor([0.0, SATURATED]).expand(1, 2, 2, 2),
    )
    holder = type("Holder", (), {"config": config})()  # only the config is read
    image = AFCLIPMethod._image_focal(holder, out, torch.zeros(1))
    patches = AFCLIPMethod._map_focal(holder, out, torch.zeros(1, 2, 2))
    assert image.item() == pytest.approx(expected, rel=1e-6)
    assert patches.item() == pytest.approx(expected, rel=1e-6)


def test_training_lowers_the_loss(trained) -> None:
    _, result = trained
    assert len(result.epoch_losses) == 4
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0]
    assert result.checkpoint.is_file() and result.log.is_file() and result.curve.is_file()
    header = result.log.read_text().splitlines()[0].split(",")
    assert {"epoch", "step", "loss", "image_focal", "map_focal", "alignment"} <= set(header)


def test_checkpoint_reloads_into_identical_outputs(trained, data: Path) -> None:
    method, result = trained
    images = load_images(mvtec_samples(data, "widget", "test")[2:6], 48)
    reloaded = tiny_method(checkpoint=str(result.checkpoint))
    identity = reloaded.weights_identity()
    assert identity["random_backbone"] is True  # random backbone, says so
    assert identity["untrained_parameters"] is False  # but the trained parts are loaded
    for fitted in (method, reloaded):
        fitted.fit(FitContext("widget", "widget", 0, []))
    with torch.no_grad():
        before, after = method.predict(images), reloaded.predict(images)
    assert torch.equal(before.scores, after.scores) and torch.equal(before.maps, after.maps)

    # Few-shot after loading: the support images themselves score (almost) zero distance.
    reloaded.fit(FitContext("widget", "widget", 2, [images[:2]]))
    with torch.no_grad():
        few = reloaded.predict(images)
    assert few.maps.shape == (4, 48, 48) and reloaded.memory_bank_bytes() > 0
    zero_shot_part = 0.1 * before.scores[:2]
    assert torch.allclose(few.scores[:2], zero_shot_part, atol=1e-5)
    state = reloaded.fitted_state()
    fresh = tiny_method(checkpoint=str(result.checkpoint))
    fresh.load_fitted_state(state)
    with torch.no_grad():
        assert torch.equal(fresh.predict(images).maps, few.maps)


def test_checkpoint_of_another_backbone_is_refused(trained) -> None:
    _, result = trained
    with pytest.raises(WeightsError, match="trained against backbone"):
        tiny_method(backbone_seed=1, checkpoint=str(result.checkpoint))


def test_ad_train_runs_miniclip_alternating_phases_then_eval_loads_the_run(tmp_path) -> None:
    """`ad train` through the entry point: the method's textual and visual passes per epoch,
    the kept epoch, then `ad eval` from the run folder with model.checkpoint_epoch."""
    import csv

    from adtest import run_ad

    env = {"AD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    common = [
        "--method", "miniclip", "--dataset", "synthetic", "--category", "pill",
        "--random-weights", "--output", str(tmp_path / "out"), "--no-progress",
        "--set", "model.resolution=64", "--set", "data.num_workers=0",
    ]  # fmt: skip
    trained = run_ad(
        "train", *common, "--set", "model.epochs=2", "--set", "model.keep_epochs=[1]",
        "--set", "model.batch_size=16", env={**env, "COLUMNS": "80"},
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "out/synthetic/miniclip/default"
    rows = list(csv.DictReader((run / "train_log.csv").open()))
    passes = [
        (r["epoch"], r["phase"])
        for i, r in enumerate(rows)
        if i == 0 or (r["epoch"], r["phase"]) != (rows[i - 1]["epoch"], rows[i - 1]["phase"])
    ]
    assert passes == [("1", "textual"), ("1", "visual"), ("2", "textual"), ("2", "visual")]
    assert (run / "checkpoint_epoch1.safetensors").is_file()
    printed = next(li for li in trained.stdout.splitlines() if li.startswith("Use it: "))
    hint = shlex.split(printed.removeprefix("Use it: "))
    assert hint[:4] == ["ad", "eval", "--method", "miniclip"] and "--random-weights" in hint
    assert "model.resolution=64" in hint and hint[-1] == f"model.checkpoint={run / CHECKPOINT_NAME}"
    # the hint as printed, on one category, without the probe
    as_printed = run_ad(
        *hint[1:], "--category", "pill", "--set", "evaluation.latency.enabled=false",
        "--no-progress", "--set", "data.num_workers=0", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert as_printed.returncode == 0, as_printed.stderr
    assert "Warning: model.checkpoint" not in as_printed.stdout
    assert "Untrained method parameters" not in as_printed.stdout  # the checkpoint loaded
    from adcore.cli.options import resolved_config

    def warnings(resolution: int) -> list[str]:  # what ad eval prints before the run
        sets = [f"model.checkpoint={run}", f"model.resolution={resolution}"]
        notes = resolved_config(None, sets, True, method="miniclip").notes
        return [n for n in notes if n.startswith("Warning: model.checkpoint")]

    assert warnings(64) == []
    (told,) = warnings(96)
    assert "was trained at model.resolution=64 px, and this run uses 96 px" in told
    assert "--set model.resolution=64" in told
    evaluated = run_ad(
        "eval", *common, "--k-shot", "0", "--set", f"model.checkpoint={run}",
        "--set", "model.checkpoint_epoch=1", "--set", "evaluation.latency.enabled=false",
        "--set", "experiment.name=from_run", env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
