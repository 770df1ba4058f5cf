"""Everyday messages and defaults, through the ``ad`` entry point as a user meets them."""

from __future__ import annotations

import json
import re

import yaml

from adtest import eval_args, fast_flags, run_ad, write_distribution

FAULTY = """
from adcore.api import Capability, MethodSpec, PluginConfig, hookimpl

class Config(PluginConfig):
    layer: str = "layer9"

def build(config, runtime):
    layers = {"layer1": 1, "layer2": 2}
    return layers[config.layer]

@hookimpl
def adcore_methods():
    return [MethodSpec(name="faulty", summary="raises inside its factory", config=Config,
                       factory=build, capabilities={Capability.FEW_SHOT})]
"""

# the example method, but Ctrl-C arrives while the second category is being fitted; Python's
# own SIGINT handler is put back first, since a process started in the background by a
# shell without job control inherits SIGINT as ignored (then no Ctrl-C could reach it)
INTERRUPTING = """
import os, signal
from adcore.api import Capability, MethodSpec, hookimpl
from ad_plugin_example import PixelGaussianConfig
from ad_plugin_example.model import PixelGaussian

class Interrupting(PixelGaussian):
    def fit(self, context):
        if context.category == "widget":
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)
        super().fit(context)

@hookimpl
def adcore_methods():
    return [MethodSpec(name="interrupting", summary="Ctrl-C in the second category",
                       config=PixelGaussianConfig, factory=Interrupting,
                       capabilities={Capability.FEW_SHOT, Capability.FULL_SHOT})]
"""


def _eval(mvtec_root, out, *extra, k_shot="2", env=None):
    args = eval_args(mvtec_root, out, k_shot)
    if k_shot is None:
        index = args.index("--k-shot")
        del args[index : index + 2]
    return run_ad(*args, *fast_flags(), *extra, env=env)


def test_without_k_shot_a_method_runs_its_natural_setting_and_says_so(tmp_path, mvtec_root):
    result = _eval(mvtec_root, tmp_path / "out", k_shot=None)
    assert result.returncode == 0, result.stderr
    assert "pixel-gaussian runs its natural setting, full-shot (k_shot=all)" in result.stdout
    run = tmp_path / "out/mvtec/pixel-gaussian/default"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["k_shot"] == "all"
    shown = run_ad("config", "show", "--method", "winclip", "--json")
    assert json.loads(shown.stdout)["data"]["k_shot"] == 0  # zero-shot for the CLIP methods


def test_config_errors_come_all_at_once_with_file_and_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "model:\n  name: pixel-gaussian\n  resolutoin: 64\n  precision: fp8\n"
        "data:\n  batch_size: 0\n"
    )
    result = run_ad("config", "show", "--config", str(config), "--set", "evaluation.metrics=[nope]")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(
        re.search(
            r"model\.resolutoin: unknown key; did you mean 'resolution'\? \(.*bad\.yaml:3\)", li
        )
        for li in lines
    )
    assert any(re.search(r"model\.precision: .*'fp8'.*bad\.yaml:4\)", li) for li in lines)
    assert any(re.search(r"data\.batch_size: .*\(got 0\).*bad\.yaml:6\)", li) for li in lines)
    assert any("evaluation.metrics: unknown metric(s) nope" in li and "--set" in li for li in lines)
    assert any("allowed keys in model" in li and "resolution" in li for li in lines)
    assert "4 problems" in result.stderr and "Traceback" not in result.stderr


def test_a_single_value_is_read_as_a_one_item_list(tmp_path, mvtec_root):
    config = tmp_path / "one.yaml"
    config.write_text("data:\n  categories: widget\n")
    result = _eval(mvtec_root, tmp_path / "out", "--config", str(config))
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / "out/mvtec/pixel-gaussian/default/summary_metrics.csv").read_text()
    assert "widget" in summary and "plate" not in summary


def test_rerun_names_kept_categories_and_another_config_names_its_keys(tmp_path, mvtec_root):
    out = tmp_path / "out"
    assert _eval(mvtec_root, out).returncode == 0
    again = _eval(mvtec_root, out)
    assert again.returncode == 0, again.stderr
    assert "Kept from an earlier run (same config, not recomputed): plate, widget" in again.stdout
    other = _eval(mvtec_root, out, "--set", "model.blur=3", "--set", "data.batch_size=4")
    assert other.returncode == 1
    assert "Differing keys: data.batch_size: 8 -> 4; model.blur: 5 -> 3." in other.stderr


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, mvtec_root):
    site = write_distribution(tmp_path / "site", "interrupting-ad-plugin", INTERRUPTING, "stop")
    args = ["--method", "interrupting", *fast_flags(), "--output", str(tmp_path / "out")]
    common = ["eval", "--dataset", "mvtec", "--data-root", str(mvtec_root), "--k-shot", "2"]
    result = run_ad(*common, *args, env={"PYTHONPATH": str(site)})
    assert result.returncode == 130, result.stderr
    assert "Interrupted. Finished and kept in" in result.stderr
    assert "plate." in result.stderr and "Not finished: widget." in result.stderr
    assert "Rerun the same command to resume" in result.stderr
    assert "Traceback" not in result.stderr


def test_progress_prints_plain_lines_when_not_a_terminal(tmp_path, mvtec_root):
    args = [*eval_args(mvtec_root, tmp_path / "out"), "--set", "evaluation.latency.enabled=false"]
    result = run_ad(*args, "--set", "model.resolution=32", "--set", "data.num_workers=0")
    assert result.returncode == 0, result.stderr
    assert re.search(r"plate: fit: 2/2 \(100%\), \d+ s", result.stderr)
    assert re.search(r"widget: predict: 6/6 \(100%\), \d+ s", result.stderr)
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log


def test_exception_inside_a_plugin_is_one_paragraph_naming_it(tmp_path, mvtec_root):
    site = write_distribution(tmp_path / "site", "faulty-ad-plugin", FAULTY, "faulty")
    args = ["eval", "--method", "faulty", "--dataset", "mvtec", "--data-root", str(mvtec_root)]
    result = run_ad(*args, "--k-shot", "1", "--no-progress", env={"PYTHONPATH": str(site)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "The method 'faulty' from distribution faulty-ad-plugin 0.1 failed: KeyError:" in message
    assert "'layer9'" in message and "faulty_ad_plugin.py" in message and "AD_DEBUG=1" in message
    debug = run_ad(*args, "--k-shot", "1", env={"PYTHONPATH": str(site), "AD_DEBUG": "1"})
    assert "Traceback" in debug.stderr


def test_list_plugins_outside_a_terminal_has_one_line_per_component():
    result = run_ad("list-plugins", env={"COLUMNS": "60"})
    assert result.returncode == 0, result.stderr
    row = next(li for li in result.stdout.splitlines() if " pixel-gaussian " in li)
    assert "ad-plugin-example" in row and "Per-pixel Gaussian of aligned normal images" in row
    assert "\x1b[" not in result.stdout


def test_schema_checks_model_and_data_against_the_chosen_plugin():
    import jsonschema

    result = run_ad("config", "schema")
    assert result.returncode == 0, result.stderr
    validator = jsonschema.Draft202012Validator(json.loads(result.stdout))

    def errors(instance):
        return [e.message for e in validator.iter_errors(instance)]

    assert errors({"model": {"name": "pixel-gaussian", "resolution": 64, "device": "cpu"}}) == []
    assert errors({"model": {"name": "ad-plugin-example:pixel-gaussian", "blur": 3}}) == []
    typo = errors({"model": {"name": "pixel-gaussian", "resolutoin": 64}})
    assert typo and "'resolutoin' was unexpected" in typo[0]
    assert errors({"model": {"name": "pixel-gaussian", "coreset_ratio": 0.1}})  # patchcore's key
    assert errors({"model": {"coreset_ratio": 0.1}}) == []  # no name: the default, patchcore
    assert errors({"data": {"dataset": "mvtec", "root": "x", "colour": 1}})
    assert errors({"data": {"dataset": "synthetic", "categories": "fabric"}}) == []


def test_env_records_the_machine_and_report_shows_it(tmp_path, mvtec_root):
    import os

    assert _eval(mvtec_root, tmp_path / "out").returncode == 0
    run = tmp_path / "out/mvtec/pixel-gaussian/default"
    machine = json.loads((run / "env.json").read_text())["machine"]
    assert machine["cpu_count"] == os.cpu_count()
    assert len(machine["load_average"]) == 3 and all(x >= 0 for x in machine["load_average"])
    assert machine["torch_threads"] >= 1 and machine["cpu_model"]
    report = run_ad("report", str(run), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report/report.md").read_text()
    assert "| machine |" in text and machine["cpu_model"] in text
    assert f"load {machine['load_average'][0]:.1f}" in text
    assert machine["cpu_model"] in (tmp_path / "report/report.html").read_text()


def test_data_check_names_a_missing_mask_as_the_folder_names_its_masks(tmp_path, mvtec_root):
    masks = mvtec_root / "plate/ground_truth/square"
    for path in sorted(masks.glob("*_mask.png")):  # masks named like their images
        path.rename(masks / path.name.replace("_mask", ""))
    (masks / "002.png").unlink()
    result = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(mvtec_root))
    assert result.returncode == 1
    text = " ".join(result.stdout.split() + result.stderr.split())
    assert "ground_truth/square/002.png" in text and "002_mask.png" not in text
    assert "000.png" not in text.replace("002.png", "")  # the accepted masks are not reported


def test_skip_bad_samples_names_each_skipped_file_on_the_console(tmp_path, mvtec_root):
    """--skip-bad-samples says which files it left out and why, as a note of the category
    (console, metrics.csv's notes), besides the count in num_skipped."""
    from PIL import Image

    wrong = mvtec_root / "widget/ground_truth/square/001_mask.png"
    Image.new("L", (30, 20), 255).save(wrong)
    result = _eval(mvtec_root, tmp_path / "out", "--skip-bad-samples")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "skipped 1 bad sample" in line]
    assert lines and lines[-1].startswith("note widget: skipped 1 bad sample: ")
    assert str(wrong) in lines[-1] and "30x20" in lines[-1]
    assert not any("skipped" in line for line in result.stdout.splitlines() if "plate" in line)
    metrics = (tmp_path / "out/mvtec/pixel-gaussian/default/widget/metrics.csv").read_text()
    assert "skipped 1 bad sample" in metrics and str(wrong) in metrics


def test_help_shows_no_type_beside_a_switch():
    """A switch such as --random-weights takes no value, so no ``<bool>`` stands beside it in
    any command's --help (only typer's own --help line keeps its type)."""
    import typer
    from typer.testing import CliRunner

    from adcore.cli import app

    def commands(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from commands(sub, [*path, name])

    paths = list(commands(typer.main.get_command(app), []))
    assert ["eval"] in paths and ["data", "download"] in paths
    switches = 0
    for path in paths:
        shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
        switches += len(re.findall(r"--(random-weights|json|no-progress|overwrite)\b", shown))
        typed = [line for line in shown.splitlines() if "<bool>" in line]
        assert all(line.split()[1] == "--help" for line in typed), (path, typed)
    assert switches >= 10


def test_list_plugins_in_a_pipe_is_as_wide_as_each_row_needs():
    """Outside a terminal a row is not padded to the widest one: it ends with its summary."""
    listed = run_ad("list-plugins")
    rows = json.loads(run_ad("list-plugins", "--json").stdout)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    header = next(li for li in lines if li.split()[:2] == ["component", "kind"])
    start = header.index("summary")
    for row in (r for r in rows if r["status"] == "ok"):
        summary = row["summary"] + (
            f" ({', '.join(row['capabilities'])})" * bool(row["capabilities"])
        )
        summary += f" (not exportable: {row['not_exportable']})" * bool(row["not_exportable"])
        line = next(li for li in lines if li.split()[:1] == [row["component"]])
        assert line[start:] == summary, line
    assert not re.search("[│┃━─]", listed.stdout)


STRICT = """
from adcore.api import Capability, MethodSpec, PluginConfig, WeightsError, hookimpl

def build(config, runtime):
    raise WeightsError("No weights file strict.pt in the cache.", "Put it there and rerun.")

@hookimpl
def adcore_methods():
    return [MethodSpec(name="strict", summary="refuses to build", config=PluginConfig,
                       factory=build, capabilities={Capability.FEW_SHOT})]
"""


def test_a_user_error_from_a_plugin_names_the_plugin_and_its_distribution(tmp_path, mvtec_root):
    site = write_distribution(tmp_path / "site", "strict-ad-plugin", STRICT, "strict")
    args = ["eval", "--method", "strict", "--dataset", "mvtec", "--data-root", str(mvtec_root)]
    result = run_ad(*args, "--k-shot", "1", "--no-progress", env={"PYTHONPATH": str(site)})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "No weights file strict.pt in the cache. Put it there and rerun." in message
    assert "(Raised by the method 'strict' from distribution strict-ad-plugin 0.1.)" in message
    host = run_ad(*args, "--k-shot", "1", "--category", "nosuch", env={"PYTHONPATH": str(site)})
    assert "Category nosuch not found" in host.stderr and "Raised by" not in host.stderr
