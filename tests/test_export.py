"""``ad export``: every built-in method's fitted model as an ONNX graph that ONNX Runtime runs
to the run's own scores.

Each case runs ``ad eval --save-model`` on a small generated tree with the method's smoke
settings (random weights, nothing downloaded), exports the category, and feeds the graph the
run's test images preprocessed by the host's loader (the bundle's declared input), with
ONNX Runtime: scores must equal the run's ``scores.csv`` to 1e-4 relative (the fp32 bar of
``ad export``: the graph's search is one product where PyTorch's is chunked or faiss's, so
float32 sums are reordered, some 1e-7 relative).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from ad_runtime.bundle import BUNDLE_FORMAT_VERSION, read_bundle
from ad_runtime.model import Model
from adcore.infra.errors import DataError
from adcore.plugins.registry import get_registry
from adtest import run_ad, run_runtime, write_mvtec_tree

SMOKE = {c.spec.name: c.spec.smoke_config for c in get_registry().of_kind("method")}
CASES = [
    ("pixel-gaussian", "3", {"resolution": 32}),
    ("patchcore", "3", {}),
    ("winclip", "0", {}),
    ("winclip", "2", {}),  # WinCLIP+
    ("afclip", "0", {}),
    ("afclip", "2", {}),
    ("miniclip", "0", {}),
    ("anomalydino", "2", {}),  # masking on: the component found by squaring in the graph
]


def _settings(values: dict) -> list[str]:
    flags: list[str] = []
    for key, value in values.items():
        flags += ["--set", f"model.{key}={json.dumps(value)}"]
    return flags


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_mvtec_tree(tmp_path_factory.mktemp("export") / "mvtec", num_good=3, num_bad=3)


def _saved_run(data: Path, out: Path, method: str, k_shot: str, extra: dict) -> Path:
    result = run_ad(
        "eval", "--method", method, "--dataset", "mvtec", "--data-root", str(data),
        "--k-shot", k_shot, "--output", str(out), "--no-progress", "--save-model",
        "--set", "evaluation.latency.enabled=false", "--set", "data.num_workers=0",
        *_settings({**SMOKE[method], **extra}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out / "mvtec" / method / "default"


def _export(run: Path, output: Path, *extra: str):
    return run_ad(
        "export", "--run", str(run), "--category", "plate", "--output", str(output), *extra
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def _graph_scores(bundle_dir: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """The bundle as a deployment reads it: the torch-free runtime's decoding,
    preprocessing and ONNX Runtime."""
    scored = Model(bundle_dir).predict([Path(r["path"]) for r in rows], batch_size=4)
    return np.array([s.score for s in scored])


@pytest.mark.slow
@pytest.mark.parametrize(("method", "k_shot", "extra"), CASES, ids=lambda v: str(v))
def test_exported_graph_gives_the_run_scores(
    data, tmp_path, runtime_command, method, k_shot, extra
):
    """eval --save-model, export, and the bundle through ``ad_runtime.Model`` here and
    through ``ad-runtime predict`` in a venv without torch, OpenVINO (fp32) on the same
    graph, and the OpenVINO IR export: the run's scores to 1e-4 relative."""
    run = _saved_run(data, tmp_path / "out", method, k_shot, extra)
    bundle_dir = tmp_path / "bundle"
    result = _export(run, bundle_dir)
    assert result.returncode == 0, result.stderr
    assert "Parity on 6 test images" in result.stdout

    rows = _rows(run / "plate/scores.csv")
    expected = np.array([float(r["score"]) for r in rows])
    got = _graph_scores(bundle_dir, rows)
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))
    images = [r["path"] for r in rows]
    out = tmp_path / "runtime"
    result = run_runtime(runtime_command, "predict", str(bundle_dir), *images, "--output", str(out))
    assert result.returncode == 0, result.stderr
    torch_free = np.array([float(r["score"]) for r in _rows(out / "scores.csv")])
    assert np.max(np.abs(torch_free - expected)) <= 1e-4 * np.max(np.abs(expected))
    scored = Model(bundle_dir, engine="openvino").predict([Path(p) for p in images])
    openvino = np.array([s.score for s in scored])
    assert np.max(np.abs(openvino - expected)) <= 1e-4 * np.max(np.abs(expected))
    ir_dir = tmp_path / "ir"  # OpenVINO's own format: the engine chosen from the bundle
    result = _export(run, ir_dir, "--format", "openvino")
    assert result.returncode == 0, result.stderr
    ir = np.array([s.score for s in Model(ir_dir).predict([Path(p) for p in images])])
    assert np.max(np.abs(ir - expected)) <= 1e-4 * np.max(np.abs(expected))

    bundle = read_bundle(bundle_dir)
    assert bundle.method == method and bundle.category == "plate"
    assert bundle.parity.passed and bundle.parity.images == len(rows) == 6
    assert bundle.parity.auroc_torch == bundle.parity.auroc_bundle
    assert bundle.weights["random_backbone"] == (method != "pixel-gaussian")
    assert bundle.score_scale["low"] == min(expected) and bundle.score_scale["high"] == max(
        expected
    )
    side = bundle.preprocessing["crop"] or bundle.preprocessing["size"]
    assert bundle.inputs[0].shape == ["batch", 3, side, side]


@pytest.fixture(scope="module")
def gaussian_run(data, tmp_path_factory) -> Path:
    return _saved_run(
        data, tmp_path_factory.mktemp("gaussian"), "pixel-gaussian", "3", {"resolution": 32}
    )


def test_bundle_describes_the_run(gaussian_run, tmp_path):
    bundle_dir = tmp_path / "b"
    result = _export(gaussian_run, bundle_dir, "--parity-images", "4")
    assert result.returncode == 0, result.stderr
    bundle = json.loads((bundle_dir / "bundle.json").read_text())
    assert bundle["format_version"] == BUNDLE_FORMAT_VERSION and bundle["format"] == "onnx"
    assert bundle["parity"]["images"] == 4
    assert bundle["preprocessing"]["size"] == 32 and bundle["channel_order"] == "RGB"
    assert bundle["method_config"]["resolution"] == 32
    assert bundle["thresholds"]["image"]["source"].startswith("F1-optimal")
    scores = np.array([float(r["score"]) for r in _rows(gaussian_run / "plate/scores.csv")])
    assert bundle["score_scale"]["low"] == scores.min()
    # no threshold inside the graph: two outputs, the raw score and the raw map
    session = onnxruntime.InferenceSession(str(bundle_dir / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["scores", "maps"]
    out = session.run(None, {"images": np.zeros((5, 3, 32, 32), np.float32)})
    assert out[0].shape == (5,) and out[1].shape == (5, 32, 32)


def test_a_graph_that_differs_from_pytorch_is_refused_with_the_figures(
    gaussian_run, tmp_path, monkeypatch
):
    """A module that scores 1 % high fails the fp32 parity check: exit 1, figures named."""
    from ad_plugin_example.model import PixelGaussian, PixelGaussianGraph
    from adcore.infra.errors import PluginError
    from adcore.run.export import export_run

    class Inflated(PixelGaussianGraph):
        def forward(self, x):
            scores, maps = super().forward(x)
            return scores * 1.01, maps

    monkeypatch.setattr(
        PixelGaussian, "export_module", lambda self: Inflated(self.mean, self.var, self.config.blur)
    )
    with pytest.raises(PluginError, match=r"scores by 0\.01 ") as error:
        export_run(gaussian_run, tmp_path / "b", "plate")
    assert "must not be used" in error.value.problem
    assert json.loads((tmp_path / "b/bundle.json").read_text())["parity"]["passed"] is False


def test_export_errors_are_one_paragraph(gaussian_run, tmp_path):
    unsaved = tmp_path / "unsaved"
    for source in gaussian_run.rglob("*"):
        if source.is_file() and source.name != "model.pt":
            target = unsaved / source.relative_to(gaussian_run)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    result = _export(unsaved, tmp_path / "b")
    assert result.returncode == 1 and "--save-model" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_ad(
        "export", "--run", str(gaussian_run), "--output", str(tmp_path / "b"), "--format", "tflite"
    )
    assert result.returncode == 2 and "--format onnx" in result.stderr
    foreign = tmp_path / "predictions"
    foreign.mkdir()
    (foreign / "scores.csv").write_text("path,score\n")
    result = _export(gaussian_run, foreign)
    assert result.returncode == 1 and "holds files but no bundle" in result.stderr
    assert "Traceback" not in result.stderr and sorted(foreign.iterdir()) == [
        foreign / "scores.csv"
    ]


def test_bundle_reader_refuses_newer_damaged_and_missing_descriptions(gaussian_run, tmp_path):
    bundle_dir = tmp_path / "b"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    path = bundle_dir / "bundle.json"
    description = json.loads(path.read_text())
    path.write_text(json.dumps({**description, "format_version": BUNDLE_FORMAT_VERSION + 1}))
    with pytest.raises(DataError, match="Upgrade the toolkit"):
        read_bundle(bundle_dir)
    path.write_text(path.read_text()[:50])
    with pytest.raises(DataError, match="cannot be read as JSON"):
        read_bundle(bundle_dir)
    path.write_text(json.dumps({key: v for key, v in description.items() if key != "graph"}))
    with pytest.raises(DataError, match="graph"):
        read_bundle(bundle_dir)
    with pytest.raises(DataError, match="not a model bundle"):
        read_bundle(tmp_path)


def test_patchcore_graph_search_equals_the_faiss_bank():
    """PatchCore's graph searches its bank in one torch product; predict asks faiss. On the
    same fitted bank both give eq. 6/eq. 7 scores to float32 rounding (1e-5 relative: sums
    of 1536 products of features of size ~1)."""
    from ad_patchcore.config import PatchCoreConfig
    from ad_patchcore.plugin import factory
    from adcore.contracts.method import FitContext, Runtime

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=generator)
    for scoring in ("max", "reweighted"):
        config = PatchCoreConfig(
            backbone="resnet18", pretrained="none", resolution=72, crop=64, scoring=scoring
        )
        method = factory(config, Runtime())
        method.fit(FitContext("c", "c", 4, [images[:4]]))
        expected = method.predict(images[4:])
        with torch.no_grad():
            scores, maps = method.export_module()(method.geometry.normalize(images[4:]))
        torch.testing.assert_close(scores, expected.scores, rtol=1e-5, atol=0)
        torch.testing.assert_close(maps, expected.maps, rtol=1e-5, atol=1e-6)


def test_predict_with_the_bundle_gives_the_run_scores(gaussian_run, data, tmp_path):
    """``ad predict --model`` (ONNX Runtime) and ``ad predict --run`` (PyTorch) on the same
    images: the same scores (1e-4 relative), thresholds and verdicts; a grey-scale copy of
    an image is decoded to RGB as ``ad eval`` decodes it."""
    from PIL import Image

    bundle_dir = tmp_path / "b"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in sorted((data / "plate/test").rglob("*.png"))[:4]:
        (inputs / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    with Image.open(next(inputs.iterdir())) as image:
        image.convert("L").save(inputs / "zz_grey.png")
        image.convert("L").convert("RGB").save(inputs / "zz_grey_as_rgb.png")
    outputs = {}
    for flag, source in (("--model", bundle_dir), ("--run", gaussian_run)):
        extra = [] if flag == "--model" else ["--category", "plate"]
        result = run_ad(
            "predict", flag, str(source), *extra, "--input", str(inputs),
            "--out", str(tmp_path / flag.strip("-")), "--no-overlays",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        outputs[flag] = {
            Path(r["path"]).name: r for r in _rows(tmp_path / flag.strip("-") / "scores.csv")
        }
    bundle_rows, run_rows = outputs["--model"], outputs["--run"]
    assert bundle_rows.keys() == run_rows.keys() and len(bundle_rows) == 6
    ours = np.array([float(bundle_rows[k]["score"]) for k in run_rows])
    theirs = np.array([float(run_rows[k]["score"]) for k in run_rows])
    assert np.max(np.abs(ours - theirs)) <= 1e-4 * np.max(np.abs(theirs))
    for key in run_rows:
        assert bundle_rows[key]["threshold"] == run_rows[key]["threshold"]
        assert bundle_rows[key]["anomalous"] == run_rows[key]["anomalous"]
    grey, as_rgb = (
        float(bundle_rows["zz_grey.png"]["score"]),
        float(bundle_rows["zz_grey_as_rgb.png"]["score"]),
    )
    assert grey == as_rgb


def test_a_damaged_or_failed_bundle_is_refused(gaussian_run, data, tmp_path):
    bundle_dir = tmp_path / "b"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    image = next((data / "plate/test").rglob("*.png"))
    graph = bundle_dir / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    result = run_ad(
        "predict", "--model", str(bundle_dir), "--input", str(image), "--out", str(tmp_path / "p")
    )
    assert (
        result.returncode == 1 and "damaged" in result.stderr and "Traceback" not in result.stderr
    )
    result = run_ad("predict", "--input", str(image), "--out", str(tmp_path / "p"))
    assert result.returncode == 2 and "--model BUNDLE" in result.stderr
