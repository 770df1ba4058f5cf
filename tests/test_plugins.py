"""Discovery through the real entry-point group: broken, duplicate and filtered plugins."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from adcore.infra.errors import PluginError
from adcore.plugins.registry import load_registry
from adtest import eval_args, run_ad, write_distribution

BROKEN = 'raise RuntimeError("this plugin is broken on purpose")\n'
DUPLICATE = """
from adcore.api import hookimpl
from adcore.contracts.records import Capability, MethodSpec, PluginConfig

class Config(PluginConfig):
    pass

@hookimpl
def adcore_methods():
    return [MethodSpec(name="pixel-gaussian", summary="a clash", config=Config,
                       factory=lambda config, runtime: None,
                       capabilities={Capability.FEW_SHOT})]
"""
BAD_RECORD = """
from adcore.api import hookimpl
from adcore.contracts.records import Capability, MethodSpec

@hookimpl
def adcore_methods():
    return [MethodSpec(name="Not A Slug", summary="bad", factory=lambda c, r: None,
                       capabilities={Capability.FEW_SHOT})]
"""

MISSPELT = """
from adcore.api import Capability, MethodSpec, PluginConfig, hookimpl

class Config(PluginConfig):
    pass

@hookimpl
def adcore_method():
    return [MethodSpec(name="misspelt", summary="never seen", config=Config,
                       factory=lambda config, runtime: None,
                       capabilities={Capability.FEW_SHOT})]
"""
SPECNAME = MISSPELT.replace("@hookimpl\n", '@hookimpl(specname="adcore_methods")\n').replace(
    "misspelt", "renamed"
)
UNMARKED = MISSPELT.replace("@hookimpl\ndef adcore_method(", "def adcore_methods(")


def _site_entry_points(site: Path, monkeypatch) -> list[metadata.EntryPoint]:
    """Put the fake site on sys.path; discovery then sees it beside the real installs."""
    monkeypatch.syspath_prepend(str(site))
    return list(metadata.entry_points(group="adcore"))


def test_list_plugins_lists_every_installed_component():
    result = run_ad("list-plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    found = {(r["component"], r["kind"], r["distribution"]) for r in rows if r["status"] == "ok"}
    assert ("pixel-gaussian", "method", "ad-plugin-example") in found
    assert ("image_auroc", "metric", "adcore") in found
    assert ("summary-csv", "reporter", "adcore") in found


def test_broken_plugin_is_listed_and_others_still_work(tmp_path, mvtec_root):
    site = write_distribution(tmp_path / "site", "broken-ad-plugin", BROKEN, "broken")
    env = {"PYTHONPATH": str(site)}
    listed = run_ad("list-plugins", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["distribution"]: r for r in json.loads(listed.stdout) if r["status"] == "error"}
    assert "broken on purpose" in rows["broken-ad-plugin"]["summary"]
    assert rows["broken-ad-plugin"]["version"] == "0.1"

    evaluated = run_ad(
        *eval_args(str(mvtec_root), str(tmp_path / "out"), "2"),
        "--set",
        "evaluation.latency.enabled=false",
        "--no-progress",
        env=env,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert (tmp_path / "out/mvtec/pixel-gaussian/default/summary_metrics.csv").exists()


def test_duplicate_name_names_both_distributions_and_qualified_name_works(tmp_path, monkeypatch):
    site = write_distribution(tmp_path / "site", "clash-ad-plugin", DUPLICATE, "clash")
    registry = load_registry(_site_entry_points(site, monkeypatch))
    with pytest.raises(PluginError) as error:
        registry.resolve("method", "pixel-gaussian")
    assert "ad-plugin-example" in str(error.value)
    assert "clash-ad-plugin" in str(error.value)
    chosen = registry.resolve("method", "ad-plugin-example:pixel-gaussian")
    assert chosen.plugin.distribution == "ad-plugin-example"
    other = registry.resolve("method", "clash-ad-plugin:pixel-gaussian")
    assert other.spec.summary == "a clash"


def test_duplicate_name_through_the_cli_is_a_clear_error(tmp_path, mvtec_root):
    site = write_distribution(tmp_path / "site", "clash-ad-plugin", DUPLICATE, "clash")
    result = run_ad(
        "eval",
        "--method",
        "pixel-gaussian",
        "--dataset",
        "mvtec",
        "--data-root",
        str(mvtec_root),
        env={"PYTHONPATH": str(site)},
    )
    assert result.returncode == 1
    assert "clash-ad-plugin" in result.stderr and "ad-plugin-example" in result.stderr
    assert "Traceback" not in result.stderr


def _one_plugin(tmp_path, monkeypatch, name: str, source: str, entry: str):
    """The registry with one fake distribution installed, and that distribution's status."""
    site = write_distribution(tmp_path / "site", name, source, entry)
    registry = load_registry(_site_entry_points(site, monkeypatch))
    return registry, {p.distribution: p for p in registry.plugins}[name]


def test_record_failing_validation_marks_its_plugin_errored(tmp_path, monkeypatch):
    registry, status = _one_plugin(tmp_path, monkeypatch, "bad-record-plugin", BAD_RECORD, "bad")
    assert status.status == "error"
    assert "lowercase slug" in status.error
    assert "Not A Slug" not in registry.names("method")


def test_allow_list_and_disable_list(tmp_path, monkeypatch):
    site = write_distribution(tmp_path / "site", "broken-ad-plugin", BROKEN, "broken")
    entry_points = _site_entry_points(site, monkeypatch)

    monkeypatch.setenv("AD_PLUGINS", "ad-plugin-example")
    only = load_registry(entry_points)
    assert {p.distribution for p in only.plugins} == {"adcore", "ad-plugin-example"}

    monkeypatch.setenv("AD_PLUGINS", "")
    assert {p.distribution for p in load_registry(entry_points).plugins} == {"adcore"}

    monkeypatch.delenv("AD_PLUGINS")
    monkeypatch.setenv("AD_DISABLE_PLUGINS", "broken-ad-plugin")
    skipped = load_registry(entry_points)
    assert "broken-ad-plugin" not in {p.distribution for p in skipped.plugins}
    assert all(p.status == "ok" for p in skipped.plugins)


def test_unknown_method_lists_what_exists(tmp_path):
    result = run_ad("eval", "--method", "nosuchmethod", "--dataset", "synthetic")
    assert result.returncode == 2  # an unknown name given to an option: usage
    assert "Unknown method 'nosuchmethod'" in result.stderr
    assert "pixel-gaussian" in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelt_hook_marks_its_plugin_errored_with_the_right_name(tmp_path):
    site = write_distribution(tmp_path / "site", "misspelt-ad-plugin", MISSPELT, "misspelt")
    listed = run_ad("list-plugins", "--json", env={"PYTHONPATH": str(site)})
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    errored = {r["distribution"]: r["summary"] for r in rows if r["status"] == "error"}
    assert "'adcore_method' matches no hook" in errored["misspelt-ad-plugin"]
    assert "did you mean 'adcore_methods'?" in errored["misspelt-ad-plugin"]
    assert "misspelt" not in {r["component"] for r in rows if r["status"] == "ok"}
    assert {"pixel-gaussian", "patchcore"} <= {r["component"] for r in rows}


def test_specname_hook_loads_and_unmarked_hook_is_reported(tmp_path, monkeypatch):
    site = write_distribution(tmp_path / "site", "specname-ad-plugin", SPECNAME, "renamed")
    write_distribution(site, "unmarked-ad-plugin", UNMARKED, "unmarked")
    registry = load_registry(_site_entry_points(site, monkeypatch))
    status = {p.distribution: p for p in registry.plugins}
    assert status["specname-ad-plugin"].status == "ok"
    assert registry.resolve("method", "renamed").plugin.distribution == "specname-ad-plugin"
    assert status["unmarked-ad-plugin"].status == "error"
    assert "not marked with @hookimpl" in status["unmarked-ad-plugin"].error


DICT_HOOK = """
from adcore.api import Capability, MethodSpec, PluginConfig, hookimpl

@hookimpl
def adcore_methods():
    return {"dicty": MethodSpec(name="dicty", summary="a dict instead of a list",
                                config=PluginConfig, factory=print,
                                capabilities={Capability.FEW_SHOT})}
"""


def test_a_hook_returning_a_dict_is_told_as_a_dict(tmp_path, monkeypatch):
    """Iterating the dict would give its keys: the error names the dict, not "str"."""
    registry, status = _one_plugin(tmp_path, monkeypatch, "dict-ad-plugin", DICT_HOOK, "dicty")
    assert status.status == "error"
    assert "adcore_methods() returned a dict, expected a list of MethodSpec" in status.error
    assert "yielded str" not in status.error and "dicty" not in registry.names("method")
