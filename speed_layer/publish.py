"""The UPs' way onto `model-updates`: kafka-python's own record batches, filled a micro-batch at a time.

`KafkaProducer.send` costs ~20 µs of the loop's thread per UP (bench/speed_profile.py, docs/speed.md): argument
checks, a partitioner call, a `TopicPartition`, a size estimate, a lock and an atomic counter per record, the
pure-Python record encoder (five varints into a bytearray) and a future per record. A micro-batch's UPs all go to
the one partition of `model-updates`, so here each ~1 MB run of them is encoded into the same v2 record-batch bytes
the producer's builder writes (`record_bytes`: the unit tests compare them byte for byte), put into a `ProducerBatch`
of kafka-python's and queued in the producer's accumulator as `send` would leave it. From there on everything is the
producer's own: the sender thread drains it, the idempotent producer stamps its id and sequence, retries and
acknowledgements are the same code. ~2.5 µs per UP.

What the broker acknowledges is a record batch (its `produce_future`): every record in it is written or none is. So
`send_acknowledged` checks each record through its batch and sends those of a failed batch again, as
`recsys.io.kafka.send_acknowledged` does per record, before the caller commits its offsets.

The internals used (`_accumulator`, its `_batches`, `_incomplete`, `_tp_lock`, `_appends_in_progress`, `_sender`, the
builder's counters) are kafka-python 3.0's, pinned in requirements.lock; `supported` checks them, and a producer
without them gets the stock `send` path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from kafka import KafkaProducer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError, MessageSizeTooLargeError
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecordsBuilder

from recsys.io import kafka as kafka_io

log = logging.getLogger(__name__)
Message = tuple[bytes, bytes | None]


def varint(value: int) -> bytes:
    """Kafka's zigzag varint of `value` (kafka.record.util.encode_varint's bytes)."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [varint(n) for n in range(1 << 13)]  # record lengths, key lengths and offset deltas: looked up, not encoded
_NULL = varint(-1)  # a null value (a tombstone)
_NO_DELTA = b"\x00"  # attributes 0; and the timestamp delta: every record of a batch gets the batch's timestamp
_NO_HEADERS = b"\x00"


def _varint(n: int, small: list[bytes] = _SMALL) -> bytes:
    return small[n] if n < 8192 else varint(n)


def record_bytes(offset_delta: int, key: bytes, value: bytes | None) -> list[bytes]:
    """One record of a v2 batch, as `DefaultRecordBatchBuilder.append` writes it with a timestamp delta of 0 and no
    headers: length, attributes, timestamp delta, offset delta, key, value, header count."""
    offset = _varint(offset_delta)
    key_length = _varint(len(key))
    if value is None:
        value_parts = [_NULL]
        value_size = 1
    else:
        value_length = _varint(len(value))
        value_parts = [value_length, value]
        value_size = len(value_length) + len(value)
    body = 2 + len(offset) + len(key_length) + len(key) + value_size + 1
    return [_varint(body), _NO_DELTA, _NO_DELTA, offset, key_length, key, *value_parts, _NO_HEADERS]


def supported(prod: KafkaProducer) -> bool:
    """Whether this producer has the kafka-python internals the batch path fills (else: the stock `send`)."""
    acc = getattr(prod, "_accumulator", None)
    builder_slots = set(getattr(DefaultRecordBatchBuilder, "__slots__", ()))
    return (
        acc is not None
        and hasattr(prod, "_sender")
        and all(hasattr(acc, name) for name in ("_batches", "_incomplete", "_tp_lock", "_appends_in_progress"))
        and {"_buffer", "_first_timestamp", "_max_timestamp", "_num_records", "_last_offset"} <= builder_slots
        and "_next_offset" in getattr(MemoryRecordsBuilder, "__slots__", ())
        and acc.config.get("message_version") == 2
    )


class Batch:
    """A record batch being filled: its records' bytes, and the messages in them (sent again if it fails)."""

    def __init__(self, header_size: int) -> None:
        self.parts: list[bytes] = []
        self.size = header_size
        self.messages: list[Message] = []
        self.largest = 0

    def records(self, config: tuple[int, int, int], now_ms: int) -> MemoryRecordsBuilder:
        """Its records in a builder of kafka-python's (`config`: magic, compression, batch size), as if `append`ed
        with the timestamp `now_ms`."""
        records = MemoryRecordsBuilder(*config)
        builder = records._builder  # type: ignore[attr-defined]
        builder._buffer += b"".join(self.parts)
        builder._first_timestamp = builder._max_timestamp = now_ms
        builder._num_records = len(self.messages)
        builder._last_offset = len(self.messages) - 1
        records._next_offset = len(self.messages)  # type: ignore[attr-defined]
        return records


def batches(messages: Iterable[Message], batch_size: int, max_request_size: int) -> Iterator[Batch]:
    """`messages` in record batches of up to `batch_size` bytes, cut where the producer's builder cuts them (the
    first record of a batch always goes in); a record over `max_request_size` is refused as `send` refuses it."""
    header = DefaultRecordBatchBuilder.HEADER_STRUCT.size
    batch = Batch(header)
    for key, value in messages:
        record = record_bytes(len(batch.messages), key, value)
        size = sum(map(len, record))
        if batch.messages and batch.size + size > batch_size:
            yield batch
            batch = Batch(header)
            record = record_bytes(0, key, value)
        if size > max_request_size:
            raise MessageSizeTooLargeError(
                f"a {size}-byte record is larger than the producer's max_request_size ({max_request_size})"
            )
        batch.parts += record
        batch.size += size
        batch.largest = max(batch.largest, size)
        batch.messages.append((key, value))
    if batch.messages:
        yield batch


class BatchSender:
    """Records (key, value) to one partition, queued as whole record batches of the producer's `batch_size`."""

    def __init__(self, prod: KafkaProducer, topic: str, partition: int) -> None:
        self.prod = prod
        self.tp = TopicPartition(topic, partition)
        self.acc = prod._accumulator  # type: ignore[attr-defined]
        config = self.acc.config
        self.config: tuple[int, int, int] = (
            config["message_version"],
            config["compression_attrs"],
            config["batch_size"],
        )
        self.max_request_size: int = prod.config["max_request_size"]

    def send(self, messages: Iterable[Message]) -> list[tuple[ProducerBatch, list[Message]]]:
        """Queue `messages` in order; each full batch goes to the sender thread at once (it sends while the rest are
        encoded). Returns the queued batches with their messages; `flush` then waits for them."""
        return [self._queue(batch) for batch in batches(messages, self.config[2], self.max_request_size)]

    def _queue(self, batch: Batch) -> tuple[ProducerBatch, list[Message]]:
        """The batch into a `ProducerBatch` at the end of the partition's queue, as the accumulator's `append` leaves
        one, and the sender woken: the batch before it in the queue is now sendable (more than one queued)."""
        produced = ProducerBatch(self.tp, batch.records(self.config, int(time.time() * 1000)))
        produced.max_record_size = batch.largest
        acc = self.acc
        acc._appends_in_progress.increment()  # as `append`: a concurrent abort of incomplete batches waits for this
        try:
            with acc._tp_lock(self.tp):
                if acc._closed:
                    raise IllegalStateError("RecordAccumulator is closed")
                acc._batches[self.tp].append(produced)
                acc._incomplete.add(produced)
        finally:
            acc._appends_in_progress.decrement()
        self.prod._sender.wakeup()  # type: ignore[attr-defined]
        return produced, batch.messages


def failure(batch: ProducerBatch) -> BaseException | None:
    """Why a queued batch was not written (None: the broker acknowledged it, i.e. every record in it). kafka-python
    completes a failed batch's future successfully too, with a function that gives each record its exception: the
    future's success alone says nothing (`FutureRecordMetadata._produce_success`)."""
    future = batch.produce_future
    if not future.is_done:
        return KafkaError("not completed by the flush")
    if future.exception is not None:
        return future.exception
    record_exception = future.value[2]
    return None if record_exception is None else record_exception(0)


def send_acknowledged(
    prod: KafkaProducer, topic: str, partition: int, messages: Iterable[Message], attempts: int = 10
) -> None:
    """`recsys.io.kafka.send_acknowledged` for records to one partition, through `BatchSender`: returns once the broker
    acknowledged every record (its batch), else raises. A failed batch's records are sent again with backoff.

    `messages` may be a generator (the UPs as they are encoded): each batch is queued as soon as it is full, so the
    sender thread writes the first while the next are encoded."""
    if not supported(prod):
        kafka_io.send_acknowledged(prod, topic, list(messages), attempts)
        return
    sender = BatchSender(prod, topic, partition)
    count = 0
    for attempt in range(attempts):
        queued = sender.send(messages)
        if not queued:
            return
        prod.flush()
        failed = [(why, sent) for why, sent in ((failure(batch), sent) for batch, sent in queued) if why is not None]
        if not failed:
            return
        messages = [m for _, sent in failed for m in sent]
        count = len(messages)
        log.warning("%d messages to %s not acknowledged (%s); retrying", count, topic, failed[0][0])
        time.sleep(min(30.0, 0.5 * 2**attempt))
    raise KafkaError(f"the broker did not acknowledge {count} messages to {topic} after {attempts} tries")
