"""Prometheus metrics of the serving layer (served by the app itself at GET /metrics).

With several worker processes (RECSYS_SERVING_WORKERS > 1) prometheus-client's
multiprocess mode is on (PROMETHEUS_MULTIPROC_DIR, set by `python -m serving`) and
/metrics sums the workers' files; that is why the model version is a gauge per
version label rather than an Info metric, which multiprocess mode cannot carry.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("serving_requests_total", "HTTP requests answered", ["route", "status"])
LATENCY = Histogram(
    "serving_request_seconds",
    "Time to answer a request, by route",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
ANSWERS = Counter("serving_recommend_source_total", "Recommendations answered, by what answered", ["source"])
FAST_ANSWERS = Counter(
    "serving_fast_path_answers_total", "GET /recommend answers written by the raw ASGI route (serving/fast.py)"
)
UPDATES = Counter("serving_model_updates_total", "model-updates messages, by what became of them", ["outcome"])
UPDATE_LAG = Histogram(
    "serving_update_lag_seconds",
    "From the newest event behind an UP to the UP being applied here",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
MODEL_LOADED = Gauge(
    "serving_model_loaded",
    "1 for the model version being served (max over worker processes)",
    ["model_version"],
    multiprocess_mode="livemax",
)
MODEL_SWAPS = Counter("serving_model_swaps_total", "Models loaded and swapped in")
MODEL_LOAD_SECONDS = Histogram("serving_model_load_seconds", "Time to load a model before swapping it in")
MODEL_LOAD_FAILURES = Counter("serving_model_load_failures_total", "MODEL messages whose model could not be loaded")
EVENTS_ACCEPTED = Counter("serving_events_accepted_total", "Events accepted by POST /events and acknowledged by Kafka")
EVENTS_REJECTED = Counter("serving_events_rejected_total", "Events refused by POST /events", ["reason"])
IMPRESSIONS_LOGGED = Counter("serving_impressions_logged_total", "Answers whose impression Kafka acknowledged")
IMPRESSIONS_LOST = Counter(
    "serving_impressions_lost_total",
    "Answers whose impression was never logged (the answer went out all the same), by why",
    ["reason"],
)
BATCH_SIZE = Histogram(
    "serving_recommend_batch_size", "Requests scored together by one matrix product", buckets=(1, 2, 4, 8, 16, 32, 64)
)


def show_model(version: str, previous: str | None) -> None:
    if previous:
        MODEL_LOADED.labels(previous).set(0)
    MODEL_LOADED.labels(version).set(1)


def exposition() -> tuple[bytes, str]:
    """The text /metrics answers with: this process's metrics, or all workers' in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
