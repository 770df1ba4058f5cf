"""``env.json``: what produced a run (versions, device, weights, seed)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

from adcore.plugins.registry import Registry
from adcore.toolkit.weights import weights_flags

if TYPE_CHECKING:
    from adcore.config.sections import ResolvedConfig
    from adcore.contracts.method import Runtime

LIBRARIES = ("torch", "torchvision", "numpy", "open_clip_torch", "timm", "faiss-cpu", "faiss-gpu")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe_device(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": device, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["cuda"] = torch.version.cuda
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.lower().startswith(("model name", "hardware")):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """What latency figures depend on besides the method: CPU, its vector extensions
    (AVX2, AVX-512, AVX512-BF16, AMX), threads, load, GPU.

    The load average (1, 5, 15 minutes) is taken when the run starts; figures from runs
    made under different loads are not comparable.
    """
    import torch

    from adcore.infra.precision import cpu_vector_extensions

    affinity = getattr(os, "sched_getaffinity", None)
    machine: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "vector_extensions": list(cpu_vector_extensions()),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
    }
    if torch.cuda.is_available():
        machine["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return machine


def machine_summary(env: dict[str, Any]) -> str:
    """One line from a run's ``env.json``:
    ``CPU model (AVX2, AVX-512), 2 of 4 CPUs, 2 threads, load 3.1 / 2.0 / 1.5``.

    The vector extensions read "no AVX2/AVX-512/AMX" when the CPU reports none of them, and
    are left out for records made before they were recorded.
    """
    machine = env.get("machine") or {}
    if not machine:
        return "not recorded"
    parts = [str(machine.get("cpu_model", "?"))]
    if "vector_extensions" in machine:
        found = machine["vector_extensions"]
        parts[0] += f" ({', '.join(found)})" if found else " (no AVX2/AVX-512/AMX)"
    usable, count = machine.get("cpus_usable"), machine.get("cpu_count")
    parts.append(f"{usable} of {count} CPUs" if usable != count else f"{count} CPUs")
    parts.append(f"{machine.get('torch_threads', '?')} threads")
    load = machine.get("load_average")
    if load:
        parts.append("load " + " / ".join(f"{x:.1f}" for x in load) + " (1/5/15 min)")
    gpus = machine.get("gpus")
    if gpus:
        parts.append("GPU " + ", ".join(gpus))
    return ", ".join(parts)


# CPUs the load may take from a run's torch threads before timings are called unreliable
BUSY_MARGIN = 0.5


def busy_machine_note(machine: dict[str, Any]) -> str:
    """A warning when :func:`describe_machine`'s 1-minute load average leaves the torch
    threads fewer free CPUs than they use, less :data:`BUSY_MARGIN`; empty otherwise.

    The load is taken before the timing starts, so it is other work: threads then share CPUs
    with it, and each time (and a ratio of two times taken moments apart) changes from one
    run to the next as that work comes and goes.
    """
    load, usable = machine.get("load_average"), machine.get("cpus_usable")
    threads = machine.get("torch_threads")
    if not load or not usable or not threads:
        return ""
    needed = min(threads, usable)
    if usable - load[0] >= needed - BUSY_MARGIN:
        return ""
    plural = "s" if threads != 1 else ""
    return (
        f"Warning: the machine was busy (load {load[0]:.1f} on {usable} usable CPUs, and "
        f"{threads} torch thread{plural} to run): other work competes for the CPUs, so these "
        "times and their ratios are unreliable and can differ widely between runs of the "
        "same command. Measure on an idle machine (or with fewer threads, OMP_NUM_THREADS), "
        "and compare figures only between runs made under the same load."
    )


def environment(registry: Registry, device: str) -> dict[str, Any]:
    """Versions of Python, the libraries and every loaded plugin distribution."""
    plugins = {p.distribution: p.version for p in registry.plugins}
    libraries = {name: v for name in LIBRARIES if (v := _version(name))}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {**plugins, **libraries},
        **describe_device(device),
        "machine": describe_machine(),
    }


def run_environment(
    registry: Registry,
    runtime: Runtime,
    config: ResolvedConfig,
    identity: dict[str, Any],
    efficiency_sources: dict[str, str],
) -> dict[str, Any]:
    """A run's ``env.json``: the environment, seed, precision, weights and settings that
    change what the numbers mean."""
    return {
        **environment(registry, runtime.device),
        "seed": runtime.seed,
        "precision": runtime.precision,
        **weights_flags(identity, config.random_weights),
        "evaluation_resolution": config.base.evaluation.resolution,
        "efficiency_sources": efficiency_sources,
        "skip_bad_samples": config.base.data.skip_bad_samples,
        "fingerprint": config.fingerprint(),
    }
