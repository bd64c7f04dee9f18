"""The speed layer's record batches (speed_layer/publish.py) on the real broker: read back as sent, and only
acknowledged records count as sent (a broker away is waited out or raised, never skipped)."""

import threading
import time

import pytest
from kafka.errors import KafkaError

from infra import broker as broker_process
from recsys import protocol
from recsys.io.kafka import producer, read_to_end
from recsys.protocol import Topics
from speed_layer import publish
from speed_layer.service import UP_BATCH_BYTES

pytestmark = pytest.mark.integration


def _ups(n: int, tag: str) -> list[tuple[bytes, bytes | None]]:
    """UP-sized records (~2 KB: several per 1 MB batch), every tenth a tombstone."""
    return [
        (protocol.up_key("user", f"u{i}"), None if i % 10 == 9 else f'{{"n":{i},"tag":"{tag}"}}'.encode() * 100)
        for i in range(n)
    ]


def _service_producer(s, **overrides):
    return producer(s, linger_ms=100, batch_size=UP_BATCH_BYTES, **overrides)


def _read(s) -> list[tuple[bytes, bytes | None]]:
    return [(r.key, r.value) for batch in read_to_end(Topics.MODEL_UPDATES, s) for r in batch]


def test_records_sent_in_batches_read_back_as_sent_in_order_after_a_stock_send(isolated_stack):
    s = isolated_stack
    prod = _service_producer(s)
    assert publish.supported(prod)  # the path under test, not the stock fallback
    try:
        first = _ups(1, "stock")
        prod.send(Topics.MODEL_UPDATES, key=first[0][0], value=first[0][1], partition=protocol.UPDATE_PARTITION)
        messages = _ups(3_000, "batches")  # ~6 MB: several record batches, queued behind the stock send's record
        publish.send_acknowledged(prod, Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION, messages)
        again = _ups(5, "again")  # a second call appends after the first's batches
        publish.send_acknowledged(prod, Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION, again)
    finally:
        prod.close()
    assert _read(s) == first + messages + again


def test_with_the_broker_away_the_send_raises_instead_of_returning(isolated_stack):
    """Nothing is acknowledged: the caller must not go on to commit its offsets."""
    s = isolated_stack
    prod = _service_producer(s, delivery_timeout_ms=3_000, request_timeout_ms=1_000)
    try:
        prod.partitions_for(Topics.MODEL_UPDATES)
        broker_process.kill_node(s, 1)
        with pytest.raises(KafkaError, match="did not acknowledge"):
            publish.send_acknowledged(prod, Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION, _ups(50, "x"), attempts=1)
    finally:
        prod.close(timeout=5)
        broker_process.start(s)  # for the fixture's stop


def test_a_broker_restarted_mid_send_is_waited_out_and_every_record_is_written(isolated_stack):
    s = isolated_stack
    prod = _service_producer(s, delivery_timeout_ms=4_000, request_timeout_ms=1_000)
    messages = _ups(2_000, "restart")
    done: list[BaseException | None] = []

    def send() -> None:
        try:
            publish.send_acknowledged(prod, Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION, messages)
            done.append(None)
        except BaseException as e:  # handed to the test's thread
            done.append(e)

    try:
        prod.partitions_for(Topics.MODEL_UPDATES)
        broker_process.kill_node(s, 1)
        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(6)  # longer than delivery_timeout_ms: the first attempt fails, the retries go on
        assert not done, "send_acknowledged returned while the broker was away"
        broker_process.start(s)
        sender.join(timeout=120)
        assert done == [None]
    finally:
        prod.close(timeout=5)
    read = _read(s)
    assert set(read) >= set(messages)  # sent again after a failure: duplicates are harmless (an UP is absolute)
    newest = {key: value for key, value in read}
    assert all(newest[key] == value for key, value in messages)
