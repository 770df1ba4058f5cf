"""Test helpers: tiny data sets in real on-disk layouts, and the real `ad` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

AD = Path(sys.executable).parent / "ad"


def write_mvtec_tree(
    root: Path,
    categories: tuple[str, ...] = ("widget", "plate"),
    num_train: int = 6,
    num_good: int = 3,
    num_bad: int = 3,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """A tiny MVTec-AD layout: textured normal images, bright squares as defects, 0/255 masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for category in categories:
        base = root / category

        def normal() -> np.ndarray:
            texture = 100 + 40 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
            noise = rng.normal(0, 4, (size, size, 3))
            return np.clip(texture[..., None] + noise, 0, 255).astype(np.uint8)

        for split, defect, count in (("train", "good", num_train), ("test", "good", num_good)):
            folder = base / split / defect
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(normal()).save(folder / f"{i:03d}.png")
        folder = base / "test" / "square"
        masks = base / "ground_truth" / "square"
        folder.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for i in range(num_bad):
            image, mask = normal(), np.zeros((size, size), np.uint8)
            top, left = rng.integers(4, size - 20, 2)
            image[top : top + 14, left : left + 14] = 250
            mask[top : top + 14, left : left + 14] = 255
            Image.fromarray(image).save(folder / f"{i:03d}.png")
            Image.fromarray(mask).save(masks / f"{i:03d}_mask.png")
    return root


def run_ad(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """Run the installed `ad` entry point as a user would."""
    env = dict(env or {})
    if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):  # extra sites go first
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    full_env = {**os.environ, "AD_DEBUG": "0", "COLUMNS": "200", **env}
    return subprocess.run(
        [str(AD), *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600
    )


def write_distribution(site: Path, name: str, module_source: str, entry_point: str) -> Path:
    """Install a fake distribution into ``site`` (found through PYTHONPATH like any other)."""
    module = name.replace("-", "_")
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[adcore]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(module_source)
    return site


def eval_args(data: Path, output: Path, k_shot: str = "2", dataset: str = "mvtec") -> list[str]:
    """``ad eval`` of the example method (weight-free, fast) on a data set tree."""
    return [
        "eval", "--method", "pixel-gaussian", "--dataset", dataset, "--data-root", str(data),
        "--k-shot", k_shot, "--output", str(output),
    ]  # fmt: skip


def fast_flags(resolution: int = 32) -> list[str]:
    """Options that keep a test run to seconds: small maps, no probe, no workers, no bars."""
    return [
        "--no-progress", "--set", f"model.resolution={resolution}",
        "--set", "evaluation.latency.enabled=false", "--set", "data.num_workers=0",
    ]  # fmt: skip


def install_runtime(venv: Path) -> Path:
    """pip-install packages/ad-runtime into a fresh venv at ``venv`` with its own
    dependencies only, at the versions requirements.txt pins; returns its ``ad-runtime``."""
    import re

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    lines = (repo / "requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if re.match(r"^[A-Za-z0-9_.-]+==", line.strip())]
    (venv / "pins.txt").write_text("\n".join(pins) + "\n")
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", "-c", str(venv / "pins.txt"),
         str(repo / "packages/ad-runtime")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return venv / "bin/ad-runtime"


def run_runtime(executable: Path, *args: str):
    """Run an installed ``ad-runtime`` outside this environment (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(executable), *args], capture_output=True, text=True, env=env, timeout=600
    )
