"""The torch-free runtime (packages/ad-runtime): the bundle scored as ``ad eval`` scored
the run, in a virtual environment that has no torch, timm or open_clip; its command's
errors; its normalisation against the toolkit's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ad_runtime.bundle import BUNDLE_FILE
from ad_runtime.cli import main
from ad_runtime.model import Model
from ad_runtime.predictions import SCORES_HEADER
from ad_runtime.preprocessing import CLIP_MEAN, CLIP_STD, Preprocessing
from adtest import run_runtime
from test_export import _export, _rows, data, gaussian_run  # noqa: F401


def test_normalize_array_equals_the_loaders_normalize():
    """numpy [B,H,W,3] against torch [B,3,H,W]: torch divides by 255 through its reciprocal,
    one float32 rounding of x/255 apart, which the division by std scales by at most
    1/min(std): the bound is that rounding, eps * 1/min(std), per element."""
    geometry = Preprocessing(size=16, mean=CLIP_MEAN, std=CLIP_STD)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    ours = geometry.normalize_array(pixels)
    theirs = geometry.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy()
    assert ours.dtype == np.float32 and ours.shape == (2, 3, 16, 16)
    bound = np.finfo(np.float32).eps / min(CLIP_STD)
    assert np.max(np.abs(ours - theirs)) <= bound


@pytest.mark.slow
def test_runtime_without_torch_gives_the_run_scores(gaussian_run, tmp_path, runtime_command):  # noqa: F811
    """``ad-runtime`` pip-installed into a fresh venv (:func:`adtest.install_runtime`): torch,
    timm, open_clip and adcore are absent there, and ``ad-runtime predict`` writes ad
    predict's columns with the run's scores (1e-4 relative) and the bundle's threshold."""
    bundle_dir = tmp_path / "bundle"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    python = runtime_command.parent / "python"
    probe = "import importlib.util as u; print([m for m in ('torch', 'timm', 'open_clip', "
    probe += "'torchvision', 'adcore') if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
    rows = _rows(gaussian_run / "plate/scores.csv")
    images = [r["path"] for r in rows]
    result = run_runtime(
        runtime_command, "predict", str(bundle_dir), *images, "--output", str(tmp_path / "out"),
        "--json", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = _rows(tmp_path / "out/scores.csv")
    assert tuple(written[0]) == SCORES_HEADER
    expected = np.array([float(r["score"]) for r in rows])
    got = np.array([float(r["score"]) for r in written])
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))
    printed = json.loads(result.stdout)
    bundle = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    assert printed["threshold"] == bundle["thresholds"]["image"]["value"]
    assert len(list((tmp_path / "out/maps").rglob("*.tiff"))) == len(rows)


def test_runtime_errors_are_one_paragraph(gaussian_run, tmp_path, capsys):  # noqa: F811
    bundle_dir = tmp_path / "b"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    image = _rows(gaussian_run / "plate/scores.csv")[0]["path"]
    out = str(tmp_path / "out")

    def fails(*args: str) -> tuple[int, str]:
        code = main(["predict", *args, "--output", out, "--quiet"])
        return code, capsys.readouterr().err

    code, err = fails(str(tmp_path), image)
    assert code == 1 and "not a model bundle" in err and "ad export" in err
    code, err = fails(str(bundle_dir), str(tmp_path / "missing.png"))
    assert code == 1 and "does not exist" in err
    code, err = fails(str(bundle_dir), image, "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
    description = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / BUNDLE_FILE).write_text(json.dumps({**description, "format_version": 99}))
    code, err = fails(str(newer), image)
    assert code == 1 and "format version 99" in err and "Upgrade" in err
    graph = bundle_dir / description["graph"]
    graph.write_bytes(graph.read_bytes()[:-10])
    code, err = fails(str(bundle_dir), image)
    assert code == 1 and "damaged" in err
    assert not (tmp_path / "out/scores.csv").exists()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_openvino_engine_gives_the_onnx_runtime_scores(gaussian_run, tmp_path, capsys):  # noqa: F811
    """OpenVINO compiles the same ONNX graph (fp32 hint): the scores of ONNX Runtime to 1e-4
    relative; a precision an engine cannot run is a usage error naming the one that can."""
    bundle_dir = tmp_path / "b"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    paths = [Path(r["path"]) for r in _rows(gaussian_run / "plate/scores.csv")]
    reference = np.array([s.score for s in Model(bundle_dir).predict(paths)])
    openvino = np.array([s.score for s in Model(bundle_dir, engine="openvino").predict(paths)])
    assert np.max(np.abs(openvino - reference)) <= 1e-4 * np.max(np.abs(reference))
    code = main(["predict", str(bundle_dir), str(paths[0]), "--precision", "bf16", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--engine openvino" in err and "Traceback" not in err
