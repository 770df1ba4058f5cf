"""`ad bench` through the entry point: figures, and ratios that follow from them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from adcore.infra.precision import cpu_vector_extensions
from adcore.outputs.env import busy_machine_note, machine_summary
from adtest import run_ad


def load_average_env(site: Path, load: float) -> dict[str, str]:
    """``ad``'s environment with ``os.getloadavg`` giving ``load`` (a sitecustomize)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import os\nos.getloadavg = lambda: ({load},) * 3\n")
    return {"PYTHONPATH": str(site)}


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_bench_reports_figures_and_ratios(mvtec_root, tmp_path):
    idle = load_average_env(tmp_path / "site", 0.0)
    result = run_ad("bench", "--method", "pixel-gaussian", "--dataset", "mvtec", "--data-root",
                    str(mvtec_root), "--k-shot", "2", "--warmup", "0", "--iters", "3",
                    "--batch", "2", "--json", env=idle)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["machine"]["load_average"] == [0.0, 0.0, 0.0]
    assert report["machine"]["cpus_usable"] == usable_cpus()
    assert report["load_warning"] == "" and "busy" not in result.stderr  # an idle machine
    method, backbone = report["method_figures"], report["backbone_figures"]
    assert report["support_images"] == 2
    assert method["measure_iters"] == 3 and method["throughput_batch"] == 2
    assert method["params_total"] == 0  # weight-free
    assert method["memory_bank_mb"] == pytest.approx(2 * 3 * 128 * 128 * 4 / 2**20)
    assert report["ratio_time"] == pytest.approx(
        method["latency_ms_median"] / backbone["latency_ms_median"]
    )


def test_bench_refuses_an_unknown_method():
    result = run_ad("bench", "--method", "nosuch")
    assert result.returncode == 2 and "Unknown method 'nosuch'" in result.stderr


def test_bench_prints_the_load_and_warns_when_the_machine_is_busy(mvtec_root, tmp_path):
    """Other work as large as four times the CPUs: the times cannot be trusted, and it says so."""
    load = 4.0 * usable_cpus()
    result = run_ad("bench", "--method", "pixel-gaussian", "--dataset", "mvtec", "--data-root",
                    str(mvtec_root), "--k-shot", "2", "--warmup", "0", "--iters", "3",
                    "--batch", "2", env={**load_average_env(tmp_path / "site", load),
                                         "COLUMNS": "400"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    machine = next(li for li in result.stdout.splitlines() if "Machine:" in li)
    assert f"load {load:.1f}" in machine
    extensions = cpu_vector_extensions()  # the CPU's vector units, as ad bench names them
    assert f"({', '.join(extensions)})" in machine if extensions else "(no AVX2" in machine
    assert f"Warning: the machine was busy (load {load:.1f} on {usable_cpus()} usable CPUs" in (
        result.stdout
    )
    assert "ratios are unreliable" in result.stdout


@pytest.mark.parametrize(
    ("cpus", "threads", "load", "busy"),
    [
        (2, 2, 1.11, True),  # 0.89 CPUs free for 2 threads
        (2, 2, 0.4, False),  # 1.6 free: within the half-CPU margin of 2
        (16, 16, 0.3, False),
        (16, 16, 1.0, True),  # 15 free for 16 threads
        (16, 4, 11.0, False),  # 5 free for 4 threads
        (16, 4, 13.0, True),  # 3 free for 4 threads
        (2, 8, 0.3, False),  # 8 threads on 2 CPUs use 2 at most: 1.7 free
        (2, 8, 1.2, True),
    ],
)
def test_busy_machine_note_compares_free_cpus_with_the_threads(cpus, threads, load, busy):
    machine = {"cpus_usable": cpus, "torch_threads": threads, "load_average": [load] * 3}
    assert bool(busy_machine_note(machine)) is busy
    assert busy_machine_note({**machine, "load_average": None}) == ""  # no load average here


def test_machine_summary_names_the_cpu_its_extensions_threads_and_load():
    machine = {
        "cpu_model": "Some CPU",
        "vector_extensions": ["AVX2", "AMX"],
        "cpu_count": 4,
        "cpus_usable": 2,
        "torch_threads": 2,
        "load_average": [1.25, 0.5, 0.25],
    }
    line = machine_summary({"machine": machine})
    assert line == "Some CPU (AVX2, AMX), 2 of 4 CPUs, 2 threads, load 1.2 / 0.5 / 0.2 (1/5/15 min)"
    bare = machine_summary({"machine": {**machine, "vector_extensions": []}})
    assert bare.startswith("Some CPU (no AVX2/AVX-512/AMX), ")
    assert machine_summary(
        {"machine": {k: v for k, v in machine.items() if k != "vector_extensions"}}
    ).startswith("Some CPU, 2 of 4")
