"""The torch-free runtime (packages/ad-runtime): the bundle scored as ``ad eval`` scored
the run, in a virtual environment that has no torch, timm or open_clip; its command's
errors; its normalisation against the toolkit's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ad_runtime.bundle import BUNDLE_FILE
from ad_runtime.cli import main
from ad_runtime.predictions import SCORES_HEADER
from ad_runtime.preprocessing import CLIP_MEAN, CLIP_STD, Preprocessing
from test_export import _export, _rows, data, gaussian_run  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


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


def _pins() -> list[str]:
    """The versions requirements.txt pins (``name==version`` lines), as pip constraints."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if re.match(r"^[A-Za-z0-9_.\[\]-]+==", line.strip())]


@pytest.mark.slow
def test_runtime_without_torch_gives_the_run_scores(gaussian_run, tmp_path):  # noqa: F811
    """pip-installs packages/ad-runtime into a fresh venv (its own dependencies only, at the
    versions requirements.txt pins), proves torch is not there, and checks that
    ``ad-runtime predict`` writes ad predict's columns with the run's scores (1e-4)."""
    bundle_dir = tmp_path / "bundle"
    assert _export(gaussian_run, bundle_dir).returncode == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    (tmp_path / "pins.txt").write_text("\n".join(_pins()) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(tmp_path / "pins.txt"),
         str(REPO / "packages/ad-runtime")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    probe = "import importlib.util as u; print([m for m in ('torch', 'timm', 'open_clip', "
    probe += "'torchvision', 'adcore') if u.find_spec(m)])"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
    rows = _rows(gaussian_run / "plate/scores.csv")
    images = [r["path"] for r in rows]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(venv / "bin" / "ad-runtime"), "predict", str(bundle_dir), *images,
         "--output", str(tmp_path / "out"), "--json", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
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
    for message in (err,):
        assert "Traceback" not in message and len(message.strip().splitlines()) == 1
