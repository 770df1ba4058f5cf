"""MuSc's settings, errors, small sets, saved state and runs through ``ad eval`` / ``ad predict``
(the arithmetic against the authors' code is in ``test_musc_parity.py``)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from ad_musc.config import MuscConfig
from ad_musc.method import Musc
from ad_musc.model import interval_bounds, mutual_scores, rscin
from ad_musc.plugin import adcore_methods, factory
from adcore.api import ConfigError, PluginError, WeightsError
from adcore.contracts.method import FitContext, Runtime
from adcore.testing import check_method
from adtest import run_ad
from test_musc_parity import LAYERS, SIZE, TINY, clip, images, make_method  # noqa: F401

SPEC = adcore_methods()[0]


# --- settings --------------------------------------------------------------------------------


def test_rscin_windows_follow_the_authors_table():
    config = MuscConfig()
    assert config.rscin_windows("pcb1") == (1, 8, 9)  # VisA
    assert config.rscin_windows("bottle") == (1, 2, 3)  # MVTec-AD and the rest
    assert MuscConfig(rscin_k=[1, 4]).rscin_windows("pcb1") == (1, 4)
    assert MuscConfig(rscin_k=[0]).rscin_windows("bottle") == ()  # their k_list [0]: off
    assert MuscConfig.model_validate({"rscin_k": ["auto"]}).rscin_k == "auto"  # YAML, --set


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ({"layers": [0, 6]}, "counted from 1"),
        ({"aggregation_degrees": [2]}, "odd sizes"),
        ({"rscin_k": []}, "rscin_k"),
        ({"topmin_max": 0}, "greater than 0"),
        ({"no_such_setting": 1}, "Extra inputs"),
    ],
)
def test_bad_settings_are_named(setting, words):
    with pytest.raises(ValidationError, match=words):
        MuscConfig(**setting)


@pytest.mark.parametrize(
    ("others", "low", "high", "expected"),
    [
        (11, 0.0, 0.3, (0, 3)),  # int(11 * 0.3) = 3: the 3 lowest of 11
        (170, 0.0, 0.3, (0, 51)),
        (11, 0.3, 0.1, (1, 3)),  # reversed ends are swapped, as theirs
        (11, 2, 5, (2, 5)),  # ends of 1 or more are counts
        (2, 0.0, 0.3, (0, 1)),  # theirs: int(0.6) = 0, an empty mean (NaN); ours the lowest
        (3, 5, 9, (2, 3)),  # counts beyond the others: the last one
    ],
)
def test_interval_bounds(others, low, high, expected):
    assert interval_bounds(others, low, high) == expected


# --- small sets, by hand ---------------------------------------------------------------------


def test_two_images_score_by_their_nearest_patches():
    generator = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2, 6, 4, generator=generator, dtype=torch.float64), dim=-1)
    a, b = z[0].numpy(), z[1].numpy()
    distances = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))  # [6, 6]
    expected = np.stack([distances.min(axis=1), distances.min(axis=0)])
    np.testing.assert_allclose(mutual_scores(z, 0.0, 0.3, 1).numpy(), expected, atol=1e-12)
    assert torch.equal(mutual_scores(z[:1], 0.0, 0.3, 4), torch.zeros(1, 6, dtype=z.dtype))


def test_rscin_by_hand():
    embeddings = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
    scores = torch.tensor([0.2, 0.6, 1.0], dtype=torch.float64)
    s = np.array([0.0, 0.5, 1.0])  # min-max normalised
    # k = 2: each row keeps itself and its most similar other image (cosines 0.8, 0.8, 0.6)
    expected = np.array(
        [(1 * s[0] + 0.8 * s[1]) / 1.8, (0.8 * s[0] + 1 * s[1]) / 1.8, (0.6 * s[1] + s[2]) / 1.6]
    )
    np.testing.assert_allclose(rscin(scores, embeddings, (2,)).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(rscin(scores, embeddings, (1,)).numpy(), s, atol=1e-12)
    # windows above N are N; equal scores normalise to 0 (theirs: 0 / 0)
    torch.testing.assert_close(rscin(scores, embeddings, (9,)), rscin(scores, embeddings, (3,)))
    flat = rscin(torch.ones(3, dtype=torch.float64), embeddings, (1, 2))
    assert torch.equal(flat, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(rscin(scores, embeddings, ()), scores)


def test_a_set_of_one_or_two_is_finite(clip, images):  # noqa: F811
    method = make_method(clip)
    for count in (1, 2):
        prediction = method.predict(images[:count])
        assert prediction.maps.shape == (count, SIZE, SIZE)
        assert torch.isfinite(prediction.scores).all() and torch.isfinite(prediction.maps).all()


# --- errors and saved state ------------------------------------------------------------------


def test_errors_name_the_problem_and_the_fix(clip, images):  # noqa: F811
    with pytest.raises(ConfigError, match="beyond the backbone's 12 blocks") as raised:
        make_method(clip, layers=[6, 13])
    assert "between 1 and 12" in raised.value.hint
    config = MuscConfig(backbone=TINY, pretrained="none", resolution=4, layers=LAYERS)
    with pytest.raises(ConfigError, match="below the backbone's patch size 8"):
        Musc(config, Runtime(), clip=clip)
    method = make_method(clip)
    with pytest.raises(PluginError, match="holds 5 images but received 3") as raised:
        method.predict_set(iter([images[:3]]), 5)
    assert raised.value.hint
    with pytest.raises(PluginError, match="received more"):
        method.predict_set(iter([images[:3], images[3:6]]), 4)
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        factory(MuscConfig(backbone="no-such-vit", pretrained="none"), Runtime())


def test_missing_weights_fail_offline_in_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("AD_CACHE_DIR", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(WeightsError, match="ViT-L-14-336") as raised:
        factory(MuscConfig(), Runtime())
    assert time.monotonic() - started < 30
    assert raised.value.hint


def test_saved_state_restores_and_refuses_other_weights(clip, images):  # noqa: F811
    method = make_method(clip)
    method.fit(FitContext("pcb1", "pcb1", 0))
    state = method.fitted_state()
    assert state["rscin_windows"] == [1, 8, 9]
    fresh = make_method(clip)
    fresh.load_fitted_state(state)
    assert fresh.windows == (1, 8, 9)
    with pytest.raises(PluginError, match="other backbone weights"):
        fresh.load_fitted_state({**state, "backbone_digest": "0" * 16})


def test_the_contract_check_passes():
    method = check_method(SPEC)
    assert method.tower.grid == 5  # the smoke backbone's 32 px patches at 160 px


def test_bf16_changes_only_the_backbone(clip, images):  # noqa: F811
    try:
        runtime = Runtime(precision="bf16")
    except ConfigError:
        pytest.skip("this CPU has no native bf16")
    config = MuscConfig(backbone=TINY, pretrained="none", resolution=SIZE, layers=LAYERS)
    low = Musc(config, runtime, clip=clip).predict(images)
    high = make_method(clip).predict(images)
    assert low.scores.dtype == torch.float32 and low.maps.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa in the ViT; the distances stay within a few percent
    assert float((low.maps - high.maps).abs().max() / high.maps.abs().max()) < 0.05


# --- through the command line ----------------------------------------------------------------


def test_eval_and_predict_on_the_synthetic_set(tmp_path: Path):
    smoke = [arg for k, v in SPEC.smoke_config.items() for arg in ("--set", f"model.{k}={v}")]
    out = tmp_path / "out"
    env = {"AD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = run_ad(
        "eval", "--method", "musc", "--dataset", "synthetic", "--category", "pill",
        "--random-weights", "--output", str(out), "--save-model", "--no-progress",
        "--set", "evaluation.latency.enabled=false", "--set", "data.num_workers=0",
        "--set", "data.batch_size=5", *smoke, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Random weights" in result.stdout
    run = out / "synthetic/musc/default"
    row = next(csv.DictReader((run / "pill/metrics.csv").open()))
    assert int(row["num_support"]) == 0
    assert 0.0 <= float(row["image_auroc"]) <= 1.0 and 0.0 <= float(row["pro"]) <= 1.0
    scores = list(csv.DictReader((run / "pill/scores.csv").open()))
    assert len(scores) > 5  # one set over several batches
    folder = Path(scores[0]["path"]).parent  # the folder is the set
    predicted = run_ad(
        "predict", "--run", str(run), "--input", str(folder), "--out", str(tmp_path / "p"),
        "--no-overlays", "--json", env=env,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    images_out = json.loads(predicted.stdout)["images"]
    assert len(images_out) == len(list(folder.iterdir()))
    assert all(np.isfinite(i["score"]) for i in images_out)
    refused = run_ad(
        "export", "--run", str(run), "--category", "pill", "--output", str(tmp_path / "b"),
        env=env,
    )  # fmt: skip
    assert refused.returncode == 2 and "transductive" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "b").exists()
    watched = run_ad(
        "predict", "--run", str(run), "--watch", str(folder), "--out", str(tmp_path / "w"),
        "--watch-timeout", "1", env=env,
    )  # fmt: skip
    assert watched.returncode == 2 and "transductive" in watched.stderr
    assert "Traceback" not in watched.stderr


def test_list_plugins_says_why_musc_does_not_export():
    listed = run_ad("list-plugins", "--json")
    rows = {row["component"]: row for row in json.loads(listed.stdout)}
    assert "exportable" not in rows["musc"]["capabilities"]
    assert rows["musc"]["not_exportable"].startswith("transductive")
    assert rows["patchcore"]["not_exportable"] == ""
