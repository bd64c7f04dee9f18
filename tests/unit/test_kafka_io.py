"""The Kafka helpers' own logic, with a stand-in consumer (the integration tests use the real broker)."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaConnectionError, UnsupportedVersionError

from recsys.io.kafka import poll_through_outages


class _Consumer:
    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.calls = error, 0

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"tp": [timeout_ms, max_records]}


def test_a_poll_during_a_broker_outage_is_an_empty_poll():
    c = _Consumer(KafkaConnectionError("111 ECONNREFUSED"))
    assert poll_through_outages(c, 10, 5) == {}  # type: ignore[arg-type]
    assert c.calls == 1


def test_records_pass_through_and_other_errors_are_raised():
    assert poll_through_outages(_Consumer(), 10, 5) == {"tp": [10, 5]}  # type: ignore[arg-type]
    with pytest.raises(UnsupportedVersionError):
        poll_through_outages(_Consumer(UnsupportedVersionError()), 10)  # type: ignore[arg-type]
