"""rowrnn serve against a naive FastAPI server and the in-process Predictor, side by side.

    python benchmarks/serve_bench.py [--model model.onnx] [--seconds 5] [--rounds 3] [--json out.json]

Needs wrk (Debian: apt-get install wrk) as the load generator (C, one thread: it leaves the
server as much of the 2 cores as possible), the serve extra and fastapi (test extra). Every
server runs alone, one uvicorn process each, on 127.0.0.1, with its access log off. Each
scenario is measured `--rounds` times, the servers taking turns; the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from runtime import Predictor  # noqa: E402

INFER = "/v2/models/rowrnn/infer"
# (name, images per request, binary, concurrencies)
SCENARIOS = [
    ("1 image, JSON", 1, False, (1, 8, 64)),
    ("1 image, binary", 1, True, (1, 8, 64)),
    # 4 clients: 3 waiting requests fit the default --max-queue of 1024 images
    ("256 images, JSON", 256, False, (4,)),
    ("256 images, binary", 256, True, (4,)),
]
SERVERS = {
    "rowrnn serve": "rowrnn",
    "rowrnn serve, batching off": "rowrnn-unbatched",
    "naive FastAPI": "naive",
}


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
        body, headers = header + rows.tobytes(), f"Content-Type: application/octet-stream|Inference-Header-Content-Length: {len(header)}"
    else:
        tensor["data"] = rows.ravel().tolist()
        body, headers = json.dumps({"inputs": [tensor]}).encode(), "Content-Type: application/json"
    path = directory / f"body-{images}-{'bin' if binary else 'json'}"
    path.write_bytes(body)
    return path, headers


def start(kind: str, model: Path, port: int, log: Path) -> subprocess.Popen:
    if kind == "naive":
        command = [sys.executable, "-m", "uvicorn", "naive_fastapi:app", "--port", str(port), "--log-level", "warning",
                   "--no-access-log", "--workers", "1"]
        env = {**os.environ, "ROWRNN_MODEL": str(model), "PYTHONPATH": str(REPO / "benchmarks")}
    else:
        batching = ["--max-batch", "1", "--max-delay-ms", "0"] if kind == "rowrnn-unbatched" else []
        command = [sys.executable, "-m", "rowrnn", "serve", str(model), "--port", str(port), "--log-level", "warning", *batching]
        env = dict(os.environ)
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{kind} server exited: {log.read_text()}")
            time.sleep(0.1)
    raise SystemExit(f"{kind} server did not start: {log.read_text()}")


def wrk(port: int, body: Path, headers: str, connections: int, seconds: float) -> dict:
    env = {**os.environ, "BODY_FILE": str(body), "HEADERS": headers}
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(REPO / "benchmarks" / "wrk_post.lua"),
         f"http://127.0.0.1:{port}{INFER}"], capture_output=True, text=True, env=env, timeout=seconds + 60,
    )
    line = next((line for line in result.stdout.splitlines() if line.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {result.stdout}{result.stderr}")
    return json.loads(line)


def batch_counts(port: int) -> tuple[float, float]:
    """(session calls, images) so far, from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    value = lambda name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # noqa: E731
    return value("rowrnn_inference_batch_size_count"), value("rowrnn_inference_batch_size_sum")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


def run(model: Path, seconds: float, rounds: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="rowrnn-bench-"))
    bodies = {(images, binary): request_body(images, binary, scratch) for _, images, binary, _ in SCENARIOS}
    samples: dict[tuple[str, str, int], list[dict]] = {}
    ceiling, rss = [], {}
    for round_ in range(rounds):
        for label, kind in SERVERS.items():
            port = free_port()
            process = start(kind, model, port, scratch / f"{kind}.log")
            try:
                for name, images, binary, concurrencies in SCENARIOS:
                    if kind == "naive" and binary:
                        continue  # the naive handler speaks JSON only
                    body, headers = bodies[(images, binary)]
                    for connections in concurrencies:
                        wrk(port, body, headers, connections, 1)  # warm-up
                        before = batch_counts(port) if kind != "naive" else (0, 0)
                        result = wrk(port, body, headers, connections, seconds)
                        after = batch_counts(port) if kind != "naive" else (0, 0)
                        result["images_per_request"] = images
                        result["mean_batch"] = (after[1] - before[1]) / max(after[0] - before[0], 1) if kind != "naive" else None
                        samples.setdefault((label, name, connections), []).append(result)
                        print(f"round {round_ + 1}/{rounds} {label:28} {name:20} c={connections:<3} "
                              f"{(result['requests'] - result['non_2xx']) / result['seconds']:8.0f} req/s  p99 {result['p99_us'] / 1000:6.1f} ms",
                              file=sys.stderr, flush=True)
                rss[label] = max(rss.get(label, 0.0), peak_rss_mb(process.pid))
            finally:
                process.terminate()
                process.wait(60)
        ceiling.append(in_process_images_per_second(model, seconds))
    shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for (label, name, connections), results in samples.items():
        median = lambda key: statistics.median(r[key] for r in results)  # noqa: E731
        rps = statistics.median((r["requests"] - r["non_2xx"]) / r["seconds"] for r in results)  # answered only
        rows.append({
            "server": label, "scenario": name, "concurrency": connections, "requests_per_s": rps,
            "images_per_s": rps * results[0]["images_per_request"], "p50_ms": median("p50_us") / 1000,
            "p99_ms": median("p99_us") / 1000, "non_2xx": sum(r["non_2xx"] for r in results),
            "socket_errors": sum(r["socket_errors"] for r in results),
            "mean_batch": median("mean_batch") if results[0]["mean_batch"] is not None else None,
        })
    return {"rows": rows, "in_process_images_per_s": statistics.median(ceiling), "peak_rss_mb": rss,
            "seconds": seconds, "rounds": rounds, "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def find(report: dict, server: str, scenario: str, concurrency: int) -> dict:
    return next(r for r in report["rows"] if (r["server"], r["scenario"], r["concurrency"]) == (server, scenario, concurrency))


def targets(report: dict) -> list[tuple[str, float, str, bool]]:
    """(target, measured ratio, bound, met) for each of the issue's targets."""
    ours, off, naive = "rowrnn serve", "rowrnn serve, batching off", "naive FastAPI"
    json64, bin64 = find(report, ours, "1 image, JSON", 64), find(report, ours, "1 image, binary", 64)
    naive64 = find(report, naive, "1 image, JSON", 64)
    big = find(report, ours, "256 images, binary", 4)
    unbatched = find(report, off, "1 image, binary", 64)
    checks = [
        ("1-image JSON c=64: req/s vs naive", json64["requests_per_s"] / naive64["requests_per_s"], ">= 3", 3),
        ("1-image JSON c=64: naive p99 / ours", naive64["p99_ms"] / json64["p99_ms"], ">= 3", 3),
        ("1-image binary c=64: req/s vs naive JSON", bin64["requests_per_s"] / naive64["requests_per_s"], ">= 4", 4),
        ("256-image binary: images/s vs in-process", big["images_per_s"] / report["in_process_images_per_s"], ">= 0.5", 0.5),
        ("1-image binary c=64: mean batch (images)", bin64["mean_batch"], ">= 8", 8),
        ("1-image binary c=64: batching on vs off", bin64["requests_per_s"] / unbatched["requests_per_s"], "> 1", 1.0001),
        ("peak RSS of rowrnn serve, MB", report["peak_rss_mb"][ours], "< 200", None),
    ]
    return [(name, value, bound, value >= limit if limit is not None else value < 200) for name, value, bound, limit in checks]


def format_report(report: dict) -> str:
    lines = [f"{'server':28} {'scenario':20} {'conc':>4} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6} {'non-2xx':>7} {'socket errors':>13}"]
    for r in report["rows"]:
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] is not None else "-"
        lines.append(f"{r['server']:28} {r['scenario']:20} {r['concurrency']:>4} {r['requests_per_s']:>8.0f} "
                     f"{r['images_per_s']:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {batch:>6} {r['non_2xx']:>7} {r['socket_errors']:>13}")
    lines.append(f"in-process Predictor, 256-image batches: {report['in_process_images_per_s']:.0f} images/s")
    lines.append("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in report["peak_rss_mb"].items()))
    lines.append("targets (ratios from this run):")
    for name, value, bound, met in targets(report):
        lines.append(f"  {'met ' if met else 'MISS'} {name}: {value:.2f} ({bound})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("model.onnx"))
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("serve_bench: needs wrk as the load generator (Debian: apt-get install wrk)")
    report = run(args.model.resolve(), args.seconds, args.rounds)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
