"""Prometheus metrics of one server (its own registry: two apps in one process do not mix)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
THROUGHPUT_WINDOW_S = 10.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wasillama_requests", "Requests answered", ["tenant", "endpoint", "status"],
                                registry=r)
        self.tokens = Counter("wasillama_tokens", "Tokens processed", ["tenant", "model", "kind"], registry=r)
        self.latency = Histogram("wasillama_request_seconds", "Time to the whole answer", ["tenant", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("wasillama_time_to_first_token_seconds", "Time to the first generated text",
                              ["tenant", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("wasillama_queue_depth", "Requests waiting for a sequence", ["model"], registry=r)
        self.running = Gauge("wasillama_running_requests", "Requests in a batch", ["model"], registry=r)
        self.tenant_running = Gauge("wasillama_tenant_running_requests", "Requests a tenant has running",
                                    ["tenant"], registry=r)
        self.throughput = Gauge("wasillama_generated_tokens_per_second",
                                f"Completion tokens per second over the last {THROUGHPUT_WINDOW_S:.0f} s", ["model"],
                                registry=r)
        self.pod_restarts = Counter("wasillama_pod_restarts", "Pods restarted after a failure", ["model"], registry=r)
        self._recent: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def generated(self, tenant: str, model: str, prompt: int, completion: int) -> None:
        self.tokens.labels(tenant, model, "prompt").inc(prompt)
        self.tokens.labels(tenant, model, "completion").inc(completion)
        with self._lock:
            self._recent.setdefault(model, deque()).append((time.monotonic(), completion))

    def watch(self, model: str, queued: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(queued)
        self.running.labels(model).set_function(running)

    def exposition(self) -> bytes:
        now = time.monotonic()
        with self._lock:
            for model, recent in self._recent.items():
                while recent and now - recent[0][0] > THROUGHPUT_WINDOW_S:
                    recent.popleft()
                self.throughput.labels(model).set(sum(n for _, n in recent) / THROUGHPUT_WINDOW_S)
        return generate_latest(self.registry)
