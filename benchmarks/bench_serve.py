"""Requests per second and latency of ``ad-runtime serve``, with and without micro-batching.

    python benchmarks/bench_serve.py [--seconds 4] [--rounds 2] [--clients 1 4 16]

Exports a PatchCore and a miniCLIP bundle (random weights, nothing downloaded: ``ad eval
--save-model`` on the generated ``synthetic`` set, then ``ad export``) into a temporary
folder, starts two servers per bundle as separate processes (``--max-batch 1``: one forward
pass per request; ``--max-batch 16 --max-delay-ms 5``: micro-batching), and drives them with
1, 4 and 16 concurrent clients (threads, one keep-alive connection each, posting the same
256x256 PNG as raw bytes). The two servers are measured in turn, round after round, so that
the CPU's other load falls on both alike; each cell is the median round, and the speed-up
is given as min/median/max of the rounds' ratios. Latency is the client's: request sent to
answer read. Not a timed test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

AD = [sys.executable, "-c", "from adcore.cli import main; main()"]
METHODS = {  # random-weight settings: the default geometry of each method, no download
    "patchcore": ("3", {"backbone": "resnet18"}),
    "miniclip": ("0", {"resolution": 224}),
}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    """Model name, vector extensions, threads and load: every figure is read against them."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown CPU", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    found = [f for f in FLAGS if f in flags] or ["none of " + ", ".join(FLAGS)]
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{model}; extensions {', '.join(found)}; {os.cpu_count()} threads; load average "
        f"(1/5/15 min) {load}"
    )


def ad(work: Path, *args: str) -> None:
    """One ``ad`` command, its cache (the synthetic set) inside ``work``."""
    env = {**os.environ, "AD_CACHE_DIR": str(work / "cache")}
    result = subprocess.run([*AD, *args], capture_output=True, text=True, timeout=1800, env=env)
    if result.returncode != 0:
        raise SystemExit(f"ad {' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")


def export(method: str, work: Path) -> Path:
    """A bundle of ``method`` (random weights) fitted on the synthetic set's washers."""
    k_shot, settings = METHODS[method]
    flags = [item for k, v in settings.items() for item in ("--set", f"model.{k}={json.dumps(v)}")]
    ad(work, "eval", "--method", method, "--dataset", "synthetic", "--category", "washer",
       "--k-shot", k_shot, "--output", str(work / "runs"), "--random-weights", "--save-model",
       "--no-progress", "--set", "evaluation.latency.enabled=false", *flags)  # fmt: skip
    bundle = work / f"{method}-bundle"
    run = work / "runs" / "synthetic" / method / "default"
    ad(work, "export", "--run", str(run), "--category", "washer", "--output", str(bundle),
       "--parity-images", "2", "--no-progress")  # fmt: skip
    return bundle


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(bundle: Path, max_batch: int, max_delay_ms: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ad_runtime", "serve", str(bundle), "--port", str(port),
         "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms),
         "--max-queue", "256", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server stopped: {process.stderr.read()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready in 120 s")


def drive(port: int, image: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads posting ``image`` for ``seconds``: requests/s, p50 and p99 (ms)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[int] = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "image/png"}
        for _ in range(2):  # warm the connection and the server's threads
            connection.request("POST", "/predict", image, headers)
            connection.getresponse().read()
        start.wait()
        while time.perf_counter() < stop_at[0]:
            sent = time.perf_counter()
            connection.request("POST", "/predict", image, headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures[number] += 1
            latencies[number].append(time.perf_counter() - sent)
        connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + 3600
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = np.array([v for part in latencies for v in part]) * 1000.0
    return {
        "requests_per_s": len(every) / elapsed,
        "p50_ms": float(np.percentile(every, 50)),
        "p99_ms": float(np.percentile(every, 99)),
        "failures": float(sum(failures)),
    }


def png_image(side: int = 256) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    base = 110 + 40 * np.sin(xx / 9.0)[..., None] * np.cos(yy / 13.0)[..., None]
    pixels = np.clip(base + rng.normal(0, 4, (side, side, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two servers")
    parser.add_argument("--max-batch", type=int, default=16, help="the batching server's")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="the batching server's")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}", flush=True)
    image = png_image()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        for method in args.methods:
            bundle = export(method, Path(work) / method)
            modes = {"no batching": (1, 0.0), "micro-batching": (args.max_batch, args.max_delay_ms)}
            servers = {mode: start_server(bundle, *setting) for mode, setting in modes.items()}
            try:
                for clients in args.clients:
                    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
                    for _ in range(args.rounds):
                        for mode, (_, port) in servers.items():
                            rounds[mode].append(drive(port, image, clients, args.seconds))
                    row = {"method": method, "clients": clients}
                    for mode, measured in rounds.items():
                        row[mode] = {
                            key: statistics.median(m[key] for m in measured) for key in measured[0]
                        }
                    ratios = [b["requests_per_s"] / a["requests_per_s"] for a, b in zip(
                        rounds["no batching"], rounds["micro-batching"], strict=True)]  # fmt: skip
                    row["speedup"] = (min(ratios), statistics.median(ratios), max(ratios))
                    results.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                for process, _ in servers.values():
                    process.send_signal(signal.SIGINT)
                    process.wait(30)
    print(f"\nCPU after: {cpu_description()}")
    print("\n| bundle | clients | no batching: req/s, p50 / p99 ms | micro-batching (max "
          f"{args.max_batch}, {args.max_delay_ms:g} ms): req/s, p50 / p99 ms | req/s ratio "
          "min / median / max |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in results:
        plain, batched = row["no batching"], row["micro-batching"]
        low, mid, high = row["speedup"]
        print(
            f"| {row['method']} | {row['clients']} | {plain['requests_per_s']:.1f}, "
            f"{plain['p50_ms']:.0f} / {plain['p99_ms']:.0f} | {batched['requests_per_s']:.1f}, "
            f"{batched['p50_ms']:.0f} / {batched['p99_ms']:.0f} | {low:.2f} / {mid:.2f} / "
            f"{high:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
