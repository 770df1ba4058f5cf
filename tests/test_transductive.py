"""The host's support for transductive methods (a method that scores the test set jointly,
as MuSc does): the contract check, ``ad eval`` and ``ad predict`` hand over the whole set,
``ad list-plugins`` shows the capability, and the efficiency probe times sets.

The reference scores are computed here independently, in numpy from the image files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from adcore.contracts.records import Capability, EmptyConfig, MethodSpec
from adcore.testing import check_method
from adtest import run_ad, write_distribution, write_mvtec_tree
from transductives import SetContrast

PLUGIN = """
from adcore.api import Capability, EmptyConfig, MethodSpec, hookimpl
from transductives import SetContrast

@hookimpl
def adcore_methods():
    return [MethodSpec(name="set-contrast", summary="distance to the rest of the set",
                       config=EmptyConfig, factory=lambda config, runtime: SetContrast(),
                       capabilities={Capability.ZERO_SHOT, Capability.TRANSDUCTIVE})]
"""
SPEC = MethodSpec(
    name="set-contrast",
    summary="distance to the rest of the set",
    config=EmptyConfig,
    factory=lambda config, runtime: SetContrast(),
    capabilities={Capability.ZERO_SHOT, Capability.TRANSDUCTIVE},
)


def reference_scores(paths: list[Path]) -> np.ndarray:
    """Leave-one-out contrast of the files themselves, float64 (no resize: they are 32 px)."""
    grey = np.stack(
        [np.asarray(Image.open(p).convert("RGB"), np.float64).mean(2) / 255 for p in paths]
    )
    others = (grey.sum(0, keepdims=True) - grey) / (len(grey) - 1)
    return np.abs(grey - others).reshape(len(grey), -1).max(1)


def test_the_contract_check_accepts_a_transductive_method() -> None:
    method = check_method(SPEC)
    assert 3 in method.set_sizes  # the check handed over a set, in batches of 1 and 2


def test_the_contract_check_refuses_an_undeclared_capability() -> None:
    undeclared = SPEC.model_copy(update={"capabilities": frozenset({Capability.ZERO_SHOT})})
    try:
        check_method(undeclared)
    except AssertionError as error:
        assert "TRANSDUCTIVE" in str(error)
    else:
        raise AssertionError("a TransductiveMethod without the capability passed the check")


def test_eval_and_predict_score_the_whole_set(tmp_path) -> None:
    root = write_mvtec_tree(tmp_path / "data", ("widget",), 2, 3, 4, size=32)
    site = write_distribution(tmp_path / "site", "set-contrast-plugin", PLUGIN, "setc")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parent)])}

    listed = run_ad("list-plugins", "--json", env=env)
    row = next(r for r in json.loads(listed.stdout) if r["component"] == "set-contrast")
    assert "transductive" in row["capabilities"]

    out = tmp_path / "out"
    args = [
        "eval", "--method", "set-contrast", "--dataset", "mvtec", "--data-root", str(root),
        "--output", str(out), "--no-progress", "--save-model",
        "--set", "data.num_workers=0", "--set", "data.batch_size=3",
    ]  # fmt: skip
    evaluated = run_ad(*args, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    run = out / "mvtec/set-contrast/default"
    with (run / "widget/scores.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    paths = [Path(r["path"]) for r in rows]
    assert len(paths) == 7  # 3 good + 4 defective test images, one set across 3 batches
    expected = reference_scores(paths)
    got = np.array([float(r["score"]) for r in rows])
    # float32 maps of values in [0, 1]: one rounding of the stored score
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * np.finfo(np.float32).eps)

    folder = root / "widget/test/square"
    predicted = run_ad(
        "predict", "--run", str(run), "--input", str(folder), "--out", str(tmp_path / "pred"),
        "--no-overlays", "--json", env=env,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    images = json.loads(predicted.stdout)["images"]
    alone = reference_scores([Path(i["path"]) for i in images])  # the folder is the set
    np.testing.assert_allclose(
        [i["score"] for i in images], alone, rtol=0, atol=2 * np.finfo(np.float32).eps
    )


def test_the_probe_times_sets_and_reports_per_image() -> None:
    from adcore.contracts.method import Runtime
    from adcore.run.efficiency import TRANSDUCTIVE_PROBE_SET, count_cost, probe_latency

    method = SetContrast()
    times = probe_latency(method, Runtime(), budget_seconds=0.0, min_iters=2, measure_iters=3)
    assert len(times) == 3
    assert method.set_sizes == [TRANSDUCTIVE_PROBE_SET] * 3
    count_cost(method, Runtime())
    assert method.set_sizes[-1] == TRANSDUCTIVE_PROBE_SET
