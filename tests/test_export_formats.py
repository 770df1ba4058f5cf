"""``ad export --format openvino`` and ``--precision``, the runtime's engine chosen from the
bundle, and ``ad bench --model`` / ``--run --formats``: the exported model's figures.

The fast cases use the example plugin's pixel Gaussian (a 32-pixel run, ``test_export``'s
fixture); the reduced precisions' deltas need matrix products and convolutions for the
precision to act on, so they use PatchCore's smallest smoke settings (marked slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ad_runtime.bundle import BUNDLE_FILE, BUNDLE_FORMAT_VERSION, read_bundle
from ad_runtime.cli import main as runtime_main
from ad_runtime.errors import DataError, UsageError
from ad_runtime.model import Model, OpenVinoSession
from adcore.metrics import image_auroc
from adtest import run_ad, run_runtime
from test_export import SMOKE, _export, _rows, _saved_run, data, gaussian_run  # noqa: F401

FP32_PARITY = 1e-4  # ad export's fp32 bar: largest difference over the largest output


def _run_scores(run: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    rows = _rows(run / "plate/scores.csv")
    scores = np.array([float(r["score"]) for r in rows])
    return [Path(r["path"]) for r in rows], scores, np.array([int(r["label"]) for r in rows])


def _max_rel(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def test_openvino_bundle_gives_the_run_scores(gaussian_run, tmp_path, capsys):  # noqa: F811
    """An IR bundle (model.xml + model.bin, both hashed in bundle.json) runs on OpenVINO
    without being told, in ``Model`` and ``ad-runtime predict``: the run's scores to 1e-4."""
    bundle_dir = tmp_path / "ir"
    result = _export(gaussian_run, bundle_dir, "--format", "openvino")
    assert result.returncode == 0, result.stderr
    assert "OpenVINO fp32" in result.stdout and "limit 0.0001" in result.stdout
    bundle = read_bundle(bundle_dir)
    assert (bundle.format, bundle.precision, bundle.graph) == ("openvino", "fp32", "model.xml")
    assert list(bundle.graph_files) == ["model.bin"] and bundle.parity.passed
    assert not (bundle_dir / "model.onnx").exists()
    paths, expected, _ = _run_scores(gaussian_run)
    model = Model(bundle_dir)
    assert isinstance(model.session, OpenVinoSession)
    got = np.array([s.score for s in model.predict(paths)])
    assert _max_rel(got, expected) <= FP32_PARITY
    out = tmp_path / "out"
    code = runtime_main(["predict", str(bundle_dir), *map(str, paths), "--output", str(out),
                         "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    written = np.array([float(r["score"]) for r in _rows(out / "scores.csv")])
    assert _max_rel(written, expected) <= FP32_PARITY
    with pytest.raises(UsageError, match="--engine openvino"):
        Model(bundle_dir, engine="onnxruntime")


def test_a_precision_a_format_cannot_make_is_refused_naming_what_works(gaussian_run, tmp_path):  # noqa: F811
    cases = [
        (("--precision", "bf16"), "--format openvino --precision bf16"),
        (("--precision", "fp16"), "--format openvino --precision fp16"),
        (("--format", "openvino", "--precision", "int8"), "--format onnx --precision int8"),
        (("--precision", "fp8"), "fp32, fp16, bf16, int8"),
        (("--format", "tflite"), "--format openvino"),
    ]
    for flags, fix in cases:
        result = _export(gaussian_run, tmp_path / "b", *flags)
        err = " ".join(result.stderr.split())
        assert result.returncode == 2 and fix in err, (flags, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()  # refused before any work


def test_runtime_without_openvino_names_the_extra(gaussian_run, tmp_path, monkeypatch):  # noqa: F811
    bundle_dir = tmp_path / "ir"
    assert _export(gaussian_run, bundle_dir, "--format", "openvino").returncode == 0
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'ad-runtime\[openvino\]'"):
        Model(bundle_dir)


def test_a_damaged_ir_or_a_newer_bundle_is_one_paragraph(gaussian_run, tmp_path, capsys):  # noqa: F811
    """The IR's weights file is hashed like the graph: a truncated model.bin, a replaced
    model.xml, a bundle from a newer format version: one line naming the fix, exit 1."""
    bundle_dir = tmp_path / "ir"
    assert _export(gaussian_run, bundle_dir, "--format", "openvino").returncode == 0
    image = str(_run_scores(gaussian_run)[0][0])
    out = str(tmp_path / "out")

    def fails(folder: Path) -> str:
        code = runtime_main(["predict", str(folder), image, "--output", out, "--quiet"])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return err

    weights = bundle_dir / "model.bin"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8])
    assert "model.bin is not the file the bundle describes" in fails(bundle_dir)
    weights.write_bytes(original)
    (bundle_dir / "model.xml").write_text("<net/>")
    assert "damaged" in fails(bundle_dir)
    newer = tmp_path / "newer"
    newer.mkdir()
    description = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    (newer / BUNDLE_FILE).write_text(
        json.dumps({**description, "format_version": BUNDLE_FORMAT_VERSION + 1})
    )
    assert "Upgrade the toolkit" in fails(newer)
    from adcore.run.format_bench import bench_model

    with pytest.raises(DataError, match="Upgrade the toolkit"):
        bench_model(newer)
    # what the runtime cannot read past the hashes (a graph written elsewhere) is a DataError
    from ad_runtime.model import engine_session

    with pytest.raises(DataError, match="OpenVINO cannot read"):
        engine_session(bundle_dir / "model.xml", "openvino")


def test_bench_model_measures_the_bundle(gaussian_run, data, tmp_path):  # noqa: F811
    """``ad bench --model``: one row with real figures; its AUROC is that of the run's
    scores (the bundle gives them to 1e-4), on the run's images or on the data set named."""
    bundle_dir = tmp_path / "onnx"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    from adcore.run.format_bench import bench_model

    _, scores, labels = _run_scores(gaussian_run)
    (row,) = bench_model(bundle_dir, warmup=1, iters=3).rows
    assert (row.format, row.precision, row.status) == ("onnx", "fp32", "ok")
    assert row.file_mb == (bundle_dir / "model.onnx").stat().st_size / 2**20
    assert row.images == len(labels) and row.auroc == image_auroc(scores, labels)
    assert row.latency_ms > 0 and row.throughput_ips > 0
    assert row.peak_memory_mb > 0 and "VmHWM" in row.peak_memory_source
    result = run_ad(
        "bench", "--model", str(bundle_dir), "--dataset", "mvtec", "--data-root", str(data),
        "--category", "widget", "--iters", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for column in ("format", "precision", "status", "image AUROC", "latency b1 (ms)",
                   "throughput b16 (img/s)", "peak memory (MiB)", "file size (MiB)"):  # fmt: skip
        assert column in result.stdout, column
    assert "│ onnx" in result.stdout and "│ ok" in result.stdout


def test_bench_formats_is_one_table_with_each_status(gaussian_run, tmp_path, monkeypatch):  # noqa: F811
    """torch, onnx, openvino x fp32, int8: each pair a row, ok or failed with the reason;
    the runtime's process (no torch) peaks lower than PyTorch's; a graph off PyTorch by 1 %
    is "exported but parity failed" with the figures, and not measured."""
    from ad_plugin_example.model import PixelGaussian, PixelGaussianGraph
    from adcore.run.format_bench import FAILED, OK, PARITY_FAILED, bench_formats

    report = bench_formats(
        gaussian_run, "plate", ["torch", "onnx", "openvino"], ["fp32", "int8"],
        tmp_path / "bundles", warmup=1, iters=2,
    )  # fmt: skip
    rows = {(r.format, r.precision): r for r in report.rows}
    assert list(rows) == [(f, p) for f in ("torch", "onnx", "openvino") for p in ("fp32", "int8")]
    _, scores, labels = _run_scores(gaussian_run)
    for key in [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32")]:
        row = rows[key]
        assert row.status == OK and row.auroc == image_auroc(scores, labels), key
        assert row.latency_ms > 0 and row.throughput_ips > 0 and row.file_mb > 0, key
    assert (
        rows[("torch", "int8")].status == FAILED
        and "--formats onnx" in rows[("torch", "int8")].reason
    )
    assert rows[("openvino", "int8")].status == FAILED
    assert "--format onnx --precision int8" in rows[("openvino", "int8")].reason
    assert rows[("onnx", "fp32")].peak_memory_mb < rows[("torch", "fp32")].peak_memory_mb
    assert (tmp_path / "bundles/openvino-fp32/model.xml").is_file()

    class Inflated(PixelGaussianGraph):
        def forward(self, x):
            scores, maps = super().forward(x)
            return scores * 1.01, maps

    monkeypatch.setattr(
        PixelGaussian, "export_module", lambda self: Inflated(self.mean, self.var, self.config.blur)
    )
    (row,) = bench_formats(gaussian_run, "plate", ["onnx"], ["fp32"], tmp_path / "b").rows
    assert row.status == PARITY_FAILED and "scores by 0.01 " in row.reason
    assert row.latency_ms is None and row.bundle == str(tmp_path / "b/onnx-fp32")


@pytest.fixture(scope="module")
def patchcore_run(data, tmp_path_factory) -> Path:  # noqa: F811
    return _saved_run(data, tmp_path_factory.mktemp("patchcore"), "patchcore", "3", {})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("export_format", "precision", "hint"),
    [("onnx", "int8", "fp32"), ("openvino", "bf16", "bf16"), ("openvino", "fp16", "fp16")],
)
def test_reduced_precision_exports_and_reports_its_deltas(
    patchcore_run, tmp_path, export_format, precision, hint
):
    """A reduced precision exports (exit 0) and reports, not limits, its deltas: recorded
    as the runtime reproduces them (the bundle's own engine and hint against the run's
    scores), non-zero (the precision did act), and printed with both AUROCs."""
    bundle_dir = tmp_path / "b"
    result = _export(patchcore_run, bundle_dir, "--format", export_format, "--precision", precision)
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())
    assert f"{precision}: reported, no limit" in printed and "image AUROC" in printed
    bundle = read_bundle(bundle_dir)
    assert (bundle.precision, bundle.inference_precision) == (precision, hint)
    parity = bundle.parity
    assert parity.tolerance is None and parity.passed
    assert parity.score_max_rel > 0 and parity.map_max_rel > 0
    assert parity.auroc_torch is not None and parity.auroc_bundle is not None
    paths, expected, _ = _run_scores(patchcore_run)
    got = np.array([s.score for s in Model(bundle_dir).predict(paths)])
    assert _max_rel(got, expected) == pytest.approx(parity.run_score_max_rel, rel=1e-6)
    if precision == "int8":  # int8 weights: a quarter of the fp32 graph, and a bit more
        fp32 = tmp_path / "fp32"
        assert _export(patchcore_run, fp32).returncode == 0
        assert (bundle_dir / "model.onnx").stat().st_size < 0.5 * (
            fp32 / "model.onnx"
        ).stat().st_size


@pytest.mark.slow
def test_torch_free_runtime_names_the_openvino_extra(gaussian_run, tmp_path, runtime_command):  # noqa: F811
    """The runtime installed without extras reads an IR bundle's description and says how
    to get its engine: one paragraph, exit 2."""
    bundle_dir = tmp_path / "ir"
    assert _export(gaussian_run, bundle_dir, "--format", "openvino").returncode == 0
    image = str(_run_scores(gaussian_run)[0][0])
    found = subprocess.run(
        [str(runtime_command.parent / "python"), "-c", "import openvino"], capture_output=True
    )
    assert found.returncode != 0  # the venv has no OpenVINO
    result = run_runtime(runtime_command, "predict", str(bundle_dir), image, "--quiet")
    assert result.returncode == 2 and "ad-runtime[openvino]" in result.stderr
    assert "Traceback" not in result.stderr
