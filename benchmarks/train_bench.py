"""Epoch time of `rowrnn train` on each backend, side by side in one run.

    python benchmarks/train_bench.py --data DIR [--limit 20000] [--epochs 3] [--rounds 2]
        [--accuracy-epochs 20] [--json out.json] [--markdown]

Four setups, the same command and pipeline (augmentation on), taking turns in each round:

- TensorFlow backend, one process (all cores);
- JAX backend, one process, one device (`--backend jax`);
- JAX backend, `--distribute data-parallel`, one process: one JAX CPU device per core;
- JAX backend, `--distribute data-parallel` over 2 processes, each pinned to one core with
  `taskset` (2 processes x 1 core: one device each), on 127.0.0.1.

An epoch's time is `metrics.json`'s `epoch_seconds`; the first epoch also compiles (JAX's jit,
TensorFlow's tracing), so the table's figure is the median of the later epochs of every round,
with the first epoch beside it. Ratios are of those medians, measured in the same run.

Then (unless `--accuracy-epochs 0`) the default run, all the data and the default epochs, once on
each backend (`rowrnn train` and `rowrnn train --backend jax`): their test accuracies side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from helpers import free_port  # noqa: E402  (a port whose next one is free too: JAX's and rowrnn's link)
from runtime.files import write_json_atomic  # noqa: E402

SETUPS = (
    # name, backend, --distribute, processes (each pinned to one core when more than one)
    ("TensorFlow, 1 process x 2 cores", "tensorflow", "none", 1),
    ("JAX, 1 process x 2 cores, one device", "jax", "none", 1),
    ("JAX data-parallel, 1 process x 2 cores", "jax", "data-parallel", 1),
    ("JAX data-parallel, 2 processes x 1 core", "jax", "data-parallel", 2),
)
ACCURACY_TOLERANCE_POINTS = 0.15  # the JAX default run's test accuracy within this of TensorFlow's


def train_once(
    backend: str, distribute: str, processes: int, data: Path, limit: int | None, epochs: int | None
) -> dict:
    """One run of the setup; process 0's metrics.json. `limit`, `epochs`: None for the defaults."""
    with tempfile.TemporaryDirectory(prefix="rowrnn-train-bench-") as scratch:
        out = Path(scratch) / "out"
        base = [sys.executable, "-m", "rowrnn", "train", "--data", str(data), "--out", str(out), "--backend", backend]
        base += ["--limit", str(limit)] if limit else []
        base += ["--epochs", str(epochs)] if epochs else []
        env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if processes == 1:
            commands = [base + (["--distribute", distribute] if distribute != "none" else [])]
        else:
            port = free_port()
            cluster = ["--distribute", "data-parallel", "--coordinator", f"127.0.0.1:{port}"]
            commands = [
                ["taskset", "-c", str(i % os.cpu_count()), *base, *cluster, "--num-processes", str(processes)]
                + ["--process-id", str(i)]
                for i in range(processes)
            ]
        running = [
            subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for c in commands
        ]
        errors = [p.communicate(timeout=3600)[1] for p in running]
        for process, stderr in zip(running, errors, strict=True):
            if process.returncode != 0:
                raise SystemExit(f"train_bench: {' '.join(process.args)} failed:\n{stderr[-3000:]}")
        return json.loads((out / "metrics.json").read_text())


def accuracy_runs(data: Path, epochs: int) -> dict:
    """The default run (all the data) on each backend, once: test accuracy side by side."""
    runs = {}
    for backend in ("tensorflow", "jax"):
        print(f"train_bench: the default run, {epochs} epochs, on {backend}", file=sys.stderr, flush=True)
        metrics = train_once(backend, "none", 1, data, None, epochs)
        runs[backend] = {
            key: metrics[key] for key in ("test_accuracy", "val_accuracy", "best_epoch", "epochs", "train_seconds")
        }
    difference = abs(runs["jax"]["test_accuracy"] - runs["tensorflow"]["test_accuracy"]) * 100
    return {
        "epochs": epochs,
        "runs": runs,
        "difference_points": round(difference, 3),
        "within_points": ACCURACY_TOLERANCE_POINTS,
        "within": difference <= ACCURACY_TOLERANCE_POINTS,
    }


def run_bench(data: Path, limit: int, epochs: int, rounds: int, accuracy_epochs: int) -> dict:
    samples: dict[str, list[dict]] = {name: [] for name, *_ in SETUPS}
    for round_index in range(rounds):
        for name, backend, distribute, processes in SETUPS:
            print(f"train_bench: round {round_index + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
            samples[name].append(train_once(backend, distribute, processes, data, limit, epochs))
    rows = []
    for name, backend, distribute, processes in SETUPS:
        runs = samples[name]
        later = [s for run in runs for s in run["epoch_seconds"][1:]]
        rows.append(
            {
                "setup": name,
                "backend": backend,
                "distribute": distribute,
                "processes": processes,
                "devices": runs[0]["devices"],
                "epoch_s": round(statistics.median(later), 3),
                "first_epoch_s": round(statistics.median(run["epoch_seconds"][0] for run in runs), 3),
                "epoch_seconds": [run["epoch_seconds"] for run in runs],
                "test_accuracy": [run["test_accuracy"] for run in runs],
                "final_weights_sha256": [run["final_weights_sha256"] for run in runs],
            }
        )
    tf_row, jax_row, parallel_row, two_row = rows
    versions = samples[SETUPS[1][0]][0]["versions"]
    return {
        "rows": rows,
        "ratios": {
            "jax_vs_tensorflow": round(jax_row["epoch_s"] / tf_row["epoch_s"], 3),
            "jax_data_parallel_vs_tensorflow": round(parallel_row["epoch_s"] / tf_row["epoch_s"], 3),
            "jax_2x1_vs_1x2": round(two_row["epoch_s"] / parallel_row["epoch_s"], 3),
        },
        "accuracy": accuracy_runs(data, accuracy_epochs) if accuracy_epochs else None,
        "target": {"jax_vs_tensorflow_at_most": 0.8},
        "train_images": samples[SETUPS[0][0]][0]["train_images"],
        "limit": limit,
        "epochs": epochs,
        "rounds": rounds,
        "batch_size": samples[SETUPS[0][0]][0]["config"]["batch_size"],
        "versions": versions,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def format_markdown(report: dict) -> str:
    """The BENCHMARKS.md table (tests/test_docs.py checks it is the committed report's)."""
    lines = [
        "| setup | epoch (median of epochs 2+) | first epoch (compiles) | test accuracy |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        accuracy = ", ".join(f"{a:.4f}" for a in row["test_accuracy"])
        lines.append(f"| {row['setup']} | {row['epoch_s']:.2f} s | {row['first_epoch_s']:.2f} s | {accuracy} |")
    ratios = report["ratios"]
    lines += [
        "",
        f"JAX / TensorFlow epoch time: **{ratios['jax_vs_tensorflow']:.2f}x** with one device, "
        f"**{ratios['jax_data_parallel_vs_tensorflow']:.2f}x** data-parallel over the cores "
        f"(target at most {report['target']['jax_vs_tensorflow_at_most']}x); "
        f"JAX data-parallel 2 processes x 1 core / 1 process x 2 cores: **{ratios['jax_2x1_vs_1x2']:.2f}x**.",
    ]
    accuracy = report.get("accuracy")
    if accuracy:
        runs = accuracy["runs"]
        lines += [
            "",
            f"The default run ({accuracy['epochs']} epochs, all the data), once per backend: test accuracy "
            f"{runs['tensorflow']['test_accuracy']:.4f} on TensorFlow, {runs['jax']['test_accuracy']:.4f} on JAX: "
            f"**{accuracy['difference_points']:.2f} points apart** (criterion: within {accuracy['within_points']}).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="directory with the four MNIST IDX files")
    parser.add_argument("--limit", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accuracy-epochs", type=int, default=20, help="the default run's epochs (0: skip it)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md table")
    args = parser.parse_args()
    report = run_bench(args.data, args.limit, args.epochs, args.rounds, args.accuracy_epochs)
    if args.json:
        write_json_atomic(args.json, report)
    print(format_markdown(report) if args.markdown else json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
