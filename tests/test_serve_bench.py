"""benchmarks/serve_bench.py's pure parts, without Triton or any server: the summary of a run, the
targets as ratios (and what is skipped), the Triton model repository it writes, and the
BENCHMARKS.md serving figures against the committed JSON.

How fast anything is gets judged from a real run's report (benchmarks/results/serve_bench.json), never here.
"""

from __future__ import annotations

import json
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import serve_bench  # noqa: E402

COMMITTED = REPO / "benchmarks" / "results" / "serve_bench.json"


def result(
    requests: int,
    seconds: float = 2.0,
    p99_us: int = 9000,
    non_2xx: int = 0,
    socket_errors: int = 0,
    mean_batch: float | None = 1.0,
) -> dict:
    return {
        "requests": requests,
        "seconds": seconds,
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
        "p50_us": p99_us // 2,
        "p99_us": p99_us,
        "mean_batch": mean_batch,
    }


def test_summary_counts_answered_requests_only_and_takes_medians():
    samples = {
        ("Triton", "gRPC", 1, 64): [result(1000, non_2xx=100), result(3000, socket_errors=1000), result(2200)],
        ("rowrnn serve", "REST binary", 256, 4): [result(40, p99_us=100_000, mean_batch=256.0)],
    }
    rows = {(r["server"], r["protocol"]): r for r in serve_bench.summarize(samples)}
    grpc = rows[("Triton", "gRPC")]
    # answered per second: 450, 1000, 1100 -> median 1000 (a failed request is not served)
    assert grpc["requests_per_s"] == pytest.approx(1000)
    assert grpc["non_2xx"] == 100 and grpc["socket_errors"] == 1000
    assert grpc["p99_ms"] == pytest.approx(9.0)
    big = rows[("rowrnn serve", "REST binary")]
    assert big["images_per_s"] == pytest.approx(20 * 256) and big["mean_batch"] == 256.0


def report_with(rows: list[dict], skipped: list[dict] | None = None) -> dict:
    return {"rows": rows, "skipped": skipped or [], "in_process_images_per_s": 30_000.0, "peak_rss_mb": {}}


def row(server: str, protocol: str, images: int, clients: int, rps: float, p99: float = 10.0) -> dict:
    return {
        "server": server,
        "protocol": protocol,
        "images": images,
        "concurrency": clients,
        "requests_per_s": rps,
        "images_per_s": rps * images,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "non_2xx": 0,
        "socket_errors": 0,
        "mean_batch": None,
    }


def test_targets_are_ratios_of_rows_from_the_same_run_and_skipped_ones_say_why():
    report = report_with(
        [
            row("rowrnn serve", "REST JSON", 1, 64, 3400),
            row("Triton", "REST JSON", 1, 64, 2000),
            row("rowrnn serve", "REST binary", 1, 64, 3000),
            row("Triton", "REST binary", 1, 64, 2000),
            row("Triton", "gRPC", 1, 64, 2500, p99=50.0),
        ],
        skipped=[{"server": "rowrnn serve", "protocol": "gRPC", "reason": "rowrnn serve has no --grpc-port"}],
    )
    found = {t.name: t for t in serve_bench.targets(report)}
    json64 = found["REST JSON, 1 image, 64 clients: req/s vs Triton"]
    assert json64.value == pytest.approx(1.7) and json64.met  # exactly at the bound: met
    binary64 = found["REST binary, 1 image, 64 clients: req/s vs Triton"]
    assert binary64.value == pytest.approx(1.5) and binary64.met is False
    assert binary64.detail == "3 000 / 2 000 req/s"
    grpc = found["gRPC, 1 image, 64 clients: req/s vs Triton"]
    assert grpc.value is None and grpc.met is None and grpc.detail == "skipped: rowrnn serve has no --grpc-port"
    # a row that is absent without a recorded reason still says what is missing
    naive = found["REST JSON, 1 image, 64 clients: req/s vs naive"]
    assert naive.met is None and "no naive FastAPI REST JSON row" in naive.detail
    text = serve_bench.format_report(report)
    assert "skipped: gRPC, 1 image, 64 clients: req/s vs Triton >= 1.5: rowrnn serve has no --grpc-port" in text
    assert "MISS REST binary, 1 image, 64 clients: req/s vs Triton >= 1.7: 1.50" in text


def test_grpc_p99_target_is_no_worse_than_triton():
    fast = report_with(
        [row("rowrnn serve", "gRPC", 1, 64, 4000, p99=30.0), row("Triton", "gRPC", 1, 64, 2500, p99=29.0)]
    )
    found = {t.name: t for t in serve_bench.targets(fast)}
    assert found["gRPC, 1 image, 64 clients: req/s vs Triton"].met  # 1.6x
    p99 = found["gRPC, 1 image, 64 clients: p99 vs Triton's"]
    assert p99.value == pytest.approx(30 / 29) and p99.met is False  # 1 ms worse is worse


def test_triton_model_repository(tmp_path):
    """The repository the benchmark hands tritonserver: Triton's own config schema parses it, the
    model file is the one rowrnn serves, and model.py is the committed Python-backend model."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    model = REPO / "runtime" / "models" / "mnist.onnx"
    directory = serve_bench.write_triton_model_repository(tmp_path / "models", model)
    assert directory == tmp_path / "models" / "rowrnn"
    config = text_format.Parse((directory / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "python" and not config.platform
    assert config.max_batch_size == serve_bench.TRITON_MAX_BATCH >= 256  # the 256-image requests fit
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000  # rowrnn's default delay
    assert [(t.name, list(t.dims)) for t in config.input] == [("rows", [28, 28])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [10]), ("probabilities", [10])]
    assert (directory / "1" / "model.onnx").read_bytes() == model.read_bytes()
    source = (directory / "1" / "model.py").read_text()
    assert source == (REPO / "benchmarks" / "triton_model.py").read_text()
    compile(source, "model.py", "exec")
    with pytest.raises(FileExistsError):  # never written over an existing one
        serve_bench.write_triton_model_repository(tmp_path / "models", model)


def test_numbers_are_written_as_in_benchmarks_md():
    assert serve_bench.number(1489.4) == "1 489"
    assert serve_bench.number(65.43) == "65.4" and serve_bench.number(2.084) == "2.08"
    assert serve_bench.number(3.456, 1) == "3.5" and serve_bench.number(1.7, 2) == "1.70"
    assert serve_bench.number(None) == "–"


def serving_section() -> str:
    """BENCHMARKS.md's serving section, up to the next section."""
    text = (REPO / "BENCHMARKS.md").read_text()
    start = text.index("## Serving (`benchmarks/serve_bench.py`)")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def test_every_serving_figure_in_benchmarks_md_is_the_committed_json():
    """The serving tables and figures in BENCHMARKS.md are what `markdown()` makes of
    benchmarks/results/serve_bench.json, line for line, and no table row is there that the JSON did not make."""
    report = json.loads(COMMITTED.read_text())
    expected = serve_bench.markdown(report)
    section = serving_section()
    for line in expected:
        assert line in section.splitlines(), f"BENCHMARKS.md lacks (or has another figure in): {line}"
    written_rows = [line for line in section.splitlines() if line.startswith("|")]
    assert written_rows == [line for line in expected if line.startswith("|")]


def test_committed_report_is_a_full_side_by_side_run():
    report = json.loads(COMMITTED.read_text())
    servers = {r["server"] for r in report["rows"]}
    assert {"rowrnn serve", "Triton", "naive FastAPI"} <= servers  # Triton really ran
    for protocol in serve_bench.PROTOCOLS:
        for images, clients in serve_bench.LOADS:
            present = serve_bench.find(report, "Triton", protocol, images, clients)
            assert present is not None and present["requests_per_s"] > 0, (protocol, images, clients)


def test_the_readme_serving_figures_are_the_committed_json():
    report = json.loads(COMMITTED.read_text())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert " ".join(serve_bench.readme_summary(report).split()) in readme


def test_grpc_load_sends_a_model_infer_request_triton_can_read():
    """The gRPC load generator's request, read back with Triton's own generated stubs."""
    import grpc_load
    import numpy as np
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest.FromString(grpc_load.infer_request("rowrnn", 3))
    assert request.model_name == "rowrnn"
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("rows", "FP32", [3, 28, 28])]
    rows = np.frombuffer(request.raw_input_contents[0], "<f4").reshape(3, 28, 28)
    assert rows.min() >= 0 and rows.max() <= 1 and rows.std() > 0.1  # real pixel values, not zeros


def test_without_debians_python_triton_is_skipped_with_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setattr(serve_bench, "DEBIAN_PYTHON", tmp_path / "no-python3.11")
    with pytest.raises(SystemExit, match=r"needs Debian's .*no-python3\.11.*apt-get install python3\.11"):
        serve_bench.triton_installation(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing half set up


def test_the_batch_counters_are_read_from_a_real_rowrnn_server(start_server):
    """The mean batch comes from `rowrnn serve`'s own /metrics: a renamed or relabelled metric must
    fail here, not turn into a '–' in the committed table (it once did, after the metrics gained
    model and version labels)."""
    import numpy as np
    import tritonclient.http as triton_http

    server = start_server(None, "--log-level", "warning")
    measured = serve_bench.Server(serve_bench.OURS, server.process, server.port, None, f"{server.url}/metrics")
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")

    def infer(images: int) -> None:
        rows = triton_http.InferInput("rows", [images, 28, 28], "FP32")
        rows.set_data_from_numpy(np.zeros((images, 28, 28), np.float32))
        client.infer(serve_bench.MODEL, [rows])

    infer(1)  # the benchmark reads its counters after a warm-up too: labelled series exist from then
    before = serve_bench.batch_counts(measured)
    assert before is not None
    infer(3)
    client.close()
    assert serve_bench.mean_batch(before, serve_bench.batch_counts(measured)) == 3.0
