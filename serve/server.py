"""`run`: the app on uvicorn and the gRPC service beside it in the same event loop, with a drain
on SIGTERM/Ctrl-C instead of uvicorn's abrupt stop.

Drain: readiness turns false and new inference requests get 503 (gRPC: UNAVAILABLE) at once; the
requests in flight over either protocol finish (at most --drain-timeout-s); then the gRPC server
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

from runtime.errors import InputError
from serve.state import ServerState
from serve.settings import ServeSettings

log = logging.getLogger("rowrnn.serve")
# After the last request in flight, keep answering 503 this long, so clients still sending learn
# that the server is going (and close their connections) rather than meet a closed socket.
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
        log.info("received %s: draining (%d requests in flight)", signal.Signals(sig).name, self.state.in_flight)
        self.state.draining = True
        self.drain_started = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None:
            waited = time.monotonic() - self.drain_started
            if (self.state.in_flight == 0 and waited >= LINGER_S) or waited > self.state.settings.drain_timeout_s:
                if self.state.in_flight:
                    log.warning("drain timeout: %d requests still in flight", self.state.in_flight)
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
                print(f"rowrnn serve: {what} ready at http://{host}:{port}/ (Ctrl-C to stop)",
                      file=sys.stderr, flush=True)


def configure_logging(level: str) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level.upper())
    logging.getLogger("rowrnn").setLevel(level.upper())


def run(app, settings: ServeSettings) -> None:
    """Serve `app` (from `create_app`) until SIGTERM or Ctrl-C, then drain and return."""
    configure_logging(settings.log_level)
    if settings.exposed and settings.api_key is None:
        log.warning("listening on %s without --api-key: anyone who can reach this address can use the model",
                    settings.host)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False,
        http="httptools", loop="uvloop", lifespan="on", server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)), log_config=None,
    )
    server = DrainingServer(config, app.state.rowrnn)
    server.run(sockets=[listen(settings.host, settings.port)])
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
