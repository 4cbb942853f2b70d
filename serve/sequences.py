"""Serving the step model statefully: Triton's sequence protocol with implicit state.

Beside each served model that has a step model (MODEL.step.onnx, `rowrnn export --step`) the
server serves `NAME-stream`: one pixel row per request, the answer after that row. The LSTM state
(h, c) lives here, per sequence, as Triton's sequence batcher keeps implicit state: the client
sends only rows, with Triton's request parameters `sequence_id` (an unsigned integer or a string),
`sequence_start` and `sequence_end`, exactly as tritonclient's `infer(..., sequence_id=...)` sends
them over REST and gRPC.

- `SequenceStore`: the live sequences of the server, each pinned to the model version it started
  on; --max-sequences of them at most, each dropped after --sequence-idle-s without a row.
  `sequence_start` for a live id restarts it from a zero state (as Triton does).
- `SequenceBatcher` (one per model version): the rows of different live sequences waiting together
  run as one step-model call, their rows and states stacked. A call takes at most one row of a
  sequence, and a sequence's rows are taken in the order they arrived, so each sequence reads its
  rows in order on its own state, whatever else shares the call.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runtime.contract import IMAGE_ROWS
from runtime.predictor import Prediction
from runtime.stream import StreamingPredictor
from serve.batcher import CallBatcher
from serve.protocol import ProtocolError, as_bool

if TYPE_CHECKING:
    from serve.repository import ModelVersion  # it imports this module

MAX_SEQUENCE_ID = 2**64 - 1  # Triton's correlation ids are uint64 (or strings)
# A string id is kept while its sequence lives (and a while after it expires): bounded, so that
# --max-sequences ids cannot hold --max-body-mb each.
MAX_SEQUENCE_ID_CHARS = 256


@dataclass(frozen=True)
class SequenceControl:
    """Triton's sequence parameters of one request."""

    id: int | str
    start: bool = False
    end: bool = False


def sequence_control(parameters: dict) -> SequenceControl:
    """The sequence parameters of a request, as tritonclient sends them (REST: JSON values; gRPC:
    `grpc_parameters` of the request). `sequence_id` 0 or "" is Triton's "no sequence": refused,
    the stream model keeps state only for a sequence."""
    sequence_id = parameters.get("sequence_id", 0)
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        raise ProtocolError(f"'sequence_id' must be an unsigned integer or a string, got {sequence_id!r}"[:200])
    if isinstance(sequence_id, str) and len(sequence_id) > MAX_SEQUENCE_ID_CHARS:
        raise ProtocolError(
            f"'sequence_id' is a string of {len(sequence_id)} characters; at most {MAX_SEQUENCE_ID_CHARS}"
        )
    if isinstance(sequence_id, int) and not 0 <= sequence_id <= MAX_SEQUENCE_ID:
        raise ProtocolError(f"'sequence_id' {sequence_id} is not an unsigned 64-bit integer"[:200])
    if sequence_id in (0, ""):
        raise ProtocolError(
            "a stream model keeps the state of a sequence: send 'sequence_id' (an unsigned integer or a "
            "string, not 0 or empty) with every row, and 'sequence_start' with its first"
        )
    start = as_bool(parameters.get("sequence_start", False), "'sequence_start'")
    end = as_bool(parameters.get("sequence_end", False), "'sequence_end'")
    return SequenceControl(sequence_id, start, end)


def grpc_parameters(parameters) -> dict:
    """A ModelInferRequest's `parameters` map (InferParameter values) as plain Python values."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "bool_param") for key, value in parameters.items()
    }


def describe(sequence_id: int | str) -> str:
    return f"sequence {sequence_id!r}"[:120]


@dataclass(eq=False)
class Sequence:
    """One live sequence: its state after the rows it has read, and the model version it runs on."""

    id: int | str
    model: ModelVersion  # the version it started on, kept until it ends
    h: np.ndarray  # float32 [hidden]
    c: np.ndarray
    rows: int = 0  # rows accepted since its start (answered or waiting)
    failed: bool = False  # a step call with its row raised: its state did not move on, it cannot read on
    waiting: int = 0  # rows accepted and not yet answered
    last_active: float = field(default_factory=time.monotonic)


@dataclass
class StepJob:
    sequence: Sequence
    row: np.ndarray  # float32 [1, 28]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


# A step call's outputs: h, c, logits, probabilities, each [rows, ...]
StepOutputs = list[np.ndarray]


class SequenceBatcher(CallBatcher[StepJob, StepOutputs]):
    """The step calls of one model version's live sequences (see the module's docstring).

    A call closes at `max_batch` rows, when its oldest row has waited `max_delay_s`, or as soon as
    no other request is on its way in (serve.batcher's rule, shared with DynamicBatcher). Step
    calls run on one worker thread, never on the event loop.
    """

    unit = "row"

    def __init__(
        self,
        streaming: StreamingPredictor,
        max_batch: int,
        max_delay_s: float,
        on_step: Callable[[int, float], None],
        arriving: Callable[[], int],
    ) -> None:
        super().__init__(max_batch, max_delay_s, arriving, "rowrnn-sequences")
        self.streaming, self.on_step = streaming, on_step

    def zero_state(self) -> np.ndarray:
        return np.zeros(self.streaming.hidden, np.float32)

    def submit(self, sequence: Sequence, row: np.ndarray) -> asyncio.Future:
        """Queue `sequence`'s next row; the future is its Prediction. Not a coroutine: the row is in
        line the moment this returns, so rows are applied in the order they were submitted."""
        job = StepJob(sequence, row, asyncio.get_running_loop().create_future())
        self._enqueue(job)
        return job.future

    def _take(self) -> list[StepJob]:
        """The oldest waiting row of each sequence, oldest first, at most `max_batch`; a sequence's
        later rows keep their place in line for the next call."""
        taken: list[StepJob] = []
        later: list[StepJob] = []
        sequences: set[int] = set()
        while self._jobs and len(taken) < self.max_batch:
            job = self._jobs.popleft()
            if id(job.sequence) in sequences:
                later.append(job)
            else:
                sequences.add(id(job.sequence))
                taken.append(job)
        self._jobs.extendleft(reversed(later))
        return taken

    def _call(self, jobs: list[StepJob]) -> StepOutputs:
        rows = np.concatenate([job.row for job in jobs])
        h = np.stack([job.sequence.h for job in jobs])
        c = np.stack([job.sequence.c for job in jobs])
        return self.streaming.step(rows, h, c)

    def _failed(self, jobs: list[StepJob]) -> None:
        for job in jobs:
            job.sequence.failed = True

    def _deliver(self, jobs: list[StepJob], result: StepOutputs, seconds: float) -> None:
        h, c, logits, probabilities = result
        self.on_step(len(jobs), seconds)
        for i, job in enumerate(jobs):
            # the state moves on even if the client has gone: the row was accepted, in order
            job.sequence.h, job.sequence.c = h[i], c[i]
            if not job.future.done():
                job.future.set_result(
                    Prediction(probabilities[i : i + 1].argmax(axis=1), probabilities[i : i + 1], logits[i : i + 1])
                )


class SequenceStore:
    """The live sequences of a server, by (stream model name, sequence id)."""

    def __init__(self, max_sequences: int, idle_s: float, on_expired: Callable[[str], None]) -> None:
        self.max_sequences, self.idle_s = max_sequences, idle_s
        self.on_expired = on_expired
        self.live: OrderedDict[tuple[str, int | str], Sequence] = OrderedDict()  # least recently active first
        # ids dropped for idleness, and ids that read all their rows without sequence_end, remembered
        # (a bounded number) so that their next row hears why
        self.expired: OrderedDict[tuple[str, int | str], float] = OrderedDict()
        self.full: OrderedDict[tuple[str, int | str], float] = OrderedDict()

    def remember(self, memory: OrderedDict[tuple[str, int | str], float], key: tuple[str, int | str]) -> None:
        memory[key] = time.monotonic()
        while len(memory) > 4 * self.max_sequences:
            memory.popitem(last=False)

    def sweep(self, now: float | None = None) -> None:
        """Drop the sequences idle longer than idle_s (none with a row waiting)."""
        now = time.monotonic() if now is None else now
        while self.live:
            key, sequence = next(iter(self.live.items()))
            if sequence.waiting or now - sequence.last_active <= self.idle_s:
                return
            del self.live[key]
            self.remember(self.expired, key)
            self.on_expired(key[0])

    def begin(self, stream: str, control: SequenceControl, model, zero: np.ndarray, draining: bool) -> Sequence:
        """A new sequence (or a live one restarted) from a zero state, on `model`."""
        key = (stream, control.id)
        if draining:
            raise ProtocolError(
                f"the server is shutting down: live sequences may finish, {describe(control.id)} cannot start", 503
            )
        if key not in self.live and len(self.live) >= self.max_sequences:
            raise ProtocolError(
                f"{len(self.live)} sequences are live (--max-sequences {self.max_sequences}): end one, or retry later",
                503,
                "RESOURCE_EXHAUSTED",
            )
        # A restart is a fresh Sequence: rows of the old one still waiting finish on its state.
        sequence = Sequence(control.id, model, zero, zero)
        self.live[key] = sequence
        self.live.move_to_end(key)
        self.expired.pop(key, None)
        self.full.pop(key, None)
        return sequence

    def find(self, stream: str, control: SequenceControl) -> Sequence:
        key = (stream, control.id)
        sequence = self.live.get(key)
        if sequence is not None:
            return sequence
        if key in self.full:
            raise ProtocolError(
                f"{describe(control.id)} has read all {IMAGE_ROWS} rows of its image and ended; start the next "
                "image with sequence_start"
            )
        if key in self.expired:
            raise ProtocolError(
                f"{describe(control.id)} expired: no row for it in {self.idle_s:g} s (--sequence-idle-s); "
                "start it again with sequence_start"
            )
        raise ProtocolError(
            f"unknown {describe(control.id)} of {stream!r}: its first row must carry sequence_start "
            "(or it has ended, with sequence_end)"
        )

    def accept(self, stream: str, control: SequenceControl, sequence: Sequence) -> None:
        """Count a row against the sequence, and end it on sequence_end or its 28th row (an image has
        no more: a sequence left live there could only hold its --max-sequences slot and a drain)."""
        sequence.rows += 1
        sequence.waiting += 1
        sequence.last_active = time.monotonic()
        key = (stream, control.id)
        if control.end or sequence.rows == IMAGE_ROWS:
            del self.live[key]
            if not control.end:
                self.remember(self.full, key)
        else:
            self.live.move_to_end(key)

    def answered(self, sequence: Sequence) -> None:
        sequence.waiting -= 1
        sequence.last_active = time.monotonic()  # idle counts from its last answer
