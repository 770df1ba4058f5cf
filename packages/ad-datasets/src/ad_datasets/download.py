"""Fetching public archives: resumable, verified before unpacking, unpacked safely.

A partial download stays in ``<archive>.part``; the next run asks the server for the rest
(an HTTP Range request; ``file://`` URLs seek), so an interrupted 2 GB download is not lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path
from typing import IO, Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, url2pathname, urlopen

from ad_datasets.visa import SPLIT_CSV
from adcore.api import DataError

# ``progress`` is adcore.infra.progress.Progress (``task(description, total)`` yielding
# ``advance(n)``; shown in MiB) or a plain callable ``(bytes done, bytes in total or None)``.
Progress = Any
MIB = 1 << 20

VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
VISA_MD5 = "ef908989b6dc701fc218f643c127a4de"  # as published with anomalib's VisA reader
CHUNK = 1 << 20


def _by_hand(dest: Path) -> str:
    """How to go on without the network: the file ``fetch`` would write, put there by hand."""
    return (
        f"or download the file by hand to {dest} and run the same command again (it checks "
        "and unpacks that file)."
    )


def _open_remote(
    url: str, offset: int, timeout: float, dest: Path
) -> tuple[IO[bytes], int, int | None]:
    """A byte stream of ``url`` from ``offset`` -> (stream, offset served, total size);
    errors name ``dest``, where a file downloaded by hand is used instead."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        source = Path(url2pathname(parsed.path))
        if not source.is_file():
            raise DataError(f"{url} does not exist.", "Check the URL.")
        total = source.stat().st_size
        stream = source.open("rb")
        stream.seek(min(offset, total))
        return stream, min(offset, total), total
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and offset:  # the partial file is already complete
            return _EmptyStream(), offset, offset
        raise DataError(
            f"Downloading {url} failed: HTTP {error.code} {error.reason}.",
            f"Check the URL, {_by_hand(dest)}",
        ) from None
    except (URLError, OSError) as error:
        raise DataError(
            f"Cannot reach {url} ({getattr(error, 'reason', error)}).",
            f"Check the network connection, {_by_hand(dest)}",
        ) from None
    length = response.headers.get("Content-Length")
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        total = content_range.rpartition("/")[2]
        return response, offset, int(total) if total.isdigit() else None
    return response, 0, int(length) if length else None  # range ignored: start over


class _EmptyStream:
    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _reporter(
    progress: Progress, name: str, total: int | None, done: int
) -> Iterator[Callable[[int], None]]:
    """``report(bytes done)`` for the host's progress bars or a plain callable."""
    if progress is None:
        yield lambda _: None
    elif hasattr(progress, "task"):
        with progress.task(f"{name} (MiB)", -(-total // MIB) if total else None) as advance:
            shown = [done // MIB]
            advance(shown[0])

            def report(now: int) -> None:
                advance(now // MIB - shown[0])
                shown[0] = now // MIB

            yield report
    else:
        progress(done, total)
        yield lambda now: progress(now, total)


def _note(progress: Progress, text: str) -> None:
    if hasattr(progress, "note"):
        progress.note(text)


def fetch(url: str, dest: Path, progress: Progress | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` if an earlier run was cut off."""
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    stream, done, total = _open_remote(url, offset, timeout, dest)
    try:
        with (
            part.open("r+b" if part.is_file() else "wb") as out,
            _reporter(progress, dest.name, total, done) as report,
        ):
            out.seek(done)
            out.truncate()
            while chunk := stream.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                report(done)
    except (OSError, HTTPException) as error:
        raise DataError(
            f"Downloading {url} stopped after {done} bytes ({error}).",
            "Run the same command again: it resumes where it stopped.",
        ) from None
    finally:
        stream.close()
    if total is not None and done != total:
        raise DataError(
            f"Downloading {url} stopped after {done} of {total} bytes.",
            "Run the same command again: it resumes where it stopped.",
        )
    os.replace(part, dest)
    return dest


def _check_md5(archive: Path, md5: str | None) -> None:
    """Delete ``archive`` and say so when its MD5 is not ``md5`` (when known)."""
    _check_digest(archive, "md5", md5)


def _check_digest(archive: Path, algorithm: str, expected: str | None) -> None:
    """Delete ``archive`` and say so when its ``algorithm`` digest is not ``expected``."""
    if not expected:
        return
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with archive.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        archive.unlink()
        raise DataError(
            f"{archive.name} has {algorithm.upper()} {digest.hexdigest()}, expected {expected}; "
            "it was deleted.",
            "Run the command again to download it afresh.",
        )


def verify_archive(archive: Path, md5: str | None = None) -> None:
    """Check the checksum (when known) and that every tar header reads, before unpacking.

    A corrupt archive is deleted, so the next run downloads it afresh rather than resuming.
    """
    _check_md5(archive, md5)
    try:
        _check_tar(archive)
    except (tarfile.TarError, OSError, EOFError) as error:
        archive.unlink()
        raise DataError(
            f"{archive.name} is not a complete tar archive ({error}); it was deleted.",
            "Run the command again to download it afresh.",
        ) from None


def _check_tar(archive: Path) -> None:
    """Raise unless the archive is whole.

    Reading headers alone misses truncation (tarfile takes a missing header for the end), so
    a plain tar must hold every member's data and the two zero blocks that end an archive;
    a compressed one is decompressed through, which fails on a cut-off stream.
    """
    if not _is_plain_tar(archive):
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isreg() else None
                while handle is not None and handle.read(CHUNK):
                    pass
        return
    with tarfile.open(archive, "r:") as tar:
        end = 0
        for member in tar:
            padded = -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            end = max(end, member.offset_data + (padded if member.isreg() else 0))
    if archive.stat().st_size < end + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError("the archive ends early: it was cut off")


def _is_plain_tar(archive: Path) -> bool:
    try:
        with tarfile.open(archive, "r:"):
            return True
    except tarfile.ReadError:
        return False


def unpack(archive: Path, root: Path) -> None:
    """Extract into ``root``; a single top-level folder in the archive is unwrapped."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")  # refuses absolute paths, ../ escapes
        except tarfile.TarError as error:
            raise DataError(
                f"{archive.name} cannot be unpacked safely ({error}).",
                "Check that the URL points at the genuine archive.",
            ) from None
        entries = list(staging.iterdir())
        base = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        for entry in base.iterdir():
            target = root / entry.name
            if target.exists():
                raise DataError(
                    f"{target} already exists; unpacking {archive.name} would overwrite it.",
                    "Unpack into an empty folder (--to).",
                )
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_visa(
    root: Path,
    progress: Progress | None = None,
    *,
    url: str = VISA_URL,
    md5: str | None = VISA_MD5,
    keep_archive: bool = False,
) -> Path:
    """Fetch VisA_20220922.tar into ``root``, verify it and unpack it in place -> ``root``."""
    root = Path(root).expanduser()
    if (root / SPLIT_CSV).is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    archive = fetch(url, root / Path(urlparse(url).path).name, progress)
    _note(progress, f"Verifying {archive.name}")
    verify_archive(archive, md5)
    _note(progress, f"Unpacking {archive.name} into {root}")
    unpack(archive, root)
    if not (root / SPLIT_CSV).is_file():
        raise DataError(
            f"{archive.name} unpacked into {root} but holds no {SPLIT_CSV}.",
            "Check that the URL points at the VisA archive (VisA_20220922.tar).",
        )
    if not keep_archive:
        archive.unlink()
    return root


ISIC_ARCHIVES = {  # ISIC 2016 task 1 test set, from the ISIC challenge site; MD5s as published
    "ISBI2016_ISIC_Part1_Test_Data": (
        "https://isic-challenge-data.s3.amazonaws.com/2016/ISBI2016_ISIC_Part1_Test_Data.zip",
        "efebcaeaae751007401a40a60d391f93",
    ),
    "ISBI2016_ISIC_Part1_Test_GroundTruth": (
        "https://isic-challenge-data.s3.amazonaws.com/2016/ISBI2016_ISIC_Part1_Test_GroundTruth.zip",
        "492a7711a2e19b96114cab6c96bd1ad5",
    ),
}


def unpack_zip(
    archive: Path, root: Path, md5: str | None = None, sha256: str | None = None
) -> None:
    """Verify (MD5 or SHA-256 when known, every member's CRC) and extract into ``root``.

    A corrupt archive is deleted so the next run downloads it afresh; member names that would
    leave ``root`` (absolute, ``..``) are refused.
    """
    _check_md5(archive, md5)
    _check_digest(archive, "sha256", sha256)
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise zipfile.BadZipFile(f"member {broken} is damaged")
            target = root.resolve()
            for name in bundle.namelist():
                if not (target / name).resolve().is_relative_to(target):
                    raise DataError(
                        f"{archive.name} holds {name!r}, which would be written outside {root}.",
                        "Check that the URL points at the genuine archive.",
                    )
            bundle.extractall(root)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        archive.unlink(missing_ok=True)
        raise DataError(
            f"{archive.name} is not a complete zip archive ({error}); it was deleted.",
            "Run the command again to download it afresh.",
        ) from None


def download_isic(
    root: Path,
    progress: Progress | None = None,
    *,
    archives: dict[str, tuple[str, str | None]] = ISIC_ARCHIVES,
    keep_archive: bool = False,
) -> Path:
    """Fetch ISIC 2016's task 1 test images and masks into ``root``, verified -> ``root``."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    for folder, (url, md5) in archives.items():
        if (root / folder).is_dir():
            continue
        archive = fetch(url, root / Path(urlparse(url).path).name, progress)
        _note(progress, f"Verifying and unpacking {archive.name} into {root}")
        unpack_zip(archive, root, md5)
        if not (root / folder).is_dir():
            raise DataError(
                f"{archive.name} unpacked into {root} but holds no {folder}/.",
                f"Check that the URL points at the ISIC 2016 archive {folder}.zip.",
            )
        if not keep_archive:
            archive.unlink()
    return root


BTAD_URL = "https://avires.dimi.uniud.it/papers/btad/btad.zip"
BTAD_SHA256 = "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a"  # as anomalib
BTAD_TOP = "BTech_Dataset_transformed"  # the archive's one top-level folder


def download_btad(
    root: Path,
    progress: Progress | None = None,
    *,
    url: str = BTAD_URL,
    sha256: str | None = BTAD_SHA256,
    keep_archive: bool = False,
) -> Path:
    """Fetch btad.zip into ``root``, verify it and unpack it so ``root`` holds 01/, 02/, 03/."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if (root / "01" / "test").is_dir():
        return root
    archive = fetch(url, root / Path(urlparse(url).path).name, progress)
    _note(progress, f"Verifying and unpacking {archive.name} into {root}")
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        unpack_zip(archive, staging, sha256=sha256)
        top = staging / BTAD_TOP if (staging / BTAD_TOP).is_dir() else staging
        for entry in top.iterdir():
            if (root / entry.name).exists():
                raise DataError(
                    f"{root / entry.name} already exists; unpacking {archive.name} would "
                    "overwrite it.",
                    "Unpack into an empty folder (--to).",
                )
            os.replace(entry, root / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (root / "01" / "test").is_dir():
        raise DataError(
            f"{archive.name} unpacked into {root} but holds no 01/test/.",
            "Check that the URL points at the BTAD archive (btad.zip).",
        )
    if not keep_archive:
        archive.unlink()
    return root
