"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`, KServe v2 and
Triton) on grpc.aio, in the REST server's event loop.

The messages and the service come from Triton's own generated stubs (`tritonclient.grpc.service_pb2`,
`service_pb2_grpc`): no .proto of ours to drift from theirs. Inference goes through
`ServerState.infer`, REST's path, into the same batchers: REST and gRPC requests arriving together
share a session call. Requests are checked by serve.protocol's functions, so a mistake gets the same
message whichever protocol carried it. Methods not implemented here answer UNIMPLEMENTED (the
generated base class does).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from runtime.contract import FULL_MODEL, INPUT_NAME, ROW_NAME, ModelIO
from runtime.errors import InputError, one_line
from runtime.predictor import Prediction
from serve.protocol import (
    DATATYPE,
    EXTENSIONS,
    OUTPUT_NAMES,
    ROW_BYTES,
    STREAM_MODEL,
    InferRequest,
    ProtocolError,
    binary_images,
    check_binary_size,
    check_datatype,
    check_input_names,
    check_output_names,
    check_row_tensor,
    check_value_count,
    checked_images,
    checked_row,
    image_count,
    model_metadata,
    output_array,
)
from serve.sequences import grpc_parameters, sequence_control
from serve.settings import ServeSettings
from serve.state import ServerState

access_log = logging.getLogger("rowrnn.serve.access")
log = logging.getLogger("rowrnn.serve")
SERVICE = "inference.GRPCInferenceService"


# --- messages in and out (pure functions) ------------------------------------------------------------


def parse_grpc_infer_request(request: pb.ModelInferRequest) -> InferRequest:
    """Check a ModelInferRequest: the tensor in `raw_input_contents` (what Triton's clients send)
    or in typed `contents.fp32_contents`."""
    if not request.inputs:
        raise ProtocolError(f"'inputs' must hold the one input '{INPUT_NAME}'")
    check_input_names([tensor.name for tensor in request.inputs])
    tensor = request.inputs[0]
    check_datatype(tensor.datatype)
    count = image_count(list(tensor.shape))
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise ProtocolError(f"{len(raw)} raw_input_contents for the one input '{INPUT_NAME}'")
        if tensor.HasField("contents"):
            raise ProtocolError(f"input '{INPUT_NAME}' has both contents and raw_input_contents")
        check_binary_size(len(raw[0]), count)
        images = binary_images(raw[0], count)
    else:
        values = tensor.contents.fp32_contents
        check_value_count(len(values), count)
        images = checked_images(np.asarray(values, np.float32), count)
    return InferRequest(request.id or None, images, requested_outputs(request))


def requested_outputs(request: pb.ModelInferRequest) -> tuple[tuple[str, bool], ...]:
    names = [output.name for output in request.outputs] or list(OUTPUT_NAMES)
    check_output_names(names)
    return tuple((name, True) for name in names)


def parse_grpc_row_request(request: pb.ModelInferRequest) -> InferRequest:
    """Check a stream model's ModelInferRequest: one row FP32 [1, 28], raw or typed."""
    if not request.inputs:
        raise ProtocolError(f"'inputs' must hold the one input '{ROW_NAME}'")
    check_input_names([tensor.name for tensor in request.inputs], ROW_NAME)
    tensor = request.inputs[0]
    check_row_tensor(tensor.datatype, list(tensor.shape))
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1 or len(raw[0]) != ROW_BYTES or tensor.HasField("contents"):
            raise ProtocolError(
                f"input '{ROW_NAME}': one FP32 row [1, 28] is one raw_input_contents of {ROW_BYTES} bytes, "
                "and no contents"
            )
        row = np.frombuffer(raw[0], "<f4")
    else:
        row = np.asarray(tensor.contents.fp32_contents, np.float32)
    return InferRequest(request.id or None, checked_row(row), requested_outputs(request))


def encode_grpc_infer_response(
    request: InferRequest, prediction: Prediction, model_name: str, model_version: str
) -> pb.ModelInferResponse:
    """The answer, its tensors in `raw_output_contents` (the only place Triton's client reads)."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id or "")
    for name, _ in request.outputs:
        array = output_array(prediction, name)
        response.outputs.add(name=name, datatype=DATATYPE, shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def model_metadata_response(name: str, versions: list[str], io: ModelIO = FULL_MODEL) -> pb.ModelMetadataResponse:
    """REST's model metadata (serve.protocol), as the gRPC message: one description for both."""
    described = model_metadata(name, versions, {}, io)
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=name,
        versions=versions,
        platform=described["platform"],
        inputs=[tensor(**spec) for spec in described["inputs"]],
        outputs=[tensor(**spec) for spec in described["outputs"]],
    )


# --- the service ---------------------------------------------------------------------------------------


def rpc(public: bool = False, inference: bool = False):
    """Wrap a method: check the key, turn refusals into status codes, count it in /metrics by
    method and code, and write one access-log line."""

    def wrap(method):
        name = method.__name__

        async def handler(self: InferenceService, request, context: grpc.aio.ServicerContext):
            state, started, code = self.state, time.perf_counter(), "OK"
            try:
                if not public and state.settings.api_key is not None:  # no metadata to read without a key
                    state.check_key(dict(context.invocation_metadata()).get("authorization"))
                if inference:
                    stream = state.is_stream(request.model_name)
                    with state.inference_request(refuse_when_draining=not stream):
                        return await method(self, request, context)
                return await method(self, request, context)
            except (ProtocolError, InputError) as exc:
                code = exc.grpc_code if isinstance(exc, ProtocolError) else "INVALID_ARGUMENT"
                await context.abort(grpc.StatusCode[code], str(exc))
            except asyncio.CancelledError:  # the client went away
                code = "CANCELLED"
                raise
            except Exception as exc:  # noqa: BLE001  (a bug of ours, never a client's mistake)
                code = "INTERNAL"
                log.exception("internal error in gRPC %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal server error ({type(exc).__name__})")
            finally:
                seconds = time.perf_counter() - started
                state.metrics.observe_grpc(name, code, seconds)
                if access_log.isEnabledFor(logging.INFO):
                    access_log.info('%s "gRPC %s" %s %.2f ms', context.peer(), name, code, seconds * 1000)

        handler.__name__ = name
        return handler

    return wrap


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @rpc(public=True)
    async def ServerLive(self, request, context):  # noqa: N802  (the protocol's method names)
        return pb.ServerLiveResponse(live=True)

    @rpc(public=True)
    async def ServerReady(self, request, context):  # noqa: N802
        return pb.ServerReadyResponse(ready=self.state.serving())

    @rpc()
    async def ModelReady(self, request, context):  # noqa: N802
        state = self.state
        try:
            if state.is_stream(request.name):
                state.resolve_stream(request.name, request.version)
            else:
                state.repository.resolve(request.name, request.version)
        except ProtocolError:  # as Triton: an unknown model or version is simply not ready
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=state.serving())

    @rpc()
    async def ServerMetadata(self, request, context):  # noqa: N802
        return pb.ServerMetadataResponse(name="rowrnn", version=self.state.version, extensions=list(EXTENSIONS))

    @rpc()
    async def ModelMetadata(self, request, context):  # noqa: N802
        state = self.state
        if state.is_stream(request.name):
            state.resolve_stream(request.name, request.version)
            return model_metadata_response(request.name, state.stream_versions(request.name), STREAM_MODEL)
        model = state.repository.resolve(request.name, request.version)
        return model_metadata_response(model.name, state.repository.versions(model.name))

    @rpc(inference=True)
    async def ModelInfer(self, request, context):  # noqa: N802
        return await self.infer(request)

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """One inference: of a model, or a row of a sequence of its stream model (NAME-stream)."""
        state, name, version = self.state, request.model_name, request.model_version
        if state.is_stream(name):
            if version:
                state.resolve_stream(name, version)  # NOT_FOUND before any parsing
            with state.arriving():
                parsed = parse_grpc_row_request(request)
                control = sequence_control(grpc_parameters(request.parameters))
            model, prediction = await state.infer_row(name, version, parsed.images, control)
            return encode_grpc_infer_response(parsed, prediction, name, str(model.version))
        state.repository.resolve(name, version)  # NOT_FOUND before any parsing
        with state.arriving():
            parsed = parse_grpc_infer_request(request)
        model, prediction = await state.infer(name, version, parsed.images)
        return encode_grpc_infer_response(parsed, prediction, model.name, str(model.version))

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        """Triton's bidirectional stream (tritonclient's start_stream / async_stream_infer): each
        request is answered on the stream, in the order the requests came, so a sequence's answers
        come in its rows' order; a refused request is answered with its error_message (as Triton
        does) and the stream goes on."""
        state, started, code = self.state, time.perf_counter(), "OK"
        answers: asyncio.Queue = asyncio.Queue()
        # At most --max-queue answers wait on a stream: beyond, it is not read further until the
        # client reads its answers (HTTP/2 flow control then holds the client back).
        room = asyncio.Semaphore(state.settings.max_queue)

        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                with state.inference_request(refuse_when_draining=not state.is_stream(request.model_name)):
                    return pb.ModelStreamInferResponse(infer_response=await self.infer(request))
            except (ProtocolError, InputError) as exc:
                return pb.ModelStreamInferResponse(error_message=str(exc))
            except Exception as exc:  # noqa: BLE001  (a bug of ours: said on the stream, which goes on)
                log.exception("internal error in gRPC ModelStreamInfer")
                return pb.ModelStreamInferResponse(error_message=f"internal server error ({type(exc).__name__})")

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await room.acquire()
                    # A task per request, created in arrival order: asyncio runs their first steps
                    # in that order, and each puts its row in line before it first waits.
                    answers.put_nowait(asyncio.ensure_future(answer(request)))
            finally:
                answers.put_nowait(None)  # the end of the requests, however it came

        reader = None
        try:
            if state.settings.api_key is not None:
                state.check_key(dict(context.invocation_metadata()).get("authorization"))
            reader = asyncio.create_task(read())
            while (pending := await answers.get()) is not None:
                yield await pending
                room.release()
            await reader
        except ProtocolError as exc:
            code = exc.grpc_code
            await context.abort(grpc.StatusCode[code], str(exc))
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            if reader is not None:
                reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is not None:
                    pending.cancel()
            seconds = time.perf_counter() - started
            state.metrics.observe_grpc("ModelStreamInfer", code, seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info('%s "gRPC ModelStreamInfer" %s %.2f ms', context.peer(), code, seconds * 1000)

    @rpc()
    async def RepositoryIndex(self, request, context):  # noqa: N802
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                entry(**item) for item in self.state.repository.index() if item["state"] == "READY" or not request.ready
            ]
        )

    @rpc()
    async def RepositoryModelLoad(self, request, context):  # noqa: N802
        if request.parameters:
            raise ProtocolError(
                f"load parameters {sorted(request.parameters)} are not supported: the model loads "
                "from its directory in the repository"
            )
        await self.state.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(self, request, context):  # noqa: N802
        await self.state.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


async def start_grpc(state: ServerState, settings: ServeSettings) -> tuple[grpc.aio.Server, int]:
    """The gRPC server on --host:--grpc-port, started; returns it and the port it listens on.

    Messages are limited as REST bodies are (--max-body-mb): a larger one is refused by gRPC
    itself with RESOURCE_EXHAUSTED before it is read whole.
    """
    limit = settings.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a second listener beside another server
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise InputError(f"cannot listen on {settings.host}:{settings.grpc_port} (gRPC): {one_line(exc)}") from None
    await server.start()
    return server, port
