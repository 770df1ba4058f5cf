"""``ad-runtime serve BUNDLE`` (and ``ad serve --model BUNDLE``): a bundle over HTTP.

FastAPI and uvicorn (the ``serve`` extra: ``pip install 'ad-runtime[serve]'``) in front of
:class:`~ad_runtime.model.Model`: the bundle's decoding, preprocessing, graph, score scale
and threshold, so an image gets the score ``ad-runtime predict`` and ``ad predict --model``
give it. Concurrent requests share forward passes (:mod:`ad_runtime.serve_batching`);
bodies, pixels and the queue are bounded, and every bad input is a 4xx with a one-line
reason (:mod:`ad_runtime.serve_inputs`).

Endpoints (the token, when one is set, guards all but ``/healthz`` and ``/readyz``):

- ``POST /predict``: one image, the raw file bytes as the body or one file in a multipart
  form -> ``{"score", "normalised_score", "anomalous", "threshold", "threshold_source",
  "latency_ms"}`` (the keys of ``ad predict --json``); ``?map=png|tiff`` adds
  ``anomaly_map`` (base64 file, and its value range), ``?overlay=1`` adds ``overlay``
  (base64 PNG), see :mod:`ad_runtime.serve_images`.
- ``POST /predict/batch``: several files in one multipart form -> ``{"threshold",
  "threshold_source", "latency_ms", "images": [{"name", "score", ...}]}``; one bad file
  refuses the request, naming it.
- ``GET /metadata``: the bundle's description and the server's limits.
- ``GET /healthz``: the process answers; ``GET /readyz``: 200 once the warm-up forward pass
  is done, 503 before.
- ``GET /metrics``: Prometheus text: requests by endpoint and status, latency and batch
  size histograms, the queue's depth.
"""

# no `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request)
# at run time, and they live in the scope of _add_handlers and _add_routes
import asyncio
import base64
import hmac
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ad_runtime.errors import UsageError
from ad_runtime.model import Model
from ad_runtime.serve_batching import MicroBatcher, QueueFull
from ad_runtime.serve_images import MAP_FORMATS, map_image, overlay_png
from ad_runtime.serve_inputs import (
    BadInput,
    check_length,
    decode_upload,
    limited,
    serving_decoding,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

SERVE_INSTALL = "python -m pip install 'ad-runtime[serve]'"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


# the help of each option, shared by ``ad-runtime serve`` and ``ad serve``
OPTION_HELP = {
    "host": "Address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every "
    "interface, with --token-file).",
    "port": "TCP port to listen on (default 8000).",
    "max_batch": "Most images per forward pass: concurrent requests share one (default 8; "
    "1: no micro-batching).",
    "max_delay_ms": "How long the first image of a batch waits for others, in milliseconds "
    "(default 5).",
    "max_queue": "Most images admitted and not yet scored; a request beyond it gets 503 with "
    "Retry-After (default 64).",
    "max_bytes": "Largest request body in bytes (default 20000000); larger ones get 413.",
    "max_pixels": "Largest image in pixels, read from its header before decoding (default "
    "40000000, and never above the bundle's own limit); larger ones get 413.",
    "decode_threads": "Threads decoding uploads at once (default: the CPU count).",
    "token_file": "File holding a bearer token that every request but /healthz and /readyz "
    "must send (Authorization: Bearer TOKEN); default: none.",
    "threshold": "Raw image score at or above which an image is anomalous (default: the bundle's).",
    "engine": (
        "Inference engine: onnxruntime or openvino (pip install 'ad-runtime[openvino]'; "
        "default: the one the bundle's format runs on)."
    ),
    "precision": (
        "Inference precision: fp32, or bf16/fp16 with OpenVINO on CPUs with it "
        "(default: the bundle's)."
    ),
    "log_level": "uvicorn's log level: critical, error, warning, info, debug (default info).",
}


@dataclass(frozen=True)
class ServeOptions:
    """How the server runs; see ``ad-runtime serve --help`` for each."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 8  # images per forward pass; 1: no micro-batching
    max_delay_ms: float = 5.0  # how long the first image of a batch waits for more
    max_queue: int = 64  # images admitted and not yet in a forward pass
    max_bytes: int = 20_000_000  # one request's body
    max_pixels: int | None = 40_000_000  # one image, from its header (and the bundle's limit)
    decode_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    token: str | None = field(default=None, repr=False)  # bearer token; None: no auth
    log_level: str = "info"

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_bytes", "decode_threads"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise UsageError(f"--{flag} {getattr(self, name)} is below 1.", "Pass 1 or more.")
        if self.max_delay_ms < 0:
            raise UsageError(f"--max-delay-ms {self.max_delay_ms} is negative.", "Pass 0 or more.")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port.", "Pass 0 to 65535.")
        if self.log_level not in LOG_LEVELS:
            raise UsageError(
                f"--log-level {self.log_level!r} is not a log level.",
                f"Use one of {', '.join(LOG_LEVELS)}.",
            )
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError(f"--max-pixels {self.max_pixels} is below 1.", "Pass 1 or more.")


def require_serve_extra() -> None:
    """Raise ``UsageError`` (one paragraph, the install command) without FastAPI/uvicorn."""
    import importlib.util

    modules = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart",
               "prometheus_client": "prometheus-client"}  # fmt: skip
    missing = [name for module, name in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UsageError(
            f"Serving needs {', '.join(modules.values())}; {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed.",
            f"Install the runtime's serve extra: {SERVE_INSTALL}.",
        )


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding white space dropped); ``UsageError`` when the
    file cannot be read or is empty."""
    try:
        token = path.expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(
            f"The token file {path} cannot be read ({getattr(error, 'strerror', None) or error}).",
            "Pass a readable text file holding the token with --token-file.",
        ) from None
    if not token:
        raise UsageError(f"The token file {path} is empty.", "Write the token into it.")
    return token


class _Metrics:
    """The server's Prometheus metrics in a registry of its own (not the process-wide one,
    so two servers in one process, as in the tests, count apart)."""

    def __init__(self, batcher: MicroBatcher) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ad_serve_requests", "HTTP requests by endpoint and status code.",
            ["endpoint", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "ad_serve_request_seconds", "Time from request to response, by endpoint.",
            ["endpoint"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.batch_size = Histogram(
            "ad_serve_batch_size", "Images per forward pass.", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )  # fmt: skip
        self.forward = Histogram(
            "ad_serve_forward_seconds", "Time of one forward pass.", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        self.images = Counter("ad_serve_images", "Images scored.", registry=self.registry)
        queue = Gauge(
            "ad_serve_queue_images", "Images admitted and not yet in a forward pass.",
            registry=self.registry,
        )  # fmt: skip
        queue.set_function(lambda: batcher.admitted)

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward.observe(seconds)
        self.images.inc(size)


ENDPOINTS = ("/predict", "/predict/batch", "/metadata", "/healthz", "/readyz", "/metrics")


class _Service:
    """What the routes share: the model, the decoding limits, the batcher, the metrics and
    the readiness; each route is a thin FastAPI function over one of its methods."""

    def __init__(self, model: Model, options: ServeOptions) -> None:
        self.model, self.options = model, options
        self.decoding = serving_decoding(model.decoding, options.max_pixels)
        self.verdicts = model.verdicts
        pixel = model.bundle.thresholds.get("pixel")
        self.pixel_threshold = None if pixel is None else pixel.value
        self.batcher = MicroBatcher(
            model.run, options.max_batch, options.max_delay_ms / 1000.0, options.max_queue
        )
        self.metrics = _Metrics(self.batcher)
        self.batcher.on_batch = self.metrics.on_batch
        self.ready = threading.Event()
        self.limiters: list[Any] = []  # anyio.CapacityLimiter, made in the event loop
        self.side = model.preprocessing.output_size
        self.failed: list[str] = []  # why the warm-up failed, if it did

    def warm_up(self) -> None:
        try:
            for size in sorted({1, self.options.max_batch}):
                self.model.run(np.zeros((size, self.side, self.side, 3), dtype=np.uint8))
        except Exception as error:  # /readyz says so; the process stays up for /healthz
            self.failed.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
            print(f"Warm-up failed: {self.failed[0]}", flush=True)
            return
        self.ready.set()

    @asynccontextmanager
    async def lifespan(self, _: Any) -> AsyncIterator[None]:
        import anyio

        self.limiters.append(anyio.CapacityLimiter(self.options.decode_threads))
        self.batcher.start()
        warming = asyncio.create_task(anyio.to_thread.run_sync(self.warm_up))
        try:
            yield
        finally:
            self.batcher.stop()
            await asyncio.gather(warming, return_exceptions=True)

    def check_token(self, given: str) -> None:
        """Refuses (401) a request without the server's bearer token, when it has one."""
        if self.options.token is None:
            return
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), self.options.token.encode()
        ):
            raise BadInput(
                401,
                "This server needs a bearer token: send the header 'Authorization: Bearer "
                "<token>' with the token of its --token-file.",
                {"WWW-Authenticate": "Bearer"},
            )

    def too_many(self, count: str) -> BadInput:
        return BadInput(
            413, f"The request holds {count} images, more than the server's queue holds "
            f"({self.options.max_queue}, --max-queue): send fewer per request."
        )  # fmt: skip

    async def uploads(self, request: Any, batch: bool) -> list[tuple[str, bytes]]:
        """The request's images as (name, bytes): the raw body (``/predict`` only) or the
        files of a multipart form."""
        from starlette.formparsers import MultiPartException, MultiPartParser

        options = self.options
        check_length(request.headers, options.max_bytes)
        body = limited(request.stream(), options.max_bytes)
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            if batch:
                raise BadInput(
                    415, "POST /predict/batch takes a multipart form of image files "
                    "(curl -F image=@a.png -F image=@b.png)."
                )  # fmt: skip
            return [("The request body", b"".join([chunk async for chunk in body]))]
        parser = MultiPartParser(
            request.headers, body, max_files=options.max_queue, max_fields=options.max_queue,
            max_part_size=options.max_bytes,
        )  # fmt: skip
        try:
            form = await parser.parse()
        except MultiPartException as error:
            if error.message.startswith("Too many files"):
                raise self.too_many(f"more than {options.max_queue}") from None
            raise BadInput(400, f"The multipart form cannot be read ({error.message}).") from None
        files = []
        for key, value in form.multi_items():
            if isinstance(value, str):
                continue
            files.append((f"{key}:{value.filename or 'upload'}", await value.read()))
            await value.close()
        return checked_files(files, batch)

    async def decoded(self, files: list[tuple[str, bytes]]) -> list[np.ndarray]:
        """Each file decoded and preprocessed in the decoding threads, in order."""
        import anyio

        return [
            await anyio.to_thread.run_sync(
                decode_upload, data, name, self.decoding, self.model.preprocessing,
                limiter=self.limiters[0],
            )
            for name, data in files
        ]  # fmt: skip

    async def scored(
        self, files: list[tuple[str, bytes]], keep_pixels: bool
    ) -> list[dict[str, Any]]:
        """Each file decoded, batched and scored: score, normalised score, verdict, map."""
        if len(files) > self.options.max_queue:
            raise self.too_many(str(len(files)))
        try:
            self.batcher.reserve(len(files))
        except QueueFull as full:
            raise BadInput(
                503, f"The server is busy ({full}): retry after {full.retry_after} s.",
                {"Retry-After": str(full.retry_after)},
            ) from None  # fmt: skip
        submitted, futures = 0, []
        try:
            pixels = await self.decoded(files)
            for one in pixels:
                futures.append(self.batcher.submit(one))
                submitted += 1
        finally:
            self.batcher.cancel(len(files) - submitted)
        try:
            outputs = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except Exception as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BadInput(500, f"The forward pass failed ({first}).") from None
        scores = np.array([score for score, _ in outputs])
        normalised = self.verdicts.scale.normalise(scores)
        return [
            {"name": name, "score": float(score), "normalised_score": float(norm),
             "anomalous": bool(score >= self.verdicts.threshold), "map": anomaly_map,
             "pixels": one if keep_pixels else None}
            for (name, _), score, norm, (_, anomaly_map), one in zip(
                files, scores, normalised, outputs, pixels, strict=True
            )
        ]  # fmt: skip

    def pictures(
        self, result: dict[str, Any], map_format: str | None, overlay: bool
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if map_format is not None:
            data, (low, high) = map_image(result["map"], map_format)
            extra["anomaly_map"] = {
                "format": map_format, "base64": base64.b64encode(data).decode("ascii"),
                "low": low, "high": high, "side": int(result["map"].shape[-1]),
            }  # fmt: skip
        if overlay:
            png = overlay_png(result["pixels"], result["map"], self.pixel_threshold)
            extra["overlay"] = {"format": "png", "base64": base64.b64encode(png).decode("ascii")}
        return extra

    async def predict(
        self, request: Any, map_format: str | None, overlay: bool, batch: bool
    ) -> dict[str, Any]:
        """``POST /predict`` (one image) or ``/predict/batch`` (several, in the form's order)."""
        started = time.perf_counter()
        if map_format is not None and map_format not in MAP_FORMATS:
            raise BadInput(422, f"map={map_format!r} is not a map format: use map=png or map=tiff.")
        results = await self.scored(await self.uploads(request, batch), overlay)
        decision = {"threshold": self.verdicts.threshold, "threshold_source": self.verdicts.source}
        verdicts = [
            {**{k: r[k] for k in ("score", "normalised_score", "anomalous")},
             **self.pictures(r, map_format, overlay)}
            for r in results
        ]  # fmt: skip
        if batch:
            named = [{"name": r["name"], **v} for r, v in zip(results, verdicts, strict=True)]
            answer = {**decision, "images": named}
        else:
            answer = {**verdicts[0], **decision}
        return {**answer, "latency_ms": (time.perf_counter() - started) * 1000.0}

    def metadata(self) -> dict[str, Any]:
        """The bundle's description, the threshold in use and the server's limits."""
        serving = {k: v for k, v in asdict(self.options).items() if k != "token"}
        serving["max_pixels"] = self.decoding.max_image_pixels
        serving["token_required"] = self.options.token is not None
        return {
            "bundle": self.model.bundle.model_dump(mode="json"),
            "threshold": self.verdicts.threshold,
            "threshold_source": self.verdicts.source,
            "input_side": self.side,
            "serving": serving,
        }

    def readiness(self) -> tuple[dict[str, str], int, dict[str, str]]:
        """(body, status, headers) of ``GET /readyz``."""
        if self.ready.is_set():
            return {"status": "ready"}, 200, {}
        if self.failed:
            return {"status": f"warm-up failed: {self.failed[0]}"}, 503, {}
        return {"status": "warming up"}, 503, {"Retry-After": "1"}


def checked_files(files: list[tuple[str, bytes]], batch: bool) -> list[tuple[str, bytes]]:
    """A form's files, refused (400) when it holds none, or several for ``/predict``."""
    if not files:
        raise BadInput(400, "The multipart form holds no file: send the image as a file part.")
    if not batch and len(files) > 1:
        raise BadInput(
            400, f"POST /predict takes one image; the form holds {len(files)} files: use "
            "POST /predict/batch for several."
        )  # fmt: skip
    return files


def _add_handlers(app: "FastAPI", service: _Service) -> None:
    """Every error as ``{"detail": one line}``, and each request counted in the metrics."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, error: BadInput) -> JSONResponse:
        return JSONResponse({"detail": error.reason}, error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(error.detail)}, error.status_code, error.headers)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        path = request.url.path
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            service.metrics.requests.labels(endpoint, str(status)).inc()
            service.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _add_routes(app: "FastAPI", service: _Service) -> None:
    """The endpoints, each over a method of ``service``; the token guards all but the
    health checks."""
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    def authorised(request: Request) -> None:
        service.check_token(request.headers.get("authorization", ""))

    guarded = [Depends(authorised)]

    @app.post("/predict", dependencies=guarded)
    async def predict(
        request: Request, map: str | None = None, overlay: bool = False
    ) -> dict[str, Any]:
        """One image (raw body or one multipart file) -> its verdict (and map, overlay)."""
        return await service.predict(request, map, overlay, batch=False)

    @app.post("/predict/batch", dependencies=guarded)
    async def predict_batch(
        request: Request, map: str | None = None, overlay: bool = False
    ) -> dict[str, Any]:
        """Several images (multipart files) -> one verdict each, in the form's order."""
        return await service.predict(request, map, overlay, batch=True)

    @app.get("/metadata", dependencies=guarded)
    async def metadata() -> dict[str, Any]:
        return service.metadata()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body, status, headers = service.readiness()
        return JSONResponse(body, status, headers=headers)

    @app.get("/metrics", dependencies=guarded)
    async def metrics_text() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        text = generate_latest(service.metrics.registry)
        return PlainTextResponse(text, media_type=CONTENT_TYPE_LATEST)


def create_app(model: Model, options: ServeOptions) -> "FastAPI":
    """The FastAPI application serving ``model`` under ``options``."""
    from fastapi import FastAPI

    service = _Service(model, options)
    app = FastAPI(
        title="ad-runtime serve",
        summary=f"{model.bundle.method} on {model.bundle.category}",
        lifespan=service.lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    _add_handlers(app, service)
    _add_routes(app, service)
    app.state.batcher, app.state.ready = service.batcher, service.ready
    return app


def server(model: Model, options: ServeOptions) -> Any:
    """A ``uvicorn.Server`` for ``model`` (``.run()`` blocks; ``should_exit`` stops it)."""
    require_serve_extra()
    import uvicorn

    config = uvicorn.Config(
        create_app(model, options), host=options.host, port=options.port,
        log_level=options.log_level, timeout_graceful_shutdown=10, server_header=False,
    )  # fmt: skip
    return uvicorn.Server(config)


def check_address(host: str, port: int) -> None:
    """Raise ``UsageError`` when ``host:port`` cannot be listened on (taken, not this
    machine's), before the bundle is loaded."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise UsageError(
            f"Cannot listen on {host}:{port} ({error.strerror or error}).",
            "Choose another --port (or stop the program using it), or a --host of this machine.",
        ) from None


def serve(
    folder: Path,
    options: ServeOptions,
    threshold: float | None = None,
    engine: str | None = None,
    precision: str | None = None,
) -> None:
    """Serve the bundle in ``folder`` until Ctrl-C. Raises ``UsageError`` without the serve
    extra or for bad options, ``DataError`` for a bundle it cannot run."""
    require_serve_extra()
    check_address(options.host, options.port)
    model = Model(folder, threshold, engine=engine, precision=precision)
    where = f"http://{options.host}:{options.port}"
    print(
        f"Serving {model.bundle.method} on {model.bundle.category} at {where} (threshold "
        f"{model.verdicts.threshold:.6g}, {model.verdicts.source}; batches of up to "
        f"{options.max_batch}, {options.max_delay_ms:g} ms window, queue {options.max_queue})",
        flush=True,
    )
    if options.host not in ("127.0.0.1", "localhost", "::1") and options.token is None:
        print(
            f"Warning: {options.host} is reachable from other machines and no --token-file "
            "is set: anyone who reaches it can use the model.",
            flush=True,
        )
    server(model, options).run()
