"""``ad serve``: a bundle over HTTP through the torch-free runtime (``ad_runtime.serve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ad_runtime.serve import OPTION_HELP, ServeOptions

_DEFAULTS = ServeOptions()


def _option(name: str, **extra: object) -> typer.models.OptionInfo:
    return typer.Option("--" + name.replace("_", "-"), help=escape(OPTION_HELP[name]), **extra)


def serve_command(
    model: Annotated[
        Path,
        typer.Option("--model", help="Bundle folder written by ad export.", show_default=False),
    ],
    host: Annotated[str, _option("host")] = _DEFAULTS.host,
    port: Annotated[int, _option("port")] = _DEFAULTS.port,
    max_batch: Annotated[int, _option("max_batch", min=1)] = _DEFAULTS.max_batch,
    max_delay_ms: Annotated[float, _option("max_delay_ms", min=0)] = _DEFAULTS.max_delay_ms,
    max_queue: Annotated[int, _option("max_queue", min=1)] = _DEFAULTS.max_queue,
    max_bytes: Annotated[int, _option("max_bytes", min=1)] = _DEFAULTS.max_bytes,
    max_pixels: Annotated[int, _option("max_pixels", min=1)] = _DEFAULTS.max_pixels or 0,
    decode_threads: Annotated[int, _option("decode_threads", min=1)] = _DEFAULTS.decode_threads,
    token_file: Annotated[Path | None, _option("token_file")] = None,
    threshold: Annotated[float | None, _option("threshold")] = None,
    engine: Annotated[str | None, _option("engine")] = None,
    precision: Annotated[str | None, _option("precision")] = None,
    log_level: Annotated[str, _option("log_level")] = "info",
) -> None:
    r"""Serve an exported bundle over HTTP (FastAPI, uvicorn): POST /predict and
    /predict/batch, GET /metadata, /healthz, /readyz, /metrics; concurrent requests share
    forward passes. Needs the runtime's serve extra: pip install 'ad-runtime\[serve]'."""
    from ad_runtime.serve import read_token, serve

    token = None if token_file is None else read_token(token_file)
    options = ServeOptions(
        host=host, port=port, max_batch=max_batch, max_delay_ms=max_delay_ms,
        max_queue=max_queue, max_bytes=max_bytes, max_pixels=max_pixels,
        decode_threads=decode_threads, token=token, log_level=log_level,
    )  # fmt: skip
    serve(model.expanduser(), options, threshold, engine, precision)
