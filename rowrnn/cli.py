"""`rowrnn` commands. Each one parses options, calls a library function, prints the result.

Exit codes: 0 ok, 1 a check failed (e.g. parity), 2 bad input or usage, 130 interrupted.
Heavy packages (TensorFlow, tf2onnx) are imported inside the commands that need them, so
`rowrnn predict` and `rowrnn info` start fast and work with the plain install.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from export.defaults import DEFAULT_ATOL, DEFAULT_MAX_INT8_DROP, DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, QUANTIZE_CHOICES
from rowrnn.bench import BenchSettings
from rowrnn.extras import check_serve_extra, check_training_extra, needs_training_extra
from rowrnn_keras.config import BACKEND_CHOICES, DISTRIBUTE_FOR_BACKEND, Cluster, TrainConfig
from runtime.errors import CheckFailed, InputError, one_line
from runtime.repository import MODEL_VERSION
from serve.settings import ServeSettings

app = typer.Typer(
    name="rowrnn",
    help="Train a row-by-row LSTM MNIST classifier, export it to ONNX, run it with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Directory with the four MNIST IDX files (default: $ROWRNN_DATA, else Keras's download).",
    ),
]
DEFAULT_MODEL = Path("artifacts/model.keras")


DEFAULTS = TrainConfig()  # the train command's defaults are the library's
CLUSTER = Cluster()
DISTRIBUTE_HELP = (
    f"tensorflow: {', '.join(DISTRIBUTE_FOR_BACKEND['tensorflow'])} (mirrored: every local GPU, else every CPU); "
    f"jax: {', '.join(DISTRIBUTE_FOR_BACKEND['jax'])} (a CPU device per core of every process: "
    "see --num-processes)."
)


@app.command()
def train(
    data: DataOption = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Directory for model.keras, metrics.json, history.csv, curves.png (and the backup of a run in progress)."
        ),
    ] = Path("artifacts"),
    epochs: Annotated[
        int, typer.Option(min=1, help="Maximum epochs (early stopping may end sooner).")
    ] = DEFAULTS.epochs,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Global batch size (split across devices with --distribute).")
    ] = DEFAULTS.batch_size,
    lr: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Peak learning rate of the warm-up + cosine schedule.")
    ] = DEFAULTS.learning_rate,
    seed: Annotated[int, typer.Option(min=0)] = DEFAULTS.seed,
    limit: Annotated[
        int | None, typer.Option(min=2, help="Train on the first N training images only.")
    ] = DEFAULTS.limit,
    hidden_units: Annotated[int, typer.Option(min=1)] = DEFAULTS.hidden_units,
    backend: Annotated[
        str,
        typer.Option(
            help=f"Keras backend that trains: {', '.join(BACKEND_CHOICES)} (jax: pip install 'rowrnn[jax]'). "
            "TensorFlow feeds both; the model file is the same."
        ),
    ] = DEFAULTS.backend,
    distribute: Annotated[str, typer.Option(help=DISTRIBUTE_HELP)] = DEFAULTS.distribute,
    coordinator: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT where process 0 runs the coordinator, and listens on PORT+1 too (--num-processes above 1)."
        ),
    ] = CLUSTER.coordinator,
    num_processes: Annotated[
        int,
        typer.Option(
            help="Processes training together (--backend jax --distribute data-parallel): run the same "
            "command on each, with its --process-id; each feeds an equal part of every batch."
        ),
    ] = CLUSTER.num_processes,
    process_id: Annotated[
        int, typer.Option(help="This process's number, 0 to --num-processes - 1; 0 writes OUT.")
    ] = CLUSTER.process_id,
    connect_timeout: Annotated[
        int, typer.Option(help="Seconds a process waits for all the others to join before it gives up.")
    ] = CLUSTER.connect_timeout_s,
    heartbeat_timeout: Annotated[
        int, typer.Option(help="Seconds without a heartbeat after which a process is declared lost.")
    ] = CLUSTER.heartbeat_timeout_s,
    tensorboard: Annotated[
        Path | None,
        typer.Option(help="Directory for TensorBoard logs (default: OUT/logs); one subdirectory per run."),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Discard the backup of an interrupted run instead of resuming it.")
    ] = False,
) -> None:
    """Train on MNIST; keep the best epoch by validation accuracy; report test accuracy.

    A run that was killed or interrupted continues from its last finished epoch when the same
    command is run again.
    """
    check_training_extra()
    from rowrnn_keras.backup import resume_point
    from rowrnn_keras.data import load_mnist
    from runtime.files import check_directory_writable

    tensorboard = tensorboard or out / "logs"
    check_directory_writable(out)  # before minutes of work, not after
    check_directory_writable(tensorboard)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        limit=limit,
        hidden_units=hidden_units,
        backend=backend,
        distribute=distribute,
    )
    cluster = Cluster(coordinator, num_processes, process_id, connect_timeout, heartbeat_timeout)
    cluster.check_for(config)
    mnist = load_mnist(data)  # bad data fails here, before the slow TensorFlow import
    if cluster.is_chief:  # a backup is the chief's to check (read only: the processes have not met yet)
        resume_point(out, config, mnist, restart, readonly=True)  # so does a backup of other settings
    train_module = needs_training_extra(backend=config.backend)
    metrics = train_module.run_training(
        config, mnist, out, restart=restart, tensorboard=tensorboard, log=typer.echo, cluster=cluster
    )
    written = f"wrote {out}/" if cluster.is_chief else f"process {cluster.process_id}: process 0 wrote {out}/"
    typer.echo(
        f"test accuracy {metrics['test_accuracy']:.4f} (best epoch {metrics['best_epoch']}/"
        f"{metrics['epochs']}, validation {metrics['val_accuracy']:.4f}, "
        f"{metrics['train_seconds']:.0f} s); {written}"
    )
    # what every process holds at the end, comparable across the processes of a run
    typer.echo(f"final weights sha256 {metrics['final_weights_sha256']}")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Keras model to evaluate.")] = DEFAULT_MODEL,
    data: DataOption = None,
    plot: Annotated[
        Path | None, typer.Option(help="Confusion-matrix PNG (default: confusion.png beside the model).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Test accuracy, per-class accuracy and the confusion matrix of a trained model."""
    from rowrnn_keras.config import CONFUSION_FILE
    from runtime.files import atomic_path, check_writable

    plot = plot or model.parent / CONFUSION_FILE
    check_writable(plot, ".png")
    evaluation = needs_training_extra("rowrnn_keras.evaluate")
    from rowrnn_keras.data import load_mnist
    from rowrnn_keras.model import load_trained_model
    from rowrnn_keras.plots import save_confusion
    from runtime.contract import scale_pixels

    keras_model = load_trained_model(model)
    mnist = load_mnist(data)
    result = evaluation.evaluate_model(keras_model, scale_pixels(mnist.test_images), mnist.test_labels)
    with atomic_path(plot) as tmp:
        save_confusion(result.confusion, tmp, f"{model.name}: test accuracy {result.accuracy:.4f}")
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model": str(model),
                    "test_images": len(mnist.test_labels),
                    **result.to_dict(),
                    "confusion_png": str(plot),
                }
            )
        )
        return
    typer.echo(f"test accuracy {result.accuracy:.4f} on {len(mnist.test_labels)} images ({model})")
    typer.echo(evaluation.format_evaluation(result))
    typer.echo(f"confusion matrix PNG: {plot}")


@app.command()
def export(
    output: Annotated[Path, typer.Argument(help="ONNX file to write (e.g. model.onnx).")],
    model: Annotated[Path, typer.Option(help="Trained Keras model.")] = DEFAULT_MODEL,
    data: DataOption = None,
    opset: Annotated[int, typer.Option(help=f"ONNX opset to target ({MIN_OPSET}-{MAX_OPSET}).")] = DEFAULT_OPSET,
    atol: Annotated[float, typer.Option(help="Largest allowed |Keras - ONNX| logit difference.")] = DEFAULT_ATOL,
    quantize: Annotated[
        str | None, typer.Option(help=f"Also write a quantized model: {', '.join(QUANTIZE_CHOICES)}.")
    ] = None,
    max_int8_drop: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Largest allowed int8 test-accuracy drop, in points.")
    ] = round(DEFAULT_MAX_INT8_DROP * 100, 6),
    triton_repo: Annotated[
        Path | None, typer.Option(help="Also write a Triton model repository here (see rowrnn triton-repo).")
    ] = None,
    step: Annotated[
        bool, typer.Option("--step", help="Also write OUT.step.onnx: one row per call, the LSTM state in and out.")
    ] = False,
) -> None:
    """Convert to ONNX with tf2onnx and refuse to write it unless it matches Keras."""
    if triton_repo is not None and triton_repo.exists() and not triton_repo.is_dir():
        raise InputError(f"{triton_repo}: exists and is not a directory")  # before minutes of work
    api = needs_training_extra("export.api")
    result = api.export_model(
        model,
        output,
        data_dir=data,
        opset=opset,
        atol=atol,
        quantize=quantize,
        max_int8_drop=max_int8_drop / 100.0,
        step=step,
    )
    report = result.report
    typer.echo(
        f"wrote {result.onnx_path}: parity on {report['images']} images ({report['inputs']}): "
        f"max-abs logit diff {report['max_abs_logit_diff']:.2g}, argmax agreement {report['argmax_agreement']:.2%}"
    )
    typer.echo(api.format_rewrites(report["rewrites"]))
    if report.get("onnx_test_accuracy") is not None:
        typer.echo(f"ONNX test accuracy {report['onnx_test_accuracy']:.4f}")
    if result.int8_path is not None:
        int8 = report["int8"]
        accuracy = (
            ""
            if int8.get("test_accuracy") is None
            else f", test accuracy {int8['test_accuracy']:.4f} ({-int8['accuracy_drop'] * 100:+.2f} points)"
        )
        typer.echo(f"wrote {result.int8_path}: {int8['size_bytes']:,} bytes{accuracy}")
    if result.step_path is not None:
        stepped = report["step"]
        typer.echo(
            f"wrote {result.step_path}: 28 steps reproduce the full model (max-abs logit diff "
            f"{stepped['max_abs_logit_diff_vs_full_onnx']:.2g}) and Keras ({stepped['max_abs_logit_diff_vs_keras']:.2g})"
        )
    typer.echo(f"parity report: {result.report_path}")
    if triton_repo is not None:
        from runtime.repository import write_triton_repository

        written = write_triton_repository(result.onnx_path, triton_repo, step=step)
        typer.echo(f"wrote {written}/config.pbtxt and {written}/1/model.onnx")
        if step:
            typer.echo(f"wrote the step model as {written.name}-stream beside it (see rowrnn triton-repo --step)")


@app.command()
def info(
    model: Annotated[
        Path | None, typer.Argument(help="ONNX model file (default: the bundled one).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Inputs, outputs, opset, op counts, size and metadata of an ONNX model."""
    from runtime.info import describe_model, format_description
    from runtime.predictor import BUNDLED_MODEL

    description = describe_model(BUNDLED_MODEL if model is None else model)
    typer.echo(json.dumps(description, indent=2) if as_json else format_description(description))


@contextlib.contextmanager
def reader_may_stop() -> Iterator[None]:
    """`rowrnn predict ... | head`: once the reader has what it wanted, stop quietly, exit 0.

    typer would turn the broken pipe into exit code 1, which here means "a check failed".
    """
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise typer.Exit(0) from None


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, .npy arrays or IDX files (.gz or raw), any mix.")],
    model: Annotated[
        Path | None, typer.Option(help="Exported rowrnn ONNX model (default: the bundled one).", show_default=False)
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines with input, index, label, confidence, probabilities.")
    ] = False,
) -> None:
    """Classify digits: one line per image. Bad files are reported; good ones still predicted."""
    from runtime.inputs import load_input
    from runtime.predictor import Predictor

    predictor = Predictor(model)
    any_failed = False
    with reader_may_stop():
        for path in inputs:
            try:
                result = predictor.predict(load_input(path))
            except InputError as exc:
                any_failed = True
                print(f"rowrnn: error: {one_line(exc)}", file=sys.stderr)
                continue
            for index, (label, confidence) in enumerate(zip(result.labels, result.confidence, strict=True)):
                if as_json:
                    typer.echo(
                        json.dumps(
                            {
                                "input": str(path),
                                "index": index,
                                "label": int(label),
                                "confidence": round(float(confidence), 6),
                                "probabilities": [round(float(p), 6) for p in result.probabilities[index]],
                            }
                        )
                    )
                else:
                    typer.echo(f"{path}\t{index}\t{label}\t{confidence:.4f}")
    if any_failed:
        raise typer.Exit(2)


@app.command()
def bench(
    keras: Annotated[Path, typer.Option(help="Trained Keras model.")] = DEFAULT_MODEL,
    onnx: Annotated[Path, typer.Option(help="Exported fp32 ONNX model.")] = Path("model.onnx"),
    int8: Annotated[Path, typer.Option(help="Exported int8 ONNX model.")] = Path("model.int8.onnx"),
    step: Annotated[Path, typer.Option(help="Exported step model (`rowrnn export --step`).")] = Path("model.step.onnx"),
    data: DataOption = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the full report as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG bar chart.")] = None,
    calls: Annotated[
        int, typer.Option(min=10, help="Single-image calls per ONNX engine (Keras: a tenth).")
    ] = BenchSettings.calls,
    images: Annotated[
        int | None, typer.Option(min=1, help="Throughput set size (default: the whole test set).")
    ] = BenchSettings.images,
    cold_starts: Annotated[
        int, typer.Option(min=1, help="Fresh `rowrnn predict` processes to time.")
    ] = BenchSettings.cold_starts,
) -> None:
    """Keras vs the ONNX predictor side by side: latency, throughput, ceiling, cold start, memory.

    A model file that does not exist skips its rows, with the reason; without --data (or
    $ROWRNN_DATA) synthetic images are timed and accuracy is not measured. A --data directory or a
    model that does not read is refused (exit 2); a measurement whose child process fails is
    reported, and the command exits 1.
    """
    from rowrnn.bench import failures, format_report, run_bench, save_plot
    from runtime.files import check_writable, write_json_atomic

    if json_path is not None:
        check_writable(json_path, ".json")
    if plot is not None:
        check_writable(plot, ".png")
        check_training_extra(("matplotlib",), needed_by="--plot")
    settings = BenchSettings(calls=calls, images=images, cold_starts=cold_starts)
    report = run_bench(keras, onnx, int8, data, settings, progress=show_progress, step_path=step)
    show_progress("")
    typer.echo(format_report(report))
    if json_path is not None:
        write_json_atomic(json_path, report)
        typer.echo(f"wrote {json_path}")
    if plot is not None:
        save_plot(report, plot)
        typer.echo(f"wrote {plot}")
    failed = failures(report)
    if failed:
        raise CheckFailed(f"{len(failed)} measurement(s) failed: " + "; ".join(failed))


@app.command()
def serve(
    model: Annotated[
        Path | None,
        typer.Argument(help="Exported rowrnn ONNX model (default: the bundled one).", show_default=False),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = ServeSettings.host,
    port: Annotated[int, typer.Option(help="TCP port (0: any free port, printed at start).")] = ServeSettings.port,
    grpc_port: Annotated[
        int, typer.Option(help="TCP port of the gRPC service (0: any free port, printed at start).")
    ] = ServeSettings.grpc_port,
    no_grpc: Annotated[bool, typer.Option("--no-grpc", help="Serve REST only.")] = False,
    name: Annotated[
        str, typer.Option(help="Model name in /v2/models/{name} (with a repository: the page's default model).")
    ] = ServeSettings.name,
    model_repository: Annotated[
        Path | None,
        typer.Option(
            help="Serve every model of this Triton-layout repository (NAME/config.pbtxt, NAME/VERSION/model.onnx) instead of one file."
        ),
    ] = None,
    poll_s: Annotated[
        float,
        typer.Option(
            help="With --model-repository: look for new and removed versions every S seconds and roll them out (0: never)."
        ),
    ] = ServeSettings.poll_s,
    max_batch: Annotated[
        int,
        typer.Option(
            help="Largest batch the dynamic batcher forms, in images (a repository's models: their config's max_batch_size)."
        ),
    ] = ServeSettings.max_batch,
    max_delay_ms: Annotated[
        float, typer.Option(help="How long a request waits for company (0: never).")
    ] = ServeSettings.max_delay_ms,
    max_queue: Annotated[
        int, typer.Option(help="Images that may wait; beyond it: 503 + Retry-After.")
    ] = ServeSettings.max_queue,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body; beyond it: 413.")
    ] = ServeSettings.max_body_mb,
    body_timeout_s: Annotated[
        float, typer.Option(help="A body not received within this: 408.")
    ] = ServeSettings.body_timeout_s,
    drain_timeout_s: Annotated[
        float,
        typer.Option(help="On SIGTERM/Ctrl-C, how long requests in flight and live sequences may take to finish."),
    ] = ServeSettings.drain_timeout_s,
    max_sequences: Annotated[
        int,
        typer.Option(
            help="Live sequences of the stream models (NAME-stream) at once; a new one beyond it: 503 / RESOURCE_EXHAUSTED."
        ),
    ] = ServeSettings.max_sequences,
    sequence_idle_s: Annotated[
        float, typer.Option(help="A sequence without a row for this long is dropped (its next row: 400, expired).")
    ] = ServeSettings.sequence_idle_s,
    header_timeout_s: Annotated[
        float, typer.Option(help="A client must send its request headers within this, in all: else 408 and closed.")
    ] = ServeSettings.header_timeout_s,
    max_connections: Annotated[
        int, typer.Option(help="HTTP connections open at once; a connection beyond it gets 503 at once.")
    ] = ServeSettings.max_connections,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ROWRNN_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY' (all but /v2/health)."
        ),
    ] = None,
    cors_origin: Annotated[str | None, typer.Option(help="Allow this browser origin (no CORS by default).")] = None,
    log_level: Annotated[
        str, typer.Option(help="critical, error, warning, info (one access-log line per request) or debug.")
    ] = ServeSettings.log_level,
) -> None:
    """Serve the model: a page to draw digits on (/), the Open Inference Protocol (KServe v2)
    over REST and gRPC with dynamic batching, and /metrics.

    Clients written for Triton, KServe or MLServer work unchanged. SIGTERM or Ctrl-C drains:
    readiness turns false, requests in flight finish, exit 0.
    """
    check_serve_extra()
    from serve.app import create_app
    from serve.server import run

    if model is not None and model_repository is not None:
        raise InputError(f"{model}: give a model file or --model-repository, not both")
    settings = ServeSettings(
        host=host,
        port=port,
        grpc_port=None if no_grpc else grpc_port,
        name=name,
        model_repository=None if model_repository is None else str(model_repository),
        poll_s=poll_s,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        body_timeout_s=body_timeout_s,
        drain_timeout_s=drain_timeout_s,
        max_sequences=max_sequences,
        sequence_idle_s=sequence_idle_s,
        header_timeout_s=header_timeout_s,
        max_connections=max_connections,
        api_key=api_key,
        cors_origin=cors_origin,
        log_level=log_level,
    )
    run(create_app(model, settings), settings)


@app.command()
def site(
    directory: Annotated[
        Path, typer.Argument(help="Directory to write the site into (new, empty, or an earlier site).")
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Exported rowrnn ONNX model; its MODEL.step.onnx is included when beside it (default: the bundled one).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a static site that runs the model in the browser (onnxruntime-web): no server needed.

    Serve DIR with any static file server. onnxruntime-web is fetched once by npm into a cache
    ($ROWRNN_CACHE, default ~/.cache/rowrnn) and checked against pinned hashes.
    """
    from serve.static_site import write_site

    written = write_site(directory, model)
    total = sum(entry["bytes"] for entry in written["files"].values())
    typer.echo(
        f"wrote {directory}/: {len(written['files'])} files, {total / 1e6:.1f} MB "
        f"(onnxruntime-web {written['onnxruntime_web']['version']}); sha256 of each in {directory}/manifest.json"
    )


@app.command("triton-repo")
def triton_repo(
    model: Annotated[Path, typer.Argument(help="Exported rowrnn ONNX model.")],
    directory: Annotated[Path, typer.Argument(help="Model repository directory to write into.")],
    name: Annotated[str, typer.Option(help="Model name (its directory in the repository).")] = ServeSettings.name,
    max_batch: Annotated[
        int, typer.Option(help="Triton's max_batch_size (default: as rowrnn serve).")
    ] = ServeSettings.max_batch,
    max_delay_ms: Annotated[
        float, typer.Option(help="Triton's dynamic-batching max queue delay (default: as rowrnn serve).")
    ] = ServeSettings.max_delay_ms,
    version: Annotated[
        int,
        typer.Option(
            help="The version directory to write (another version of a model already there: a server polling the repository rolls it out)."
        ),
    ] = int(MODEL_VERSION),
    step: Annotated[
        bool,
        typer.Option(
            "--step",
            help="Also the step model (MODEL.step.onnx beside MODEL) as NAME-stream: Triton's sequence batching with implicit state.",
        ),
    ] = False,
    max_sequences: Annotated[
        int, typer.Option(help="With --step: Triton's max_candidate_sequences (default: as rowrnn serve).")
    ] = ServeSettings.max_sequences,
    sequence_idle_s: Annotated[
        float, typer.Option(help="With --step: Triton's max_sequence_idle (default: as rowrnn serve).")
    ] = ServeSettings.sequence_idle_s,
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt + VERSION/model.onnx) for a model."""
    from runtime.repository import STREAM_SUFFIX, write_triton_repository

    written = write_triton_repository(
        model,
        directory,
        name=name,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        version=version,
        step=step,
        max_sequences=max_sequences,
        sequence_idle_s=sequence_idle_s,
    )
    typer.echo(f"wrote {written}/config.pbtxt and {written}/{version}/model.onnx")
    if step:
        stream = written.with_name(written.name + STREAM_SUFFIX)
        typer.echo(
            f"wrote {written}/{version}/model.step.onnx, {stream}/config.pbtxt and {stream}/{version}/model.onnx"
        )


@app.command()
def anytime(
    model: Annotated[Path, typer.Option(help="Step model from `rowrnn export OUT.onnx --step`.")] = Path(
        "model.step.onnx"
    ),
    data: DataOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also write a PNG of the curve and the early exits.")] = None,
) -> None:
    """How early the model knows: test accuracy after k rows, and early exit at 0.9/0.99/0.999 (time saved, measured)."""
    from rowrnn.anytime import format_anytime, labelled_test_set, run_anytime
    from runtime.files import atomic_path, check_writable
    from runtime.stream import StreamingPredictor

    if plot is not None:
        check_writable(plot, ".png")
        check_training_extra(("matplotlib",), needed_by="--plot")
    predictor = StreamingPredictor(model)
    images, labels, source = labelled_test_set(data)
    report = run_anytime(predictor, images, labels, source, progress=lambda message: show_progress(message, "anytime"))
    show_progress("", "anytime")
    typer.echo(json.dumps(report) if as_json else format_anytime(report))
    if plot is not None:
        from rowrnn_keras.plots import save_anytime

        with atomic_path(plot) as tmp:
            save_anytime(report, tmp)
        if not as_json:
            typer.echo(f"wrote {plot}")


def show_progress(message: str, command: str = "bench") -> None:
    """One status line on stderr, rewritten in place on a terminal; cleared by an empty message."""
    if sys.stderr.isatty():
        print(f"\r\x1b[K{message and command + ': ' + message}", end="", file=sys.stderr, flush=True)
    elif message:
        print(f"{command}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every expected failure into one line and an exit code."""
    try:
        command = typer.main.get_command(app)  # inside: Ctrl-C can land here too
        code = command.main(args=argv, prog_name="rowrnn", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors and bad option values (click's)
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `rowrnn`: show the help
            exc.show()
        else:
            print(f"rowrnn: error: {one_line(exc.format_message())}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except InputError as exc:
        print(f"rowrnn: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except CheckFailed as exc:
        print(f"rowrnn: check failed: {one_line(exc)}", file=sys.stderr)
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        exit_interrupted()
    sys.exit(code if isinstance(code, int) else 0)


def exit_interrupted() -> None:
    """One line and exit code 130, the shell's code for Ctrl-C.

    `os._exit`, not `sys.exit`: a KeyboardInterrupt that passed through C code running Python
    (`PyRun_*`) marks itself unhandled even when caught, and CPython then ends the process by
    SIGINT (exit -2) at shutdown. Everything that cleans up has run while the exception unwound.
    """
    print("rowrnn: interrupted", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
