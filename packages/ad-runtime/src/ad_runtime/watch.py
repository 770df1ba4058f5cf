"""A watched folder: score images as they appear (``ad predict --watch``, ``ad-runtime
predict --watch``), for any model given as its ``batches`` (a bundle's
:meth:`ad_runtime.model.Model.batches`, a run's fitted method through ``adcore``).

Polling, not file-system events: it needs no dependency, works the same on network shares
and bind mounts (where inotify is silent), and "the size has not changed since the last
poll" is the test of a finished file that events would need anyway. Each poll lists the
image files under the folder (recursively; names starting with ``.`` are skipped, so a
writer can write ``.name.png`` and rename it); a file is ready when its size and
modification time are the same as at the previous poll, so a file still being written
waits. Ready files are scored in batches and each batch is appended to ``scores.csv``
(:data:`~ad_runtime.predictions.SCORES_HEADER`) and ``scores.jsonl`` in the output folder,
flushed and synced; maps go to ``maps/``. A file that cannot be read is named (on the
report and in ``unreadable.csv``) and the watch goes on.

Restarting with the same output folder resumes: the files already in ``scores.csv`` or
``unreadable.csv`` are never scored again (a last line cut by a crash is dropped first).
The loop stops after ``idle_timeout`` seconds without a new image, after ``max_images``,
or at Ctrl-C: the batch being scored is finished and written first (a second Ctrl-C
stops at once).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ad_runtime.calibration import Batches
from ad_runtime.decoding import IMAGE_EXTENSIONS
from ad_runtime.errors import DataError, OutputError, UsageError
from ad_runtime.mapfiles import write_map
from ad_runtime.predictions import SCORES_HEADER, Verdicts

SCORES_FILE = "scores.csv"
JSONL_FILE = "scores.jsonl"
UNREADABLE_FILE = "unreadable.csv"
OWNER_FILE = "watch.json"  # which model's watch the output folder holds
UNREADABLE_HEADER = ("path", "reason")
DEFAULT_POLL_S = 0.5

Signature = tuple[int, int]  # size in bytes, modification time in ns


@dataclass
class WatchOutcome:
    """What a watch did: images scored and named unreadable in this session, those found
    already done in the output folder, and why it stopped (``idle``, ``max-images``,
    ``interrupted``)."""

    scored: int
    unreadable: int
    resumed: int
    stopped: str
    out_dir: Path


def _repaired_rows(path: Path, header: Sequence[str]) -> list[dict[str, str]]:
    """The rows of an appended CSV, its cut last line (a crash mid-write) removed from the
    file. Raises ``OutputError`` when the file has other columns."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with path.open("r+b") as stream:
            stream.truncate(len(data))
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    rows = list(reader)
    if reader.fieldnames is not None and tuple(reader.fieldnames) != tuple(header):
        raise OutputError(
            f"{path} has the columns {', '.join(reader.fieldnames)}, not those a watch appends "
            f"({', '.join(header)}).",
            "Choose another output folder, or move that file away.",
        )
    return rows


def _append(path: Path, text: str) -> None:
    """Append ``text`` and sync it: a row on disk is a row a restart will not redo."""
    with path.open("a", encoding="utf-8", newline="") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def _csv_lines(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def claim_output(out_dir: Path, identity: str) -> None:
    """Mark ``out_dir`` as the watch output of the model ``identity``; raises
    ``OutputError`` when it holds another model's watch, or scores no watch wrote."""
    from ad_runtime.files import atomic_write_text

    owner = out_dir / OWNER_FILE
    fix = "Give the watch an output folder of its own (or the one of this model's watch)."
    if owner.is_file():
        try:
            recorded = json.loads(owner.read_text()).get("model")
        except (ValueError, AttributeError):
            recorded = None
        if recorded != identity:
            raise OutputError(
                f"{out_dir} holds the watch of another model ({owner} names {recorded!r}, "
                f"this model is {identity!r}): its rows would be taken as done.",
                fix,
            )
        return
    if (out_dir / SCORES_FILE).is_file():
        raise OutputError(
            f"{out_dir} holds a {SCORES_FILE} that no watch wrote (ad predict's, or a watch "
            "from before watches recorded their model): its rows would be taken as done.",
            fix,
        )
    atomic_write_text(owner, json.dumps({"model": identity}, indent=2) + "\n")


class Watcher:
    """Watch ``folder`` and score what appears with ``batches`` under ``verdicts``, writing
    into ``out_dir`` (maps too when ``maps``). ``report`` receives one line per event.

    ``identity``: the model's identity (a bundle's graph SHA-256, a run's fitted state),
    kept in ``out_dir/watch.json``, so a restart resumes only its own model's rows.

    Raises ``DataError`` when ``folder`` is not a folder, ``OutputError`` when ``out_dir``
    holds a ``scores.csv`` with other columns, or the scores of another model or command."""

    def __init__(
        self,
        folder: Path,
        out_dir: Path,
        batches: Batches,
        verdicts: Verdicts,
        batch_size: int = 8,
        maps: bool = True,
        poll_s: float = DEFAULT_POLL_S,
        report: Callable[[str], None] | None = None,
        identity: str | None = None,
    ) -> None:
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder to watch.", "Pass an existing folder.")
        out_dir.mkdir(parents=True, exist_ok=True)
        if identity is not None:
            claim_output(out_dir, identity)
        self.folder = folder.resolve()
        self.own = out_dir.resolve()  # an output folder inside the watched one is not watched
        self.out_dir = out_dir
        self.batches, self.verdicts = batches, verdicts
        self.batch_size, self.maps, self.poll_s = batch_size, maps, poll_s
        self.report = report or (lambda line: None)
        rows = _repaired_rows(out_dir / SCORES_FILE, SCORES_HEADER)
        failed = _repaired_rows(out_dir / UNREADABLE_FILE, UNREADABLE_HEADER)
        self.done = {r["path"] for r in rows} | {r["path"] for r in failed}
        self.keys = {Path(r["map"]).with_suffix("").as_posix().casefold() for r in rows}
        self.resumed = len(self.done)
        self.scored = self.unreadable = 0
        self._jsonl_repaired = False
        self.stopping = False

    def listing(self) -> dict[Path, Signature]:
        """Image files under the folder not yet done, with their size and modification time."""
        found: dict[Path, Signature] = {}
        for path in self.folder.rglob("*"):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
                continue
            if str(path) in self.done or self.own in path.parents:
                continue
            try:
                status = path.stat()
            except OSError:  # gone between the listing and the stat
                continue
            if path.is_file():
                found[path] = (status.st_size, status.st_mtime_ns)
        return found

    def key(self, path: Path) -> str:
        """A unique output key for ``path``: its path under the folder without the extension
        (``-2``, ``-3`` ... after a clash, even across restarts)."""
        base = path.relative_to(self.folder).with_suffix("").as_posix()
        candidate, number = base, 1
        while candidate.casefold() in self.keys:
            number += 1
            candidate = f"{base}-{number}"
        self.keys.add(candidate.casefold())
        return candidate

    def score(self, paths: list[Path]) -> None:
        """Score ``paths`` as one batch; on a decoding error, one by one, naming the bad."""
        try:
            results = list(self.batches(paths, len(paths)))
        except DataError as error:
            if len(paths) > 1:
                for path in paths:
                    self.score([path])
                return
            self._unreadable(paths[0], error.problem)
            return
        scores = np.concatenate([s for _, s, _ in results])  # [b]
        maps = np.concatenate([m for _, _, m in results])  # [b,S,S]
        self._write(paths, scores, maps)

    def _unreadable(self, path: Path, reason: str) -> None:
        _append(self.out_dir / UNREADABLE_FILE, self._header(UNREADABLE_FILE, UNREADABLE_HEADER)
                + _csv_lines([[str(path), reason]]))  # fmt: skip
        self.done.add(str(path))
        self.unreadable += 1
        self.report(f"unreadable, left out: {path} ({reason})")

    def _header(self, name: str, header: Sequence[str]) -> str:
        path = self.out_dir / name
        return "" if path.is_file() and path.stat().st_size else _csv_lines([header])

    def _write(self, paths: list[Path], scores: np.ndarray, maps: np.ndarray) -> None:
        verdicts = self.verdicts
        normalised = verdicts.scale.normalise(scores)  # [b] in [0, 1]
        rows, records = [], []
        for path, score, norm, value in zip(paths, scores, normalised, maps, strict=True):
            key = self.key(path)
            if self.maps:
                write_map(self.out_dir / "maps" / f"{key}.tiff", value)
            anomalous = bool(score >= verdicts.threshold)
            map_file = f"maps/{key}.tiff"
            rows.append([str(path), repr(float(score)), repr(float(norm)), int(anomalous),
                         repr(verdicts.threshold), map_file, verdicts.source])  # fmt: skip
            records.append({
                "path": str(path), "score": float(score), "normalised_score": float(norm),
                "anomalous": anomalous, "threshold": verdicts.threshold,
                "threshold_source": verdicts.source,
                "map": map_file if self.maps else None,
                "scored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })  # fmt: skip
        if not self._jsonl_repaired:  # a cut last line of an earlier session
            _repair_jsonl(self.out_dir / JSONL_FILE)
            self._jsonl_repaired = True
        _append(self.out_dir / JSONL_FILE, "".join(json.dumps(r) + "\n" for r in records))
        _append(self.out_dir / SCORES_FILE, self._header(SCORES_FILE, SCORES_HEADER)
                + _csv_lines(rows))  # fmt: skip
        self.done.update(str(p) for p in paths)
        self.scored += len(paths)
        flagged = sum(int(r[3]) for r in rows)
        self.report(f"scored {len(paths)} ({flagged} anomalous), {self.scored} this session")

    def _interrupt(self, signum: int, frame: object) -> None:
        """The first Ctrl-C: stop after the batch being scored (its rows written); a second
        one stops at once."""
        self.stopping = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def run(
        self,
        idle_timeout: float | None = None,
        max_images: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> WatchOutcome:
        """Poll until ``idle_timeout`` seconds pass without a new image, ``max_images`` are
        handled (scored or unreadable) or Ctrl-C; ``sleep`` and ``clock`` are the waits and
        the time (tests drive them)."""
        previous: dict[Path, Signature] = {}
        last_new = clock()
        stopped = "interrupted"
        self.stopping = False
        main = threading.current_thread() is threading.main_thread()
        handler = signal.signal(signal.SIGINT, self._interrupt) if main else None
        bounds = [f"{idle_timeout:g} s without a new image"] if idle_timeout else []
        bounds += [f"{max_images} images"] if max_images is not None else []
        self.report(
            f"watching {self.folder} -> {self.out_dir} ({self.resumed} done before; until "
            f"{' or '.join([*bounds, 'Ctrl-C'])})"
        )
        try:
            while not self.stopping:
                current = self.listing()
                ready = sorted(p for p, s in current.items() if s[0] > 0 and previous.get(p) == s)
                previous = current
                if max_images is not None:
                    ready = ready[: max(0, max_images - self.scored - self.unreadable)]
                for start in range(0, len(ready), self.batch_size):
                    if self.stopping:
                        break
                    self.score(ready[start : start + self.batch_size])
                    last_new = clock()
                if max_images is not None and self.scored + self.unreadable >= max_images:
                    stopped = "max-images"
                    break
                if idle_timeout is not None and clock() - last_new >= idle_timeout:
                    stopped = "idle"
                    break
                if not self.stopping:
                    sleep(self.poll_s)
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the main thread's handler
            stopped = "interrupted"
        finally:
            if main:
                signal.signal(signal.SIGINT, handler)
        return WatchOutcome(self.scored, self.unreadable, self.resumed, stopped, self.out_dir)


def check_bounds(idle_timeout: float | None, max_images: int | None, poll_s: float) -> None:
    """Raise ``UsageError`` for a bound that would never let the watch run."""
    for name, value in (("--watch-timeout", idle_timeout), ("--max-images", max_images),
                        ("--poll", poll_s)):  # fmt: skip
        if value is not None and value <= 0:
            raise UsageError(f"{name} {value:g} is not above 0.", f"Give {name} above 0.")


def _repair_jsonl(path: Path) -> None:
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as stream:
                stream.truncate(data.rfind(b"\n") + 1)


def describe(outcome: WatchOutcome) -> str:
    """One line: what the watch did and where."""
    why = {"idle": "no new image within the timeout", "max-images": "--max-images reached",
           "interrupted": "interrupted"}[outcome.stopped]  # fmt: skip
    resumed = f", {outcome.resumed} already done before" if outcome.resumed else ""
    return (
        f"Watch stopped ({why}): {outcome.scored} images scored, {outcome.unreadable} "
        f"unreadable{resumed}; scores in {outcome.out_dir / SCORES_FILE}"
    )
