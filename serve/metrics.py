"""Prometheus metrics of one server (its own registry, so two apps in a process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rowrnn_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "code"], registry=self.registry)
        self.latency = Histogram("rowrnn_request_duration_seconds", "Time from request to response.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("rowrnn_inference_batch_size", "Images per session call.",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.inference_seconds = Histogram("rowrnn_inference_seconds", "Time of one session call.",
                                           buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("rowrnn_inference_images", "Images classified.", registry=self.registry)
        self.queue_images = Gauge("rowrnn_queue_images", "Images waiting for the batcher.", registry=self.registry)

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_size.observe(images)
        self.inference_seconds.observe(seconds)
        self.images.inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
