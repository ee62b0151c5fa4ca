"""Serving metrics in Prometheus form (``prometheus-client``), one registry per server (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds; time to first token spans queueing + prefill, inter-token latency one decode step
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.running = Gauge("slmtune_running_sequences", "Sequences in the running batch", ["model"], registry=r)
        self.queued = Gauge("slmtune_queued_sequences", "Sequences waiting for a slot", ["model"], registry=r)
        self.tokens = Counter("slmtune_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("slmtune_time_to_first_token_seconds", "From request to its first token", ["model"],
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("slmtune_inter_token_latency_seconds", "Between two tokens of one sequence", ["model"],
                             buckets=_ITL_BUCKETS, registry=r)
        self.adapter_hits = Counter("slmtune_adapter_cache_hits", "Requests whose adapter was already loaded",
                                    ["model"], registry=r)
        self.adapter_loads = Counter("slmtune_adapter_loads", "Adapters loaded into a base model", ["model"],
                                     registry=r)
        self.rejected = Counter("slmtune_rejected_requests", "Requests answered 429 (queue full)", ["model"],
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
