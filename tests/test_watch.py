"""The watched folder (``ad_runtime.watch``): files appearing while it runs, a file still
being written, an unreadable file named without stopping, a restart that scores nothing
twice, Ctrl-C; through ``ad-runtime predict --watch`` and ``ad predict --watch``.

The loop's own tests drive its waits (``sleep``) with a script of file events, one per
poll, so that "still being written" is a fact of the test, not a race; the command tests
run in real time, bounded by ``--max-images`` and ``--watch-timeout``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_runtime.cli import main as runtime_main
from ad_runtime.decoding import read_image
from ad_runtime.errors import OutputError
from ad_runtime.model import Model
from ad_runtime.predictions import SCORES_HEADER, Verdicts
from ad_runtime.scorescale import ScoreScale
from ad_runtime.watch import JSONL_FILE, SCORES_FILE, UNREADABLE_FILE, Watcher
from adtest import AD, run_ad
from test_export import _export, data, gaussian_run  # noqa: F401

VERDICTS = Verdicts("c", 100.0, "given", ScoreScale(0.0, 100.0, 255.0))


def mean_batches(calls: list[list[Path]]) -> Callable:
    """A model whose score is the image's mean value, decoded as the runtime decodes (a cut
    PNG fails as it would in a bundle); each batch's paths are recorded in ``calls``."""

    def batches(paths: Sequence[Path], batch_size: int) -> Iterator:
        calls.append(list(paths))
        pixels = np.stack([np.asarray(read_image(p).resize((8, 8))) for p in paths])
        yield range(len(paths)), pixels.mean(axis=(1, 2, 3)), pixels.mean(axis=3) / 255

    return batches


def _png(path: Path, value: int) -> bytes:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path.read_bytes()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


class Script:
    """``sleep`` for the watcher: each call runs the next event and advances the clock."""

    def __init__(self, events: list[Callable[[], None]]) -> None:
        self.events, self.now = events, 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        if self.events:
            self.events.pop(0)()

    def clock(self) -> float:
        return self.now


def test_files_appear_one_half_written_one_unreadable(tmp_path):
    """Poll by poll: a.png is there from the start; b.png appears cut in half, then gets its
    second half (its size changed: not ready), then stays (ready: scored whole, never as a
    half); junk.png never decodes and is named, and the watch goes on to c.png."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    _png(folder / "a.png", 10)
    whole = _png(staging / "b.png", 200)
    _png(staging / "c.png", 50)
    half = whole[: len(whole) // 2]
    events = [  # each runs after a poll
        lambda: (folder / "b.png").write_bytes(half),  # poll 1 saw a
        lambda: (folder / "b.png").write_bytes(whole),  # poll 2: a ready; b seen, half
        lambda: (folder / "junk.png").write_bytes(b"not an image at all"),  # 3: b grew
        lambda: (folder / "c.png").write_bytes((staging / "c.png").read_bytes()),  # 4: b ready
        lambda: (folder / ".d.png").write_bytes(whole),  # 5: junk ready; a hidden temporary
    ]
    script = Script(events)
    calls: list[list[Path]] = []
    reports: list[str] = []
    watcher = Watcher(folder, out, mean_batches(calls), VERDICTS, 8, True, 0.5, reports.append)
    outcome = watcher.run(idle_timeout=2.0, sleep=script.sleep, clock=script.clock)
    assert outcome.stopped == "idle" and outcome.scored == 3 and outcome.unreadable == 1
    rows = {Path(r["path"]).name: r for r in _rows(out / SCORES_FILE)}
    assert list(rows) == ["a.png", "b.png", "c.png"]
    assert float(rows["b.png"]["score"]) == 200.0 and rows["b.png"]["anomalous"] == "1"
    assert float(rows["a.png"]["score"]) == 10.0 and rows["a.png"]["anomalous"] == "0"
    assert sum(folder / "b.png" in call for call in calls) == 1  # once, whole
    unreadable = _rows(out / UNREADABLE_FILE)
    assert [Path(r["path"]).name for r in unreadable] == ["junk.png"]
    assert "cannot be decoded" in unreadable[0]["reason"]
    assert any("junk.png" in line and "unreadable" in line for line in reports)
    assert reports[0] == (
        f"watching {folder.resolve()} -> {out} (0 done before; until 2 s without a new image "
        "or Ctrl-C)"
    )
    records = [json.loads(line) for line in (out / JSONL_FILE).read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == ["a.png", "b.png", "c.png"]
    assert records[1]["score"] == 200.0 and records[1]["threshold_source"] == "given"
    assert (out / "maps/b.tiff").is_file()
    # an output folder inside the watched one: its maps (TIFF images) are not watched
    inside = folder / "scored"
    nested = Watcher(folder, inside, mean_batches([]), VERDICTS, 8, True, 0.5)
    again = nested.run(idle_timeout=1.0, sleep=script.sleep, clock=script.clock)
    assert (again.scored, again.unreadable) == (3, 1)
    assert list((inside / "maps").rglob("*.tiff")) and not nested.listing()
    assert tuple(next(csv.reader((out / SCORES_FILE).open()))) == SCORES_HEADER


def test_a_restart_resumes_without_scoring_twice(tmp_path):
    """A second watch on the same output folder scores only the new file; a row cut by a
    crash is dropped (and its image scored again), the unreadable file is not retried."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name, value in (("a", 1), ("b", 2), ("c", 3)):
        _png(folder / f"{name}.png", value)
    (folder / "bad.png").write_bytes(b"junk")
    calls: list[list[Path]] = []
    first = Watcher(folder, out, mean_batches(calls), VERDICTS, 2)
    script = Script([])
    assert first.run(max_images=4, sleep=script.sleep, clock=script.clock).stopped == "max-images"
    assert [len(c) for c in calls][:2] == [2, 2]  # a, b then bad, c: a batch of two...
    scores = out / SCORES_FILE
    text = scores.read_text()
    scores.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + text.splitlines()[-1][:9])
    _png(folder / "d.png", 4)
    calls.clear()
    second = Watcher(folder, out, mean_batches(calls), VERDICTS, 8)
    assert second.resumed == 3  # a, b and bad (c's row was cut)
    outcome = second.run(idle_timeout=1.0, max_images=5, sleep=script.sleep, clock=script.clock)
    assert outcome.stopped == "idle" and outcome.scored == 2 and outcome.unreadable == 0
    assert sorted(p.name for call in calls for p in call) == ["c.png", "d.png"]
    names = [Path(r["path"]).name for r in _rows(scores)]
    assert sorted(names) == ["a.png", "b.png", "c.png", "d.png"] and len(set(names)) == 4
    # an output folder holding another table is refused, not appended to
    other = tmp_path / "other"
    other.mkdir()
    (other / SCORES_FILE).write_text("image,label\nx,1\n")
    with pytest.raises(OutputError, match="not those a watch appends"):
        Watcher(folder, other, mean_batches([]), VERDICTS)


def _copy_later(sources: list[Path], folder: Path, delay: float) -> threading.Thread:
    """Copy ``sources`` into ``folder`` one by one, ``delay`` seconds apart, while the watch
    runs (written under a hidden name, then renamed, as a camera's writer should)."""

    def copy() -> None:
        for i, source in enumerate(sources):
            time.sleep(delay)
            hidden = folder / f".{i}.tmp.png"
            hidden.write_bytes(source.read_bytes())
            os.replace(hidden, folder / f"late_{i}{source.suffix}")

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def test_runtime_watch_scores_images_as_they_arrive(gaussian_run, data, tmp_path):  # noqa: F811
    """``ad-runtime predict --watch``: two images there at the start, three copied in while
    it runs; --max-images stops it at five, each with the score Model.predict gives."""
    bundle = tmp_path / "bundle"
    assert _export(gaussian_run, bundle).returncode == 0
    images = sorted((data / "plate/test").rglob("*.png"))
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for source in images[:2]:
        (folder / source.name).write_bytes(source.read_bytes())
    thread = _copy_later(images[3:6], folder, 0.7)
    code = runtime_main(["predict", str(bundle), "--watch", str(folder), "--output", str(out),
                         "--max-images", "5", "--poll", "0.2", "--quiet"])  # fmt: skip
    thread.join()
    assert code == 0
    rows = _rows(out / SCORES_FILE)
    assert len(rows) == 5 and sum(Path(r["path"]).name.startswith("late_") for r in rows) == 3
    expected = {s.path: s.score for s in Model(bundle).predict([Path(r["path"]) for r in rows])}
    for row in rows:
        assert float(row["score"]) == expected[Path(row["path"])]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_stops_the_watch_cleanly(gaussian_run, data, tmp_path):  # noqa: F811
    """``ad predict --run --watch`` in its own process: after its first rows, Ctrl-C
    (SIGINT) ends it with exit 0, the outcome printed, every written row whole; a restart
    with --watch-timeout finds them done."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for source in sorted((data / "plate/test").rglob("*.png"))[:3]:
        (folder / source.name).write_bytes(source.read_bytes())
    command = [str(AD), "predict", "--run", str(gaussian_run), "--category", "plate",
               "--watch", str(folder), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "AD_DEBUG": "0", "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / SCORES_FILE).is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Watch stopped (interrupted): 3 images scored" in stdout
    assert "Traceback" not in stderr
    rows = _rows(out / SCORES_FILE)
    assert len(rows) == 3 and all(r["threshold_source"] for r in rows)
    result = run_ad("predict", "--run", str(gaussian_run), "--category", "plate", "--watch",
                    str(folder), "--out", str(out), "--watch-timeout", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0 images scored, 0 unreadable, 3 already done before" in result.stdout
    result = run_ad("predict", "--run", str(gaussian_run), "--watch", str(folder), "--input",
                    str(folder))  # fmt: skip
    assert result.returncode == 2 and "not both" in result.stderr


def test_an_output_folder_of_another_model_or_command_is_refused(tmp_path):
    """A watch resumes only its own model's rows: the output folder of another model's
    watch, or one holding ad predict's scores.csv, is refused before anything is scored."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _png(folder / "a.png", 10)
    calls: list[list[Path]] = []

    def watch(output: Path, identity: str) -> Watcher:
        return Watcher(folder, output, mean_batches(calls), VERDICTS, identity=identity)

    assert watch(out, "bundle aaa").run(max_images=1, sleep=lambda s: None).scored == 1
    assert watch(out, "bundle aaa").resumed == 1  # its own model: resumed
    with pytest.raises(OutputError) as error:
        watch(out, "bundle bbb")
    assert "another model" in str(error.value) and "'bundle aaa'" in str(error.value)
    predicted = tmp_path / "predicted"
    predicted.mkdir()
    (predicted / SCORES_FILE).write_text(",".join(SCORES_HEADER) + "\n")
    with pytest.raises(OutputError) as error:
        watch(predicted, "bundle aaa")
    assert "no watch wrote" in str(error.value)
    assert len(calls) == 1
