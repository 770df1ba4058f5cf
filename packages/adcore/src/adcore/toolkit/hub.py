"""Finding weight files: the local Hugging Face cache first, without network; then the network
with short timeouts and at most one retry.

timm and open_clip download through ``huggingface_hub``, which on an unreachable network
retries for about a minute per file (and has no bound at all for a server that accepts
and never answers). We resolve the file here, in the same cache layout those libraries
use, and hand them a local path.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from adcore.infra.errors import WeightsError

TIMEOUT_S = 5.0  # connect and read timeout of one request
ATTEMPTS = 2  # the first request and one retry
RETRY_PAUSE_S = 0.5
T = TypeVar("T")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache that open_clip and timm download into and read from."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    return home / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set: never touch the network."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in {"1", "true", "yes", "on"}


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cached_hub_file(repo_id: str, filenames: Sequence[str], revision: str | None) -> Path | None:
    """The first of ``filenames`` present in the local cache, found without network."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=hf_cache_dir(), revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def hub_file(
    repo_id: str,
    filenames: Sequence[str],
    *,
    what: str,
    how: str,
    revision: str | None = None,
) -> Path:
    """A local path of the first of ``filenames`` the repository has (cache, then network).

    Raises :class:`WeightsError` naming ``what``, where it was looked for and ``how`` to
    provide it, within about ``ATTEMPTS * TIMEOUT_S`` seconds when the network fails.
    """
    cached = cached_hub_file(repo_id, filenames, revision)
    if cached is not None:
        return cached
    where = (
        f"looked for {', '.join(filenames)} of the Hugging Face repository {repo_id} in the "
        f"cache {hf_cache_dir()}"
    )
    if offline():
        raise _missing(what, f"{where}; HF_HUB_OFFLINE is set, so not on the network", how)
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    absent = []
    for name in filenames:
        url = hf_hub_url(repo_id, name, revision=revision, endpoint=endpoint())
        try:
            _with_retry(
                lambda url=url: get_hf_file_metadata(url, timeout=TIMEOUT_S, endpoint=endpoint())
            )
        except EntryNotFoundError:
            absent.append(name)
            continue
        except Exception as error:
            reason = _reason(error)
            raise _missing(
                what, f"{where}, then at {endpoint()} ({reason}, {ATTEMPTS} attempts)", how
            ) from None
        try:
            return Path(
                hf_hub_download(
                    repo_id,
                    name,
                    revision=revision,
                    cache_dir=hf_cache_dir(),
                    etag_timeout=TIMEOUT_S,
                    endpoint=endpoint(),
                )
            )
        except Exception as error:
            raise _missing(
                what, f"{where}, then downloading from {endpoint()} ({_reason(error)})", how
            ) from None
    raise _missing(what, f"{where}, then at {endpoint()} (the repository has none of them)", how)


def url_file(url: str, target: Path, *, sha256: str, what: str, how: str) -> Path:
    """``target``, verified by SHA-256 before every use; downloaded from ``url`` when absent.

    A cached file with another checksum is refused (not silently replaced): it may be a
    partial copy or other weights.
    """
    if target.is_file():
        digest = file_sha256(target)
        if digest != sha256:
            raise WeightsError(
                f"{what} at {target} has SHA-256 {digest}, but the released file has {sha256}: "
                "it is incomplete or other weights.",
                f"Delete it and rerun to download it again, or {how[0].lower()}{how[1:]}",
            )
        return target
    where = f"looked for {target}"
    if offline():
        raise _missing(what, f"{where}; HF_HUB_OFFLINE is set, so not on the network", how)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.part")
    try:
        _with_retry(lambda: _download(url, partial))
    except Exception as error:
        partial.unlink(missing_ok=True)
        raise _missing(what, f"{where}, then at {url} ({_reason(error)})", how) from None
    digest = file_sha256(partial)
    if digest != sha256:
        partial.unlink(missing_ok=True)
        raise WeightsError(
            f"The download of {what} from {url} has SHA-256 {digest}, expected {sha256}.",
            f"Retry later, or {how[0].lower()}{how[1:]}",
        )
    os.replace(partial, target)
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as source, target.open("wb") as out:
        while block := source.read(1 << 20):
            out.write(block)


def _with_retry(call: Callable[[], T]) -> T:
    """``call()``; once more after a short pause if it fails with anything but a 4xx."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    for attempt in range(ATTEMPTS):
        try:
            return call()
        except EntryNotFoundError:
            raise
        except HfHubHTTPError as error:
            status = getattr(getattr(error, "response", None), "status_code", 500) or 500
            if status < 500 or attempt == ATTEMPTS - 1:
                raise
        except Exception:
            if attempt == ATTEMPTS - 1:
                raise
        time.sleep(RETRY_PAUSE_S)
    raise AssertionError("unreachable")


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "no answer"
    return f"{type(error).__name__}: {text[:160]}"


def _missing(what: str, where: str, how: str) -> WeightsError:
    return WeightsError(
        f"{what} could not be found: {where}.",
        f"{how} Or set model.pretrained to a local checkpoint file, or run with "
        "--random-weights for a demo with random initialisation.",
    )
