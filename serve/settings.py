"""One place for every serving setting: `rowrnn serve` takes its defaults from here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from runtime.errors import InputError
from runtime.repository import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_DELAY_MS,
    DEFAULT_MAX_SEQUENCES,
    DEFAULT_SEQUENCE_IDLE_S,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000
    grpc_port: int | None = 8001  # the gRPC service, as Triton's default port (0: any free port; None: off)
    name: str = "rowrnn"  # the model name in /v2/models/{name} (a repository: the page's default model)
    model_repository: str | None = None  # a Triton-layout model repository to serve instead of one file
    poll_s: float = 0.0  # with a repository: follow its directory every poll_s seconds (0: never)
    max_batch: int = DEFAULT_MAX_BATCH  # images per session call the batcher forms
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS  # how long the first request of a batch waits for company
    max_queue: int = 1024  # images waiting; beyond it: 503 + Retry-After
    max_body_mb: float = 16.0  # larger request bodies: 413
    body_timeout_s: float = 30.0  # a client that stops sending its body mid-way: 408
    drain_timeout_s: float = 30.0  # on SIGTERM, how long requests in flight (and live sequences) may take
    max_sequences: int = (
        DEFAULT_MAX_SEQUENCES  # live sequences of the stream models at once; beyond: 503 / RESOURCE_EXHAUSTED
    )
    sequence_idle_s: float = (
        DEFAULT_SEQUENCE_IDLE_S  # a sequence without a row for this long is dropped (Triton: max_sequence_idle)
    )
    header_timeout_s: float = 10.0  # a client must send its request headers within this (total, not idle): 408
    max_connections: int = 2048  # HTTP connections open at once; beyond: 503 at once (well under the fd limit)
    api_key: str | None = None  # when set: `Authorization: Bearer KEY` on all but health
    cors_origin: str | None = None  # no CORS headers unless an origin is given
    # A request whose header block is larger, or has more fields, gets 431 (Node's 16 KiB,
    # Apache's 100 fields): a protocol client sends a few hundred bytes in a handful of fields.
    max_header_bytes: int = 16 * 1024
    max_header_fields: int = 100
    log_level: str = "info"

    def __post_init__(self) -> None:
        for option, port in (("--port", self.port), ("--grpc-port", self.grpc_port)):
            if port is not None and not 0 <= port <= 65535:
                raise InputError(f"{option} {port} is not a TCP port (0-65535)")
        if self.grpc_port == self.port != 0:
            raise InputError(f"--grpc-port {self.grpc_port} is --port too: give them different ports")
        if not self.name or "/" in self.name or not self.name.isprintable():
            raise InputError(f"--name {self.name!r} must be a non-empty name without '/'")
        for option, value in (
            ("--max-batch", self.max_batch),
            ("--max-queue", self.max_queue),
            ("--max-connections", self.max_connections),
            ("--max-sequences", self.max_sequences),
        ):
            if value < 1:
                raise InputError(f"{option} must be at least 1, got {value}")
        for option, amount in (
            ("--max-delay-ms", self.max_delay_ms),
            ("--max-body-mb", self.max_body_mb),
            ("--body-timeout-s", self.body_timeout_s),
            ("--drain-timeout-s", self.drain_timeout_s),
        ):
            if not amount >= 0:  # also refuses NaN
                raise InputError(f"{option} must be a non-negative number, got {amount}")
        if not self.sequence_idle_s > 0:
            raise InputError(f"--sequence-idle-s must be above 0, got {self.sequence_idle_s}")
        if not self.header_timeout_s > 0:
            raise InputError(f"--header-timeout-s must be above 0, got {self.header_timeout_s}")
        if not self.poll_s >= 0:
            raise InputError(f"--poll-s must be a non-negative number, got {self.poll_s}")
        if self.poll_s and self.model_repository is None:
            raise InputError("--poll-s needs --model-repository DIR (it polls a repository)")
        if self.max_body_mb == 0:
            raise InputError("--max-body-mb must be above 0")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("--api-key is empty")
        if self.log_level not in LOG_LEVELS:
            raise InputError(f"--log-level {self.log_level!r}: choose one of {', '.join(LOG_LEVELS)}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def exposed(self) -> bool:
        """True when the server listens beyond this machine's loopback interface."""
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: assume it is reachable from elsewhere
            return True
