"""Prometheus metrics of one server (its own registry, so two apps in a process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL_LABELS = ["model", "version"]


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rowrnn_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rowrnn_request_duration_seconds",
            "Time from request to response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "rowrnn_grpc_requests", "gRPC calls by method and status code.", ["method", "code"], registry=self.registry
        )
        self.grpc_latency = Histogram(
            "rowrnn_grpc_request_duration_seconds",
            "Time from gRPC call to response.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "rowrnn_inference_batch_size",
            "Images per session call, by model and version.",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "rowrnn_inference_seconds",
            "Time of one session call.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("rowrnn_inference_images", "Images classified.", MODEL_LABELS, registry=self.registry)
        self.queue_images = Gauge(
            "rowrnn_queue_images", "Images waiting for the batcher.", MODEL_LABELS, registry=self.registry
        )

        self.live_sequences = Gauge(
            "rowrnn_sequences_live", "Live sequences of the stream models.", registry=self.registry
        )
        self.step_rows = Histogram(
            "rowrnn_sequence_step_rows",
            "Rows (one per live sequence) per call of a step model, by stream model and version.",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.sequence_expirations = Counter(
            "rowrnn_sequence_expirations",
            "Sequences dropped after --sequence-idle-s without a row, by stream model.",
            ["model"],
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method).observe(seconds)

    def observe_batch(self, model: str, version: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model, version).observe(images)
        self.inference_seconds.labels(model, version).observe(seconds)
        self.images.labels(model, version).inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
