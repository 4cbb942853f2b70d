"""What both protocols share: the models, readiness, requests in flight, metrics, and the one
inference path that REST (serve.app) and gRPC (serve.grpc_service) requests go through, so
requests of either kind arriving together share a session call."""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from runtime.predictor import Prediction, Predictor
from runtime.repository import STREAM_SUFFIX
from serve.batcher import BatcherClosed, DynamicBatcher, QueueFull
from serve.metrics import Metrics
from serve.protocol import ProtocolError
from serve.repository import Batching, ModelRepository, ModelVersion, version_number
from serve.sequences import SequenceBatcher, SequenceControl, SequenceStore, describe
from serve.settings import ServeSettings
from serve.web_runtime import cached_files


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("rowrnn")
    except Exception:  # noqa: BLE001  (running from a source tree that is not installed)
        return "0+unknown"


def key_matches(authorization: str | None, key: str | None) -> bool:
    """`Authorization: Bearer KEY` (HTTP header or gRPC metadata), compared in constant time."""
    if key is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    # The token exactly as sent (no stripping: " KEY" is not the key), as the bytes on the wire
    # (Starlette decodes headers as latin-1; gRPC metadata is ASCII) against the key's UTF-8 bytes.
    try:
        sent = token.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(sent, key.encode())


API_KEY_MESSAGE = "missing or wrong API key: send 'Authorization: Bearer KEY'"


class ServerState:
    """The models and the server's life cycle, shared by the REST app and the gRPC service."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.version = package_version()
        self.ready = False
        self.draining = False
        self.in_flight = 0  # inference requests between arrival and response, both protocols
        self.receiving = 0  # inference requests not yet handed to a batcher (body, parsing)
        self._repository: ModelRepository | None = None
        self.sequences = SequenceStore(
            settings.max_sequences,
            settings.sequence_idle_s,
            lambda stream: self.metrics.sequence_expirations.labels(stream).inc(),
        )
        # onnxruntime-web from the cache `rowrnn site` fills: with it the page runs the model in
        # the browser; without it (never fetched here), the page uses /v1/classify
        self.ort_dir: Path | None = cached_files()

    def load(self, model: str | os.PathLike | Predictor | None) -> None:
        """Load and warm up every model: the repository (--model-repository), else one model file
        (the bundled one by default) as a repository of one, version 1."""
        settings = self.settings
        batching = Batching(settings.max_batch, settings.max_delay_ms / 1000)
        if settings.model_repository is not None:
            self._repository = ModelRepository.of_directory(
                Path(settings.model_repository), self.make_batcher, batching, settings.drain_timeout_s
            )
        else:
            model = model if isinstance(model, Predictor) else Predictor(model)
            self._repository = ModelRepository.of_one(
                settings.name, model, batching, self.make_batcher, settings.drain_timeout_s
            )
        self.ready = True

    @property
    def repository(self) -> ModelRepository:
        """The models being served; `load` sets them before the server takes a request."""
        if self._repository is None:
            raise RuntimeError("ServerState.load has not run")
        return self._repository

    def make_batcher(self, name: str, version: int, predictor: Predictor, batching: Batching) -> DynamicBatcher:
        def observe(images: int, seconds: float) -> None:
            self.metrics.observe_batch(name, str(version), images, seconds)

        return DynamicBatcher(
            predictor,
            batching.max_batch,
            batching.max_delay_s,
            self.settings.max_queue,
            observe,
            lambda: self.receiving,
        )

    @property
    def default_model(self) -> str:
        """The page's model: --name if the server has it, else the first by name."""
        names = sorted(self.repository.models)
        return self.settings.name if self.settings.name in names or not names else names[0]

    def serving(self) -> bool:
        return self.ready and not self.draining

    def check_key(self, authorization: str | None) -> None:
        if not key_matches(authorization, self.settings.api_key):
            raise ProtocolError(API_KEY_MESSAGE, 401)

    def sweep_sequences(self) -> None:
        """Drop the sequences idle past --sequence-idle-s (on each row, each /metrics, each drain tick)."""
        self.sequences.sweep()
        self.metrics.live_sequences.set(len(self.sequences.live))

    def busy(self) -> bool:
        """Requests in flight or live sequences: what a drain waits for (at most its timeout)."""
        self.drop_unloaded_sequences()
        self.sweep_sequences()
        return bool(self.in_flight or self.sequences.live)

    def served(self, model: ModelVersion) -> bool:
        """Whether the version still serves (a retired one is closed, or closing)."""
        return self.repository.models.get(model.name, {}).get(model.version) is model

    def drop_unloaded_sequences(self) -> None:
        """Drop the live sequences whose version was unloaded: they can never read on. A look at
        every live sequence, so only on drain ticks and when the store is full, not per row."""
        for key, sequence in list(self.sequences.live.items()):
            if not self.served(sequence.model):
                del self.sequences.live[key]

    @contextlib.contextmanager
    def inference_request(self, refuse_when_draining: bool = True) -> Iterator[None]:
        """An inference request in flight (the drain waits for it); refused while draining, except a
        stream model's rows (live sequences may finish; `infer_row` refuses new ones)."""
        self.in_flight += 1
        try:
            if self.draining and refuse_when_draining:
                raise ProtocolError("the server is shutting down", 503)
            yield
        finally:
            self.in_flight -= 1

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """A request on its way to a batcher (body, parsing): a batch may wait for it."""
        self.receiving += 1
        try:
            yield
        except BaseException:
            for versions in self.repository.models.values():
                for loaded in versions.values():
                    loaded.batcher.wake()  # it will not come: no batch need wait for it
                    if loaded.step_batcher is not None:
                        loaded.step_batcher.wake()
            raise
        finally:
            self.receiving -= 1

    async def infer(self, name: str, version: str | None, images: np.ndarray) -> tuple[ModelVersion, Prediction]:
        """The one inference path: route to the version (the latest loaded when none is named) at
        this moment, and wait for its batcher. The version is held until the answer is back, so a
        version that is leaving answers every request it took."""
        model = self.repository.resolve(name, version)
        model.in_flight += 1
        try:
            return model, await model.batcher.predict(images)
        except QueueFull as exc:
            raise ProtocolError(f"the server is busy: {exc}; retry later", 503, "RESOURCE_EXHAUSTED") from None
        except BatcherClosed as exc:
            raise ProtocolError(f"{exc}; retry", 503) from None
        finally:
            model.in_flight -= 1
            self.metrics.queue_images.labels(model.name, str(model.version)).set(model.batcher.queued_images)

    # -- the stream models (serve.sequences) ------------------------------------------------------
    def is_stream(self, name: str) -> bool:
        """NAME-stream of a served NAME (a model really named so is served as itself)."""
        return (
            name.endswith(STREAM_SUFFIX)
            and name not in self.repository.models
            and name[: -len(STREAM_SUFFIX)] in self.repository.models
        )

    def resolve_stream(self, name: str, version: str | None) -> ModelVersion:
        """The version whose step model serves NAME-stream (the latest loaded when none is named)."""
        model = self.repository.resolve(name[: -len(STREAM_SUFFIX)], version)
        model.step_model  # noqa: B018  (a 404 for a version without a step model)
        return model

    def stream_versions(self, name: str) -> list[str]:
        base = name[: -len(STREAM_SUFFIX)]
        return [str(v) for v, loaded in sorted(self.repository.models.get(base, {}).items()) if loaded.streaming]

    def step_batcher(self, model: ModelVersion) -> SequenceBatcher:
        if model.step_batcher is None:
            stream, version = model.name + STREAM_SUFFIX, str(model.version)
            self.metrics.sequence_expirations.labels(stream)  # shown at 0 from the first row on

            def observe(rows: int, seconds: float) -> None:
                self.metrics.step_rows.labels(stream, version).observe(rows)

            model.step_batcher = SequenceBatcher(
                model.step_model, model.batcher.max_batch, model.batcher.max_delay_s, observe, lambda: self.receiving
            )
        return model.step_batcher

    async def infer_row(
        self, name: str, version: str | None, row: np.ndarray, control: SequenceControl
    ) -> tuple[ModelVersion, Prediction]:
        """One row of a sequence of NAME-stream: the answer after it, on the sequence's own state.

        Everything up to the row's place in its batcher's line happens without yielding to the
        event loop, so a sequence's rows are applied in the order their requests were read."""
        sequences = self.sequences
        self.sweep_sequences()
        if control.start:
            model = self.resolve_stream(name, version)
            if len(sequences.live) >= sequences.max_sequences:
                self.drop_unloaded_sequences()
            batcher = self.step_batcher(model)
            sequence = sequences.begin(name, control, model, batcher.zero_state(), self.draining)
        else:
            sequence = sequences.find(name, control)
            model = sequence.model
            if version and version_number(version) != model.version:
                raise ProtocolError(f"{describe(control.id)} runs on version {model.version}, not {version[:40]!r}")
            if not self.served(model):
                sequences.live.pop((name, control.id), None)
                raise ProtocolError(
                    f"{describe(control.id)}: its model version {model.version} was unloaded; start it again "
                    "with sequence_start"
                )
            if sequence.failed:
                sequences.live.pop((name, control.id), None)
                raise ProtocolError(
                    f"{describe(control.id)}: the server failed to read one of its rows, so its state is lost; "
                    "start it again with sequence_start"
                )
            batcher = self.step_batcher(model)
        sequences.accept(name, control, sequence)
        model.in_flight += 1
        try:
            return model, await batcher.submit(sequence, row)
        except BatcherClosed as exc:
            raise ProtocolError(f"{exc}; start the sequence again", 503) from None
        finally:
            model.in_flight -= 1
            sequences.answered(sequence)
            self.metrics.live_sequences.set(len(sequences.live))

    # -- the repository extension (both protocols) ------------------------------------------------
    def check_explicit_control(self, name: str) -> None:
        if self.settings.poll_s:  # Triton's rule too: the directory is in charge
            raise ProtocolError(
                "explicit model load and unload are not allowed while --poll-s polls the "
                "repository: change the directory instead",
                409,
            )
        if self.repository.root is None:
            raise ProtocolError(
                "this server serves one model file, not a model repository (start it with --model-repository DIR)", 409
            )
        # a model is a directory of the repository, named plainly: never a path that leads out of it
        plain = bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")
        if not plain or (not (self.repository.root / name).is_dir() and name not in self.repository.models):
            raise ProtocolError(f"no model {name[:100]!r} in the repository", 404)

    async def load_model(self, name: str) -> None:
        """Load (or reload) NAME as its directory now says; an error names why it did not load."""
        self.check_explicit_control(name)
        await self.repository.sync({name})
        reasons = [
            f"version {entry['version']}: {entry['reason']}" if entry["version"] else entry["reason"]
            for entry in self.repository.problems(name)
        ]
        serving = self.repository.versions(name)
        if reasons or not serving:
            kept = f"; version {', '.join(serving)} keeps serving" if serving else ""
            raise ProtocolError(f"model {name!r} did not load: {'; '.join(reasons) or 'no version to serve'}{kept}")

    async def unload_model(self, name: str) -> None:
        """Stop serving NAME: its requests in flight finish first."""
        self.check_explicit_control(name)
        if name not in self.repository.models:
            raise ProtocolError(f"model {name!r} is not loaded", 404)
        await self.repository.sync({name}, unload={name})
