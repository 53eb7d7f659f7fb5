"""Prometheus metrics of one app (GET /metrics).

Each app owns its CollectorRegistry, so two apps in one process (tests, several models) never
share or collide on metrics. Counters and latency histograms are fed from each job's events on
the model thread (the engine calls the observer); gauges are read from the engine when the
registry is scraped, so they are never stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llorch.worker.backend.protocol import FinishEvent, TokenEvent
from llorch.worker.fleet import Fleet
from llorch.worker.jobs import JobEvent, JobFailed

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. First tokens wait for the queue and the prompt; later ones only for one decode step.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A whole request, its stream included: from a probe's milliseconds to a long generation.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_CONTRACT_PATHS = frozenset({"/execute", "/tokenize", "/detokenize", "/embed"})


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def surface(path: str) -> str:
    """The API a path belongs to: the worker contract, OpenAI's (its Responses API counted
    apart), Anthropic's Messages API, llama-server's /infill; probes, controls, the OpenAPI
    document and unknown paths outside /v1/ are "ops"."""
    if path in _CONTRACT_PATHS or path.startswith("/jobs/"):
        return "contract"
    if _under(path, "/v1/messages"):
        return "anthropic"
    if _under(path, "/v1/responses"):
        return "responses"
    if _under(path, "/v1"):
        return "openai"
    if path == "/infill":
        return "infill"
    return "ops"


class _FleetCollector(Collector):
    """Gauges of every loaded model (label `model`), read from the engines at scrape time."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def collect(self) -> Iterator[Metric]:
        engines = self._fleet.loaded()
        families = {
            "queue_depth": GaugeMetricFamily(
                "llorch_queue_depth", "Requests waiting for a slot", labels=["model"]
            ),
            "queue_max": GaugeMetricFamily(
                "llorch_queue_max",
                "Requests that may wait before new ones get 429",
                labels=["model"],
            ),
            "slots_busy": GaugeMetricFamily(
                "llorch_slots_busy", "Slots generating", labels=["model"]
            ),
            "slots_total": GaugeMetricFamily(
                "llorch_slots_total", "Slots (sequences generated at once)", labels=["model"]
            ),
            "kv_used": GaugeMetricFamily(
                "llorch_kv_cells_used", "KV cache cells holding live tokens", labels=["model"]
            ),
            "kv_total": GaugeMetricFamily(
                "llorch_kv_cells_total", "KV cache cells", labels=["model"]
            ),
        }
        load = GaugeMetricFamily(
            "llorch_model_load_seconds", "Time the model took to load", labels=["model"]
        )
        for name, engine in engines.items():
            capacity = engine.capacity()
            for key, family in families.items():
                family.add_metric([name], getattr(capacity, key))
            load_seconds = engine.health().load_seconds
            if load_seconds is not None:
                load.add_metric([name], load_seconds)
        yield from families.values()
        yield load
        loaded = GaugeMetricFamily(
            "llorch_model_loaded",
            "1 for a loaded model, 0 for a served one not loaded",
            labels=["model"],
        )
        for name, state in self._fleet.states().items():
            loaded.add_metric([name], 0 if state == "unloaded" else 1)
        yield loaded


class WorkerMetrics:
    """Built before the engines (it observes their jobs), then `watch`es the fleet for the
    gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llorch_requests",
            "Generation requests by outcome: finished (reason: stop_reason), failed (reason: "
            "error code) or rejected before streaming (reason: HTTP status)",
            ("outcome", "reason"),
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "llorch_prompt_tokens", "Prompt tokens admitted", registry=self.registry
        )
        self.generated_tokens = Counter(
            "llorch_generated_tokens", "Tokens generated", registry=self.registry
        )
        self.draft_tokens = Counter(
            "llorch_draft_tokens",
            "Draft tokens verified (speculative decoding)",
            registry=self.registry,
        )
        self.draft_accepted = Counter(
            "llorch_draft_accepted",
            "Draft tokens accepted (speculative decoding)",
            registry=self.registry,
        )
        # A gauge, not a counter: speculation that costs more than it saves makes it fall.
        self.draft_saved = Gauge(
            "llorch_draft_saved_seconds",
            "Estimated decode time speculative decoding saved the finished requests, summed "
            "(negative: lost); each request's own wait, from the measured step costs",
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "llorch_time_to_first_token_seconds",
            "From admission to the first generated token (queueing and prompt included)",
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "llorch_inter_token_latency_seconds",
            "Between consecutive generated tokens of one request",
            buckets=_ITL_BUCKETS,
            registry=self.registry,
        )

        self.rerank_pairs = Counter(
            "llorch_rerank_pairs",
            "Query-document pairs a cross-encoder scored (POST /v1/rerank, /rerank)",
            registry=self.registry,
        )

        self.http_requests = Counter(
            "llorch_http_requests",
            "HTTP requests by surface (contract, openai, responses, anthropic, infill, ops) and "
            "status, refusals before any route (401, 413, 421, ...) included",
            ("surface", "status"),
            registry=self.registry,
        )
        self.http_request_seconds = Histogram(
            "llorch_http_request_seconds",
            "From a request's arrival to the end of its answer (a stream's last event), by surface",
            ("surface",),
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )

    def watch(self, fleet: Fleet) -> None:
        self.registry.register(_FleetCollector(fleet))

    def job_observer(self, prompt_tokens: int) -> JobObserver:
        return JobObserver(self, prompt_tokens)

    def finished(self, stop_reason: str) -> None:
        self.requests.labels("finished", stop_reason).inc()

    def failed(self, code: str) -> None:
        self.requests.labels("failed", code).inc()

    def rejected(self, status: int) -> None:
        self.requests.labels("rejected", str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TokenTimer:
    """Time-to-first-token and inter-token latency of one job, from the times its token events
    left the model thread (stamped in the sink, so a slow reader does not skew them)."""

    def __init__(self, metrics: WorkerMetrics, admitted_at: float) -> None:
        self._metrics = metrics
        self._last = admitted_at
        self._first = True

    def token(self, at: float) -> None:
        self._metrics.generated_tokens.inc()
        if self._first:
            self._metrics.time_to_first_token.observe(max(0.0, at - self._last))
            self._first = False
        else:
            self._metrics.inter_token_latency.observe(max(0.0, at - self._last))
        self._last = at


class JobObserver:
    """Counts one job's events into the metrics, from the model thread's sink (so latencies
    are stamped when events leave the model, not when a reader gets to them).

    The prompt is counted with the first event: a sink only hears from jobs that were
    admitted, so a request refused at submission (queue full) counts no prompt tokens.
    """

    def __init__(self, metrics: WorkerMetrics, prompt_tokens: int) -> None:
        self._metrics = metrics
        self._timer = TokenTimer(metrics, time.monotonic())
        self._prompt_tokens: int | None = prompt_tokens

    def __call__(self, event: JobEvent) -> None:
        if self._prompt_tokens is not None:
            self._metrics.prompt_tokens.inc(self._prompt_tokens)
            self._prompt_tokens = None
        if isinstance(event, TokenEvent):
            self._timer.token(time.monotonic())
        elif isinstance(event, FinishEvent):
            self._metrics.finished(event.stop_reason.value)
            self._metrics.draft_tokens.inc(event.drafted)
            self._metrics.draft_accepted.inc(event.accepted)
            self._metrics.draft_saved.inc(event.draft_saved_ms / 1000.0)
        elif isinstance(event, JobFailed):
            self._metrics.failed(event.error.code)


class HttpMetrics:
    """ASGI middleware counting every request and timing it to its answer's end, by surface.
    Outermost, so that the requests refused before any route (token, Host, body size) count."""

    def __init__(self, app: ASGIApp, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # an exception before the answer began: the server error it becomes

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            kind = surface(scope["path"])
            self.metrics.http_requests.labels(kind, str(status)).inc()
            self.metrics.http_request_seconds.labels(kind).observe(time.monotonic() - started)
