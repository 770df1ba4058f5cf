"""``ad-runtime serve`` / ``ad serve``: a real uvicorn server on a free loopback port, driven
over HTTP with urllib: the scores of ``Model.predict`` and ``ad predict --model`` from
concurrent clients, a 4xx with a one-line reason for every bad input, 503 with Retry-After
when the queue is full and then recovery, the bearer token, and the command's errors.

Scores through the server may share a forward pass with other requests: the same graph on
another batch shape, so ONNX Runtime may order float32 sums differently; 1e-6 relative is a
few float32 roundings (eps 1.2e-7) of the pixel model's per-pixel arithmetic.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import pickle
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_runtime.model import Model
from ad_runtime.serve import ServeOptions, require_serve_extra, server
from ad_runtime.serve_batching import MicroBatcher, QueueFull
from adtest import run_ad
from test_export import _export, _rows, data, gaussian_run  # noqa: F401

RELATIVE = 1e-6


@pytest.fixture(scope="module")
def bundle(gaussian_run, tmp_path_factory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("serve") / "bundle"
    assert _export(gaussian_run, folder).returncode == 0
    return folder


@pytest.fixture(scope="module")
def images(data) -> list[Path]:  # noqa: F811
    return sorted((data / "plate/test").rglob("*.png"))


@contextmanager
def running(bundle: Path, **options: object) -> Iterator[str]:
    """A server for ``bundle`` on a free 127.0.0.1 port (port 0: the kernel picks), in a
    thread; yields its base URL once it is ready; stops it within seconds."""
    instance = server(Model(bundle), ServeOptions(port=0, log_level="warning", **options))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = instance.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    while call("GET", f"{url}/readyz")[0] != 200:
        assert time.monotonic() < deadline, "the server did not warm up"
        time.sleep(0.02)
    try:
        yield url
    finally:
        instance.should_exit = True
        thread.join(15)
        assert not thread.is_alive()


def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], dict | str]:
    """(status, headers, JSON body or text) of one request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, got, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, got, raw = error.code, dict(error.headers), error.read()
    kind = got.get("content-type", "")
    return status, got, json.loads(raw) if kind.startswith("application/json") else raw.decode()


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None):
    """(body, headers) of a multipart form with ``files`` (field, filename, bytes)."""
    boundary = "ad-serve-test-boundary"
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())  # fmt: skip
    for field, filename, content in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def key(path: Path) -> str:
    """A test image's unique name: good/000.png -> good_000.png."""
    return f"{path.parent.name}_{path.name}"


def close(got: np.ndarray, expected: np.ndarray) -> bool:
    return bool(np.max(np.abs(got - expected)) <= RELATIVE * np.max(np.abs(expected)))


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples named exactly ``name`` (any labels) in Prometheus text."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.split("{")[0].split(" ")[0] == name]  # fmt: skip
    return sum(values)


def test_concurrent_clients_get_model_predicts_and_ad_predicts_scores(
    bundle,
    images,
    gaussian_run,  # noqa: F811
    tmp_path,
):
    """16 clients at once (raw bodies and multipart files, in shuffled order) and one batch
    request: each image's score, normalised score and verdict equal Model.predict's and
    ``ad predict --model``'s, and ``ad eval``'s own scores.csv to the export's 1e-4 (PyTorch
    against ONNX Runtime); the forward passes were shared (batches of more than one)."""
    model = Model(bundle)
    expected = {key(p): s for p, s in zip(images, model.predict(images), strict=True)}
    result = run_ad("predict", "--model", str(bundle), "--input", str(images[0].parent.parent),
                    "--out", str(tmp_path / "predicted"), "--no-overlays")  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = _rows(tmp_path / "predicted/scores.csv")
    cli_scores = {key(Path(r["path"])): float(r["score"]) for r in rows}
    run_scores = {
        key(Path(r["path"])): float(r["score"]) for r in _rows(gaussian_run / "plate/scores.csv")
    }
    jobs = [images[i % len(images)] for i in np.random.default_rng(0).permutation(48)]
    answers: dict[int, tuple[str, dict]] = {}
    start = threading.Barrier(16)

    def client(number: int) -> None:
        start.wait()
        for index in range(number, len(jobs), 16):
            content = jobs[index].read_bytes()
            if index % 2:
                body, headers = multipart([("image", key(jobs[index]), content)])
            else:
                body, headers = content, {"Content-Type": "image/png"}
            status, _, answer = call("POST", f"{url}/predict", body, headers)
            assert status == 200, answer
            answers[index] = (key(jobs[index]), answer)

    with running(bundle, max_batch=8, max_delay_ms=20) as url:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        body, headers = multipart([("image", key(p), p.read_bytes()) for p in images])
        status, _, batch = call("POST", f"{url}/predict/batch", body, headers)
        assert status == 200, batch
        _, _, text = call("GET", f"{url}/metrics")
    assert len(answers) == len(jobs)
    served = [(name, a) for name, a in answers.values()]
    served += [(i["name"].split(":", 1)[1], i) for i in batch["images"]]
    for name, answer in served:
        want = expected[name]
        assert close(np.array([answer["score"]]), np.array([want.score]))
        assert close(np.array([answer["score"]]), np.array([cli_scores[name]]))
        assert abs(answer["score"] - run_scores[name]) <= 1e-4 * max(map(abs, run_scores.values()))
        assert abs(answer["normalised_score"] - want.normalised) <= RELATIVE
        assert answer["anomalous"] == want.anomalous
    first = answers[0][1]
    assert first["threshold"] == model.verdicts.threshold
    assert first["threshold_source"] == model.verdicts.source and first["latency_ms"] > 0
    assert {"score", "normalised_score", "anomalous"} <= first.keys()
    passes, scored = (
        metric(text, "ad_serve_batch_size_count"),
        metric(text, "ad_serve_batch_size_sum"),
    )
    assert scored == len(jobs) + len(images) and passes < scored  # some passes were shared
    assert metric(text, "ad_serve_images_total") == scored


def test_map_and_overlay_on_request(bundle, images):
    """?map=tiff is the raw map exactly; ?map=png is it on 0..255 with its range; ?overlay=1
    is a PNG of the model's input side."""
    want = Model(bundle).predict(images[:1])[0]
    content = images[0].read_bytes()
    with running(bundle) as url:
        _, _, tiff = call("POST", f"{url}/predict?map=tiff", content)
        _, _, png = call("POST", f"{url}/predict?map=png&overlay=1", content)
        plain = call("POST", f"{url}/predict", content)[2]
    with Image.open(io.BytesIO(base64.b64decode(tiff["anomaly_map"]["base64"]))) as stored:
        assert close(np.asarray(stored, dtype=np.float32), want.anomaly_map)
    low, high = png["anomaly_map"]["low"], png["anomaly_map"]["high"]
    assert (low, high) == (float(want.anomaly_map.min()), float(want.anomaly_map.max()))
    with Image.open(io.BytesIO(base64.b64decode(png["anomaly_map"]["base64"]))) as grey:
        values = low + (high - low) * np.asarray(grey, dtype=np.float64) / 255.0
    assert np.max(np.abs(values - want.anomaly_map)) <= (high - low) / 255.0
    with Image.open(io.BytesIO(base64.b64decode(png["overlay"]["base64"]))) as overlay:
        side = want.anomaly_map.shape[0]
        assert overlay.mode == "RGB" and overlay.size == (side, side)
    assert "anomaly_map" not in plain and "overlay" not in plain


def _tiff(samples: int, side: int = 4) -> bytes:
    """An uncompressed 8-bit TIFF with ``samples`` channels (photometric RGB, no extra-sample
    tag): a layout no PIL mode holds for 2, 5 and more."""
    pixels = bytes(side * side * samples)
    tags = [(256, 3, 1, side), (257, 3, 1, side), (258, 3, samples, 0), (259, 3, 1, 1),
            (262, 3, 1, 2), (273, 4, 1, 0), (277, 3, 1, samples), (278, 3, 1, side),
            (279, 4, 1, len(pixels)), (284, 3, 1, 1)]  # fmt: skip
    bits_at = 8 + 2 + 12 * len(tags) + 4
    data_at = bits_at + 2 * samples
    out = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, kind, count, value in tags:
        if tag == 258:
            value = bits_at if samples > 2 else 0
            inline = struct.pack("<HH", 8, 8)[: 2 * samples].ljust(4, b"\0")
            packed = struct.pack("<I", value) if samples > 2 else inline
            out += struct.pack("<HHI", tag, kind, count) + packed
        elif tag == 273:
            out += struct.pack("<HHII", tag, kind, count, data_at)
        elif kind == 3:
            out += struct.pack("<HHIHxx", tag, kind, count, value)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    return out + struct.pack("<I", 0) + struct.pack(f"<{samples}H", *[8] * samples) + pixels


class _Planted:
    """Unpickling this would create ``path``: the server must never do it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_every_bad_input_is_a_4xx_with_one_line_and_the_server_lives_on(bundle, images, tmp_path):
    content = images[0].read_bytes()
    planted = tmp_path / "unpickled"
    with Image.open(images[0]) as image:  # the images served are of this size
        pixels = image.size[0] * image.size[1]
    big = io.BytesIO()
    Image.new("RGB", (100, 100), (120, 30, 200)).save(big, format="PNG")
    form_zz = {"Content-Type": "multipart/form-data; boundary=zz"}
    no_boundary = {"Content-Type": "multipart/form-data"}
    two_files, two_headers = multipart([("a", "a.png", content), ("b", "b.png", content)])
    no_file, no_file_headers = multipart([], {"note": "hello"})
    empty_part, empty_headers = multipart([("image", "e.png", b"")])
    bad_part, bad_headers = multipart([("image", "good.png", content), ("image", "x.png", b"x")])
    cases = [
        ("empty body", "/predict", b"", {}, 400, "empty"),
        ("not an image", "/predict", b"hello, this is text", {}, 415, "not an image"),
        ("truncated PNG", "/predict", content[: len(content) // 2], {}, 415, "truncated"),
        ("a pickle", "/predict", pickle.dumps(_Planted(planted)), {}, 415, "not an image"),
        ("two channels", "/predict", _tiff(2), {}, 422, "2 channels"),
        ("five channels", "/predict", _tiff(5), {}, 422, "5 channels"),
        ("too many bytes", "/predict", content * 4, {}, 413, "--max-bytes"),
        ("too many pixels", "/predict", big.getvalue(), {}, 413, "--max-pixels"),
        ("empty file part", "/predict", empty_part, empty_headers, 400, "empty"),
        ("no file in the form", "/predict", no_file, no_file_headers, 400, "no file"),
        ("two files for one", "/predict", two_files, two_headers, 400, "/predict/batch"),
        ("a bad file in a batch", "/predict/batch", bad_part, bad_headers, 415, "x.png"),
        ("a raw body for a batch", "/predict/batch", content, {}, 415, "multipart"),
        ("a broken form", "/predict", b"--zz\r\nnonsense", form_zz, 400, "multipart"),
        ("no boundary", "/predict", b"x", no_boundary, 400, "boundary"),
        ("an unknown map", "/predict?map=jpg", content, {}, 422, "map=png"),
        ("a bad overlay flag", "/predict?overlay=maybe", content, {}, 422, "overlay"),
    ]
    limit = 3 * len(content)  # two files in a form fit, four do not
    with running(bundle, max_bytes=limit, max_pixels=pixels) as url:
        for name, path, body, headers, status, words in cases:
            got, _, answer = call("POST", url + path, body, headers)
            assert got == status, (name, got, answer)
            reason = answer["detail"]
            assert words in reason and "\n" not in reason, (name, reason)
        port = int(url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/predict", iter([content] * 4), encode_chunked=True)
        chunked = connection.getresponse()  # no Content-Length: refused as the stream passes it
        assert chunked.status == 413 and b"--max-bytes" in chunked.read()
        connection.close()
        assert call("GET", f"{url}/nowhere")[0] == 404
        assert call("GET", f"{url}/predict")[0] == 405
        assert call("GET", f"{url}/healthz")[0] == 200
        status, _, answer = call("POST", f"{url}/predict", content)
        assert status == 200 and answer["score"] > 0
        _, _, text = call("GET", f"{url}/metrics")
    assert not planted.exists()
    for status in (400, 413, 415, 422):
        line = f'ad_serve_requests_total{{endpoint="/predict",status="{status}"}}'
        assert line in text


def _slow_image() -> bytes:
    """A 6000x6000 flat PNG: a small body (some 100 kB) whose decoding (inflating 108 MB)
    takes a good fraction of a second, so that concurrent requests overlap in the queue."""
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (90, 90, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_full_queue_answers_503_with_retry_after_then_recovers(bundle, images):
    content = _slow_image()
    outcomes: list[tuple[int, dict[str, str]]] = []
    start = threading.Barrier(8)

    def client() -> None:
        start.wait()
        status, headers, _ = call("POST", f"{url}/predict", content)
        outcomes.append((status, headers))

    options = {"max_batch": 1, "max_queue": 2, "decode_threads": 1}
    with running(bundle, **options) as url:
        body, headers = multipart([("image", f"{i}.png", images[0].read_bytes()) for i in range(3)])
        status, _, answer = call("POST", f"{url}/predict/batch", body, headers)
        assert status == 413 and "--max-queue" in answer["detail"]
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        statuses = sorted(s for s, _ in outcomes)
        assert len(statuses) == 8 and statuses[0] == 200 and statuses[-1] == 503, statuses
        assert set(statuses) == {200, 503}
        for status, headers in outcomes:
            if status == 503:
                assert int(headers["retry-after"]) >= 1
        status, _, answer = call("POST", f"{url}/predict", images[0].read_bytes())
        assert status == 200, answer
        text = call("GET", f"{url}/metrics")[2]
    assert metric(text, "ad_serve_queue_images") == 0


def test_the_batcher_admits_all_or_nothing_and_releases_on_failure():
    """The queue's bound without HTTP: reservations beyond it are refused whole; cancelled
    places and finished batches free it; a failing forward pass fails its requests only."""
    calls: list[int] = []

    def forward(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(pixels))
        if pixels[0, 0, 0, 0] == 255:
            raise RuntimeError("refused")
        return pixels.reshape(len(pixels), -1).sum(1).astype(np.float64), pixels[..., 0] * 1.0

    batcher = MicroBatcher(forward, max_batch=4, max_delay=0.05, max_queue=3)
    batcher.reserve(2)
    with pytest.raises(QueueFull) as full:
        batcher.reserve(2)
    assert full.value.retry_after >= 1 and batcher.admitted == 2
    batcher.cancel(1)
    batcher.reserve(2)
    batcher.start()
    try:
        futures = [batcher.submit(np.full((2, 2, 3), v, np.uint8)) for v in (1, 2, 3)]
        assert [f.result(10)[0] for f in futures] == [12.0, 24.0, 36.0]
        assert calls == [3] and batcher.admitted == 0
        batcher.reserve(1)
        failing = batcher.submit(np.full((2, 2, 3), 255, np.uint8))
        with pytest.raises(RuntimeError, match="refused"):
            failing.result(10)
        batcher.reserve(3)  # the failed pass left no place taken
    finally:
        batcher.stop()


def test_a_token_guards_every_endpoint_but_the_probes(bundle, images, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    content = images[0].read_bytes()
    from ad_runtime.serve import read_token

    with running(bundle, token=read_token(token_file)) as url:
        for path, body in (("/predict", content), ("/metadata", None), ("/metrics", None)):
            method = "POST" if body else "GET"
            status, headers, answer = call(method, url + path, body)
            assert status == 401 and headers["www-authenticate"] == "Bearer", path
            assert "Authorization: Bearer" in answer["detail"]
            wrong = call(method, url + path, body, {"Authorization": "Bearer nope"})
            assert wrong[0] == 401
            right = call(method, url + path, body, {"Authorization": "Bearer s3cret-token"})
            assert right[0] == 200, path
        assert call("GET", f"{url}/healthz")[0] == 200 and call("GET", f"{url}/readyz")[0] == 200
        authorised = {"Authorization": "Bearer s3cret-token"}
        _, _, described = call("GET", f"{url}/metadata", None, authorised)
    assert described["serving"]["token_required"] is True
    assert "s3cret" not in json.dumps(described)
    bundle_json = json.loads((bundle / "bundle.json").read_text())
    assert described["bundle"]["method"] == bundle_json["method"] == "pixel-gaussian"
    assert described["threshold"] == bundle_json["thresholds"]["image"]["value"]
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(Exception, match="is empty"):
        read_token(empty)


def test_ad_serve_runs_and_its_errors_are_one_paragraph(bundle, images, tmp_path, monkeypatch):
    """``ad serve --model`` serves until interrupted; a missing bundle, bad options and a
    missing serve extra are one paragraph each (the extra's names the pip command)."""
    import os
    import signal
    import subprocess

    from ad_runtime.cli import main
    from adtest import AD

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(AD), "serve", "--model", str(bundle), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "AD_DEBUG": "0"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.1)
        status, _, answer = call("POST", f"http://127.0.0.1:{port}/predict", images[0].read_bytes())
        assert status == 200 and answer["score"] == Model(bundle).predict(images[:1])[0].score
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    assert "Serving pixel-gaussian on plate" in out

    result = run_ad("serve", "--model", str(tmp_path))
    assert result.returncode == 1 and "not a model bundle" in result.stderr
    assert "Traceback" not in result.stderr
    assert main(["serve", str(bundle), "--max-queue", "0"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run_ad("serve", "--model", str(bundle), "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "Cannot listen on 127.0.0.1" in busy.stderr
    assert "--port" in busy.stderr and "Traceback" not in busy.stderr
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    with pytest.raises(Exception, match=r"pip install 'ad-runtime\[serve\]'") as missing:
        require_serve_extra()
    assert "uvicorn is not installed" in str(missing.value)
    assert main(["serve", str(bundle)]) == 2


def test_readyz_is_503_until_the_warm_up_pass_is_done(bundle):
    """While the warm-up forward pass runs, /healthz answers 200 and /readyz 503 with
    Retry-After; once it is done, /readyz answers 200 (the warm-up is held on an event so
    the window is not left to timing)."""
    model = Model(bundle)
    gate, original = threading.Event(), model.run

    def held_run(pixels):
        assert gate.wait(30), "the test never released the warm-up"
        return original(pixels)

    model.run = held_run
    instance = server(model, ServeOptions(port=0, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not instance.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        url = f"http://127.0.0.1:{instance.servers[0].sockets[0].getsockname()[1]}"
        assert call("GET", f"{url}/healthz")[0] == 200
        status, headers, body = call("GET", f"{url}/readyz")
        assert status == 503 and body == {"status": "warming up"}
        assert headers.get("retry-after", headers.get("Retry-After")) == "1"
        gate.set()
        while call("GET", f"{url}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.02)
    finally:
        gate.set()
        instance.should_exit = True
        thread.join(15)
    assert not thread.is_alive()
