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


class DynamicBatcher:
    def __init__(
        self,
        predictor: Predictor,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: BatchObserver | None = None,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.on_batch = on_batch or (lambda images, seconds: None)
        self.arriving = arriving or (lambda: 1)  # unknown: always wait, as Triton does
        self.queued_images = 0
        self._jobs: deque[Job] = deque()
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rowrnn-batcher")

    async def predict(self, images: np.ndarray) -> Prediction:
        """The prediction for `images`, computed in a batch with whatever else is waiting."""
        if self.queued_images and self.queued_images + len(images) > self.max_queue:
            raise QueueFull(f"{self.queued_images} images are waiting (--max-queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        if self._arrival is None:  # started by the first request, in the server's own loop
            self._arrival = asyncio.Event()
            self._task = loop.create_task(self._run(self._arrival), name="rowrnn-batcher")
        job = Job(images, loop.create_future())
        self._jobs.append(job)
        self.queued_images += len(images)
        self._arrival.set()
        return await job.future

    def wake(self) -> None:
        """A request on its way in will not come (it was refused): stop waiting for it."""
        if self._arrival is not None:
            self._arrival.set()

    async def _run(self, arrival: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather(arrival)
            jobs = self._take()
            images = jobs[0].images if len(jobs) == 1 else np.concatenate([job.images for job in jobs])
            started = time.perf_counter()
            try:
                prediction = await loop.run_in_executor(self._executor, self.predictor.predict, images)
            except asyncio.CancelledError:  # closed while this batch ran
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(BatcherClosed("the model version was unloaded during this request"))
                raise
            except Exception as exc:  # noqa: BLE001  (each waiting request gets the error)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.on_batch(len(images), time.perf_counter() - started)
            start = 0
            for job in jobs:
                end = start + len(job.images)
                if not job.future.done():  # its client may have gone away
                    job.future.set_result(
                        Prediction(
                            prediction.labels[start:end],
                            prediction.probabilities[start:end],
                            prediction.logits[start:end],
                        )
                    )
                start = end

    async def _gather(self, arrival: asyncio.Event) -> None:
        """Wait until a batch is full, the oldest request has waited `max_delay_s`, or no other
        request is on its way in."""
        while not self._jobs:
            arrival.clear()
            await arrival.wait()
        deadline = self._jobs[0].arrived + self.max_delay_s
        while self.queued_images < self.max_batch and self.arriving() > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            arrival.clear()
            try:
                async with asyncio.timeout(remaining):  # unlike wait_for, no task per wait
                    await arrival.wait()
            except TimeoutError:
                return

    def _take(self) -> list[Job]:
        """The oldest jobs that fit in `max_batch` images (always at least one)."""
        jobs = [self._jobs.popleft()]
        size = len(jobs[0].images)
        while self._jobs and size + len(self._jobs[0].images) <= self.max_batch:
            jobs.append(self._jobs.popleft())
            size += len(jobs[-1].images)
        self.queued_images -= size
        return jobs

    async def close(self) -> None:
        """Stop; requests still waiting (a drain that timed out) get BatcherClosed, never silence."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._arrival = None
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(BatcherClosed("the model version was unloaded before this request's turn"))
        self.queued_images = 0
        self._executor.shutdown(wait=True)
