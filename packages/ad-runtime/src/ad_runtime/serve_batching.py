"""Dynamic micro-batching for ``ad-runtime serve``: concurrent requests share one forward pass.

As BentoML's and Triton's adaptive batching: a worker thread takes the oldest waiting image,
then keeps gathering until the batch holds ``max_batch`` images or ``max_delay`` seconds have
passed since that first image arrived, and runs them as one batch. ``max_batch=1`` is no
batching: one forward pass per image, in arrival order.

The queue is bounded in *admitted* images: an image is admitted when its request arrives
(before it is decoded) and leaves the count when its batch starts, so neither decoding nor
the forward pass can build a backlog. A request whose images do not fit is refused at once
(:class:`QueueFull`, with how long the queue needs to drain), never queued.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 [B,S,S,3] -> [B], [B,S,S]


class QueueFull(Exception):
    """The queue cannot admit the images now; ``retry_after``: seconds until it has drained."""

    def __init__(self, waiting: int, limit: int, retry_after: int) -> None:
        super().__init__(f"the queue holds {waiting} of its {limit} images")
        self.retry_after = retry_after


@dataclass
class _Item:
    pixels: np.ndarray  # uint8 [S,S,3]
    arrived: float  # time.monotonic()
    result: Future = field(default_factory=Future)  # -> (raw score float, raw map [S,S])


class MicroBatcher:
    """Batches single images for ``forward`` (``Model.run``) in one worker thread.

    ``on_batch(size, seconds)`` is called after each forward pass (the metrics)."""

    def __init__(
        self,
        forward: Forward,
        max_batch: int = 8,
        max_delay: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_delay < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_delay >= 0")
        self.forward, self.max_batch, self.max_delay = forward, max_batch, max_delay
        self.max_queue, self.on_batch = max_queue, on_batch
        self._waiting: deque[_Item] = deque()
        self._admitted = 0  # reserved and not yet in a batch (decoding or waiting)
        self._condition = threading.Condition()
        self._stopping = False
        self._seconds_per_batch = 0.05  # running mean of the forward pass, for Retry-After
        self._thread: threading.Thread | None = None

    @property
    def admitted(self) -> int:
        """Images admitted and not yet in a forward pass."""
        return self._admitted

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="ad-serve-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the images already waiting, then end the worker."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def reserve(self, count: int) -> None:
        """Admit ``count`` images, all or none; raises :class:`QueueFull` when they do not fit."""
        with self._condition:
            if self._admitted + count > self.max_queue:
                batches = math.ceil((self._admitted + count) / self.max_batch)
                retry = max(1, math.ceil(batches * self._seconds_per_batch + self.max_delay))
                raise QueueFull(self._admitted, self.max_queue, retry)
            self._admitted += count

    def cancel(self, count: int) -> None:
        """Give back reserved places whose images will not come (a decoding error)."""
        with self._condition:
            self._admitted -= count

    def submit(self, pixels: np.ndarray) -> Future:
        """One reserved image, uint8 [S,S,3] -> a future of (raw score, raw map [S,S])."""
        item = _Item(pixels, time.monotonic())
        with self._condition:
            if self._stopping:
                self._admitted -= 1
                item.result.set_exception(RuntimeError("the server is shutting down"))
                return item.result
            self._waiting.append(item)
            self._condition.notify()
        return item.result

    def _next_batch(self) -> list[_Item]:
        """The next batch (empty when stopping with nothing left)."""
        with self._condition:
            while not self._waiting and not self._stopping:
                self._condition.wait()
            if not self._waiting:
                return []
            deadline = self._waiting[0].arrived + self.max_delay
            while len(self._waiting) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            taken = min(self.max_batch, len(self._waiting))
            batch = [self._waiting.popleft() for _ in range(taken)]
            self._admitted -= len(batch)
            return batch

    def _work(self) -> None:
        while batch := self._next_batch():
            started = time.perf_counter()
            try:
                scores, maps = self.forward(np.stack([item.pixels for item in batch]))
            except BaseException as error:  # every waiting request gets the error, none hangs
                for item in batch:
                    item.result.set_exception(error)
                continue
            seconds = time.perf_counter() - started
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * seconds
            for item, score, anomaly_map in zip(batch, scores, maps, strict=True):
                item.result.set_result((float(score), anomaly_map))
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
