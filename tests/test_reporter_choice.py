"""Which reporters a run uses: the default ones, or the list a config or ``--reporter`` gives."""

from __future__ import annotations

import pytest

from adcore.config.resolve import resolve_raw
from adcore.infra.errors import ConfigError
from adcore.outputs.reporting import chosen_reporters, default_reporters
from adcore.plugins.registry import get_registry
from adtest import run_ad

REGISTRY = get_registry()
DEFAULTS = sorted(c.spec.name for c in REGISTRY.of_kind("reporter") if c.spec.default)


def kinds(reporters) -> list[str]:
    return [type(r).__name__ for r in reporters]


def config(reporters):
    raw = {"model": {"name": "pixel-gaussian"}, "data": {"k_shot": "all"}}
    if reporters is not None:
        raw["evaluation"] = {"reporters": reporters}
    return resolve_raw(raw, REGISTRY)


def test_no_choice_runs_the_default_reporters_and_only_they():
    assert DEFAULTS == ["overlays", "summary-csv", "summary-json", "summary-pretty"]
    assert kinds(chosen_reporters(REGISTRY, None)) == kinds(default_reporters(REGISTRY))
    assert "TopScores" not in kinds(chosen_reporters(REGISTRY, None))


def test_a_list_runs_its_reporters_in_order_each_once_with_default_standing_for_them():
    assert kinds(chosen_reporters(REGISTRY, ["top-scores"])) == ["TopScores"]
    chosen = chosen_reporters(
        REGISTRY, ["ad-plugin-example:top-scores", "default", "summary-json", "top-scores"]
    )
    assert kinds(chosen) == ["TopScores", *kinds(default_reporters(REGISTRY))]


def test_an_unknown_reporter_in_a_config_is_named_with_the_ones_that_exist():
    with pytest.raises(ConfigError) as error:
        config(["default", "top-score"])
    message = str(error.value)
    assert "evaluation.reporters" in message and "Unknown reporter 'top-score'" in message
    assert "top-scores" in message and "default` stands for" in message


def test_the_choice_of_reporters_is_not_part_of_a_runs_identity():
    assert config(["top-scores"]).fingerprint() == config(None).fingerprint()


def test_json_without_the_summary_json_reporter_is_a_usage_error(mvtec_root, tmp_path):
    result = run_ad(
        "eval", "--method", "pixel-gaussian", "--dataset", "mvtec", "--data-root",
        str(mvtec_root), "--output", str(tmp_path / "out"), "--reporter", "top-scores", "--json",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--reporter summary-json" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before any work
