"""benchmarks/sequence_bench.py's pure parts: the medians of a run, its targets as ratios of rows of
the same run, and BENCHMARKS.md's section against the committed JSON. How fast anything is gets
judged from the real run's report (benchmarks/results/sequence_bench.json), never here."""

from __future__ import annotations

import json
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import sequence_bench  # noqa: E402

COMMITTED = REPO / "benchmarks" / "results" / "sequence_bench.json"
SECTION = "## Serving a sequence (`benchmarks/sequence_bench.py`)"


def run_result(rows_per_s: float, p99_ms: float, cpu_us: float, batch: float = 1.0) -> dict:
    return {
        "rows_per_s": rows_per_s,
        "p50_ms": p99_ms / 2,
        "p99_ms": p99_ms,
        "server_cpu_us_per_row": cpu_us,
        "mean_batch": batch,
    }


def test_medians_and_targets_are_ratios_of_rows_of_the_run():
    stateful, stateless = sequence_bench.STATEFUL, sequence_bench.STATELESS
    stateful_grpc, stateless_grpc = sequence_bench.GRPC_WAYS
    samples = {
        (stateful, 64): [run_result(100, 10, 50), run_result(300, 30, 10), run_result(200, 20, 20)],
        (stateless, 64): [run_result(100, 40, 200, 30.0)],
        (stateful_grpc, 64): [run_result(100, 10, 40)],
        (stateless_grpc, 64): [run_result(100, 5, 100)],
    }
    rows = sequence_bench.summarize(samples)
    report = {"rows": rows}
    assert sequence_bench.find(report, stateful, 64)["server_cpu_us_per_row"] == 20  # the median, not the mean
    assert sequence_bench.find(report, stateful, 64)["p99_ms"] == 20
    cpu, p99, grpc_cpu, grpc_p99 = sequence_bench.targets(report)
    assert (cpu["measured"], cpu["met"]) == (10.0, True)  # 200 / 20
    assert (p99["measured"], p99["met"]) == (0.5, True)  # 20 / 40
    assert "REST" in cpu["target"] and "gRPC" in grpc_cpu["target"]  # each transport against itself
    assert (grpc_cpu["measured"], grpc_cpu["met"]) == (2.5, False)  # 100 / 40
    assert (grpc_p99["measured"], grpc_p99["met"]) == (2.0, False)  # 10 / 5
    samples[(stateless, 64)] = [run_result(100, 10, 60)]
    cpu, p99, *_ = sequence_bench.targets({"rows": sequence_bench.summarize(samples)})
    assert not cpu["met"] and not p99["met"]  # 3x, and a p99 twice the stateless one


def test_benchmarks_md_is_the_committed_run():
    report = json.loads(COMMITTED.read_text())
    text = (REPO / "BENCHMARKS.md").read_text()
    section = text[text.index(SECTION) :]
    assert sequence_bench.markdown(report) in section
    assert report["targets"] == sequence_bench.targets(report)  # the verdicts follow from the rows
    stateful, stateless = sequence_bench.STATEFUL, sequence_bench.STATELESS
    model = report["in_process_model_us_per_row"]["64"]
    prose = " ".join(section.split())
    assert f"The model's work per row is {model[stateless] / model[stateful]:.0f}× smaller stateful" in prose
    stateful_64, stateless_64, stream_64, unary_64 = (
        sequence_bench.find(report, way, 64) for way in (stateful, stateless, *sequence_bench.GRPC_WAYS)
    )
    cpu, p99, grpc_cpu, grpc_p99 = report["targets"]
    number = sequence_bench.number
    for figure in (
        f"only {cpu['measured']:.2f}× smaller: the ≥ 5× target is missed" if not cpu["met"] else "target is met",
        f"most of the {number(stateful_64['server_cpu_us_per_row'])} µs of server CPU per row",
        f"the full model's own {model[stateless]:.1f} µs per image",
        f"({p99['measured']:.2f}× the stateless p99)",
        f"answers more rows per second ({stateful_64['rows_per_s'] / stateless_64['rows_per_s']:.2f}×)",
        f"the full model on one image ({report['in_process_model_us_per_row']['1'][stateless]:.1f} µs)",
        f"{number(stream_64['server_cpu_us_per_row'])} µs of server CPU per row, {grpc_cpu['measured']:.2f}× less "
        f"than the stateless way's `ModelInfer` calls ({number(unary_64['server_cpu_us_per_row'])} µs)",
        f"{stream_64['rows_per_s'] / unary_64['rows_per_s']:.2f}× the rows per second",
        "still short of the ≥ 5× target" if not grpc_cpu["met"] else "target is met",
        f"({grpc_p99['measured']:.2f}× the stateless p99)",
    ):
        assert figure in prose, figure
