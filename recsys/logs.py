"""Structured (one JSON object per line) logs for the long-running services."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class KafkaSlowStepFilter(logging.Filter):
    """Drops kafka-python 3's "Task ... ran for 0.123s (>0.100s threshold). It is blocking the event loop" warnings.

    Their cause is not a blocking call of ours: kafka-python runs its network I/O as coroutines on its own
    selector loop and times each step by the wall clock, so a step that decodes a large fetch response (a
    replica reading `model-updates` from the start, a speed layer draining a backlog) or simply waits for the
    GIL or for a CPU on a busy machine crosses its fixed 0.1 s threshold, which no client setting changes
    (`slow_task_threshold_secs` is not accepted by KafkaConsumer/KafkaProducer). Issue 17 counted ~90% of serving
    and speed-layer log lines as these. Real network errors are logged with other messages and still come through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "blocking the event loop" not in record.getMessage()


def quiet_kafka() -> None:
    """kafka-python's INFO lines are per connection; its slow-step warnings say nothing about us (see above)."""
    kafka = logging.getLogger("kafka")
    kafka.setLevel(logging.WARNING)
    selector = logging.getLogger("kafka.net.selector")
    if not any(isinstance(f, KafkaSlowStepFilter) for f in selector.filters):
        selector.addFilter(KafkaSlowStepFilter())


def setup_json_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_kafka()
