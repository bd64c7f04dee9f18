"""The speed layer's record batches (speed_layer/publish.py) are the bytes kafka-python's own builder writes."""

import random

import pytest
from kafka.errors import MessageSizeTooLargeError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import encode_varint

from speed_layer.publish import Batch, batches, varint

NOW_MS = 1_796_000_000_123
# Lengths either side of each varint width (zigzag: 1 byte below 64, 2 below 8,192, 3 below 1,048,576).
EDGES = [0, 1, 63, 64, 65, 127, 128, 8191, 8192, 8193, 20_000]


def _messages(seed: int, n: int) -> list[tuple[bytes, bytes | None]]:
    rng = random.Random(seed)
    out: list[tuple[bytes, bytes | None]] = []
    for i in range(n):
        key = f"UP:user:u_{i:05d}".encode() + b"k" * rng.choice([0, 1, 50, 63, 64, 200])
        value = None if rng.random() < 0.1 else bytes(rng.getrandbits(8) for _ in range(rng.choice(EDGES)))
        out.append((key, value))
    return out


def _stock(messages, batch_size: int) -> list[bytes]:
    """The same records through kafka-python's MemoryRecordsBuilder, a new batch where `append` says it is full."""
    built, records = [], MemoryRecordsBuilder(2, 0, batch_size)
    for key, value in messages:
        if records.append(NOW_MS, key, value, []) is None:
            records.close()
            built.append(bytes(records.buffer()))
            records = MemoryRecordsBuilder(2, 0, batch_size)
            assert records.append(NOW_MS, key, value, []) is not None
    records.close()
    return [*built, bytes(records.buffer())]


def _ours(messages, batch_size: int) -> list[bytes]:
    out = []
    for batch in batches(messages, batch_size, max_request_size=10**9):
        records = batch.records((2, 0, batch_size), NOW_MS)
        records.close()
        out.append(bytes(records.buffer()))
    return out


@pytest.mark.parametrize("value", [0, 1, -1, 63, 64, 8191, 8192, 1 << 20, 1 << 40])
def test_varint_is_kafka_pythons(value):
    written = bytearray()
    encode_varint(value, written.append)
    assert varint(value) == bytes(written)


@pytest.mark.parametrize("batch_size", [200, 5_000, 64 * 1024, 1_000_000])
def test_batches_are_kafka_pythons_bytes_cut_where_its_builder_cuts(batch_size):
    """Header, CRC, every record, and the same records per batch (a record larger than the batch goes alone)."""
    messages = _messages(batch_size, 400)
    ours = _ours(messages, batch_size)
    assert ours == _stock(messages, batch_size)
    assert batch_size > 100_000 or len(ours) > 1  # the small sizes did cut the run into several batches


def test_the_records_read_back_as_the_messages_in_order():
    messages = _messages(7, 300)
    read = []
    for buffer in _ours(messages, 64 * 1024):
        for batch in MemoryRecords(buffer):
            read += [(r.key, r.value, r.timestamp, r.headers) for r in batch]
    assert read == [(key, value, NOW_MS, []) for key, value in messages]


def test_a_record_over_the_request_limit_is_refused_as_send_refuses_it():
    with pytest.raises(MessageSizeTooLargeError):
        list(batches([(b"k", b"x" * 2_000)], batch_size=1_000_000, max_request_size=1_000))


def test_the_header_size_is_the_builders():
    assert Batch(DefaultRecordBatchBuilder.HEADER_STRUCT.size).size == MemoryRecordsBuilder(2, 0, 100).size_in_bytes()
