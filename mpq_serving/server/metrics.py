"""Prometheus metrics of the embedded server, under the names vLLM uses, so one dashboard reads both.

Each app has its own registry (several servers may live in one process, as in the tests). A
sequence counts as a request, as vLLM counts each of a request's `n` samples.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
"""vLLM's buckets for time to first token (seconds)."""

TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                         20.0, 40.0, 80.0)
"""vLLM's buckets for the time between two output tokens (seconds)."""

REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
"""vLLM's buckets for a request's end-to-end latency (seconds)."""

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """What `/metrics` reports: queue depths, token counts and latency histograms, per served model."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self._running = Gauge("vllm:num_requests_running", "Requests in the decode batch.", labels, registry=r)
        self._waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a batch slot.", labels, registry=r)
        self._prompt = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r)
        self._generated = Counter("vllm:generation_tokens", "Generation tokens processed.", labels, registry=r)
        self._success = Counter(
            "vllm:request_success", "Requests finished, by finish reason.", [*labels, "finished_reason"], registry=r
        )
        self._rejected = Counter(
            "mpq:requests_rejected", "Requests refused with 503 because the waiting queue was full.", labels, registry=r
        )
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", labels, buckets=TTFT_BUCKETS, registry=r
        )
        self._itl = Histogram(
            "vllm:inter_token_latency_seconds", "Time between output tokens.", labels,
            buckets=TOKEN_LATENCY_BUCKETS, registry=r,
        )
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Request latency from arrival to its last token.", labels,
            buckets=REQUEST_LATENCY_BUCKETS, registry=r,
        )
        self._name = model_name

    def queues(self, running: int, waiting: int) -> None:
        self._running.labels(self._name).set(running)
        self._waiting.labels(self._name).set(waiting)

    def prompt_tokens(self, count: int) -> None:
        self._prompt.labels(self._name).inc(count)

    def generation_tokens(self, count: int) -> None:
        self._generated.labels(self._name).inc(count)

    def first_token(self, seconds: float) -> None:
        self._ttft.labels(self._name).observe(seconds)

    def next_token(self, seconds: float) -> None:
        self._itl.labels(self._name).observe(seconds)

    def finished(self, reason: str, seconds: float) -> None:
        self._success.labels(self._name, reason).inc()
        self._e2e.labels(self._name).observe(seconds)

    def rejected(self) -> None:
        self._rejected.labels(self._name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
