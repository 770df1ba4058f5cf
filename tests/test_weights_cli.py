"""``ad eval`` without weights and without network: exit 1, one paragraph, in seconds.

Measured through the installed ``ad`` entry point, start-up included, with an empty
Hugging Face cache and ``HF_ENDPOINT`` pointing at a local port that refuses connections or
at a local socket that accepts and never answers. The wall-clock bounds are the ones asked
of an idle machine (25 s and 40 s); on a machine whose load average exceeds its cores they
stretch by that ratio, and the command's own CPU time (which load does not inflate) must
stay under 25 s either way.
"""

from __future__ import annotations

import os
import resource
import time

import pytest

from adtest import run_ad
from weightsfixtures import closed_port, silent_endpoint

# method -> (the weights its defaults name, their Hugging Face repository)
DEFAULTS = {
    "patchcore": ("wide_resnet50_2.tv_in1k", "timm/wide_resnet50_2.tv_in1k"),
    "winclip": ("laion400m_e31", "timm/vit_base_patch16_plus_clip_240.laion400m_e31"),
}


def eval_without_weights(method: str, root, tmp_path, endpoint: str):
    """-> (completed process, wall seconds, CPU seconds of the command)."""
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": "", "HF_ENDPOINT": endpoint}
    env["HF_HUB_OFFLINE"] = ""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = run_ad(
        "eval", "--method", method, "--dataset", "mvtec", "--data-root", str(root),
        "--category", "widget", "--k-shot", "1", "--output", str(tmp_path / "out"), env=env,
    )  # fmt: skip
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, wall, cpu


def allowed(seconds: float) -> float:
    """``seconds`` on an idle machine, stretched by the load beyond the machine's cores."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def check_one_paragraph(done, method: str, tmp_path) -> None:
    output = (done.stdout + done.stderr).strip()
    tag, repo = DEFAULTS[method]
    assert done.returncode == 1, output
    assert len(output.splitlines()) <= 12, output
    assert "Traceback" not in output
    flat = " ".join(output.split())
    assert tag in flat and repo in flat and str(tmp_path / "hf") in flat
    assert "model.pretrained" in flat and "--random-weights" in flat


@pytest.mark.parametrize("method", sorted(DEFAULTS))
def test_no_cache_no_network_fails_within_25_s(method, mvtec_root, tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    done, wall, cpu = eval_without_weights(method, mvtec_root, tmp_path, endpoint)
    check_one_paragraph(done, method, tmp_path)
    assert "Connection refused" in done.stdout + done.stderr
    assert cpu < 25 and wall < allowed(25), f"{wall:.1f} s wall, {cpu:.1f} s CPU"


@pytest.mark.parametrize("method", sorted(DEFAULTS))
def test_endpoint_that_never_answers_fails_within_40_s(method, mvtec_root, tmp_path):
    with silent_endpoint() as endpoint:
        done, wall, cpu = eval_without_weights(method, mvtec_root, tmp_path, endpoint)
    check_one_paragraph(done, method, tmp_path)
    assert "2 attempts" in " ".join((done.stdout + done.stderr).split())
    assert cpu < 25 and wall < allowed(40), f"{wall:.1f} s wall, {cpu:.1f} s CPU"
