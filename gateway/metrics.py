"""Prometheus metrics of one gateway, named like vLLM's (``vllm:`` becomes ``routegate:``).

Each GatewayServer owns a GatewayMetrics with its own CollectorRegistry, so several servers in
one process (the tests) never share or collide on metrics. Latencies are observed where they
happen (the generation service, the engine loop, the router); engine and pool gauges are
snapshots the engine thread refreshes (only that thread may read an engine) and a collector
reports at scrape time.

    curl http://127.0.0.1:<metrics_port>/metrics
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backends.engine_stats import EngineStats

PREFIX = "routegate:"
# Seconds; fine steps below 100 ms where single tokens of small models land.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class _EngineCollector(Collector):
    """Running/waiting requests, KV pool usage and prefix-cache counters from engine snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, EngineStats] = {}

    def update(self, backend: str, stats: EngineStats) -> None:
        with self._lock:
            self._stats[backend] = stats

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            stats = dict(self._stats)
        running = GaugeMetricFamily(PREFIX + "num_requests_running", "Requests in the engine's batch.",
                                    labels=["backend"])
        waiting = GaugeMetricFamily(PREFIX + "num_requests_waiting", "Requests queued in the engine.",
                                    labels=["backend"])
        usage = GaugeMetricFamily(PREFIX + "kv_cache_usage_perc",
                                  "Share of the shared KV pool's pages in use (1 = full).")
        queries = CounterMetricFamily(PREFIX + "prefix_cache_queries",
                                      "Prompt tokens looked up in the prefix cache.", labels=["backend", "tier"])
        hits = CounterMetricFamily(PREFIX + "prefix_cache_hits",
                                   "Prompt tokens served from the prefix cache.", labels=["backend", "tier"])
        for backend, s in sorted(stats.items()):
            running.add_metric([backend], s.num_running)
            waiting.add_metric([backend], s.num_waiting)
            # Blocks loaded from Redis join the local cache before admission, so the engine's
            # hits include them: count them under "redis" only.
            local_hits = max(0, s.prefix_hit_tokens - s.kv_tier_loaded_tokens)
            queries.add_metric([backend, "local"], s.prefix_query_tokens)
            hits.add_metric([backend, "local"], local_hits)
            if getattr(s, "kv_tier", None) is not None:
                # Redis is asked for what the local cache missed; its hits are the tokens loaded.
                queries.add_metric([backend, "redis"], s.prefix_query_tokens - local_hits)
                hits.add_metric([backend, "redis"], s.kv_tier_loaded_tokens)
        if stats:
            # One pool serves every engine; any snapshot has its totals (the newest is enough).
            s = next(iter(stats.values()))
            usage.add_metric([], s.pool_blocks_used / s.pool_blocks_total if s.pool_blocks_total else 0.0)
        yield from (running, waiting, usage, queries, hits)


class GatewayMetrics:
    """The metrics of one gateway and, once started, the HTTP endpoint that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

        def histogram(name: str, doc: str, labels: Sequence[str] = ("backend",)) -> Histogram:
            return Histogram(PREFIX + name, doc, list(labels), registry=self.registry, buckets=_LATENCY_BUCKETS)

        self.time_to_first_token = histogram("time_to_first_token_seconds", "Arrival to first token.")
        self.inter_token_latency = histogram("inter_token_latency_seconds", "Between streamed tokens.")
        self.e2e_request_latency = histogram("e2e_request_latency_seconds", "Arrival to the last token.")
        self.request_queue_time = histogram("request_queue_time_seconds",
                                            "Engine arrival to first being scheduled.")
        self.router_latency = histogram("router_latency_seconds", "Time the router takes to decide.", ())
        self.routing_decisions = Counter(PREFIX + "routing_decisions", "Requests the router sent to a backend.",
                                         ["backend"], registry=self.registry)
        self._engines = _EngineCollector()
        self.registry.register(self._engines)
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def update_engine_stats(self, backend: str, stats: EngineStats) -> None:
        """A fresh snapshot of one engine (called from the engine thread)."""
        self._engines.update(backend, stats)

    def observe_queue_time(self, backend: str, seconds: float) -> None:
        self.request_queue_time.labels(backend).observe(seconds)

    def observe_routing(self, backend: str, latency_s: float) -> None:
        self.routing_decisions.labels(backend).inc()
        self.router_latency.observe(latency_s)

    def start_http(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 = any free port); return the bound port."""
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(5)
            self._http = self._http_thread = None
