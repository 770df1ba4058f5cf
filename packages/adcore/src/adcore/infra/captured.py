"""Third-party chatter while a model is built: warnings, log records and prints, captured and
summarised instead of interleaved with our output.

open_clip logs "No pretrained weights loaded ... initialized randomly" whenever we build a
model to load a file into ourselves; such messages are false in our flow and are dropped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

LOGGERS = ("", "open_clip", "timm", "huggingface_hub", "torch")
# Messages that describe an intermediate state we correct right after (we load the weights).
FALSE_IN_OUR_FLOW = ("No pretrained weights loaded", "initialized randomly", "QuickGELU mismatch")


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(f"{record.name or 'root'}: {record.getMessage()}")


@contextlib.contextmanager
def captured_output(into: list[str]) -> Iterator[None]:
    """Collect warnings, log records (WARNING and above) and stdout/stderr into ``into``."""
    raw: list[str] = []
    handler = _Collect(raw)
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
        raw.extend(f"{w.category.__name__}: {w.message}" for w in caught)
        raw.extend(line for line in (out.getvalue() + err.getvalue()).splitlines() if line.strip())
        into.extend(summarise(raw))


def summarise(messages: list[str], limit: int = 5) -> list[str]:
    """Distinct messages in order of first appearance, with counts; false ones dropped."""
    counts: dict[str, int] = {}
    for message in messages:
        text = " ".join(message.split())[:300]
        if not any(marker in text for marker in FALSE_IN_OUR_FLOW):
            counts[text] = counts.get(text, 0) + 1
    lines = [f"{text} (x{n})" if n > 1 else text for text, n in counts.items()]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
