"""rowrnn serve against a real Triton Inference Server and a naive FastAPI server, side by side.

    python benchmarks/serve_bench.py [--model runtime/models/mnist.onnx] [--seconds 3] [--rounds 2] [--json out.json]

Load generators: wrk for REST (Debian: apt-get install wrk; C, one thread: it leaves the servers as
much of the 2 cores as it can) and benchmarks/grpc_load.py for gRPC (Triton's own generated stubs).
Servers, each alone, on 127.0.0.1, access logs off, taking turns in each round:

- `rowrnn serve` (dynamic batching), and the same with batching off;
- Triton: the `tritonserver` binary of the nvidia-pytriton wheel, with a Python-backend model
  (benchmarks/triton_model.py) running the same ONNX file with onnxruntime, behind Triton's dynamic
  batcher (the same max batch delay as rowrnn). Its venv is made once from Debian's
  /usr/bin/python3.11 (with another 3.11 build the backend stub dies at model load) and cached in
  $ROWRNN_BENCH_CACHE (default ~/.cache/rowrnn-bench); its model repository is written to a
  temporary directory. When it cannot be set up, its rows are skipped with the reason;
- the naive FastAPI handler (benchmarks/naive_fastapi.py: REST JSON only).

rowrnn's gRPC rows run when `rowrnn serve --help` offers `--grpc-port`; otherwise they are skipped
with the reason. Each scenario is measured `--rounds` times; the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from runtime import Predictor  # noqa: E402
from runtime.files import write_text_atomic  # noqa: E402
from runtime.repository import DEFAULT_MAX_DELAY_MS, MODEL_VERSION, config_pbtxt  # noqa: E402

MODEL = "rowrnn"
INFER = f"/v2/models/{MODEL}/infer"
PROTOCOLS = ("REST JSON", "REST binary", "gRPC")
# (images per request, clients). 4 clients of 256 images: 3 waiting requests fit the default
# --max-queue of 1024 images.
LOADS = ((1, 1), (1, 64), (256, 4))
OURS, UNBATCHED, TRITON, NAIVE = "rowrnn serve", "rowrnn serve, batching off", "Triton", "naive FastAPI"
# Triton's model takes whole 256-image requests (a request larger than max_batch_size is refused);
# its dynamic batcher then forms batches of what is queued, as rowrnn's does.
TRITON_MAX_BATCH = 256
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
TRITON_PACKAGES = ("nvidia-pytriton>=0.7", "onnxruntime>=1.32", "numpy>=2.0")
CACHE = Path(os.environ.get("ROWRNN_BENCH_CACHE", Path.home() / ".cache" / "rowrnn-bench"))


@dataclass
class Server:
    label: str
    process: subprocess.Popen
    rest_port: int
    grpc_port: int | None
    metrics_url: str | None  # where the batch counters are
    skipped: dict[str, str] = field(default_factory=dict)  # protocol -> why it is not measured
    loads: tuple[tuple[int, int], ...] = LOADS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request_body(images: int, binary: bool, directory: Path) -> tuple[Path, str]:
    rows = (np.random.default_rng(images).integers(0, 256, (images, 28, 28)) / 255).astype(np.float32)
    tensor = {"name": "rows", "datatype": "FP32", "shape": [images, 28, 28]}
    if binary:
        tensor["parameters"] = {"binary_data_size": rows.nbytes}
        header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
        body, headers = (
            header + rows.tobytes(),
            f"Content-Type: application/octet-stream|Inference-Header-Content-Length: {len(header)}",
        )
    else:
        tensor["data"] = rows.ravel().tolist()
        body, headers = json.dumps({"inputs": [tensor]}).encode(), "Content-Type: application/json"
    path = directory / f"body-{images}-{'bin' if binary else 'json'}"
    path.write_bytes(body)
    return path, headers


# --- Triton ------------------------------------------------------------------------------------


def write_triton_model_repository(directory: Path, model: Path, name: str = MODEL) -> Path:
    """DIR/NAME/config.pbtxt (Python backend, dynamic batching) and DIR/NAME/1/{model.py, model.onnx}.

    The config is `rowrnn triton-repo`'s (runtime.repository.config_pbtxt: same tensors, same
    batch delay) with the Python backend in place of onnxruntime_onnx, which this build lacks.
    """
    config = config_pbtxt(name, TRITON_MAX_BATCH, DEFAULT_MAX_DELAY_MS)
    platform = 'platform: "onnxruntime_onnx"'
    assert platform in config, "runtime.repository.config_pbtxt changed: update the Triton baseline"
    version = directory / name / MODEL_VERSION
    version.mkdir(parents=True)
    (directory / name / "config.pbtxt").write_text(config.replace(platform, 'backend: "python"'))
    shutil.copyfile(REPO / "benchmarks" / "triton_model.py", version / "model.py")
    shutil.copyfile(model, version / "model.onnx")
    return directory / name


def triton_installation(cache: Path = CACHE) -> tuple[Path, dict[str, str]]:
    """(tritonserver's directory, its environment), set up once in `cache`; SystemExit's message
    says what is missing when it cannot be."""
    if not DEBIAN_PYTHON.is_file():
        raise SystemExit(
            f"needs Debian's {DEBIAN_PYTHON} for Triton's Python backend (apt-get install python3.11 python3.11-venv)"
        )
    venv = cache / "triton-venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    if not (site / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        print(
            f"serve_bench: setting up Triton's venv in {venv} (once: pip install {' '.join(TRITON_PACKAGES)})",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(venv, ignore_errors=True)
        for command in (
            [str(DEBIAN_PYTHON), "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", *TRITON_PACKAGES],
        ):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"cannot set up Triton's venv ({' '.join(command[:3])} ...): {last}")
    dist = site / "pytriton" / "tritonserver"
    server = cache / "tritonserver"
    stub = server / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():  # what pytriton does at start: the server's tree, with the stub of our Python
        shutil.rmtree(server, ignore_errors=True)
        shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(dist / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", stub)
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(site / "nvidia_pytriton.libs"),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        "PYTHONPATH": str(site),
    }
    return server, env


def start_triton(model: Path, scratch: Path, log: Path) -> Server:
    server_dir, env = triton_installation()
    repository = scratch / "triton-models"
    if not repository.exists():
        write_triton_model_repository(repository, model)
    http, grpc, metrics = free_port(), free_port(), free_port()
    command = [
        str(server_dir / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={server_dir / 'backends'}",
        f"--cache-directory={server_dir / 'caches'}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        "--log-verbose=0",
        "--exit-on-error=true",
        "--exit-timeout-secs=5",
    ]
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=scratch)
    # /v2/health/ready answers before the model is loaded: wait for the model itself
    wait_for(
        lambda: http_status(f"http://127.0.0.1:{http}/v2/models/{MODEL}/ready") == 200, process, "Triton", log, 180
    )
    return Server(TRITON, process, http, grpc, f"http://127.0.0.1:{metrics}/metrics")


def server_version(port: int) -> str:
    """The server's own name and version, from the protocol's server metadata (GET /v2)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2", timeout=10) as response:
        metadata = json.loads(response.read())
    return f"{metadata.get('name')} {metadata.get('version')}"


# --- rowrnn and the naive baseline ---------------------------------------------------------------


def rowrnn_grpc_missing() -> str | None:
    """None when `rowrnn serve` offers --grpc-port, else why its gRPC rows are skipped."""
    result = subprocess.run(
        [sys.executable, "-m", "rowrnn", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    return None if "--grpc-port" in result.stdout else "rowrnn serve has no --grpc-port in this build"


def start_rowrnn(label: str, model: Path, log: Path, grpc_missing: str | None) -> Server:
    port = free_port()
    batching = ["--max-batch", "1", "--max-delay-ms", "0"] if label == UNBATCHED else []
    grpc_port = None if grpc_missing else free_port()
    command = [
        sys.executable,
        "-m",
        "rowrnn",
        "serve",
        str(model),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *batching,
        *([] if grpc_port is None else ["--grpc-port", str(grpc_port)]),
    ]
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO)
    wait_for(lambda: http_status(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready") == 200, process, label, log, 60)
    if grpc_port is not None:
        wait_for(lambda: port_open(grpc_port), process, label, log, 30)
    return Server(
        label,
        process,
        port,
        grpc_port,
        f"http://127.0.0.1:{port}/metrics",
        {"gRPC": grpc_missing} if grpc_missing else {},
        ((1, 64),) if label == UNBATCHED else LOADS,
    )  # batching off: the 64-client row it is judged by


def start_naive(model: Path, log: Path) -> Server:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "naive_fastapi:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        "1",
    ]
    env = {**os.environ, "ROWRNN_MODEL": str(model), "PYTHONPATH": str(REPO / "benchmarks")}
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    wait_for(lambda: port_open(port), process, NAIVE, log, 60)
    reason = "the naive handler speaks JSON only (what a user writes first)"
    return Server(NAIVE, process, port, None, None, {"REST binary": reason, "gRPC": reason})


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(ready, process: subprocess.Popen, label: str, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{label} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{label} was not ready within {seconds:g} s:\n{log.read_text()[-3000:]}")


# --- measuring -----------------------------------------------------------------------------------


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(port: int, body: Path, headers: str, connections: int, seconds: float) -> dict:
    env = {**os.environ, "BODY_FILE": str(body), "HEADERS": headers}
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(REPO / "benchmarks" / "wrk_post.lua"),
            f"http://127.0.0.1:{port}{INFER}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds + 60,
    )
    return last_json_line(result, "wrk")


def grpc_load(port: int, images: int, connections: int, seconds: float) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "grpc_load.py"),
            "--port",
            str(port),
            "--model",
            MODEL,
            "--images",
            str(images),
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    return last_json_line(result, "grpc_load.py")


def last_json_line(result: subprocess.CompletedProcess, tool: str) -> dict:
    line = next((line for line in reversed(result.stdout.splitlines()) if line.startswith("{")), None)
    if line is None:
        raise SystemExit(f"{tool} failed: {result.stdout}{result.stderr}")
    return json.loads(line)


def batch_counts(server: Server) -> tuple[float, float] | None:
    """(session calls, images) so far, from the server's metrics; None when it has none."""
    if server.metrics_url is None:
        return None
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    if server.label == TRITON:  # Triton: executions of the model, and the inferences they held
        calls = re.search(rf'^nv_inference_exec_count{{model="{MODEL}",version="1"}} (\S+)$', text, re.M)
        images = re.search(rf'^nv_inference_count{{model="{MODEL}",version="1"}} (\S+)$', text, re.M)
    else:  # rowrnn: the batch-size histogram of the served model (labelled by model and version)
        calls = re.search(rf'^rowrnn_inference_batch_size_count{{model="{MODEL}",version="1"}} (\S+)$', text, re.M)
        images = re.search(rf'^rowrnn_inference_batch_size_sum{{model="{MODEL}",version="1"}} (\S+)$', text, re.M)
    return (float(calls.group(1)), float(images.group(1))) if calls and images else None


def mean_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    if before is None or after is None or after[0] == before[0]:
        return None
    return (after[1] - before[1]) / (after[0] - before[0])


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of a process and its children (Triton's backend stubs run as children)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += peak_rss_mb(int(child))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            total += int(line.split()[1]) / 1024
    return total


def in_process_images_per_second(model: Path, seconds: float) -> float:
    """The ceiling: the Predictor on 256-image batches, in this process, no HTTP."""
    rows = (np.random.default_rng(256).integers(0, 256, (256, 28, 28)) / 255).astype(np.float32)
    with Predictor(model) as predictor:
        predictor.predict(rows)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predictor.predict(rows)
            count += 256
        return count / (time.perf_counter() - started)


def check_answers(server: Server, model: Path) -> None:
    """Before it is measured, a server must answer right: logits for 3 images over REST JSON (and
    gRPC, when it speaks it) equal to the in-process Predictor's within 1e-5."""
    rows = (np.random.default_rng(3).integers(0, 256, (3, 28, 28)) / 255).astype(np.float32)
    with Predictor(model) as predictor:
        expected = predictor.predict(rows).logits
    body = json.dumps(
        {"inputs": [{"name": "rows", "datatype": "FP32", "shape": [3, 28, 28], "data": rows.ravel().tolist()}]}
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_port}{INFER}", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
    answers = {"REST": np.array(outputs["logits"]["data"], np.float32).reshape(3, 10)}
    if server.grpc_port is not None and "gRPC" not in server.skipped:
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        tensor = triton_grpc.InferInput("rows", [3, 28, 28], "FP32")
        tensor.set_data_from_numpy(rows)
        answers["gRPC"] = client.infer(MODEL, [tensor]).as_numpy("logits")
        client.close()
    for protocol, logits in answers.items():
        if logits is None or not np.allclose(logits, expected, atol=1e-5):
            raise SystemExit(f"{server.label} answers {protocol} requests wrongly: {logits} instead of {expected}")


def measure(server: Server, protocol: str, images: int, clients: int, seconds: float, bodies: dict) -> dict:
    if protocol == "gRPC":
        go = lambda s: grpc_load(server.grpc_port, images, clients, s)  # noqa: E731
    else:
        body, headers = bodies[(images, protocol == "REST binary")]
        go = lambda s: wrk(server.rest_port, body, headers, clients, s)  # noqa: E731
    go(1)  # warm-up
    before, cpu_before = batch_counts(server), children_cpu_seconds()
    result = go(seconds)
    # the load generator shares the 2 cores: how many of them it used (wrk or grpc_load.py)
    result["client_cores"] = (children_cpu_seconds() - cpu_before) / result["seconds"]
    result["mean_batch"] = mean_batch(before, batch_counts(server))
    result["images_per_request"] = images
    return result


def run(model: Path, seconds: float, rounds: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="rowrnn-bench-"))
    bodies = {
        (images, binary): request_body(images, binary, scratch) for images, _ in LOADS for binary in (False, True)
    }
    grpc_missing = rowrnn_grpc_missing()
    starters = {
        OURS: lambda log: start_rowrnn(OURS, model, log, grpc_missing),
        UNBATCHED: lambda log: start_rowrnn(UNBATCHED, model, log, grpc_missing),
        TRITON: lambda log: start_triton(model, scratch, log),
        NAIVE: lambda log: start_naive(model, log),
    }
    samples: dict[tuple[str, str, int, int], list[dict]] = {}
    skipped: dict[tuple[str, str], str] = {}
    ceiling, rss, versions = [], {}, {}
    try:
        for round_ in range(rounds):
            for label, start in starters.items():
                try:
                    server = start(scratch / f"{label}.log")
                except SystemExit as exc:
                    if label != TRITON:
                        raise
                    skipped.update({(label, protocol): str(exc).splitlines()[0] for protocol in PROTOCOLS})
                    print(f"serve_bench: Triton skipped: {exc}", file=sys.stderr, flush=True)
                    continue
                try:
                    check_answers(server, model)
                    if label == TRITON:
                        versions[label] = server_version(server.rest_port)
                    for protocol in PROTOCOLS:
                        if protocol in server.skipped:
                            skipped[(label, protocol)] = server.skipped[protocol]
                            continue
                        for images, clients in server.loads:
                            result = measure(server, protocol, images, clients, seconds, bodies)
                            samples.setdefault((label, protocol, images, clients), []).append(result)
                            print(
                                f"round {round_ + 1}/{rounds} {label:26} {protocol:11} {images:>3} img c={clients:<3} "
                                f"{answered_per_second(result):8.0f} req/s  p99 {result['p99_us'] / 1000:6.1f} ms",
                                file=sys.stderr,
                                flush=True,
                            )
                    rss[label] = max(rss.get(label, 0.0), peak_rss_mb(server.process.pid))
                finally:
                    server.process.terminate()
                    server.process.wait(60)
            ceiling.append(in_process_images_per_second(model, seconds))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "rows": summarize(samples),
        "skipped": [{"server": s, "protocol": p, "reason": r} for (s, p), r in skipped.items()],
        "in_process_images_per_s": statistics.median(ceiling),
        "peak_rss_mb": rss,
        "versions": versions,
        "seconds": seconds,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }


# --- the report (pure: tests/test_serve_bench.py checks these without any server) ------------------


def answered_per_second(result: dict) -> float:
    return (result["requests"] - result["non_2xx"] - result["socket_errors"]) / result["seconds"]


def summarize(samples: dict[tuple[str, str, int, int], list[dict]]) -> list[dict]:
    """One row per (server, protocol, images, clients): medians over the rounds, errors summed.
    Only answered requests count."""
    rows = []
    for (server, protocol, images, clients), results in samples.items():
        batches = [r["mean_batch"] for r in results if r.get("mean_batch") is not None]
        rps = statistics.median(answered_per_second(r) for r in results)
        rows.append(
            {
                "server": server,
                "protocol": protocol,
                "images": images,
                "concurrency": clients,
                "requests_per_s": rps,
                "images_per_s": rps * images,
                "p50_ms": statistics.median(r["p50_us"] for r in results) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in results) / 1000,
                "non_2xx": sum(r["non_2xx"] for r in results),
                "socket_errors": sum(r["socket_errors"] for r in results),
                "mean_batch": statistics.median(batches) if batches else None,
                "client_cores": statistics.median(r.get("client_cores", float("nan")) for r in results),
            }
        )
    return rows


def find(report: dict, server: str, protocol: str, images: int, clients: int) -> dict | None:
    return next(
        (
            r
            for r in report["rows"]
            if (r["server"], r["protocol"], r["images"], r["concurrency"]) == (server, protocol, images, clients)
        ),
        None,
    )


def skip_reason(report: dict, server: str, protocol: str) -> str:
    reasons = [s["reason"] for s in report["skipped"] if (s["server"], s["protocol"]) == (server, protocol)]
    return reasons[0] if reasons else f"no {server} {protocol} row in this run"


COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None  # None: skipped
    bound: str  # ">= 1.7"
    detail: str  # the two figures the ratio is made of, or why it was skipped

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        op, limit = self.bound.split()
        return COMPARE[op](self.value, float(limit))


def ratio(report: dict, name: str, bound: str, numerator: tuple, denominator: tuple, key: str, unit: str) -> Target:
    """numerator / denominator on `key`, each a (server, protocol, images, clients) row."""
    top, bottom = find(report, *numerator), find(report, *denominator)
    missing = [row for row, found in ((numerator, top), (denominator, bottom)) if found is None]
    if missing:
        return Target(name, None, bound, "skipped: " + skip_reason(report, missing[0][0], missing[0][1]))
    return Target(
        name,
        top[key] / bottom[key],
        bound,
        f"{top[key]:,.0f} / {bottom[key]:,.0f} {unit}".replace(",", " ")
        if key.endswith("_s")
        else f"{top[key]:.1f} / {bottom[key]:.1f} {unit}",
    )


def targets(report: dict) -> list[Target]:
    """The issues' targets, as ratios measured side by side in this run."""
    one, many, big = (1, 1), (1, 64), (256, 4)
    rps, ips, p99 = "requests_per_s", "images_per_s", "p99_ms"
    found = [
        ratio(
            report,
            "REST JSON, 1 image, 64 clients: req/s vs Triton",
            ">= 1.7",
            (OURS, "REST JSON", *many),
            (TRITON, "REST JSON", *many),
            rps,
            "req/s",
        ),
        ratio(
            report,
            "REST binary, 1 image, 64 clients: req/s vs Triton",
            ">= 1.7",
            (OURS, "REST binary", *many),
            (TRITON, "REST binary", *many),
            rps,
            "req/s",
        ),
        ratio(
            report,
            "REST binary, 256 images: images/s vs Triton",
            ">= 1.7",
            (OURS, "REST binary", *big),
            (TRITON, "REST binary", *big),
            ips,
            "images/s",
        ),
        ratio(
            report,
            "gRPC, 1 image, 64 clients: req/s vs Triton",
            ">= 1.5",
            (OURS, "gRPC", *many),
            (TRITON, "gRPC", *many),
            rps,
            "req/s",
        ),
        ratio(
            report,
            "gRPC, 1 image, 64 clients: p99 vs Triton's",
            "<= 1",
            (OURS, "gRPC", *many),
            (TRITON, "gRPC", *many),
            p99,
            "ms",
        ),
        ratio(
            report,
            "REST JSON, 1 image, 64 clients: req/s vs naive",
            ">= 3",
            (OURS, "REST JSON", *many),
            (NAIVE, "REST JSON", *many),
            rps,
            "req/s",
        ),
        ratio(
            report,
            "REST JSON, 1 image, 64 clients: p99 vs naive's",
            "<= 0.34",
            (OURS, "REST JSON", *many),
            (NAIVE, "REST JSON", *many),
            p99,
            "ms",
        ),
        ratio(
            report,
            "REST binary, 1 image, 64 clients: req/s vs naive JSON",
            ">= 4",
            (OURS, "REST binary", *many),
            (NAIVE, "REST JSON", *many),
            rps,
            "req/s",
        ),
        ratio(
            report,
            "REST binary, 1 image, 64 clients: batching on vs off",
            "> 1",
            (OURS, "REST binary", *many),
            (UNBATCHED, "REST binary", *many),
            rps,
            "req/s",
        ),
        ratio(
            report,
            "REST JSON, 1 image, 1 client: req/s vs Triton",
            ">= 1",
            (OURS, "REST JSON", *one),
            (TRITON, "REST JSON", *one),
            rps,
            "req/s",
        ),
    ]
    ours_binary = find(report, OURS, "REST binary", *many)
    if ours_binary is not None and ours_binary["mean_batch"] is not None:
        found.append(
            Target(
                "REST binary, 1 image, 64 clients: rowrnn's mean batch (images)", ours_binary["mean_batch"], ">= 8", ""
            )
        )
    big_binary = find(report, OURS, "REST binary", *big)
    if big_binary is not None:
        found.append(
            Target(
                "REST binary, 256 images: images/s vs the in-process Predictor",
                big_binary["images_per_s"] / report["in_process_images_per_s"],
                ">= 0.5",
                f"{big_binary['images_per_s']:,.0f} / {report['in_process_images_per_s']:,.0f} images/s".replace(
                    ",", " "
                ),
            )
        )
    if OURS in report["peak_rss_mb"]:
        found.append(Target("peak RSS of rowrnn serve, MB", report["peak_rss_mb"][OURS], "< 200", ""))
    return found


def number(value: float | None, digits: int | None = None) -> str:
    """1 489 / 65.4 / 2.08 / – : the way BENCHMARKS.md writes figures (`digits` fixes the decimals)."""
    if value is None or value != value:  # none, or NaN (a figure an older report lacks)
        return "–"
    if digits is None:
        if abs(value) >= 100:
            return f"{value:,.0f}".replace(",", " ")
        digits = 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}"


def markdown(report: dict) -> list[str]:
    """The serving section's figures for BENCHMARKS.md, every one taken from the report."""
    lines = [
        "| server | protocol | images | clients | req/s | images/s | p50 ms | p99 ms | mean batch | failed | client cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate((OURS, TRITON, NAIVE, UNBATCHED))}
    rows = sorted(
        report["rows"],
        key=lambda r: (PROTOCOLS.index(r["protocol"]), r["images"], r["concurrency"], order[r["server"]]),
    )
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['protocol']} | {r['images']} | {r['concurrency']} | {number(r['requests_per_s'])} | "
            f"{number(r['images_per_s'])} | {number(r['p50_ms'])} | {number(r['p99_ms'])} | "
            f"{number(r['mean_batch'], 1)} | {r['non_2xx'] + r['socket_errors']} | {number(r.get('client_cores'), 2)} |"
        )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for t in targets(report):
        if t.value is None:
            lines.append(f"| {t.name} {t.bound} | {t.detail} | – |")
        else:
            detail = f" ({t.detail})" if t.detail else ""
            lines.append(f"| {t.name} {t.bound} | **{number(t.value, 2)}**{detail} | {'met' if t.met else 'MISSED'} |")
    lines += [
        "",
        f"In-process `Predictor` on 256-image batches in the same run: {number(report['in_process_images_per_s'])} images/s. "
        "Peak RSS: " + ", ".join(f"{name} {number(mb)} MB" for name, mb in report["peak_rss_mb"].items()) + ".",
    ]
    if report.get("versions"):
        lines.append(
            "Versions (server metadata, GET /v2): "
            + ", ".join(f"{k}: {v}" for k, v in report["versions"].items())
            + "."
        )
    lines += [f"Skipped: {s['server']}, {s['protocol']}: {s['reason']}." for s in report["skipped"]]
    return lines


def readme_summary(report: dict) -> str:
    """The README's one paragraph on serving speed (its figures, like BENCHMARKS.md's, from the report)."""

    def figure(server: str, protocol: str, images: int, clients: int, key: str = "requests_per_s") -> str:
        row = find(report, server, protocol, images, clients)
        return number(row[key]) if row else "–"

    met = {t.name: t for t in targets(report)}
    parts = [
        f"single-image requests from 64 clients, REST JSON {figure(OURS, 'REST JSON', 1, 64)} req/s against "
        f"{figure(TRITON, 'REST JSON', 1, 64)} for Triton and {figure(NAIVE, 'REST JSON', 1, 64)} for a naive "
        f"FastAPI handler; REST binary {figure(OURS, 'REST binary', 1, 64)} against Triton's "
        f"{figure(TRITON, 'REST binary', 1, 64)}; 256-image binary requests "
        f"{figure(OURS, 'REST binary', 256, 4, 'images_per_s')} images/s against Triton's "
        f"{figure(TRITON, 'REST binary', 256, 4, 'images_per_s')}"
    ]
    grpc = met["gRPC, 1 image, 64 clients: req/s vs Triton"]
    parts.append(
        f"gRPC: Triton {figure(TRITON, 'gRPC', 1, 64)} req/s at 64 clients, rowrnn "
        + (f"{figure(OURS, 'gRPC', 1, 64)}" if grpc.value is not None else f"not measured ({grpc.detail})")
    )
    return "; ".join(parts) + "."


def format_report(report: dict) -> str:
    lines = [
        f"{'server':26} {'protocol':11} {'img':>3} {'conc':>4} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6} {'non-2xx':>7} {'socket errors':>13}"
    ]
    for r in report["rows"]:
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] is not None else "-"
        lines.append(
            f"{r['server']:26} {r['protocol']:11} {r['images']:>3} {r['concurrency']:>4} {r['requests_per_s']:>8.0f} "
            f"{r['images_per_s']:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {batch:>6} {r['non_2xx']:>7} {r['socket_errors']:>13}"
        )
    lines += [f"skipped: {s['server']}, {s['protocol']}: {s['reason']}" for s in report["skipped"]]
    lines.append(f"in-process Predictor, 256-image batches: {report['in_process_images_per_s']:.0f} images/s")
    lines.append("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in report["peak_rss_mb"].items()))
    lines.append("targets (ratios from this run):")
    for t in targets(report):
        status = "skipped:" if t.met is None else "met " if t.met else "MISS"
        shown = t.detail.removeprefix("skipped: ") if t.met is None else f"{t.value:.2f} ({t.detail})"
        lines.append(f"  {status} {t.name} {t.bound}: {shown}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "runtime" / "models" / "mnist.onnx")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per scenario")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--report", type=Path, help="measure nothing: show this earlier --json report")
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print BENCHMARKS.md's serving figures and the README's summary, made from the report",
    )
    args = parser.parse_args()
    if args.report:
        report = json.loads(args.report.read_text())
    else:
        if shutil.which("wrk") is None:
            raise SystemExit("serve_bench: needs wrk as the load generator (Debian: apt-get install wrk)")
        report = run(args.model.resolve(), args.seconds, args.rounds)
    print(format_report(report))
    if args.markdown:
        print("\n".join(["", *markdown(report), "", readme_summary(report)]))
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")  # a committed source: never half


if __name__ == "__main__":
    main()
