"""`rowrnn anytime`: how early the model knows, measured with the step model on the MNIST test set.

Accuracy after k rows (k = 1..28) is the step model's answer after reading only the top k rows. The
early-exit table reads each image only until its top probability reaches a threshold
(`StreamingPredictor.predict_early`) and measures the time that saves against always reading all
28 rows: batched (`predict_early` on the whole set) and one image at a time (a stream pushed row by row
until confident), interleaved block by block so drift on a shared machine hits every threshold alike.

`measure_streaming` is `rowrnn bench`'s streaming section: one-row step latency, and a streamed
image (28 one-row pushes) against one full-model call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from runtime.contract import IMAGE_ROWS
from runtime.errors import InputError
from runtime.stream import Stream, StreamingPredictor

DEFAULT_THRESHOLDS = (0.9, 0.99, 0.999)
ROUNDS = 3  # timed passes per configuration
ONE_AT_A_TIME = 1000  # images streamed one by one for the per-image timing (the scanner's case)
BATCH_BLOCK, SINGLE_BLOCK = 1000, 50  # images per timed call, each configuration in turn


def labelled_test_set(data: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 test images, labels and a description; accuracy needs labels, so no synthetic fallback."""
    from runtime.mnist import describe_test_set, load_mnist_dir, resolve_data_dir

    directory = resolve_data_dir(data)
    if directory is None:
        raise InputError("anytime needs the MNIST test set: give --data DIR or set $ROWRNN_DATA")
    mnist = load_mnist_dir(directory)
    return mnist.test_images, mnist.test_labels.astype(np.int64), describe_test_set(mnist.test_images)


def timed_into(samples: list[float], function: Callable[..., object], *args: object) -> object:
    """Run `function(*args)`, append its wall time in seconds to `samples`, return its result.
    The arguments are passed, not captured, so a call inside a loop times that iteration's values."""
    start = time.perf_counter()
    result = function(*args)
    samples.append(time.perf_counter() - start)
    return result


def run_anytime(
    predictor: StreamingPredictor,
    images: np.ndarray,
    labels: np.ndarray,
    source: str,
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """Accuracy after each row and the early-exit table on labelled images (`format_anytime` prints
    it, --json is it)."""
    progress(f"probabilities after each row of {len(images)} images")
    believed = predictor.row_probabilities(images)
    after_rows = (believed.argmax(axis=2) == labels[:, None]).mean(axis=0)

    configurations = {"never": float("inf"), **{str(t): t for t in thresholds}}  # "never": all 28 rows
    results = {name: predictor.predict_early(images, threshold) for name, threshold in configurations.items()}
    batch_seconds, single_seconds = time_early_exit(predictor, images, configurations, progress)
    table = []
    for name, threshold in configurations.items():
        if name == "never":
            continue
        rows = results[name].rows
        table.append(
            {
                "threshold": threshold,
                "accuracy": float(np.mean(results[name].labels == labels)),
                "mean_rows": float(rows.mean()),
                "median_rows": float(np.median(rows)),
                "stopped_early": float(np.mean(rows < IMAGE_ROWS)),
                "rows_histogram": np.bincount(rows, minlength=IMAGE_ROWS + 1)[
                    1:
                ].tolist(),  # images answered at row 1..28
                "batch_seconds": batch_seconds[name],
                "batch_time_saved": 1.0 - batch_seconds[name] / batch_seconds["never"],
                "one_at_a_time_us_per_image": single_seconds[name] * 1e6,
                "one_at_a_time_time_saved": 1.0 - single_seconds[name] / single_seconds["never"],
            }
        )
    return {
        "model": str(predictor.path),
        "inputs": source,
        "images": len(images),
        "accuracy_after_rows": [float(a) for a in after_rows],
        "full_accuracy": float(np.mean(results["never"].labels == labels)),
        "all_rows": {
            "batch_seconds": batch_seconds["never"],
            "one_at_a_time_us_per_image": single_seconds["never"] * 1e6,
        },
        "one_at_a_time_images": min(len(images), ONE_AT_A_TIME),
        "rounds": ROUNDS,
        "early_exit": table,
    }


def time_early_exit(
    predictor: StreamingPredictor, images: np.ndarray, configurations: dict[str, float], progress: Callable[[str], None]
) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per pass over all images with `predict_early` (batch), and seconds per image streamed
    one at a time (push rows until confident, the scanner's case), for each threshold.

    Interleaved finely (every configuration in turn on each block of images, the order rotating) so
    that drift on a shared machine hits every configuration alike; totals over `ROUNDS` rounds.
    """
    stream = predictor.stream()

    def stream_each(images: np.ndarray, threshold: float) -> None:
        for image in images:
            stream.reset()
            for r in range(IMAGE_ROWS):
                if stream.push(image[r]).probabilities.max() >= threshold:
                    break

    names = list(configurations)
    batch: dict[str, list[float]] = {name: [] for name in names}
    single: dict[str, list[float]] = {name: [] for name in names}
    one_at_a_time = images[:ONE_AT_A_TIME]
    for round_index in range(ROUNDS):
        progress(f"early exit, timing round {round_index + 1}/{ROUNDS}")
        for block, start in enumerate(range(0, len(images), BATCH_BLOCK)):
            for name in names[block % len(names) :] + names[: block % len(names)]:
                timed_into(
                    batch[name], predictor.predict_early, images[start : start + BATCH_BLOCK], configurations[name]
                )
        for block, start in enumerate(range(0, len(one_at_a_time), SINGLE_BLOCK)):
            for name in names[block % len(names) :] + names[: block % len(names)]:
                timed_into(single[name], stream_each, one_at_a_time[start : start + SINGLE_BLOCK], configurations[name])
    return (
        {name: sum(batch[name]) / ROUNDS for name in names},
        {name: sum(single[name]) / ROUNDS / len(one_at_a_time) for name in names},
    )


def format_anytime(report: dict) -> str:
    curve = report["accuracy_after_rows"]
    lines = [
        f"rowrnn anytime: {report['model']} on {report['images']} images ({report['inputs']})",
        "",
        "accuracy after k rows:",
        *(
            "  " + "  ".join(f"{k:>2} {curve[k - 1]:7.2%}" for k in range(start, min(start + 7, 29)))
            for start in range(1, 29, 7)
        ),
        "",
        f"early exit (stop once the top probability reaches the threshold; all 28 rows: accuracy {report['full_accuracy']:.2%}):",
        f"{'threshold':>10}{'accuracy':>10}{'mean rows':>11}{'stopped early':>15}{'time saved':>12}{'one at a time':>15}",
    ]
    for row in report["early_exit"]:
        lines.append(
            f"{row['threshold']:>10g}{row['accuracy']:>10.2%}{row['mean_rows']:>11.1f}{row['stopped_early']:>15.1%}"
            f"{row['batch_time_saved']:>12.0%}{row['one_at_a_time_time_saved']:>15.0%}"
        )
    base = report["all_rows"]
    lines.append(
        f"time saved: against reading all 28 rows, {report['rounds']} rounds interleaved; batch: predict_early on {report['images']} "
        f"images ({base['batch_seconds'] * 1e3:.0f} ms for 28 rows); one at a time: {report['one_at_a_time_images']} images, "
        f"a stream pushed row by row until confident ({base['one_at_a_time_us_per_image']:.0f} µs per image for 28 rows)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- `rowrnn bench`'s streaming section


def push_image(stream: Stream, pixels: np.ndarray) -> None:
    """Stream one image row by row from a fresh state."""
    stream.reset()
    for r in range(IMAGE_ROWS):
        stream.push(pixels[r])


def measure_streaming(step_path: Path, onnx_path: Path, rows: np.ndarray, calls: int, rounds: int = 10) -> dict:
    """p50 of one one-row push, of a streamed image (reset + 28 one-row pushes) and of one full-model
    call on the same images, interleaved round by round; {"skipped": why} if there is no step
    file. A file that is not a step model (or a full model that is not a rowrnn one) is refused:
    InputError."""
    from runtime.predictor import Predictor

    if not step_path.is_file():
        return {"skipped": f"{step_path}: not found (run `rowrnn export OUT.onnx --step`)"}
    stream = StreamingPredictor(step_path).stream()
    full = Predictor(onnx_path) if onnx_path.is_file() else None
    step, image, whole = [], [], []
    images = max(calls // 10, rounds)  # each streamed image is 28 pushes
    for round_index in range(rounds):
        for i in range(calls // rounds):
            row = rows[(round_index * calls // rounds + i) % len(rows), i % IMAGE_ROWS]
            if i % IMAGE_ROWS == 0:
                stream.reset()
            timed_into(step, stream.push, row)
        for i in range(images // rounds):
            pixels = rows[(round_index * images // rounds + i) % len(rows)]
            timed_into(image, push_image, stream, pixels)
            if full is not None:
                timed_into(whole, full.predict, pixels[np.newaxis])
    p50 = lambda samples: statistics.median(samples) * 1e6 if samples else None  # noqa: E731
    report = {
        "step_model": str(step_path),
        "step_p50_us": p50(step),
        "step_calls": len(step),
        "streamed_image_p50_us": p50(image),
        "streamed_images": len(image),
        "full_call_p50_us": p50(whole),
    }
    if full is None:
        report["full_call_skipped"] = f"{onnx_path}: not found"
    return report


def format_streaming(streaming: dict) -> list[str]:
    if "skipped" in streaming:
        return [f"streaming: skipped: {streaming['skipped']}"]
    line = (
        f"streaming ({Path(streaming['step_model']).name}): one-row step p50 {streaming['step_p50_us']:.1f} µs; "
        f"a streamed image (28 one-row pushes) p50 {streaming['streamed_image_p50_us']:.0f} µs"
    )
    if streaming["full_call_p50_us"] is not None:
        ratio = streaming["streamed_image_p50_us"] / streaming["full_call_p50_us"]
        line += f" vs one full-model call {streaming['full_call_p50_us']:.0f} µs ({ratio:.1f}×)"
    return [line]
