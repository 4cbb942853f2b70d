"""The dynamic batcher: concurrent requests share one session call (Triton's dynamic batching).

A batch closes at `max_batch` images, or when its oldest request has waited `max_delay`, or
as soon as no other request is on its way in (`arriving()`: requests the server is still
receiving): waiting then would only add latency, which matters most to a lone client. A
request larger than `max_batch` runs as its own call. Inference runs on one worker thread, never on the
event loop, and the next batch gathers while the current one runs. At most `max_queue` images
wait: beyond that `submit` refuses at once (`QueueFull`), so memory and latency stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from runtime.predictor import Prediction, Predictor


class QueueFull(Exception):
    """The queue holds `max_queue` images already: the caller should answer 503."""


class BatcherClosed(Exception):
    """The batcher was closed (its model version unloaded) before this request's turn."""


@dataclass
class Job:
    images: np.ndarray
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


# Called after each session call with (images in the batch, seconds it took).
BatchObserver = Callable[[int, float], None]


class Queued(Protocol):
    """A job in a batcher's line."""

    future: asyncio.Future
    arrived: float  # time.monotonic() when it was put in line


J = TypeVar("J", bound=Queued)
R = TypeVar("R")


class CallBatcher(Generic[J, R]):
    """What both batchers share: a line of jobs, a batch gathered by the rule of the module's
    docstring, one model call per batch on one worker thread, every job answered or failed, and a
    close that fails whatever still waits. Subclasses say what a batch is (`_take`, `_queued`), how
    it runs (`_call`, on the worker thread) and how its result is handed out (`_deliver`)."""

    unit = "request"  # what a job is, in the errors its client reads

    def __init__(
        self, max_batch: int, max_delay_s: float, arriving: Callable[[], int] | None, thread_name: str
    ) -> None:
        self.max_batch, self.max_delay_s = max_batch, max_delay_s
        self.arriving = arriving or (lambda: 1)  # unknown: always wait, as Triton does
        self._jobs: deque[J] = deque()
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.name = thread_name
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=thread_name)

    def _enqueue(self, job: J) -> None:
        """Put `job` in line (not a coroutine: it is in line when this returns)."""
        if self._arrival is None:  # started by the first job, in the server's own loop
            self._arrival = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._arrival), name=self.name)
        self._jobs.append(job)
        self._arrival.set()

    def wake(self) -> None:
        """A request on its way in will not come (it was refused): stop waiting for it."""
        if self._arrival is not None:
            self._arrival.set()

    def _queued(self) -> int:
        """How much of a batch is waiting, in the unit of `max_batch`."""
        return len(self._jobs)

    def _take(self) -> list[J]:
        raise NotImplementedError

    def _call(self, jobs: list[J]) -> R:
        raise NotImplementedError

    def _deliver(self, jobs: list[J], result: R, seconds: float) -> None:
        raise NotImplementedError

    def _failed(self, jobs: list[J]) -> None:
        """The call for `jobs` raised (each job got the error already)."""

    async def _run(self, arrival: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather(arrival)
            jobs = self._take()
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(self._executor, self._call, jobs)
            except asyncio.CancelledError:  # closed while this batch ran
                fail(jobs, BatcherClosed(f"the model version was unloaded during this {self.unit}"))
                raise
            except Exception as exc:  # noqa: BLE001  (each job of the batch gets the error)
                fail(jobs, exc)
                self._failed(jobs)
                continue
            self._deliver(jobs, result, time.perf_counter() - started)

    async def _gather(self, arrival: asyncio.Event) -> None:
        """Wait until a batch is full, the oldest job has waited `max_delay_s`, or no other
        request is on its way in."""
        while not self._jobs:
            arrival.clear()
            await arrival.wait()
        deadline = self._jobs[0].arrived + self.max_delay_s
        while self._queued() < self.max_batch and self.arriving() > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            arrival.clear()
            try:
                async with asyncio.timeout(remaining):  # unlike wait_for, no task per wait
                    await arrival.wait()
            except TimeoutError:
                return

    async def close(self) -> None:
        """Stop; jobs still waiting (a drain that timed out) get BatcherClosed, never silence."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._arrival = None
        fail(list(self._jobs), BatcherClosed(f"the model version was unloaded before this {self.unit}'s turn"))
        self._jobs.clear()
        self._executor.shutdown(wait=True)


def fail(jobs: list[J], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():  # its client may have gone away
            job.future.set_exception(exc)


class DynamicBatcher(CallBatcher[Job, Prediction]):
    def __init__(
        self,
        predictor: Predictor,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: BatchObserver | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(max_batch, max_delay_s, arriving, "rowrnn-batcher")
        self.predictor, self.max_queue = predictor, max_queue
        self.on_batch = on_batch or (lambda images, seconds: None)
        self.queued_images = 0

    async def predict(self, images: np.ndarray) -> Prediction:
        """The prediction for `images`, computed in a batch with whatever else is waiting."""
        if self.queued_images and self.queued_images + len(images) > self.max_queue:
            raise QueueFull(f"{self.queued_images} images are waiting (--max-queue {self.max_queue})")
        job = Job(images, asyncio.get_running_loop().create_future())
        self._enqueue(job)
        self.queued_images += len(images)
        return await job.future

    def _queued(self) -> int:
        return self.queued_images

    def _take(self) -> list[Job]:
        """The oldest jobs that fit in `max_batch` images (always at least one)."""
        jobs = [self._jobs.popleft()]
        size = len(jobs[0].images)
        while self._jobs and size + len(self._jobs[0].images) <= self.max_batch:
            jobs.append(self._jobs.popleft())
            size += len(jobs[-1].images)
        self.queued_images -= size
        return jobs

    def _call(self, jobs: list[Job]) -> Prediction:
        images = jobs[0].images if len(jobs) == 1 else np.concatenate([job.images for job in jobs])
        return self.predictor.predict(images)

    def _deliver(self, jobs: list[Job], result: Prediction, seconds: float) -> None:
        self.on_batch(len(result.labels), seconds)
        start = 0
        for job in jobs:
            end = start + len(job.images)
            if not job.future.done():  # its client may have gone away
                job.future.set_result(
                    Prediction(result.labels[start:end], result.probabilities[start:end], result.logits[start:end])
                )
            start = end

    async def close(self) -> None:
        await super().close()
        self.queued_images = 0
