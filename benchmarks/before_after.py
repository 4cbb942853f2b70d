"""What each optimisation bought: the predictor and export before and after, side by side.

Usage (from the repository root; see BENCHMARKS.md for how the "before" files are made):

    git worktree add /tmp/before c513b0d    # the last commit before the optimisations
    PYTHONPATH=/tmp/before python -c "from export.api import export_model; export_model(
        'artifacts/model.keras', '/tmp/before/model.onnx', data_dir='$ROWRNN_DATA', quantize='int8')"
    python benchmarks/before_after.py --old-src /tmp/before --old-model /tmp/before/model.onnx \
        --new-model model.onnx --data "$ROWRNN_DATA"

Each configuration runs in its own fresh process (other sessions' spinning thread pools would
disturb it), round-robin over several rounds so drift hits all alike: single-image p50 over 300
calls per round, images/s over the 10 000 test images, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rowrnn.bench import own_peak_rss_mb  # noqa: E402
from runtime.contract import scale_pixels  # noqa: E402
from runtime.mnist import load_mnist_dir  # noqa: E402
from runtime.predictor import Predictor  # noqa: E402


def old_predictor_class(source: Path):
    """The `Predictor` class of an older checkout, loaded beside the current one."""
    spec = importlib.util.spec_from_file_location("old_predictor", source / "runtime" / "predictor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Predictor


def configurations(args) -> dict[str, tuple[type, str, dict]]:
    old = old_predictor_class(args.old_src)
    int8 = lambda path: str(path).replace(".onnx", ".int8.onnx")  # noqa: E731
    return {
        "before: tf2onnx graph, old predictor (fp32)": (old, str(args.old_model), {}),
        "+ folded graph (fp32)": (old, str(args.new_model), {}),
        "+ new predictor, 2 intra-op threads (fp32)": (
            Predictor,
            str(args.new_model),
            {"intra_op_threads": 2, "threads": 1},
        ),
        "+ new predictor, defaults (fp32)": (Predictor, str(args.new_model), {}),
        "before: tf2onnx graph, old predictor (int8)": (old, int8(args.old_model), {}),
        "+ folded graph (int8)": (old, int8(args.new_model), {}),
        "+ new predictor, defaults (int8)": (Predictor, int8(args.new_model), {}),
    }


def measure(cls, path: str, options: dict, rows_file: Path) -> dict:
    """In a fresh process: single-image latencies, one whole-set pass, then peak RSS."""
    images = np.load(rows_file)
    rows = scale_pixels(images[:350])  # only what the single-image calls use: RSS is measured too
    predictor = cls(path, **options)
    for i in range(50):
        predictor.predict(rows[i : i + 1])
    latencies = []
    for i in range(300):
        start = time.perf_counter()
        predictor.predict(rows[i : i + 1])
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    predictor.predict(images)
    rate = len(images) / (time.perf_counter() - start)
    return {"latencies": latencies, "rate": rate, "peak_mb": own_peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-src", type=Path, required=True)
    parser.add_argument("--old-model", type=Path, required=True)
    parser.add_argument("--new-model", type=Path, required=True)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "ROWS_NPY"))
    args = parser.parse_args()
    configs = configurations(args)
    if args.child:
        name, rows_file = args.child
        cls, path, options = configs[name]
        print(json.dumps(measure(cls, path, options, Path(rows_file))))
        return

    # One fresh process per configuration and round, round-robin: no configuration's threads
    # or caches disturb another's, and drift over the run hits all of them alike.
    results = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as scratch:
        rows_file = Path(scratch) / "test_images.npy"
        np.save(rows_file, load_mnist_dir(args.data).test_images)
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}", file=sys.stderr)
            for name in configs:
                command = [sys.executable, __file__, *sys.argv[1:], "--child", name, str(rows_file)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                results[name].append(json.loads(done.stdout))
    print(f"{'configuration':<46}{'p50 µs':>9}{'images/s':>11}{'peak RSS MB':>13}")
    for name, runs in results.items():
        p50 = statistics.median(np.concatenate([r["latencies"] for r in runs])) * 1e6
        rate = statistics.median(r["rate"] for r in runs)
        peak = statistics.median(r["peak_mb"] for r in runs)
        print(f"{name:<46}{p50:>9.1f}{rate:>11,.0f}{peak:>13.0f}")


if __name__ == "__main__":
    main()
