"""Prometheus metrics of the serving layer (served by the app itself at GET /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, Info

REQUESTS = Counter("serving_requests_total", "HTTP requests answered", ["route", "status"])
LATENCY = Histogram(
    "serving_request_seconds", "Time to answer a request, by route", ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)  # fmt: skip
ANSWERS = Counter("serving_recommend_source_total", "Recommendations answered, by what answered", ["source"])
UPDATES = Counter("serving_model_updates_total", "model-updates messages, by what became of them", ["outcome"])
UPDATE_LAG = Histogram(
    "serving_update_lag_seconds", "From the newest event behind an UP to the UP being applied here",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)  # fmt: skip
MODEL_INFO = Info("serving_model", "The batch model being served")
MODEL_SWAPS = Counter("serving_model_swaps_total", "Models loaded and swapped in")
MODEL_LOAD_SECONDS = Histogram("serving_model_load_seconds", "Time to load a model before swapping it in")
MODEL_LOAD_FAILURES = Counter("serving_model_load_failures_total", "MODEL messages whose model could not be loaded")
EVENTS_ACCEPTED = Counter("serving_events_accepted_total", "Events accepted by POST /events and acknowledged by Kafka")
EVENTS_REJECTED = Counter("serving_events_rejected_total", "Events refused by POST /events", ["reason"])
