"""The ASGI app: the Open Inference Protocol over HTTP, the repository extension, the page,
metrics, access log. Inference goes through `ServerState.infer` (serve.state), as gRPC's does.

`create_app` loads and warms up the models, so the app is ready when it returns: mount it in
another Starlette/FastAPI app or run it under any ASGI server (`serve.server.run` is ours, and
adds the gRPC service).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.errors import InputError
from runtime.predictor import Predictor
from runtime.preprocess import preprocess_image
from serve.protocol import (
    HEADER_LENGTH,
    STREAM_MODEL,
    ProtocolError,
    as_bool,
    as_object,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
    parse_json,
    parse_row_request,
    server_metadata,
)
from serve.sequences import sequence_control
from serve.settings import ServeSettings
from serve.state import ServerState
from serve.static_site import (
    DESCRIPTION_FILE,
    MODEL_FILE,
    ORT_TYPES,
    PAGE_ASSETS,
    PAGE_DIR,
    PAGE_POLICY,
    STEP_FILE,
    model_description,
    page_html,
)
from serve.web_runtime import FILES as ORT_FILES

access_log = logging.getLogger("rowrnn.serve.access")
JSON = "application/json"
RETRY_AFTER_S = "1"
PAGE_ASSET_BYTES = {asset: (PAGE_DIR / asset).read_bytes() for asset in PAGE_ASSETS}
# The page's policy (serve.static_site), and what only a header can say: no framing by other sites.
PAGE_HEADERS = {
    "content-security-policy": PAGE_POLICY + "; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers, media_type=JSON)


def json_response(body: dict | list) -> Response:
    return Response(orjson.dumps(body), media_type=JSON)


def model_and_version(request: Request) -> tuple[str, str | None]:
    """The model (every route with this helper has one) and the version, if the path names one."""
    return request.path_params["model"], request.path_params.get("version")


def accepts_tensors(content_type: str) -> bool:
    return content_type in ("", "application/json", "application/octet-stream")


def accepts_images(content_type: str) -> bool:
    return content_type in ("", "application/octet-stream") or content_type.startswith("image/")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def check_tensor_media_type(content_type: str, header_length: str | None) -> None:
    """The Content-Type must not contradict the body's layout (JSON alone, or JSON then binary
    tensor data, which Inference-Header-Content-Length announces). No Content-Type: either."""
    if content_type == "application/json" and header_length is not None:
        raise ProtocolError(
            "Content-Type application/json, but Inference-Header-Content-Length announces "
            "binary tensor data: send it as application/octet-stream"
        )
    if content_type == "application/octet-stream" and header_length is None:
        raise ProtocolError(
            "Content-Type application/octet-stream needs Inference-Header-Content-Length "
            "(the binary tensor data extension); send a JSON request as application/json"
        )


async def read_body(
    request: Request,
    settings: ServeSettings,
    accepts=accepts_tensors,
    expected: str = ("application/json (or application/octet-stream with binary tensor data)"),
) -> bytes:
    """The whole body, within --max-body-mb (413) and --body-timeout-s (408)."""
    content_type = media_type(request)
    if not accepts(content_type):
        raise ProtocolError(f"content type {content_type!r} is not accepted; send {expected}", 415)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ProtocolError(f"Content-Encoding {request.headers['content-encoding']!r} is not supported", 415)
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared[:19]) > limit:
        raise ProtocolError(f"request body of {int(declared)} bytes is over the {settings.max_body_mb:g} MB limit", 413)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ProtocolError(f"request body is over the {settings.max_body_mb:g} MB limit", 413)
                chunks.append(chunk)
    except TimeoutError:
        raise ProtocolError(f"the request body did not arrive within {settings.body_timeout_s:g} s", 408) from None
    if not size:
        raise ProtocolError("the request has no body")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def endpoint(name: str, inference: bool = False, public: bool = False):
    """Wrap a handler: name it for metrics, check the key, turn ProtocolErrors into responses."""

    def wrap(handler):
        async def route(request: Request) -> Response:
            state: ServerState = request.app.state.rowrnn
            request.scope["rowrnn.endpoint"] = name
            try:
                if not public:
                    state.check_key(request.headers.get("authorization"))
                if inference:
                    stream = state.is_stream(request.path_params.get("model", ""))
                    with state.inference_request(refuse_when_draining=not stream):
                        return await handler(request, state)
                return await handler(request, state)
            except InputError as exc:  # bad input the runtime found (an image it cannot read, ...)
                return error(str(exc), 400)
            except ProtocolError as exc:
                headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
                if exc.status == 503:
                    headers = {"retry-after": RETRY_AFTER_S}
                    if state.draining:
                        headers["connection"] = "close"
                return error(str(exc), exc.status, headers)
            except ClientDisconnect:
                request.scope["rowrnn.status"] = 499  # nginx's "client closed request"
                return Response(status_code=499)

        return route

    return wrap


@endpoint("live", public=True)
async def live(request: Request, state: ServerState) -> Response:
    return json_response({"live": True})


@endpoint("ready", public=True)
async def ready(request: Request, state: ServerState) -> Response:
    if state.serving():
        return json_response({"ready": True})
    reason = "the server is shutting down" if state.draining else "the model is not loaded yet"
    return Response(error_body(reason), 503, media_type=JSON)


@endpoint("server_metadata")
async def server_info(request: Request, state: ServerState) -> Response:
    return json_response(server_metadata("rowrnn", state.version))


@endpoint("model_metadata")
async def model_info(request: Request, state: ServerState) -> Response:
    name, version = model_and_version(request)
    if state.is_stream(name):
        return json_response(stream_metadata(state, name, version))
    model = state.repository.resolve(name, version)
    return json_response(model_metadata(model.name, state.repository.versions(model.name), model.parameters))


def stream_metadata(state: ServerState, name: str, version: str | None) -> dict:
    """NAME-stream's metadata: one row in, the answer out; its parameters are the step model's."""
    model = state.resolve_stream(name, version)
    parameters = {**model.step_model.metadata, "size_bytes": str(len(model.step_bytes or b""))}
    return model_metadata(name, state.stream_versions(name), parameters, STREAM_MODEL)


@endpoint("model_ready")
async def model_ready(request: Request, state: ServerState) -> Response:
    name, version = model_and_version(request)
    model = state.resolve_stream(name, version) if state.is_stream(name) else state.repository.resolve(name, version)
    if state.serving():
        return json_response({"name": name, "ready": True})
    return Response(error_body(f"model {model.name!r} is not ready"), 503, media_type=JSON)


async def read_infer_body(request: Request, state: ServerState) -> tuple[bytes, str | None]:
    """An inference request's body and its Inference-Header-Content-Length, its media type checked."""
    header_length = request.headers.get(HEADER_LENGTH)
    check_tensor_media_type(media_type(request), header_length)
    return await read_body(request, state.settings), header_length


async def infer_row(request: Request, state: ServerState, name: str, version: str | None) -> Response:
    """A row of a sequence of NAME-stream (serve.sequences)."""
    if version:
        state.resolve_stream(name, version)  # an unknown version: 404 before reading the body
    with state.arriving():
        parsed, parameters = parse_row_request(*await read_infer_body(request, state))
        control = sequence_control(parameters)
    request.scope["rowrnn.images"] = 1
    model, prediction = await state.infer_row(name, version, parsed.images, control)
    content, headers = encode_infer_response(parsed, prediction, name, str(model.version))
    return Response(content, headers=headers)


@endpoint("infer", inference=True)
async def infer(request: Request, state: ServerState) -> Response:
    name, version = model_and_version(request)
    if state.is_stream(name):
        return await infer_row(request, state, name, version)
    state.repository.resolve(name, version)  # an unknown model or version: 404 before reading the body
    with state.arriving():
        parsed = parse_infer_request(*await read_infer_body(request, state))
    request.scope["rowrnn.images"] = len(parsed.images)
    model, prediction = await state.infer(name, version, parsed.images)
    content, headers = encode_infer_response(parsed, prediction, model.name, str(model.version))
    return Response(content, headers=headers)


@endpoint("classify", inference=True)
async def classify(request: Request, state: ServerState) -> Response:
    """The page's endpoint: the bytes of an image (PNG, JPEG, BMP, ...) of one digit; `?model=`
    names the model (default: the page's)."""
    name = request.query_params.get("model") or state.default_model
    streaming = state.repository.resolve(name).streaming
    with state.arriving():
        body = await read_body(request, state.settings, accepts_images, "an image (image/png, image/jpeg, ...)")
        # decoding and MNIST-style preprocessing take a millisecond or two: not on the event loop
        rows = await asyncio.get_running_loop().run_in_executor(None, preprocess_image, body)
    steps = None
    if request.query_params.get("steps") == "1":
        if streaming is None:
            raise ProtocolError(
                "this server has no step model (MODEL.step.onnx beside the model, from "
                "rowrnn export --step): ask without ?steps=1"
            )
        steps = await asyncio.get_running_loop().run_in_executor(None, streaming.row_probabilities, rows)
    request.scope["rowrnn.images"] = 1
    model, prediction = await state.infer(name, None, rows[np.newaxis])
    label = int(prediction.labels[0])
    extra = {} if steps is None else {"steps": steps[0].tolist()}  # [28][10]: after each row
    return json_response(
        {
            **extra,
            "label": label,
            "confidence": float(prediction.probabilities[0, label]),
            "probabilities": prediction.probabilities[0].tolist(),
            "input": np.rint(rows * 255).astype(np.uint8).tolist(),  # the 28x28 image the model saw
            "model": {
                "name": model.name,
                "version": str(model.version),
                **{key: model.parameters.get(key) for key in ("architecture", "test_accuracy", "size_bytes")},
            },
        }
    )


@endpoint("page", public=True)
async def page(request: Request, state: ServerState) -> Response:
    """The page, for the default model or the one `?model=` names."""
    name = request.query_params.get("model") or state.default_model
    model = state.repository.resolve(name)
    html = page_html(name, steps=model.streaming is not None, server=True, browser=state.ort_dir is not None)
    return Response(html, headers=PAGE_HEADERS, media_type="text/html; charset=utf-8")


@endpoint("page", public=True)
async def page_asset(request: Request, state: ServerState) -> Response:
    name = request.path_params["asset"]
    if name not in PAGE_ASSETS:
        raise ProtocolError(f"no such endpoint: {request.url.path}", 404)
    return Response(PAGE_ASSET_BYTES[name], headers=PAGE_HEADERS, media_type=PAGE_ASSETS[name])


async def optional_json(request: Request, state: ServerState) -> dict:
    """The repository endpoints' JSON body, which clients may leave out."""
    if request.headers.get("content-length", "0") == "0" and "transfer-encoding" not in request.headers:
        return {}
    return parse_json(await read_body(request, state.settings))


@endpoint("repository")
async def repository_index(request: Request, state: ServerState) -> Response:
    """The repository extension's index; `{"ready": true}` lists only the versions taking traffic."""
    ready_only = as_bool((await optional_json(request, state)).get("ready", False), "'ready'")
    entries = [
        {key: value for key, value in entry.items() if value or key != "reason"}
        for entry in state.repository.index()
        if entry["state"] == "READY" or not ready_only
    ]
    return json_response(entries)


@endpoint("repository")
async def repository_load(request: Request, state: ServerState) -> Response:
    parameters = as_object((await optional_json(request, state)).get("parameters", {}), "'parameters'")
    if parameters:
        raise ProtocolError(
            f"load parameters {sorted(parameters)} are not supported: the model loads from "
            "its directory in the repository"
        )
    await state.load_model(request.path_params["model"])
    return json_response({})


@endpoint("repository")
async def repository_unload(request: Request, state: ServerState) -> Response:
    await optional_json(request, state)  # unload_dependents: a rowrnn model has none
    await state.unload_model(request.path_params["model"])
    return json_response({})


@endpoint("page", public=True)
async def page_runtime(request: Request, state: ServerState) -> Response:
    """onnxruntime-web's files (only the pinned ones, from the checked cache)."""
    name = request.path_params["file"]
    if state.ort_dir is None or name not in ORT_FILES:
        raise ProtocolError(f"no such endpoint: {request.url.path}", 404)
    return FileResponse(state.ort_dir / name, headers=PAGE_HEADERS, media_type=ORT_TYPES[Path(name).suffix])


@endpoint("page_model")
async def page_model(request: Request, state: ServerState) -> Response:
    """The model files the browser engine runs, and their description, for the page's model
    (`?model=`, as the page asks; default: the default model): behind the API key, if any."""
    name = request.query_params.get("model") or state.default_model
    model = state.repository.resolve(name)
    file = request.url.path.rsplit("/", 1)[-1]
    if file == DESCRIPTION_FILE:
        description = model_description(name, model.parameters, model.streaming)  # the version as loaded
        return Response(orjson.dumps(description), headers=PAGE_HEADERS, media_type=JSON)
    content = {MODEL_FILE: model.model_bytes, STEP_FILE: model.step_bytes}.get(file)
    if content is None:
        raise ProtocolError(f"no such endpoint: {request.url.path}", 404)
    return Response(content, headers=PAGE_HEADERS, media_type="application/octet-stream")


@endpoint("metrics")
async def metrics(request: Request, state: ServerState) -> Response:
    state.sweep_sequences()  # the live sequences as of now
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


def header_block_problem(headers: list[tuple[bytes, bytes]], settings: ServeSettings) -> str | None:
    """Why a request's header block is refused (431), or None."""
    if len(headers) > settings.max_header_fields:
        return f"{len(headers)} header fields; at most {settings.max_header_fields} are accepted"
    size = sum(len(name) + len(value) + 4 for name, value in headers)  # "name: value\r\n"
    if size > settings.max_header_bytes:
        return f"a header block of {size} bytes; at most {settings.max_header_bytes} are accepted"
    return None


class Observe:
    """Pure ASGI middleware: the request counter, latency histogram and one access-log line."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # if the app fails before it answers
        too_large = header_block_problem(scope["headers"], self.state.settings)
        app: ASGIApp = self.app
        if too_large:
            scope["rowrnn.endpoint"] = "headers"
            app = error(too_large, 431, {"connection": "close"})

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - started
            status = scope.get("rowrnn.status", status)
            self.state.metrics.observe_request(scope.get("rowrnn.endpoint", "other"), status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info(
                    '%s:%s "%s %s" %d %.2f ms %d images',
                    client[0],
                    client[1],
                    scope["method"],
                    scope["path"],
                    status,
                    seconds * 1000,
                    scope.get("rowrnn.images", 0),
                )


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no such route, wrong method) as protocol errors."""
    if not isinstance(exc, HTTPException):  # registered for HTTPException only; typed as Starlette's handlers are
        return await server_error(request, exc)
    message = {
        404: f"no such endpoint: {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }
    return error(message.get(exc.status_code, str(exc.detail)), exc.status_code)


async def server_error(request: Request, exc: Exception) -> Response:
    logging.getLogger("rowrnn.serve").exception("internal error on %s", request.url.path)
    return error(f"internal server error ({type(exc).__name__})", 500)


MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"


def create_app(model: str | os.PathLike | Predictor | None = None, settings: ServeSettings | None = None) -> Starlette:
    """The serving ASGI app, every model loaded and warmed up: ready to serve when this returns.

    `model`: a rowrnn ONNX file or a Predictor you made (default: the bundled model), served as
    `settings.name` version 1; or, with `settings.model_repository`, every model of that Triton
    model repository (then `model` must be None). With `settings.poll_s` the app follows the
    repository's directory while it runs.
    """
    settings = settings or ServeSettings()
    if model is not None and settings.model_repository is not None:
        raise InputError("give a model file or --model-repository, not both")
    state = ServerState(settings)
    state.load(model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        poller = (
            asyncio.create_task(state.repository.follow(settings.poll_s), name="rowrnn-poll")
            if settings.poll_s
            else None
        )
        yield
        state.ready = False
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await state.repository.close()

    routes = [  # the router tries them in order: the hot path first
        Route(MODEL + "/infer", infer, methods=["POST"]),
        Route(VERSION + "/infer", infer, methods=["POST"]),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_info),
        Route(MODEL, model_info),
        Route(VERSION, model_info),
        Route(MODEL + "/ready", model_ready),
        Route(VERSION + "/ready", model_ready),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/", page),
        *(Route(f"/page/{name}", page_model) for name in (DESCRIPTION_FILE, MODEL_FILE, STEP_FILE)),
        Route("/page/{asset}", page_asset),
        Route("/page/ort/{file}", page_runtime),
        Route("/v1/classify", classify, methods=["POST"]),
    ]
    middleware = [Middleware(Observe, state=state)]
    if settings.cors_origin:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[settings.cors_origin],
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                expose_headers=["Inference-Header-Content-Length"],
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.rowrnn = state
    return app
