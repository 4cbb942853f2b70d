"""`run`: the app on uvicorn and the gRPC service beside it in the same event loop, with a drain
on SIGTERM/Ctrl-C instead of uvicorn's abrupt stop.

Drain: readiness turns false and new inference requests get 503 (gRPC: UNAVAILABLE) at once; the
requests in flight over either protocol finish, and the live sequences of the stream models may
send their remaining rows until they end (new sequences are refused), all within --drain-timeout-s; then the gRPC server
stops, uvicorn closes the listener and the connections, and the process exits 0. A second signal
stops at once.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import time
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime.errors import InputError
from serve import web_runtime
from serve.protocol import error_body
from serve.settings import ServeSettings
from serve.state import ServerState

log = logging.getLogger("rowrnn.serve")
# After the signal the listener keeps accepting, with readiness 503 and new inference requests 503,
# for at least this long and until the last request in flight has finished, so load balancers and
# clients still sending learn that the server is going before they meet a closed port.
LINGER_S = 0.5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.drain_started: float | None = None
        self.grpc_server = None
        self.startup_error: InputError | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it would stop at once, then re-raise the signal (a non-zero exit).
        if self.drain_started is not None:
            self.should_exit = self.force_exit = True
            return
        log.info(
            "received %s: draining (%d requests in flight, %d sequences live)",
            signal.Signals(sig).name,
            self.state.in_flight,
            len(self.state.sequences.live),
        )
        self.state.draining = True
        self.drain_started = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None:
            waited = time.monotonic() - self.drain_started
            busy = self.state.busy()  # requests in flight, or live sequences that may still finish
            if (not busy and waited >= LINGER_S) or waited > self.state.settings.drain_timeout_s:
                if busy:
                    log.warning(
                        "drain timeout: %d requests still in flight, %d sequences live",
                        self.state.in_flight,
                        len(self.state.sequences.live),
                    )
                return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        if self.grpc_server is not None:  # drained already: nothing is in flight
            await self.grpc_server.stop(grace=1.0)
        await super().shutdown(sockets)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        settings = self.state.settings
        if settings.grpc_port is not None:
            from serve.grpc_service import SERVICE, start_grpc

            try:
                self.grpc_server, port = await start_grpc(self.state, settings)
            except InputError as exc:  # `run` raises it once uvicorn has stopped
                self.startup_error, self.should_exit = exc, True
                return
            host = f"[{settings.host}]" if ":" in settings.host else settings.host
            print(f"rowrnn serve: gRPC ({SERVICE}) at {host}:{port}", file=sys.stderr, flush=True)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                host = f"[{host}]" if ":" in host else host
                # printed, not logged: the one line a user needs, at every --log-level
                names = sorted(self.state.repository.models)
                what = f"model {names[0]!r}" if len(names) == 1 else "models " + ", ".join(map(repr, names))
                print(
                    f"rowrnn serve: {what} ready at http://{host}:{port}/ (Ctrl-C to stop)", file=sys.stderr, flush=True
                )


def plain_response(status: str, message: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 response with a JSON error, written straight to a socket that is then closed."""
    body = error_body(message)
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{headers}\r\n"
    ).encode() + body


def guarded_protocol(settings: ServeSettings) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the two limits it lacks.

    - A total deadline for a request's headers (--header-timeout-s): uvicorn waits forever for a
      client that never finishes them, so a slowloris holding thousands of connections makes the
      server drop new clients. A deadline per request, not per byte: trickling does not extend it.
    - A ceiling on open connections (--max-connections): a connection beyond it is answered 503
      and closed at once, before it can hold anything; requests in flight are not touched.
      (uvicorn's own limit_concurrency answers only once the headers arrive, in plain text.)
    """
    timeout_s, ceiling = settings.header_timeout_s, settings.max_connections
    too_slow = plain_response("408 Request Timeout", f"the request headers did not arrive within {timeout_s:g} s")
    too_many = plain_response(
        "503 Service Unavailable",
        f"the server has {ceiling} connections open (--max-connections); retry later",
        "retry-after: 1\r\n",
    )

    class GuardedProtocol(HttpToolsProtocol):
        header_deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > ceiling:
                transport.write(too_many)
                transport.close()
                return
            self.arm_header_deadline()

        def arm_header_deadline(self) -> None:
            if self.header_deadline is None:
                self.header_deadline = self.loop.call_later(timeout_s, self.headers_too_slow)

        def disarm_header_deadline(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def headers_too_slow(self) -> None:
            self.header_deadline = None
            if not self.transport.is_closing():
                log.info(
                    "%s: request headers not received within %g s: 408, closed",
                    f"{self.client[0]}:{self.client[1]}" if self.client else "-",
                    timeout_s,
                )
                self.transport.write(too_slow)
                self.transport.close()

        def on_message_begin(self) -> None:  # the next request on a kept-alive connection
            super().on_message_begin()
            self.arm_header_deadline()

        def on_headers_complete(self) -> None:
            self.disarm_header_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self.disarm_header_deadline()
            super().connection_lost(exc)

    return GuardedProtocol


def configure_logging(level: str) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level.upper())
    logging.getLogger("rowrnn").setLevel(level.upper())


def run(app, settings: ServeSettings) -> None:
    """Serve `app` (from `create_app`) until SIGTERM or Ctrl-C, then drain and return."""
    configure_logging(settings.log_level)
    if settings.exposed and settings.api_key is None:
        log.warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", settings.host
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        http=guarded_protocol(settings),
        loop="uvloop",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        log_config=None,
    )
    server = DrainingServer(config, app.state.rowrnn)
    http_socket = listen(settings.host, settings.port)  # a busy port is one line, before anything else is said
    if settings.grpc_port:  # a busy gRPC port: one line now, not after uvicorn has started
        listen(settings.host, settings.grpc_port).close()
    if app.state.rowrnn.ort_dir is None:
        log.info(
            "the page answers from the server: onnxruntime-web is not in the cache (%s); `rowrnn site DIR` "
            "fetches it once",
            web_runtime.cache_dir(),
        )
    else:
        log.info(
            "the page runs the model in the browser (onnxruntime-web %s; ?engine=server for the server)",
            web_runtime.VERSION,
        )
    server.run(sockets=[http_socket])
    if server.startup_error is not None:
        raise server.startup_error


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, or an InputError naming the address (uvicorn would exit 1 and log)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
