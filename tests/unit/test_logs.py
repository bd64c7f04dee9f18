"""Service logs: kafka-python's slow-step warnings are dropped, its other warnings are kept."""

import logging

from recsys.logs import quiet_kafka


def test_kafka_slow_step_warnings_are_dropped_and_others_kept(caplog):
    quiet_kafka()
    log = logging.getLogger("kafka.net.selector")
    with caplog.at_level(logging.WARNING):
        log.warning(
            "Task <kafka.net.selector.Task object at 0x7f> ran for 0.123s (>0.100s threshold). It is blocking "
            "the event loop -- likely a tight sync loop inside a coroutine. Other pollers will time out."
        )
        log.warning("Task %s left RUNNING after step; demoting to UNSCHEDULED", "t")
    assert [r.getMessage() for r in caplog.records] == ["Task t left RUNNING after step; demoting to UNSCHEDULED"]
