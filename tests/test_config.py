"""Config files, merge order, overrides and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from adcore.config.files import build_raw_config, deep_merge, load_yaml_file
from adcore.config.problems import validate_base
from adcore.config.resolve import resolve
from adcore.config.sections import ExperimentConfig
from adcore.infra.errors import ConfigError
from adcore.plugins.registry import get_registry
from adtest import run_ad

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    merged = deep_merge(base, {"a": {"y": [3]}, "c": 2})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}


def test_precedence_base_then_file_then_sugar_then_set(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "experiment: {name: from_base, seed: 1}\ndata: {batch_size: 2, num_workers: 0}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nexperiment: {name: from_child}\ndata: {batch_size: 3}\n"
    )
    raw = build_raw_config(
        tmp_path / "child.yaml",
        sugar={"data.batch_size": 4, "model.device": "cpu"},
        assignments=["data.batch_size=5", "experiment.seed=7"],
    )
    config = validate_base(raw)
    assert config.experiment.name == "from_child"  # child over base
    assert config.data.num_workers == 0  # kept from base
    assert config.data.batch_size == 5  # --set over sugar over file
    assert config.model.device == "cpu"  # sugar over defaults
    assert config.experiment.seed == 7


def test_set_values_are_read_as_yaml():
    raw = build_raw_config(None, assignments=["data.categories=[a,b]", "data.k_shot=all"])
    config = validate_base(raw)
    assert config.data.categories == ["a", "b"]
    assert config.data.k_shot == "all"


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_file(tmp_path / "a.yaml")


def test_invalid_value_names_field_value_and_rule():
    with pytest.raises(ConfigError) as error:
        validate_base(build_raw_config(None, assignments=["data.batch_size=0"]))
    message = str(error.value)
    assert "data.batch_size" in message and "got 0" in message and "greater than" in message


def test_unknown_key_in_a_plugin_section_lists_allowed_keys():
    base = validate_base(
        build_raw_config(
            None,
            assignments=[
                "model.name=pixel-gaussian",
                "model.resolutoin=64",
            ],
        )
    )
    with pytest.raises(ConfigError) as error:
        resolve(base, get_registry())
    message = str(error.value)
    assert "model.resolutoin: unknown key" in message
    assert "resolution" in message  # the allowed keys include the right spelling


def test_unknown_section_is_an_error(tmp_path):
    (tmp_path / "x.yaml").write_text("modle: {name: patchcore}\n")
    with pytest.raises(ConfigError, match="Unknown section"):
        load_yaml_file(tmp_path / "x.yaml")


def test_base_yaml_equals_the_built_in_defaults():
    from_file = validate_base(load_yaml_file(CONFIGS / "base.yaml"))
    assert from_file == ExperimentConfig()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    config = validate_base(load_yaml_file(path))
    resolved = resolve(config, get_registry())
    assert resolved.method.spec.name == config.model.name


def test_random_weights_sets_every_weights_field_to_none():
    base = validate_base(build_raw_config(None, assignments=["model.name=patchcore"]))
    resolved = resolve(base, get_registry(), random_weights=True)
    assert resolved.method_config.pretrained == "none"
    assert resolved.random_weights


def test_config_show_and_schema_through_the_cli(tmp_path):
    shown = run_ad("config", "show", "--method", "pixel-gaussian", "--set", "data.batch_size=3")
    assert shown.returncode == 0, shown.stderr
    data = yaml.safe_load(shown.stdout)
    assert data["data"]["batch_size"] == 3
    assert data["model"]["resolution"] == 128  # the plugin's default, filled in
    schema = run_ad("config", "schema")
    assert schema.returncode == 0
    assert "method:ad-plugin-example:pixel-gaussian" in schema.stdout


def test_cli_bad_value_exits_nonzero_without_traceback():
    result = run_ad("config", "show", "--set", "model.precision=fp8")
    assert result.returncode == 1
    assert "model.precision" in result.stderr and "fp8" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["few", "-1", "0.5", "true"])
def test_a_wrong_k_shot_is_one_problem_saying_what_is_allowed(value):
    with pytest.raises(ConfigError) as caught:
        validate_base(build_raw_config(None, assignments=[f"data.k_shot={value}"]))
    lines = [li for li in str(caught.value).splitlines() if li.strip().startswith("- ")]
    assert len(lines) == 1 and "data.k_shot: " in lines[0]
    assert "0 (zero-shot), a positive count, or 'all' (full-shot)" in lines[0]


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("0", 0), ("all", "all")])
def test_k_shot_values_that_are_allowed(value, expected):
    config = validate_base(build_raw_config(None, assignments=[f"data.k_shot={value}"]))
    assert config.data.k_shot == expected
