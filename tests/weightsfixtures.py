"""Test helpers for weights: a Hugging Face cache written in the layout huggingface_hub reads,
endpoints that refuse or never answer, and OpenAI-style TorchScript archives."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """``cache/models--org--name/{blobs,snapshots/<commit>,refs/main}`` as hf_hub_download
    leaves it: content-addressed blobs, snapshot symlinks, the ref naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def torch_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def closed_port() -> int:
    """A local port nothing listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def torchscript_archive(state: dict[str, torch.Tensor], path: Path, **extras: int) -> Path:
    """A TorchScript archive whose ``state_dict()`` is ``state`` plus integer ``extras``, as
    OpenAI's CLIP releases are (``input_resolution``, ``context_length``, ``vocab_size``)."""
    root = torch.nn.Module()
    for name, tensor in {**state, **{k: torch.tensor(v) for k, v in extras.items()}}.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor.detach().clone())
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice
        warnings.simplefilter("ignore")
        torch.jit.script(root).save(str(path))
    return path


@contextmanager
def hub_endpoint(files: dict[str, bytes]) -> Iterator[tuple[str, list[str]]]:
    """A local Hugging Face endpoint serving ``{"org/repo/file": bytes}`` as the hub does
    (``/<repo>/resolve/<revision>/<file>``, commit and ETag headers, ``EntryNotFound`` for
    other files) -> (its URL, the request log)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    log: list[str] = []

    class Hub(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            log.append(f"{self.command} {self.path}")
            repo, _, rest = self.path.lstrip("/").partition("/resolve/")
            name = rest.partition("/")[2]
            data = files.get(f"{repo}/{name}")
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
