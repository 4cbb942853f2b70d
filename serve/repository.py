"""The models a server serves: a Triton-layout model repository, loaded and kept in step with its
directory (Triton's poll mode), or one model file (a repository of one, version 1).

    DIR/NAME/config.pbtxt        Triton's model configuration, parsed with Triton's own schema
                                 (tritonclient's model_config_pb2): version_policy, max_batch_size,
                                 dynamic_batching.max_queue_delay_microseconds, default_model_filename
    DIR/NAME/VERSION/model.onnx  one directory per version, a positive whole number

What `rowrnn triton-repo` writes and Triton reads: the same directory serves here and there. Each
loaded version has its own predictor and dynamic batcher. A version takes traffic only once it is
loaded, checked against the ONNX contract and warmed up; a version that leaves stops taking new
requests, finishes the ones it holds, and only then closes. A new version that fails to load is
refused with a log line and the versions already serving keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.contract import FULL_MODEL, IMAGE_COLS, IMAGE_ROWS, step_path_for
from runtime.errors import InputError, one_line
from runtime.predictor import Predictor
from runtime.repository import PLATFORM, STREAM_SUFFIX
from runtime.stream import StreamingPredictor
from serve.batcher import DynamicBatcher
from serve.protocol import ProtocolError
from serve.sequences import SequenceBatcher

log = logging.getLogger("rowrnn.serve.repository")
CONFIG = "config.pbtxt"
MODEL_FILE = "model.onnx"  # Triton's default_model_filename for onnxruntime_onnx
BACKEND = "onnxruntime"
# How often a version that is leaving checks whether its last request has been answered.
DRAIN_CHECK_S = 0.01


@dataclass(frozen=True)
class Batching:
    max_batch: int  # images per session call
    max_delay_s: float  # how long the first request of a batch waits for company


@dataclass(frozen=True)
class ModelSource:
    """What the repository directory says one model should serve."""

    name: str
    batching: Batching | None = None  # None exactly when `error` says why
    versions: dict[int, Path] = field(default_factory=dict)  # chosen by the version policy -> model file
    error: str | None = None  # the model directory or its config is unusable


@dataclass(eq=False)
class ModelVersion:
    """One loaded version: its predictor, its batcher, and the requests it holds."""

    name: str
    version: int
    predictor: Predictor
    batcher: DynamicBatcher
    parameters: dict[str, str]  # the model file's metadata, for the metadata endpoints and the page
    streaming: StreamingPredictor | None  # MODEL.step.onnx beside the model (`rowrnn export --step`)
    signature: tuple = ()  # the model file's, when loaded: a changed file is loaded again
    in_flight: int = 0  # requests routed here and not yet answered
    # The model and step files' bytes as loaded: what the page's browser engine downloads is what
    # this version runs, even after the files on disk change (a refused reload keeps the old one).
    model_bytes: bytes = b""
    step_bytes: bytes | None = None
    step_batcher: SequenceBatcher | None = None  # NAME-stream's batcher, made on its first row (serve.state)

    @property
    def step_model(self) -> StreamingPredictor:
        """The step model NAME-stream runs on this version; a 404 for a version without one."""
        if self.streaming is None:
            raise ProtocolError(
                f"model '{self.name}{STREAM_SUFFIX}': version {self.version} of {self.name!r} has no step model "
                "(MODEL.step.onnx beside model.onnx, from rowrnn export --step)",
                404,
            )
        return self.streaming

    async def close_batchers(self) -> None:
        await self.batcher.close()
        if self.step_batcher is not None:
            await self.step_batcher.close()

    def close(self) -> None:
        self.predictor.close()


# --- reading the directory (pure functions of what is on disk) ------------------------------------


def read_config(model_dir: Path):
    """DIR/NAME/config.pbtxt with Triton's schema; an InputError names what is wrong."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = model_dir / CONFIG
    if not path.is_file():
        raise InputError(f"{path}: no such file (every model directory needs Triton's config.pbtxt)")
    try:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a Triton model configuration: {one_line(exc, limit=200)}") from None
    if not is_stream_config(config):
        check_config(config, model_dir.name, path)
    return config


def is_stream_config(config) -> bool:
    """NAME-stream's directory as `rowrnn triton-repo --step` writes it for Triton: a sequence-batched
    step model. rowrnn serve serves NAME-stream from NAME/VERSION/model.step.onnx, so it skips it."""
    return config.HasField("sequence_batching") and config.name.endswith(STREAM_SUFFIX)


def check_config(config, name: str, path: Path) -> None:
    """Refuse a configuration that does not describe a rowrnn model as this server runs it."""
    from tritonclient.grpc import model_config_pb2 as pb

    if config.name and config.name != name:
        raise InputError(f"{path}: name {config.name!r} is not its directory's name {name!r}")
    if config.platform not in ("", PLATFORM) or config.backend not in ("", BACKEND):
        raise InputError(
            f"{path}: platform {config.platform!r} backend {config.backend!r}; rowrnn serves {PLATFORM!r} models"
        )
    if config.max_batch_size < 1:
        raise InputError(f"{path}: max_batch_size {config.max_batch_size}; rowrnn models batch (max_batch_size >= 1)")
    expected_inputs = [(spec.name, pb.TYPE_FP32, list(spec.dims)) for spec in FULL_MODEL.inputs]
    expected_outputs = {spec.name: (pb.TYPE_FP32, list(spec.dims)) for spec in FULL_MODEL.outputs}
    inputs = [(t.name, t.data_type, list(t.dims)) for t in config.input]
    if inputs and inputs != expected_inputs:
        raise InputError(f"{path}: inputs {inputs} are not the rowrnn contract's ('rows' TYPE_FP32 [28, 28])")
    for tensor in config.output:
        if expected_outputs.get(tensor.name) != (tensor.data_type, list(tensor.dims)):
            raise InputError(
                f"{path}: output {tensor.name!r} is not one of the rowrnn contract's "
                "('logits', 'probabilities' TYPE_FP32 [10])"
            )


def select_versions(policy, available: list[int]) -> list[int]:
    """The versions Triton's version_policy serves out of those on disk (default: the latest one)."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return sorted(available)
    if kind == "specific":
        wanted = set(policy.specific.versions)
        return sorted(v for v in available if v in wanted)
    count = policy.latest.num_versions if kind == "latest" else 1
    return sorted(available)[-max(count, 1) :] if available else []


# A version is a plain decimal number, as Triton names version directories: not "²" (a digit to
# str.isdigit, not to int) and not 5 000 digits (past int()'s limit), which would end in a 500.
VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")


def version_number(text: str) -> int | None:
    """The version a directory or request names, or None when it names none."""
    return int(text) if VERSION_NAME.fullmatch(text) else None


def available_versions(model_dir: Path, filename: str) -> dict[int, Path]:
    """Version directories holding the model file. A directory whose file is not there yet (a copy
    in progress) is not a version yet."""
    found = {}
    for entry in model_dir.iterdir():
        number = version_number(entry.name)
        if number is not None and (entry / filename).is_file():
            found[number] = entry / filename
    return found


def scan(root: Path, max_delay_s: float) -> dict[str, ModelSource]:
    """Every model directory under `root`; `max_delay_s` for a config without dynamic_batching."""
    sources = {}
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith("."):
            continue
        name = model_dir.name
        try:
            config = read_config(model_dir)
            versions = available_versions(model_dir, config.default_model_filename or MODEL_FILE)
        except (InputError, OSError) as exc:
            sources[name] = ModelSource(name, error=one_line(exc))
            continue
        if is_stream_config(config):
            continue
        delay_s = (
            config.dynamic_batching.max_queue_delay_microseconds / 1e6
            if config.HasField("dynamic_batching")
            else max_delay_s
        )
        chosen = select_versions(config.version_policy, list(versions))
        sources[name] = ModelSource(name, Batching(config.max_batch_size, delay_s), {v: versions[v] for v in chosen})
    return sources


def file_signature(path: Path) -> tuple[int, int, int]:
    """What changes when a file is replaced or rewritten: a refused file is retried only then."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


# --- loading ----------------------------------------------------------------------------------------

# Makes the batcher of a version: (model name, version, batching) -> DynamicBatcher.
BatcherFactory = Callable[[str, int, Predictor, Batching], DynamicBatcher]


def open_version(
    name: str, version: int, model: Path | Predictor, batching: Batching, make_batcher: BatcherFactory
) -> ModelVersion:
    """Load a version (the Predictor checks the ONNX contract) and warm it up: run the shapes it
    will see once, so its first client does not pay for them."""
    signature = () if isinstance(model, Predictor) else file_signature(model)
    model_bytes = (model.path if isinstance(model, Predictor) else model).read_bytes()  # before it loads
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    try:
        for size in sorted({1, batching.max_batch}):
            predictor.predict(np.zeros((size, IMAGE_ROWS, IMAGE_COLS), np.float32))
        parameters = {**predictor.metadata, "size_bytes": str(len(model_bytes))}
        step_path = step_path_for(predictor.path)
        step_bytes = step_path.read_bytes() if step_path.is_file() else None
        streaming = StreamingPredictor(step_path) if step_bytes is not None else None
        if streaming is not None:
            for size in sorted({1, batching.max_batch}):
                streaming.step(np.zeros((size, IMAGE_COLS), np.float32), *[streaming.zero_state(size)] * 2)
    except BaseException:
        predictor.close()
        raise
    return ModelVersion(
        name,
        version,
        predictor,
        make_batcher(name, version, predictor, batching),
        parameters,
        streaming,
        signature,
        model_bytes=model_bytes,
        step_bytes=step_bytes,
    )


class ModelRepository:
    """The loaded models, by name and version, and their life cycle."""

    def __init__(
        self, root: Path | None, make_batcher: BatcherFactory, default_batching: Batching, drain_timeout_s: float
    ) -> None:
        self.root = root  # None: a single model file, fixed for the server's life
        self.make_batcher, self.default_batching = make_batcher, default_batching
        self.drain_timeout_s = drain_timeout_s
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.refused: dict[tuple[str, int], tuple[tuple, str]] = {}  # (name, version) -> (file signature, reason)
        self.unusable: dict[str, str] = {}  # model name -> why its directory or config is unusable
        self._lock: asyncio.Lock | None = None

    # -- start-up: strict, a model that does not load is an error ------------------------------
    @classmethod
    def of_one(
        cls,
        name: str,
        model: Path | Predictor,
        batching: Batching,
        make_batcher: BatcherFactory,
        drain_timeout_s: float,
    ) -> ModelRepository:
        repository = cls(None, make_batcher, batching, drain_timeout_s)
        repository.models[name] = {1: open_version(name, 1, model, batching, make_batcher)}
        return repository

    @classmethod
    def of_directory(
        cls, root: Path, make_batcher: BatcherFactory, default_batching: Batching, drain_timeout_s: float
    ) -> ModelRepository:
        if not root.is_dir():
            raise InputError(f"{root}: no such directory (--model-repository)")
        repository = cls(root, make_batcher, default_batching, drain_timeout_s)
        sources = scan(root, default_batching.max_delay_s)
        if not sources:
            raise InputError(f"{root}: no model directories (expected NAME/config.pbtxt and NAME/1/model.onnx)")
        try:
            for source in sources.values():
                if source.error or source.batching is None:
                    raise InputError(source.error or f"{source.name}: unusable")
                if not source.versions:
                    raise InputError(
                        f"{root / source.name}: no version to serve (NAME/VERSION/model.onnx, "
                        "selected by the config's version_policy)"
                    )
                for version, path in source.versions.items():
                    repository.models.setdefault(source.name, {})[version] = open_version(
                        source.name, version, path, source.batching, make_batcher
                    )
        except BaseException:
            repository.close_all()
            raise
        return repository

    # -- routing ---------------------------------------------------------------------------------
    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version that takes a request for NAME (the latest loaded) or NAME/versions/VERSION."""
        versions = self.models.get(name)
        if not versions:
            known = ", ".join(map(repr, sorted(self.models))) or "none"
            raise ProtocolError(f"unknown model {name!r}; this server serves {known}", 404)
        if version is None or version == "":
            return versions[max(versions)]
        number = version_number(version)
        if number not in versions:
            loaded = ", ".join(repr(str(v)) for v in sorted(versions))
            raise ProtocolError(f"model {name!r} has no version {version[:40]!r}; it has version {loaded}", 404)
        return versions[number]

    def versions(self, name: str) -> list[str]:
        return [str(v) for v in sorted(self.models.get(name, {}))]

    def index(self) -> list[dict]:
        """The repository extension's index: every model and version known, with its state (a
        version whose changed file was refused is READY: its previous file keeps serving)."""
        entries = [
            {"name": name, "version": str(version), "state": "READY", "reason": ""}
            for name, versions in self.models.items()
            for version in versions
        ]
        entries += [  # NAME-stream beside a version with a step model (serve.sequences)
            {"name": name + STREAM_SUFFIX, "version": str(version), "state": "READY", "reason": ""}
            for name, versions in self.models.items()
            for version, loaded in versions.items()
            if loaded.streaming is not None and name + STREAM_SUFFIX not in self.models
        ]
        entries += [
            entry
            for entry in self.problems()
            if (entry["name"], entry["version"]) not in {(e["name"], e["version"]) for e in entries}
        ]
        return sorted(entries, key=lambda entry: (entry["name"], entry["version"]))

    def problems(self, name: str | None = None) -> list[dict]:
        """Refused versions and unusable model directories (of one model, or all)."""
        entries = [
            {"name": model, "version": str(version), "state": "UNAVAILABLE", "reason": reason}
            for (model, version), (_, reason) in self.refused.items()
        ]
        entries += [
            {"name": model, "version": "", "state": "UNAVAILABLE", "reason": reason}
            for model, reason in self.unusable.items()
        ]
        return [entry for entry in entries if name is None or entry["name"] == name]

    # -- keeping in step with the directory --------------------------------------------------------
    async def sync(self, names: Collection[str] | None = None, unload: Collection[str] = frozenset()) -> None:
        """Load what the directory now says to serve, and retire what it no longer does (`names`:
        only these models; `unload`: retire these models whatever the directory says)."""
        if self.root is None:
            raise ProtocolError(
                "this server serves one model file, not a model repository (start it with --model-repository DIR)", 409
            )
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            loop = asyncio.get_running_loop()
            sources = await loop.run_in_executor(None, scan, self.root, self.default_batching.max_delay_s)
            for name in sorted((set(sources) | set(self.models)) if names is None else names):
                if name in unload:
                    await self._retire_model(name, "unloaded by request")
                elif name not in sources:
                    self.unusable.pop(name, None)
                    await self._retire_model(name, "its directory is gone")
                else:
                    await self._follow(sources[name])

    async def follow(self, poll_s: float) -> None:
        """Triton's poll mode: look at the directory every `poll_s` seconds, until cancelled."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001  (the directory vanished, ...: keep serving what is loaded)
                log.warning("polling %s failed: %s; the models loaded keep serving", self.root, one_line(exc))

    async def _follow(self, source: ModelSource) -> None:
        if source.error or source.batching is None:
            if self.unusable.get(source.name) != source.error:
                log.warning(
                    "model %r: %s; %s",
                    source.name,
                    source.error,
                    "the versions loaded keep serving" if source.name in self.models else "not loaded",
                )
            self.unusable[source.name] = source.error or "unusable"
            return
        self.unusable.pop(source.name, None)
        for key in [key for key in self.refused if key[0] == source.name and key[1] not in source.versions]:
            del self.refused[key]  # a refused version that left the directory is no longer news
        for version, path in source.versions.items():
            await self._load(source, source.batching, version, path)
        loaded = self.models.get(source.name, {})
        leaving = [version for version in loaded if version not in source.versions]
        if leaving and not any(version in loaded for version in source.versions):
            # never retire the last good versions for ones that failed to load (or none at all)
            return
        for version in leaving:
            await self._retire(source.name, version, "no longer chosen by the version policy")

    async def _load(self, source: ModelSource, batching: Batching, version: int, path: Path) -> None:
        """Load a version that is new, or whose file changed (then the new one replaces the old
        once it is warmed up)."""
        try:
            signature = file_signature(path)
        except OSError:  # removed while we looked
            return
        key = (source.name, version)
        serving = self.models.get(source.name, {}).get(version)
        if serving is not None and serving.signature == signature:
            return
        if key in self.refused and self.refused[key][0] == signature:
            return  # refused already, and not changed since
        started = time.perf_counter()
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(
                None, open_version, source.name, version, path, batching, self.make_batcher
            )
        except Exception as exc:  # noqa: BLE001  (any failure refuses the version; the server goes on)
            reason = one_line(exc, limit=300)
            self.refused[key] = (signature, reason)
            keeping = self.versions(source.name)
            log.warning(
                "model %r version %d refused: %s; %s",
                source.name,
                version,
                reason,
                f"version {', '.join(keeping)} keeps serving" if keeping else "the model is not served",
            )
            return
        self.refused.pop(key, None)
        self.models.setdefault(source.name, {})[version] = loaded
        log.info(
            "model %r version %d loaded and warmed up in %.2f s: taking traffic",
            source.name,
            version,
            time.perf_counter() - started,
        )
        if serving is not None:
            await self._drain_and_close(serving, "replaced by its changed file")

    async def _retire_model(self, name: str, why: str) -> None:
        for version in list(self.models.get(name, {})):
            await self._retire(name, version, why)

    async def _retire(self, name: str, version: int, why: str) -> None:
        """Stop routing to the version, let its requests finish (at most the drain timeout), close it."""
        versions = self.models[name]
        leaving = versions.pop(version)
        if not versions:
            del self.models[name]
        await self._drain_and_close(leaving, why)

    async def _drain_and_close(self, leaving: ModelVersion, why: str) -> None:
        name, version = leaving.name, leaving.version
        log.info("model %r version %d leaving (%s): draining %d requests", name, version, why, leaving.in_flight)
        deadline = time.monotonic() + self.drain_timeout_s
        while (leaving.in_flight or leaving.batcher.queued_images) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_CHECK_S)
        if leaving.in_flight:
            log.warning(
                "model %r version %d: %d requests still in flight after %g s",
                name,
                version,
                leaving.in_flight,
                self.drain_timeout_s,
            )
        await leaving.close_batchers()
        await asyncio.get_running_loop().run_in_executor(None, leaving.close)
        log.info("model %r version %d unloaded", name, version)

    async def close(self) -> None:
        for versions in self.models.values():
            for loaded in versions.values():
                await loaded.close_batchers()
        self.close_all()

    def close_all(self) -> None:
        for versions in self.models.values():
            for loaded in versions.values():
                loaded.close()
