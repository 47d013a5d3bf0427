"""Prometheus metrics, on a per-app registry (no process globals, so several apps can live in one test run).

RED metrics per route plus the stages that explain latency: queue depth, batch sizes (how well the
batcher merges concurrent requests), preprocessing and inference time. Both front ends count into the same
request metrics, told apart by ``protocol`` (``http``: route template and HTTP status; ``grpc``: method
and status code name).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "d2v_requests", "requests by protocol, route and status", ["protocol", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "d2v_request_seconds", "request latency", ["protocol", "route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.items = Counter("d2v_items", "inputs embedded", ["model"], registry=r)
        self.dropped = Counter(
            "d2v_dropped_items",
            "queued inputs never run: their request was cancelled or its deadline passed",
            ["model"],
            registry=r,
        )
        self.refused = Counter(
            "d2v_admission_refused",
            "requests refused (429) before decoding, by the bound they would have crossed",
            ["model", "bound"],
            registry=r,
        )
        self.queue_depth = Gauge("d2v_queue_depth", "items waiting in the batcher", ["model"], registry=r)
        self.batch_size = Histogram(
            "d2v_batch_size", "items per engine batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.preprocess_seconds = Histogram(
            "d2v_preprocess_seconds",
            "decode / tokenize time per request",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "d2v_inference_seconds", "engine time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )

    def observe_request(self, protocol: str, route: str, status: str, seconds: float) -> None:
        self.requests.labels(protocol, route, status).inc()
        self.latency.labels(protocol, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
