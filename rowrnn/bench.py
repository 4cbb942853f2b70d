"""`rowrnn bench`: Keras and the ONNX predictor measured side by side, in one process.

Everything that is compared is measured interleaved (round after round, each engine in turn), so
drift on a shared machine hits all engines alike. Single-image latency cycles through real test
images; throughput classifies the whole test set; the hardware ceiling is a float32 matmul timed
in the same rounds. Cold start and peak memory are measured in fresh subprocesses.

What is not given is skipped with the reason (a model file that does not exist, no test images:
synthetic ones, accuracy not measured); what is given and unusable (a data directory or model that
does not read) is refused before any measuring; a measurement that fails (a child process that
crashes or hangs) is reported in the table and the JSON's "failures", and `rowrnn bench` exits 1.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.contract import IMAGE_SHAPE, scale_pixels
from runtime.errors import InputError, one_line

KERAS_CALL_SHARE = 10  # Keras is ~1000x slower per image: it gets 1/10 of the single-image calls
KERAS_BATCH = 1024  # images per call when a Keras engine classifies many
MATMUL_SIZE = 1536  # float32 [n, n] @ [n, n]: 7.2 GFLOP, long enough to reach full speed
# Pause before each engine's turn: the previous engine's thread pools (TensorFlow's, BLAS's) spin
# for a while after their work and would otherwise slow the next engine down.
SETTLE_SECONDS = 0.05
CHILD_TIMEOUT_S = 600  # a cold-start or memory child still running after this has failed (hung)


@dataclass
class Engine:
    """Something that classifies images: one at a time (latency) and in bulk (throughput)."""

    key: str  # what the code matches on: "keras_predict", "keras_call", "onnx_fp32", "onnx_int8"
    name: str  # what people read in the table
    model: str
    predict_one: Callable[[np.ndarray], object] | None = None
    predict_many: Callable[[np.ndarray], np.ndarray] | None = None  # -> labels
    model_flops: float | None = None  # per image, of the architecture (the same for every engine)
    executed_flops: float | None = None  # per image, float32, of the graph this engine runs
    call_share: int = 1  # makes 1/call_share of the single-image calls (Keras: far slower)
    skipped: str | None = None  # why it was not measured
    latencies: list[float] = field(default_factory=list)  # seconds
    batch_seconds: list[float] = field(default_factory=list)
    accuracy: float | None = None  # on the labelled test images, when there are labels


@dataclass(frozen=True)
class BenchSettings:
    calls: int = 1000  # single-image calls per ONNX engine (Keras engines: calls / 10)
    rounds: int = 10  # latency rounds; throughput and ceiling get 3
    images: int | None = None  # throughput set size (default: the whole test set)
    cold_starts: int = 5
    measure_memory: bool = True


def percentiles(samples: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(np.asarray(samples) * 1e6, [50, 90, 99])
    return {"p50_us": float(p50), "p90_us": float(p90), "p99_us": float(p99), "calls": len(samples)}


# ---------------------------------------------------------------- inputs and engines


def bench_images(data: Path | None, limit: int | None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(uint8 test images, labels or None, description): the MNIST test set of `data` (or
    $ROWRNN_DATA), refused (InputError) if it does not read; synthetic strokes when none is given."""
    from runtime.mnist import describe_test_set, load_mnist_dir, resolve_data_dir

    directory = resolve_data_dir(data)
    if directory is not None:
        mnist = load_mnist_dir(directory)
        return mnist.test_images[:limit], mnist.test_labels[:limit], describe_test_set(mnist.test_images)
    rng = np.random.default_rng(0)
    images = (rng.random((limit or 10_000, *IMAGE_SHAPE)) < 0.15).astype(np.uint8) * 255
    return images, None, "synthetic images, accuracy not measured: no MNIST directory (--data or $ROWRNN_DATA)"


def model_flops(layers: list[dict] | None) -> float | None:
    """2 x multiply-adds per image of a Dense/LSTM stack on 28 rows of 28 pixels: the work the
    trained model defines, whatever graph an engine runs it as. `layers` is the structured
    architecture (`rowrnn_keras.model.architecture_layers`, the ONNX metadata's `architecture_json`);
    None for anything else. Layers before the LSTM run once per row, the LSTM once per row with
    four gates over [input, state], layers after it once per image."""
    if not layers:
        return None
    steps, width = IMAGE_SHAPE
    flops, per_row = 0.0, True
    for layer in layers:
        kind, units = layer.get("layer"), layer.get("units")
        if not isinstance(units, int) or kind not in ("Dense", "LSTM"):
            return None
        if kind == "LSTM":
            flops += 2.0 * steps * 4 * units * (width + units)
            per_row = False
        else:
            flops += 2.0 * (steps if per_row else 1) * width * units
        width = units
    return flops


def onnx_flops(path: Path) -> float | None:
    """2 x multiply-adds per image that a float32 rowrnn ONNX graph executes (LSTM, MatMul/Gemm);
    fewer than `model_flops` once the export has folded the input layer into the LSTM."""
    import onnx

    model = onnx.load(path)
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    steps = IMAGE_SHAPE[0]
    flops, after_lstm = 0.0, False
    for node in model.graph.node:  # topological order: layers before the LSTM run once per row
        if node.op_type == "LSTM":
            (_, gates, width), (_, _, hidden) = shapes[node.input[1]], shapes[node.input[2]]
            flops += 2.0 * steps * gates * (width + hidden)
            after_lstm = True
        elif node.op_type in ("MatMul", "Gemm") and node.input[1] in shapes:
            k, n = shapes[node.input[1]][-2:]
            flops += 2.0 * (1 if after_lstm else steps) * k * n
        elif node.op_type.startswith(("DynamicQuantize", "MatMulInteger", "QLinear")):
            return None  # int8 arithmetic: a float32 ceiling does not apply
    return flops


def keras_engines(path: Path) -> list[Engine]:
    """Keras `predict` and Keras called directly, or two skipped rows saying why (no such file, no
    TensorFlow here); a file that is not a trained rowrnn model is refused (InputError)."""
    names = {"keras_predict": "Keras predict", "keras_call": "Keras call"}
    if not path.is_file():
        return [Engine(k, n, str(path), skipped=f"{path}: not found (run `rowrnn train`)") for k, n in names.items()]
    try:
        from rowrnn.extras import needs_training_extra

        keras_side = needs_training_extra("rowrnn_keras.model")
    except InputError as exc:
        return [Engine(k, n, str(path), skipped=one_line(exc)) for k, n in names.items()]
    model = keras_side.load_trained_model(path)

    def call_many(rows: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                model(rows[i : i + KERAS_BATCH], training=False).numpy().argmax(1)
                for i in range(0, len(rows), KERAS_BATCH)
            ]
        )

    flops = model_flops(keras_side.architecture_layers(model))
    keras = dict(model=str(path), model_flops=flops, executed_flops=flops, call_share=KERAS_CALL_SHARE)
    return [
        Engine(
            "keras_predict",
            names["keras_predict"],
            predict_one=lambda x: model.predict(x, verbose=0),
            predict_many=lambda rows: model.predict(rows, batch_size=KERAS_BATCH, verbose=0).argmax(1),
            **keras,
        ),
        Engine(
            "keras_call",
            names["keras_call"],
            predict_one=lambda x: model(x, training=False),
            predict_many=call_many,
            **keras,
        ),
    ]


def onnx_engine(key: str, name: str, path: Path) -> Engine:
    """The runtime Predictor on one ONNX file, or a skipped row if there is no such file; a file
    that is not a rowrnn model is refused (InputError)."""
    from runtime.predictor import Predictor

    if not path.is_file():
        return Engine(key, name, str(path), skipped=f"{path}: not found (run `rowrnn export`)")
    predictor = Predictor(path)
    return Engine(
        key,
        name,
        str(path),
        predictor.predict,
        lambda rows: predictor.predict(rows).labels,
        model_flops=model_flops(metadata_architecture(predictor.metadata)),
        executed_flops=onnx_flops(path),
    )


def metadata_architecture(metadata: dict[str, str]) -> list[dict] | None:
    """The structured architecture an export recorded (`architecture_json`); None in files
    exported before it was recorded, or if it does not parse."""
    try:
        layers = json.loads(metadata["architecture_json"])
    except (KeyError, ValueError):
        return None
    return layers if isinstance(layers, list) and all(isinstance(layer, dict) for layer in layers) else None


# ---------------------------------------------------------------- measurements


def matmul_gflops() -> float:
    """Best of three float32 square matmuls (numpy's BLAS, all cores), in GFLOP/s."""
    a = np.random.default_rng(0).random((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    best = min(timed(lambda: a @ a) for _ in range(3))
    return 2.0 * MATMUL_SIZE**3 / best / 1e9


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure_latency(engines: list[Engine], rows: np.ndarray, settings: BenchSettings, progress) -> None:
    """Single-image calls, round-robin over engines, each round a slice of every engine's calls."""
    live = [e for e in engines if not e.skipped]
    for engine in live:  # warm-up: first calls build graphs, arenas, caches
        for i in range(3):
            engine.predict_one(rows[i : i + 1])
    for round_index in range(settings.rounds):
        progress(f"single-image latency, round {round_index + 1}/{settings.rounds}")
        for engine in live:
            time.sleep(SETTLE_SECONDS)
            calls = max(settings.calls // engine.call_share // settings.rounds, 1)
            for i in range(calls):
                index = (round_index * calls + i) % len(rows)
                image = rows[index : index + 1]
                start = time.perf_counter()
                engine.predict_one(image)
                engine.latencies.append(time.perf_counter() - start)


def measure_throughput(engines: list[Engine], rows: np.ndarray, labels: np.ndarray | None, progress) -> list[float]:
    """Whole-set passes, interleaved with the matmul ceiling; returns the GFLOP/s samples."""
    live = [e for e in engines if not e.skipped]
    gflops = []
    for round_index in range(3):
        progress(f"throughput on {len(rows)} images, round {round_index + 1}/3")
        gflops.append(matmul_gflops())
        for engine in live:
            start = time.perf_counter()
            predicted = engine.predict_many(rows)
            engine.batch_seconds.append(time.perf_counter() - start)
            if labels is not None:
                engine.accuracy = float(np.mean(predicted == labels))
    return gflops


def rowrnn_command() -> list[str]:
    """The installed `rowrnn` script beside this Python, else `python -m rowrnn`."""
    script = Path(sys.executable).with_name("rowrnn")
    if script.is_file():
        return [str(script)]
    found = shutil.which("rowrnn")
    return [found] if found else [sys.executable, "-m", "rowrnn"]


def run_child(command: list[str], what: str) -> str:
    """Run a measuring child process; its stdout, or ChildFailed saying how it ended."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{what}: still running after {CHILD_TIMEOUT_S} s") from None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.stdout.strip()
        raise ChildFailed(f"{what}: exited with {done.returncode}: {one_line(last, 300)}")
    return done.stdout


class ChildFailed(Exception):
    """A measuring child process crashed, or hung: the measurement failed (not skipped)."""


def measure_cold_start(onnx_path: Path, image: np.ndarray, runs: int, workdir: Path) -> dict:
    """Wall time of `rowrnn predict MODEL one.png` in a fresh process (the first run warms the
    disk cache); {"failed": why} if a run fails."""
    from PIL import Image

    png = workdir / "one.png"
    Image.fromarray(image).save(png)
    command = [*rowrnn_command(), "predict", str(png), "--model", str(onnx_path)]
    seconds = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        try:
            run_child(command, f"`rowrnn predict {png.name} --model {onnx_path.name}`")
        except ChildFailed as exc:
            return {"failed": str(exc)}
        seconds.append(time.perf_counter() - start)
    seconds = seconds[1:]
    return {
        "command": f"rowrnn predict {onnx_path.name} one.png",
        "runs": runs,
        "p50_s": statistics.median(seconds),
        "min_s": min(seconds),
    }


def own_peak_rss_mb() -> float:
    """This process's peak RSS in MB. VmHWM, not getrusage's ru_maxrss: a spawned child inherits
    its parent's high-water mark there."""
    with open("/proc/self/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM"))) / 1024.0  # kB


# The children carry the function's source, not an import of this module: its imports would
# count against the predictor's memory.
REPORT_PEAK_RSS = inspect.getsource(own_peak_rss_mb) + "print(own_peak_rss_mb())\n"
PREDICTOR_CHILD = (
    """
import sys, numpy as np
from runtime.predictor import Predictor
Predictor(sys.argv[1]).predict(np.load(sys.argv[2]))
"""
    + REPORT_PEAK_RSS
)
KERAS_CHILD = (
    """
import os, sys, numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from rowrnn_keras.model import load_trained_model
load_trained_model(sys.argv[1]).predict(np.load(sys.argv[2]), batch_size=1024, verbose=0)
"""
    + REPORT_PEAK_RSS
)


def peak_rss_mb(code: str, model: Path, rows_file: Path, who: str) -> float:
    """Peak RSS (MB) of a fresh process that loads `model` and classifies the saved rows; ChildFailed if it fails."""
    return float(
        run_child([sys.executable, "-c", code, str(model), str(rows_file)], f"peak RSS of the {who} process").split()[
            -1
        ]
    )


def measure_memory(onnx_path: Path, keras_path: Path, rows: np.ndarray, workdir: Path, keras_ok: bool) -> dict:
    """{"images", "predictor_mb", "keras_mb"}: MB, or why it was not measured; a child that failed
    is named in "failed" (and its entry says "failed")."""
    rows_file = workdir / "rows.npy"
    np.save(rows_file, rows)
    result: dict = {
        "images": len(rows),
        "predictor_mb": f"{onnx_path}: not found",
        "keras_mb": "no Keras model measured",
    }
    failed = []
    for key, code, model, measured, who in (
        ("predictor_mb", PREDICTOR_CHILD, onnx_path, onnx_path.is_file(), "predictor"),
        ("keras_mb", KERAS_CHILD, keras_path, keras_ok, "Keras"),
    ):
        if measured:
            try:
                result[key] = peak_rss_mb(code, model, rows_file, who)
            except ChildFailed as exc:
                result[key] = "failed"
                failed.append(str(exc))
    if failed:
        result["failed"] = "; ".join(failed)
    return result


# ---------------------------------------------------------------- the whole run


def machine() -> dict:
    """What the numbers were measured on."""
    import importlib.metadata

    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": version("onnxruntime"),
        "tensorflow": version("tensorflow"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_bench(
    keras_path: Path,
    onnx_path: Path,
    int8_path: Path,
    data: Path | None,
    settings: BenchSettings = BenchSettings(),
    progress: Callable[[str], None] = lambda message: None,
    step_path: Path | None = None,
) -> dict:
    """Measure every engine; return the report `format_report` prints and `--json` writes."""
    # Read everything given first: what does not read is refused before any output or measuring.
    images, labels, source = bench_images(data, settings.images)
    rows = scale_pixels(images)
    keras = keras_engines(keras_path)
    engines = [
        *keras,
        onnx_engine("onnx_fp32", "ONNX fp32", onnx_path),
        onnx_engine("onnx_int8", "ONNX int8", int8_path),
    ]
    if step_path is not None and step_path.is_file():
        from runtime.stream import StreamingPredictor

        StreamingPredictor(step_path)  # not a step model: refused now, not after minutes of measuring
    measure_latency(engines, rows, settings, progress)
    gflops = measure_throughput(engines, rows, labels, progress)
    ceiling = statistics.median(gflops)
    if step_path is not None:  # the step model (`rowrnn export --step`): rowrnn.anytime measures it
        from rowrnn.anytime import measure_streaming

        progress("streaming: one-row steps and streamed images")
        streaming = measure_streaming(step_path, onnx_path, rows, settings.calls, settings.rounds)
    with tempfile.TemporaryDirectory(prefix="rowrnn-bench-") as workdir:
        progress("cold start of `rowrnn predict` (subprocesses)")
        cold = (
            measure_cold_start(onnx_path, images[0], settings.cold_starts, Path(workdir))
            if onnx_path.is_file()
            else {"skipped": f"{onnx_path}: not found"}
        )
        memory = {"skipped": "not requested"}
        if settings.measure_memory:
            progress("peak memory of a predictor process and a Keras process (subprocesses)")
            memory = measure_memory(onnx_path, keras_path, images, Path(workdir), keras_ok=not keras[0].skipped)
    report = build_report(engines, ceiling, cold, memory, source, len(rows))
    if step_path is not None:
        report["streaming"] = streaming
    return report


def failures(report: dict) -> list[str]:
    """The measurements of `report` that failed (a child process crashed or hung), one line each."""
    return [
        f"{what}: {report[key]['failed']}"
        for key, what in (("cold_start", "cold start"), ("peak_rss", "peak RSS"))
        if "failed" in report[key]
    ]


def build_report(
    engines: list[Engine], ceiling_gflops: float, cold: dict, memory: dict, source: str, images: int
) -> dict:
    keras = next((e for e in engines if e.key == "keras_predict" and not e.skipped), None)
    keras_p50 = percentiles(keras.latencies)["p50_us"] if keras else None
    keras_rate = images_per_second(keras, images) if keras else None
    rows = []
    for engine in engines:
        row: dict = {"key": engine.key, "engine": engine.name, "model": engine.model, "skipped": engine.skipped}
        if not engine.skipped:
            latency = percentiles(engine.latencies)
            rate = images_per_second(engine, images)
            row.update(
                latency_us=latency,
                images_per_s=rate,
                accuracy=engine.accuracy,
                model_flops_per_image=engine.model_flops,
                executed_flops_per_image=engine.executed_flops,
                latency_speedup_vs_keras=keras_p50 / latency["p50_us"] if keras_p50 else None,
                throughput_vs_keras=rate / keras_rate if keras_rate else None,
                ceiling_images_per_s=ceiling_gflops * 1e9 / engine.model_flops if engine.model_flops else None,
                flop_use=rate * engine.executed_flops / (ceiling_gflops * 1e9) if engine.executed_flops else None,
            )
            row["fraction_of_ceiling"] = rate / row["ceiling_images_per_s"] if row["ceiling_images_per_s"] else None
        rows.append(row)
    if isinstance(memory.get("predictor_mb"), float) and isinstance(memory.get("keras_mb"), float):
        memory["predictor_vs_keras"] = memory["predictor_mb"] / memory["keras_mb"]
    return {
        "machine": machine(),
        "inputs": source,
        "images": images,
        "engines": rows,
        "ceiling": {
            "gflops": ceiling_gflops,
            "what": f"numpy float32 {MATMUL_SIZE}x{MATMUL_SIZE} matmul, median of 3 rounds",
        },
        "cold_start": cold,
        "peak_rss": memory,
    }


def images_per_second(engine: Engine, images: int) -> float:
    """Images per second: the median whole-set pass."""
    return images / statistics.median(engine.batch_seconds)


# ---------------------------------------------------------------- output


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"rowrnn bench: {m['cpu']}, {m['cores']} cores, load average {m['load_average'] if m['load_average'] is None else round(m['load_average'], 2)}; "
        f"onnxruntime {m['onnxruntime']}, "
        f"tensorflow {m['tensorflow']}, numpy {m['numpy']}",
        f"inputs: {report['inputs']}; throughput over {report['images']} images",
        "",
        f"{'engine':<14}{'p50 µs':>10}{'p90 µs':>10}{'p99 µs':>10}{'× Keras':>9}{'images/s':>11}{'× Keras':>9}"
        f"{'% ceiling':>11}{'FLOP use':>10}{'accuracy':>10}",
    ]
    for row in report["engines"]:
        if row["skipped"]:
            lines.append(f"{row['engine']:<14}skipped: {row['skipped']}")
            continue
        lat = row["latency_us"]
        lines.append(
            f"{row['engine']:<14}{lat['p50_us']:>10,.0f}{lat['p90_us']:>10,.0f}{lat['p99_us']:>10,.0f}"
            f"{ratio(row['latency_speedup_vs_keras']):>9}{row['images_per_s']:>11,.0f}{ratio(row['throughput_vs_keras']):>9}"
            f"{percent(row['fraction_of_ceiling']):>11}{percent(row['flop_use']):>10}{percent(row['accuracy'], 2):>10}"
        )
    ceiling = report["ceiling"]
    lines += ["", f"ceiling: {ceiling['gflops']:.0f} GFLOP/s ({ceiling['what']})"]
    measured = [row for row in report["engines"] if not row["skipped"]]
    model = next((row for row in measured if row.get("model_flops_per_image")), None)
    if model:
        lines.append(
            f"  % ceiling: images/s against {model['ceiling_images_per_s']:,.0f} images/s, the ceiling for the "
            f"model's {model['model_flops_per_image'] / 1e6:.2f} MFLOP/image"
        )
    for row in measured:
        if row.get("executed_flops_per_image") and row["executed_flops_per_image"] != row.get("model_flops_per_image"):
            lines.append(
                f"  FLOP use: {row['engine']} executes {row['executed_flops_per_image'] / 1e6:.2f} MFLOP/image "
                "(input layer folded into the LSTM); FLOP use = executed GFLOP/s / ceiling"
            )
    cold = report["cold_start"]
    lines.append(
        "cold start: "
        + (
            f"skipped: {cold['skipped']}"
            if "skipped" in cold
            else f"FAILED: {cold['failed']}"
            if "failed" in cold
            else f"`{cold['command']}` p50 {cold['p50_s']:.3f} s, min {cold['min_s']:.3f} s ({cold['runs']} runs)"
        )
    )
    memory = report["peak_rss"]
    if "skipped" in memory:
        lines.append(f"peak RSS: skipped: {memory['skipped']}")
    else:
        parts = [
            f"{who} process {mb:.0f} MB" if isinstance(mb, float) else f"{who}: {mb}"
            for who, mb in (("predictor", memory["predictor_mb"]), ("Keras", memory["keras_mb"]))
        ]
        lines.append(
            f"peak RSS classifying {memory['images']} images: "
            + ", ".join(parts)
            + (f" ({memory['predictor_vs_keras']:.2f}× Keras)" if "predictor_vs_keras" in memory else "")
        )
        if "failed" in memory:
            lines.append(f"peak RSS: FAILED: {memory['failed']}")
    if "streaming" in report:
        from rowrnn.anytime import format_streaming

        lines += format_streaming(report["streaming"])
    return "\n".join(lines)


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}×" if value < 100 else f"{value:,.0f}×"


def percent(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def save_plot(report: dict, path: Path) -> Path:
    """Bar charts of p50 latency (log scale) and throughput, with each engine's ceiling marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.files import atomic_path

    measured = [row for row in report["engines"] if not row["skipped"]]
    names = [row["engine"] for row in measured]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [row["latency_us"]["p50_us"] for row in measured], color="tab:blue")
    left.set_yscale("log")
    left.set_title("single-image latency, p50 (µs, log scale)", fontsize=10)
    right.bar(names, [row["images_per_s"] for row in measured], color="tab:green")
    ceilings = {row["ceiling_images_per_s"] for row in measured if row.get("ceiling_images_per_s")}
    for ceiling in ceilings:
        right.axhline(ceiling, color="black", linestyle="dashed", linewidth=1)
    right.set_title(f"images/s over {report['images']} images (dashed: matmul ceiling)", fontsize=10)
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=20)
    figure.suptitle(f"rowrnn bench: {report['machine']['cpu']}, {report['machine']['cores']} cores")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return path
