"""The eval pipeline: support sets, resume, overwrite, atomic files, reproducibility."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from adcore.config.files import build_raw_config
from adcore.config.problems import validate_base
from adcore.config.resolve import resolve
from adcore.contracts.dataset import Sample
from adcore.data.support import choose_support
from adcore.infra.errors import ConfigError, OutputError, PluginError
from adcore.infra.files import atomic_write_text
from adcore.plugins.registry import get_registry
from adcore.run.runner import Evaluation, RunOptions
from adtest import eval_args, run_ad


def _samples(n: int) -> list[Sample]:
    return [Sample(image_path=Path(f"{i:03d}.png"), label=0, category="c") for i in range(n)]


def test_support_set_is_seeded_and_sized():
    train = _samples(20)
    first = choose_support(train, 4, seed=1, category="c")
    assert first == choose_support(train, 4, seed=1, category="c")
    assert len(first) == 4 == len(set(first))
    draws = {tuple(s.image_path for s in choose_support(train, 4, seed, "c")) for seed in range(8)}
    assert len(draws) > 1  # seeds change the draw
    assert choose_support(train, 0, 0, "c") == []
    assert choose_support(train, "all", 0, "c") == train
    with pytest.raises(ConfigError, match="only 20 normal"):
        choose_support(train, 21, 0, "c")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary left


def _config(mvtec_root: Path, output: Path, *extra: str):
    raw = build_raw_config(
        None,
        assignments=[
            "model.name=pixel-gaussian",
            "model.resolution=32",
            "data.dataset=mvtec",
            f"data.root={mvtec_root}",
            "data.k_shot=3",
            "data.num_workers=0",
            f"experiment.output_root={output}",
            "evaluation.latency.enabled=false",
            *extra,
        ],
    )
    return resolve(validate_base(raw), get_registry())


def _run(config, **options):
    return Evaluation(config, get_registry(), RunOptions(show_progress=False, **options)).run()


def test_results_layout_and_resume(mvtec_root, tmp_path):
    config = _config(mvtec_root, tmp_path / "out")
    first = _run(config)
    run_dir = tmp_path / "out/mvtec/pixel-gaussian/default"
    assert first.run_dir == run_dir
    for name in (
        "config.yaml",
        "env.json",
        "summary_metrics.csv",
        "summary_metrics_pretty.csv",
        "summary_metrics_pretty.md",
        "widget/metrics.csv",
        "widget/scores.csv",
    ):
        assert (run_dir / name).exists(), name
    with (run_dir / "summary_metrics.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["category"] for r in rows] == ["plate", "widget", "mean"]
    for column in ("image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"):
        mean = np.mean([float(r[column]) for r in rows[:2]])
        assert float(rows[2][column]) == pytest.approx(mean)
    with (run_dir / "widget/scores.csv").open() as stream:
        scores = list(csv.DictReader(stream))
    assert len(scores) == 6 and {s["defect_type"] for s in scores} == {"good", "square"}

    stamp = (run_dir / "widget/metrics.csv").stat().st_mtime_ns
    second = _run(config)
    assert all(c.resumed for c in second.categories)
    assert (run_dir / "widget/metrics.csv").stat().st_mtime_ns == stamp
    assert second.mean() == pytest.approx(first.mean())

    third = _run(config, overwrite=True)
    assert not any(c.resumed for c in third.categories)
    assert (run_dir / "widget/metrics.csv").stat().st_mtime_ns != stamp


def test_changed_config_is_refused_unless_overwrite(mvtec_root, tmp_path):
    _run(_config(mvtec_root, tmp_path / "out"))
    changed = _config(mvtec_root, tmp_path / "out", "data.k_shot=2")
    with pytest.raises(OutputError, match="different config"):
        _run(changed)
    assert all(not c.resumed for c in _run(changed, overwrite=True).categories)


def test_an_interrupted_overwrite_leaves_no_old_result_under_the_new_config(
    mvtec_root, tmp_path, monkeypatch
):
    """The old config's finished categories must not be resumed as the new config's."""
    first = _run(_config(mvtec_root, tmp_path / "out"))
    changed = _config(mvtec_root, tmp_path / "out", "data.k_shot=2")
    run_dir = tmp_path / "out" / "mvtec" / "pixel-gaussian" / "default"

    def interrupted(self, category, prepared):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Evaluation, "run_category", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _run(changed, overwrite=True)
    assert not list(run_dir.glob("*/metrics.csv"))
    assert not (run_dir / "summary_metrics.csv").exists()
    rerun = _run(changed)  # the same new config, without --overwrite
    assert not any(c.resumed for c in rerun.categories)
    assert {c.num_support for c in rerun.categories} == {2}
    assert {c.num_support for c in first.categories} == {3}


def test_same_seed_same_scores(mvtec_root, tmp_path):
    a = _run(_config(mvtec_root, tmp_path / "a", "experiment.seed=3"))
    b = _run(_config(mvtec_root, tmp_path / "b", "experiment.seed=3"))
    assert a.mean() == b.mean()
    read = lambda r: (r.run_dir / "plate/scores.csv").read_text()  # noqa: E731
    assert read(a) == read(b)


def test_unsupported_setting_is_refused_before_any_work(mvtec_root, tmp_path):
    config = _config(mvtec_root, tmp_path / "out", "data.k_shot=0")
    with pytest.raises(PluginError, match="cannot run zero-shot"):
        Evaluation(config, get_registry(), RunOptions(show_progress=False))
    assert not (tmp_path / "out").exists()


def test_save_maps_writes_float_tiffs(mvtec_root, tmp_path):
    from PIL import Image

    result = _run(_config(mvtec_root, tmp_path / "out", "data.categories=[plate]"), save_maps=True)
    maps = sorted((result.run_dir / "plate/maps").rglob("*.tiff"))
    assert len(maps) == 6
    with Image.open(maps[0]) as image:
        assert image.mode == "F" and image.size == (32, 32)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "nosuch"], "Unknown method 'nosuch'"),
        (["--dataset", "nosuch"], "Unknown dataset 'nosuch'"),
        (["--set", "data.nosuch=1"], "data.nosuch: unknown key"),
        (["--set", "data.batch_size=-1"], "data.batch_size"),
        (["--data-root", "/nonexistent/mvtec"], "data root /nonexistent/mvtec"),
        (["--category", "nosuch"], "Available: plate, widget"),
        (["--k-shot", "two"], "--k-shot 'two'"),
    ],
)
def test_bad_input_is_one_message_and_nonzero_exit(mvtec_root, tmp_path, args, expected):
    result = run_ad(*eval_args(mvtec_root, tmp_path / "out"), *args)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_folder_is_a_clear_error(mvtec_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_ad(
        *eval_args(str(mvtec_root), str(blocker / "out"), "2"),
    )
    assert result.returncode == 1
    assert "cannot be written" in result.stderr and "Traceback" not in result.stderr


def test_eval_through_the_entry_point_prints_a_table_and_writes_json(mvtec_root, tmp_path):
    result = run_ad(
        *eval_args(str(mvtec_root), str(tmp_path / "out"), "all"),
        "--set",
        "model.resolution=32",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert [c["category"] for c in summary["categories"]] == ["plate", "widget"]
    assert summary["categories"][0]["num_support"] == 6
    assert summary["categories"][0]["efficiency"]["latency_ms_median"] > 0


def test_usage_errors_exit_with_code_2(mvtec_root, tmp_path):
    unknown_option = run_ad(*eval_args(mvtec_root, tmp_path / "out"), "--bogus")
    assert unknown_option.returncode == 2 and "No such option" in unknown_option.stderr
    for value in ("two", "-3", "1.5"):
        bad_k_shot = run_ad(*eval_args(mvtec_root, tmp_path / "out"), "--k-shot", value)
        assert bad_k_shot.returncode == 2 and "Traceback" not in bad_k_shot.stderr
        assert f"--k-shot '{value}' is not a whole number" in bad_k_shot.stderr


def test_original_resolution_compares_maps_at_each_masks_own_size(mvtec_root, tmp_path):
    import json

    import torch
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    config = _config(mvtec_root, tmp_path / "out", "data.categories=[plate]",
                     "evaluation.resolution=original")  # fmt: skip
    result = _run(config, save_maps=True)
    run_dir = result.run_dir
    assert json.loads((run_dir / "env.json").read_text())["evaluation_resolution"] == "original"
    values, truths = [], []
    for tiff in sorted((run_dir / "plate/maps").rglob("*.tiff")):
        small = torch.from_numpy(np.array(Image.open(tiff), dtype=np.float32))  # [32,32]
        up = torch.nn.functional.interpolate(small[None, None], size=(64, 64), mode="bilinear")
        values.append(up[0, 0].numpy().ravel())
        mask_file = mvtec_root / "plate/ground_truth" / tiff.parent.name / f"{tiff.stem}_mask.png"
        mask = np.asarray(Image.open(mask_file)) > 0 if mask_file.exists() else np.zeros((64, 64))
        truths.append(np.asarray(mask, bool).ravel())
    expected = roc_auc_score(np.concatenate(truths), np.concatenate(values))
    assert result.categories[0].metrics["pixel_auroc"] == pytest.approx(expected, abs=1e-6)


def test_a_failing_picture_writer_loses_no_metrics_and_is_named(mvtec_root, tmp_path, monkeypatch):
    """A reporter that fails (here the overlay writer on a full disk) neither stops the
    other reporters nor the other categories: the metrics, scores and summaries are all
    written, and the run ends with one OutputError naming the reporter and category."""
    from adcore.outputs.reporters.overlay import OverlayReporter

    def full_disk(self, result, outputs, context):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OverlayReporter, "on_category", full_disk)
    monkeypatch.delenv("AD_DEBUG", raising=False)
    config = _config(mvtec_root, tmp_path / "out")
    with pytest.raises(OutputError) as error:
        _run(config)
    message = str(error.value)
    assert "OverlayReporter on plate" in message and "OverlayReporter on widget" in message
    assert "No space left on device" in message and "--overwrite" in message
    run_dir = tmp_path / "out/mvtec/pixel-gaussian/default"
    for name in ("summary_metrics.csv", "summary_metrics_pretty.md", "summary.json"):
        assert (run_dir / name).is_file(), name
    for category in ("plate", "widget"):
        assert (run_dir / category / "metrics.csv").is_file()
        assert (run_dir / category / "scores.csv").is_file()


def test_save_model_on_a_finished_run_fits_the_unsaved_categories_again(mvtec_root, tmp_path):
    """The README's order: the main job without --save-model, then the same run with it.
    A category kept from before has no fitted state to export, so it is fitted again and
    saved, instead of being kept with nothing saved."""
    config = _config(mvtec_root, tmp_path / "out")
    _run(config)
    run_dir = tmp_path / "out/mvtec/pixel-gaussian/default"
    assert not (run_dir / "plate/model.pt").exists()
    again = _run(config, save_model=True)
    assert not any(c.resumed for c in again.categories)
    assert (run_dir / "plate/model.pt").is_file() and (run_dir / "widget/model.pt").is_file()
    kept = _run(config, save_model=True)
    assert all(c.resumed for c in kept.categories)


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"PK\x03\x04" + b"\0" * 64])
def test_a_damaged_fitted_state_is_named_with_the_fix(tmp_path, content):
    from adcore.infra.errors import DataError
    from adcore.outputs.fitted import read_fitted_state

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        read_fitted_state(path)
    assert str(path) in str(error.value) and "--save-model --overwrite" in str(error.value)


def test_a_refusal_names_the_bad_files_of_the_support_and_test_sets_at_once(mvtec_root, tmp_path):
    """Without --skip-bad-samples, one refusal names every bad file of the category, the
    support set's and the test set's together, so one fix-and-rerun is enough."""
    train = sorted((mvtec_root / "plate/train/good").glob("*.png"))[0]
    test = sorted((mvtec_root / "plate/test/good").glob("*.png"))[0]
    train.write_bytes(b"")
    test.write_bytes(b"")
    config = _config(mvtec_root, tmp_path / "out", "data.k_shot=all", "data.categories=[plate]")
    from adcore.infra.errors import DataError

    with pytest.raises(DataError) as error:
        _run(config)
    message = str(error.value)
    assert "2 bad sample(s)" in message and str(train) in message and str(test) in message
