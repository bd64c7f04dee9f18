"""Prometheus metrics of the speed layer (served on 127.0.0.1:RECSYS_SPEED_METRICS_PORT/metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

EVENTS = Counter("speed_events_total", "Valid events folded in")
INVALID = Counter(
    "speed_invalid_events_total", "Events skipped as invalid (the archiver dead-letters them)", ["reason"]
)
FORGETS = Counter("speed_forgets_total", "FORGET markers acted on (users erased from the state)")
AVAILABILITY = Counter("speed_availability_updates_total", "Item updates turned into AVAIL messages")
FOLDINS = Counter("speed_foldins_total", "Vectors recomputed and published", ["kind"])
LAG = Gauge("speed_consumer_lag", "Events not yet read, summed over this instance's partitions")
LATENCY = Histogram(
    "speed_event_to_publish_seconds",
    "From the event's Kafka timestamp to its UP message being acknowledged",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SOLVE_SECONDS = Histogram("speed_batch_solve_seconds", "Fold-in time of one micro-batch")
MODEL_INFO = Info("speed_model", "The batch model the speed layer folds in against")
CHALLENGER_EVENTS = Counter("speed_challenger_events_total", "Valid events folded into the A/B test's challenger")
CHALLENGER_INFO = Info("speed_challenger", "The A/B test's challenger the speed layer also folds in against")


def start_server(port: int) -> None:
    start_http_server(port, addr="127.0.0.1")
