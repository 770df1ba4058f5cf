"""Downloads from archives the tests build, served from file:// and a loopback HTTP server."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_datasets.download import download_visa, fetch, verify_archive
from ad_datasets.plugin import adcore_datasets
from adcore.infra.errors import DataError


def visa_archive(path: Path, top: str | None = "VisA_20220922", padding: int = 300_000) -> bytes:
    """A tar holding a two-image VisA tree, optionally inside one top-level folder."""
    prefix = f"{top}/" if top else ""
    files: dict[str, bytes] = {}
    for name, value in (("candle/Data/Images/Normal/0000.JPG", 80),):
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="JPEG")
        files[name] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buffer, format="JPEG")
    files["candle/Data/Images/Anomaly/000.JPG"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(buffer, format="PNG")
    files["candle/Data/Masks/Anomaly/000.png"] = buffer.getvalue()
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["object", "split", "label", "image", "mask"])
    writer.writerow(["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""])
    writer.writerow(
        [
            "candle",
            "test",
            "anomaly",
            "candle/Data/Images/Anomaly/000.JPG",
            "candle/Data/Masks/Anomaly/000.png",
        ]
    )
    files["split_csv/1cls.csv"] = table.getvalue().encode()
    files["padding.bin"] = np.random.default_rng(0).bytes(padding)  # several read chunks
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_download_visa_from_a_file_url(tmp_path: Path) -> None:
    data = visa_archive(tmp_path / "VisA_20220922.tar")
    calls: list[tuple[int, int | None]] = []
    root = download_visa(
        tmp_path / "visa",
        lambda done, total: calls.append((done, total)),
        url=(tmp_path / "VisA_20220922.tar").as_uri(),
        md5=md5(data),
    )
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
    assert sorted(p.name for p in root.iterdir()) == ["candle", "padding.bin", "split_csv"]
    spec = next(s for s in adcore_datasets() if s.name == "visa")
    dataset = spec.factory(spec.config(), root)
    assert dataset.categories() == ["candle"]
    assert [s.label for s in dataset.samples("candle", "test")] == [1]
    # already there: nothing is fetched, even from a URL that does not exist
    assert download_visa(root, url=(tmp_path / "gone.tar").as_uri()) == root


def test_archive_without_top_folder_and_kept_archive(tmp_path: Path) -> None:
    data = visa_archive(tmp_path / "v.tar", top=None)
    root = download_visa(
        tmp_path / "visa", url=(tmp_path / "v.tar").as_uri(), md5=md5(data), keep_archive=True
    )
    assert (root / "split_csv" / "1cls.csv").is_file()
    assert (root / "v.tar").read_bytes() == data


def test_file_url_resumes_a_partial_download(tmp_path: Path) -> None:
    data = visa_archive(tmp_path / "v.tar")
    dest = tmp_path / "out" / "v.tar"
    dest.parent.mkdir()
    (dest.parent / "v.tar.part").write_bytes(data[:100_000])
    calls: list[tuple[int, int | None]] = []
    fetch((tmp_path / "v.tar").as_uri(), dest, lambda d, t: calls.append((d, t)))
    assert calls[0] == (100_000, len(data))
    assert dest.read_bytes() == data
    assert not (dest.parent / "v.tar.part").exists()


class Server:
    """A loopback HTTP server for one file; it honours Range unless told not to."""

    def __init__(self, data: bytes) -> None:
        self.data, self.ranges, self.honour_range, self.cut_at = data, [], True, None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                start = 0
                if wanted and server.honour_range:
                    start = int(wanted.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                end = server.cut_at if server.cut_at is not None else len(data)
                self.wfile.write(data[start:end])

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/VisA_20220922.tar"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(visa_archive(tmp_path / "served.tar"))
    yield running
    running.httpd.shutdown()
    running.httpd.server_close()


def test_http_download_is_cut_off_then_resumed_with_range(tmp_path: Path, server: Server) -> None:
    dest = tmp_path / "out.tar"
    server.cut_at = 120_000
    with pytest.raises(DataError, match="resumes"):
        fetch(server.url, dest, timeout=10)
    part = tmp_path / "out.tar.part"
    assert part.read_bytes() == server.data[:120_000]
    server.cut_at = None
    fetch(server.url, dest, timeout=10)
    assert server.ranges == [None, "bytes=120000-"]
    assert dest.read_bytes() == server.data


def test_http_server_ignoring_range_restarts(tmp_path: Path, server: Server) -> None:
    server.honour_range = False
    (tmp_path / "out.tar.part").write_bytes(b"stale bytes from another file")
    fetch(server.url, tmp_path / "out.tar", timeout=10)
    assert (tmp_path / "out.tar").read_bytes() == server.data


def test_http_download_visa_end_to_end(tmp_path: Path, server: Server) -> None:
    root = download_visa(tmp_path / "visa", url=server.url, md5=md5(server.data))
    assert (root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").is_file()
    assert not (root / "VisA_20220922.tar").exists()


def test_corrupt_archives_are_refused_and_deleted(tmp_path: Path) -> None:
    data = visa_archive(tmp_path / "v.tar")
    with pytest.raises(DataError, match="MD5"):
        download_visa(tmp_path / "a", url=(tmp_path / "v.tar").as_uri(), md5="0" * 32)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == []

    cut = tmp_path / "cut.tar"
    for length in (len(data) // 2, 512 * (len(data) // 1024)):
        cut.write_bytes(data[:length])
        with pytest.raises(DataError, match="not a complete tar"):
            verify_archive(cut)
        assert not cut.exists()

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="unpacked safely"):
        download_visa(tmp_path / "b", url=evil.as_uri(), md5=None)
    assert not (tmp_path / "escape.txt").exists()


def test_host_progress_bars_are_driven_in_mib(tmp_path: Path) -> None:
    from adcore.infra.progress import Progress

    data = visa_archive(tmp_path / "v.tar", padding=int(2.5 * 2**20))
    tasks: list[tuple[str, int | None]] = []
    advanced: list[int] = []

    class Recording(Progress):
        @contextlib.contextmanager
        def task(self, description: str, total: int | None):
            tasks.append((description, total))
            with super().task(description, total) as advance:
                yield lambda n=1, status=None: (advanced.append(n), advance(n, status))

    with Recording(enabled=False) as progress:
        download_visa(tmp_path / "visa", progress, url=(tmp_path / "v.tar").as_uri(), md5=None)
    assert tasks == [("v.tar (MiB)", -(-len(data) // 2**20))]
    assert sum(advanced) == len(data) // 2**20


def test_plugin_records_offer_download_and_help() -> None:
    specs = {s.name: s for s in adcore_datasets()}
    assert callable(specs["visa"].download)
    assert specs["mvtec"].download is None
    assert "mvtec.com" in specs["mvtec"].download_help
    assert "ground_truth/<defect>/<image stem>_mask.png" in specs["mvtec"].download_help


def test_offline_error_names_where_to_put_the_file_and_then_uses_it(tmp_path: Path) -> None:
    """No server at the URL (a loopback port nobody listens on): the error names the file
    to download by hand; put there, the same call checks and unpacks it."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/VisA_20220922.tar"
    root = tmp_path / "visa"
    with pytest.raises(DataError) as refused:
        download_visa(root, url=url, md5=None)
    dest = root / "VisA_20220922.tar"
    assert refused.value.problem.startswith(f"Cannot reach {url}")
    assert f"download the file by hand to {dest} and run the same command" in refused.value.hint
    data = visa_archive(dest)
    assert download_visa(root, url=url, md5=md5(data)) == root
    assert (root / "candle").is_dir() and not dest.exists()
