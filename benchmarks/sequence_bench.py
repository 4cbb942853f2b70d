"""Serving a sequence: rowrnn's stream model against the stateless way, side by side in one run.

    python benchmarks/sequence_bench.py [--seconds 4] [--rounds 2] [--json out.json] [--markdown]

One `rowrnn serve` (the bundled model and its step model) on 127.0.0.1. Clients send images row by
row and need the network's belief after every row, at 1 and at 64 concurrent sequences, two ways:

- **stateful**: one row per request to `rowrnn-stream` with Triton's sequence parameters; the
  server keeps the LSTM state and batches the rows of the live sequences into step-model calls;
- **stateless**: what a user would write without it: after every row, the whole image so far
  (the rows not yet read as zeros) to the full model `rowrnn`, which reads all 28 rows each time.

Both over REST with binary tensors, from client threads of this process (one keep-alive
connection per sequence; a sequence sends its next row when the previous answer is back, and a new
image follows the last row); and both over gRPC, from grpc.aio clients of this process (4
channels): the stateful way on Triton's bidirectional stream `ModelStreamInfer` (one stream per
sequence: the API for a pen or a line scanner), the stateless way as one `ModelInfer` call per row. Per row: the latency a client waits (p50, p99), rows answered per
second, and the server process's CPU-seconds per row (utime + stime of its PID). Each scenario runs
`--rounds` times, the two ways taking turns; the table shows medians.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from runtime import BUNDLED_MODEL, StreamingPredictor  # noqa: E402
from runtime.contract import step_path_for  # noqa: E402
from runtime.files import write_text_atomic  # noqa: E402

STATEFUL, STATELESS = "stateful (rowrnn-stream, one row per request)", "stateless (the image so far to rowrnn)"
STATEFUL_GRPC = "stateful over gRPC (rowrnn-stream on a ModelStreamInfer stream)"
STATELESS_GRPC = "stateless over gRPC (the image so far to rowrnn, ModelInfer)"
WAYS = (STATEFUL, STATELESS, STATEFUL_GRPC, STATELESS_GRPC)
GRPC_WAYS = (STATEFUL_GRPC, STATELESS_GRPC)
MODEL_WORK = {STATEFUL: STATEFUL, STATELESS: STATELESS, STATEFUL_GRPC: STATEFUL, STATELESS_GRPC: STATELESS}
GRPC_CHANNELS = 4
SEQUENCES = (1, 64)
ROWS = 28
TARGET_CPU_RATIO = 5.0  # the stateless way's CPU-seconds per row over the stateful way's, at 64 sequences


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(log: Path) -> tuple[subprocess.Popen, int, int]:
    port, grpc_port = free_port(), free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rowrnn",
                "serve",
                "--port",
                str(port),
                "--grpc-port",
                str(grpc_port),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"rowrnn serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if "ready at" in log.read_text():
            return process, port, grpc_port
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"rowrnn serve was not ready within 120 s:\n{log.read_text()[-3000:]}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def binary_request(name: str, shape: list[int], data: np.ndarray, parameters: dict) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": name, "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": data.nbytes}}
    header = json.dumps(
        {
            "inputs": [tensor],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
            "parameters": parameters,
        }
    ).encode()
    return header + data.astype("<f4").tobytes(), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def row_requests(way: str, image: np.ndarray, sequence_id: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """The 28 requests a client sends for one image, one after each row."""
    requests = []
    for r in range(ROWS):
        if way == STATEFUL:
            parameters = {"sequence_id": sequence_id, "sequence_start": r == 0, "sequence_end": r == ROWS - 1}
            body, headers = binary_request("row", [1, 28], image[r : r + 1], parameters)
            requests.append(("/v2/models/rowrnn-stream/infer", body, headers))
        else:
            so_far = np.zeros((1, ROWS, 28), np.float32)
            so_far[0, : r + 1] = image[: r + 1]
            body, headers = binary_request("rows", [1, ROWS, 28], so_far, {})
            requests.append(("/v2/models/rowrnn/infer", body, headers))
    return requests


BATCH_METRIC = {
    STATEFUL: "rowrnn_sequence_step_rows",
    STATELESS: "rowrnn_inference_batch_size",
    STATEFUL_GRPC: "rowrnn_sequence_step_rows",
    STATELESS_GRPC: "rowrnn_inference_batch_size",
}


def grpc_request(way: str, image: np.ndarray, r: int, sequence_id: str):
    """The gRPC request a client sends after row `r` of `image`."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="rowrnn-stream" if way == STATEFUL_GRPC else "rowrnn")
    tensor = request.inputs.add()
    tensor.datatype = "FP32"
    if way == STATEFUL_GRPC:
        tensor.name = "row"
        tensor.shape.extend([1, 28])
        request.raw_input_contents.append(image[r : r + 1].astype("<f4").tobytes())
        request.parameters["sequence_id"].string_param = sequence_id
        request.parameters["sequence_start"].bool_param = r == 0
        request.parameters["sequence_end"].bool_param = r == ROWS - 1
    else:
        so_far = np.zeros((1, ROWS, 28), np.float32)
        so_far[0, : r + 1] = image[: r + 1]
        tensor.name = "rows"
        tensor.shape.extend([1, ROWS, 28])
        request.raw_input_contents.append(so_far.astype("<f4").tobytes())
    request.outputs.add().name = "probabilities"
    return request


def batch_counters(port: int, way: str) -> tuple[float, float]:
    """(model calls, rows or images they read) from the server's /metrics."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    name = BATCH_METRIC[way]
    total = {"count": 0.0, "sum": 0.0}
    for kind, value in re.findall(rf"^{name}_(count|sum)\{{[^}}]*\}} (\S+)$", text, re.M):
        total[kind] += float(value)
    return total["count"], total["sum"]


def in_process_us_per_row(batch: int, calls: int = 200) -> dict[str, float]:
    """The model's own work per row, in this process: one step of `batch` sequences, against the
    full model on `batch` images (what the stateless way runs after every row); best of 3."""
    from runtime import Predictor

    streaming = StreamingPredictor(step_path_for(BUNDLED_MODEL))
    full = Predictor(BUNDLED_MODEL)
    rows = np.random.default_rng(1).random((batch, ROWS, 28), dtype=np.float32)
    h = c = streaming.zero_state(batch)

    def best(call) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(calls):
                call()
            times.append((time.perf_counter() - started) / calls / batch * 1e6)
        return min(times)

    return {STATEFUL: best(lambda: streaming.step(rows[:, 0], h, c)), STATELESS: best(lambda: full.predict(rows))}


def probabilities_of(body: bytes, header_length: str) -> np.ndarray:
    return np.frombuffer(body, "<f4", 10, int(header_length))


def run_scenario(port: int, pid: int, way: str, sequences: int, seconds: float, images: np.ndarray) -> dict:
    """`sequences` clients sending images row by row for `seconds` (after 1 s of warm-up)."""
    latencies: list[list[float]] = [[] for _ in range(sequences)]
    errors: list[str] = []
    measuring, stop = threading.Event(), threading.Event()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        image_number = 0
        try:
            while not stop.is_set():
                image = images[(index + image_number) % len(images)]
                for path, body, headers in row_requests(way, image, f"bench-{index}-{image_number}"):
                    started = time.perf_counter()
                    connection.request("POST", path, body, headers)
                    response = connection.getresponse()
                    data = response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{response.status}: {data[:200]!r}")
                    if measuring.is_set() and not stop.is_set():
                        latencies[index].append(time.perf_counter() - started)
                image_number += 1
        except Exception as exc:  # noqa: BLE001  (reported: the run is void)
            errors.append(f"client {index}: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(sequences)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    calls_before, read_before = batch_counters(port, way)
    measuring.set()
    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    calls_after, read_after = batch_counters(port, way)
    for thread in threads:
        thread.join(120)
    if errors:
        raise SystemExit(f"{way}, {sequences} sequences: {errors[:3]}")
    measured = {"elapsed": elapsed, "cpu": cpu, "calls": calls_after - calls_before, "read": read_after - read_before}
    return scenario_result(way, sequences, latencies, measured)


def run_grpc_scenario(
    grpc_port: int, port: int, pid: int, way: str, sequences: int, seconds: float, images: np.ndarray
) -> dict:
    """As `run_scenario`, over gRPC: grpc.aio clients in this process, one stream per sequence
    for the stateful way, one ModelInfer call per row for the stateless one."""
    import asyncio

    import grpc
    from tritonclient.grpc import service_pb2_grpc

    latencies: list[list[float]] = [[] for _ in range(sequences)]
    measured: dict[str, float] = {}

    async def client(index: int, stub, stop: asyncio.Event, measuring: asyncio.Event) -> None:
        stream = stub.ModelStreamInfer() if way == STATEFUL_GRPC else None
        image_number = 0
        while not stop.is_set():
            image = images[(index + image_number) % len(images)]
            for r in range(ROWS):
                request = grpc_request(way, image, r, f"bench-{index}-{image_number}")
                started = time.perf_counter()
                if stream is not None:
                    await stream.write(request)
                    response = await stream.read()
                    if response.error_message:
                        raise RuntimeError(response.error_message)
                else:
                    await stub.ModelInfer(request, timeout=60)
                if measuring.is_set() and not stop.is_set():
                    latencies[index].append(time.perf_counter() - started)
            image_number += 1
        if stream is not None:
            await stream.done_writing()

    async def scenario() -> None:
        stop, measuring = asyncio.Event(), asyncio.Event()
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") for _ in range(GRPC_CHANNELS)]
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
        tasks = [asyncio.create_task(client(i, stubs[i % GRPC_CHANNELS], stop, measuring)) for i in range(sequences)]
        await asyncio.sleep(1.0)
        measured["calls"], measured["read"] = batch_counters(port, way)
        measuring.set()
        measured["cpu"], measured["started"] = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(seconds)
        stop.set()
        measured["elapsed"] = time.perf_counter() - measured["started"]
        measured["cpu"] = cpu_seconds(pid) - measured["cpu"]
        calls, read = batch_counters(port, way)
        measured["calls"], measured["read"] = calls - measured["calls"], read - measured["read"]
        done, _ = await asyncio.wait(tasks, timeout=120)
        for channel in channels:
            await channel.close()
        errors = [repr(task.exception()) for task in done if task.exception() is not None]
        if errors or len(done) != len(tasks):
            raise SystemExit(f"{way}, {sequences} sequences: {errors[:3] or 'clients did not finish'}")

    asyncio.run(scenario())
    return scenario_result(way, sequences, latencies, measured)


def scenario_result(way: str, sequences: int, latencies: list[list[float]], measured: dict[str, float]) -> dict:
    every = np.concatenate([np.array(values) for values in latencies])
    return {
        "way": way,
        "sequences": sequences,
        "rows": len(every),
        "seconds": measured["elapsed"],
        "rows_per_s": len(every) / measured["elapsed"],
        "p50_ms": float(np.percentile(every, 50) * 1000),
        "p99_ms": float(np.percentile(every, 99) * 1000),
        "server_cpu_s": measured["cpu"],
        "server_cpu_us_per_row": measured["cpu"] / len(every) * 1e6,
        "mean_batch": measured["read"] / max(measured["calls"], 1),
    }


def check_answers(port: int, image: np.ndarray) -> None:
    """The stream model's answers are the in-process stream's, bit for bit (a benchmark of a wrong
    server would measure nothing)."""
    stream = StreamingPredictor(step_path_for(BUNDLED_MODEL)).stream()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for r, (path, body, headers) in enumerate(row_requests(STATEFUL, image, "check")):
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        data = response.read()
        expected = stream.push(image[r]).probabilities[0]
        if response.status != 200 or not np.array_equal(
            probabilities_of(data, response.getheader("Inference-Header-Content-Length")), expected
        ):
            raise SystemExit(f"row {r}: the stream model's answer is not the in-process stream's")
    connection.close()


def summarize(samples: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """Per (way, sequences): the median of each figure over the rounds."""
    rows = []
    for (way, sequences), runs in samples.items():
        row = {"way": way, "sequences": sequences, "rounds": len(runs)}
        for key in ("rows_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_row", "mean_batch"):
            row[key] = statistics.median(run[key] for run in runs)
        rows.append(row)
    return rows


def find(report: dict, way: str, sequences: int) -> dict:
    return next(row for row in report["rows"] if row["way"] == way and row["sequences"] == sequences)


def targets(report: dict) -> list[dict]:
    """The issue's targets, as ratios of rows of this run (at 64 sequences), for each transport."""
    verdicts = []
    for transport, (stateful_way, stateless_way) in (("REST", (STATEFUL, STATELESS)), ("gRPC", GRPC_WAYS)):
        stateful, stateless = find(report, stateful_way, 64), find(report, stateless_way, 64)
        cpu = stateless["server_cpu_us_per_row"] / stateful["server_cpu_us_per_row"]
        p99 = stateful["p99_ms"] / stateless["p99_ms"]
        verdicts += [
            {
                "target": f"64 sequences, {transport}: stateless CPU-seconds per row / stateful's >= {TARGET_CPU_RATIO:g}",
                "measured": cpu,
                "met": cpu >= TARGET_CPU_RATIO,
            },
            {
                "target": f"64 sequences, {transport}: stateful p99 per row / stateless p99 <= 1",
                "measured": p99,
                "met": p99 <= 1,
            },
        ]
    return verdicts


def run(seconds: float, rounds: int) -> dict:
    images = np.random.default_rng(0).random((256, ROWS, 28), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="sequence-bench-") as scratch:
        log = Path(scratch) / "server.log"
        process, port, grpc_port = start_server(log)
        try:
            check_answers(port, images[0])
            samples: dict[tuple[str, int], list[dict]] = {}
            for round_number in range(rounds):
                for sequences in SEQUENCES:
                    for way in WAYS if round_number % 2 == 0 else WAYS[::-1]:
                        if way in GRPC_WAYS:
                            result = run_grpc_scenario(grpc_port, port, process.pid, way, sequences, seconds, images)
                        else:
                            result = run_scenario(port, process.pid, way, sequences, seconds, images)
                        print(
                            f"round {round_number + 1}: {way}, {sequences} sequences: {result['rows_per_s']:.0f} rows/s, "
                            f"p99 {result['p99_ms']:.2f} ms, {result['server_cpu_us_per_row']:.0f} µs CPU/row",
                            file=sys.stderr,
                        )
                        samples.setdefault((way, sequences), []).append(result)
        finally:
            process.terminate()
            process.wait(60)
    report = {
        "benchmark": "benchmarks/sequence_bench.py",
        "seconds": seconds,
        "rounds": rounds,
        "model": "runtime/models/mnist.onnx (+ mnist.step.onnx)",
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": summarize(samples),
        # the model's work alone, per row, measured here after the server runs
        "in_process_model_us_per_row": {str(batch): in_process_us_per_row(batch) for batch in SEQUENCES},
    }
    report["targets"] = targets(report)
    return report


def number(value: float) -> str:
    return f"{value:,.0f}".replace(",", " ") if value >= 100 else f"{value:.3g}"


def markdown(report: dict) -> str:
    """BENCHMARKS.md's table and targets for a run (a test checks the file against the JSON)."""
    lines = [
        "| way | sequences | rows/s | p50 ms per row | p99 ms per row | server CPU µs per row | mean batch "
        "| model alone, µs per row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        model = report["in_process_model_us_per_row"][str(row["sequences"])][MODEL_WORK[row["way"]]]
        lines.append(
            f"| {row['way']} | {row['sequences']} | {number(row['rows_per_s'])} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {number(row['server_cpu_us_per_row'])} | {row['mean_batch']:.1f} | {model:.1f} |"
        )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for target in report["targets"]:
        lines.append(f"| {target['target']} | **{target['measured']:.2f}** | {'met' if target['met'] else 'MISSED'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print BENCHMARKS.md's table")
    args = parser.parse_args()
    report = run(args.seconds, args.rounds)
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
