"""Kafka clients configured from settings, and the topic set-up every layer relies on.

Only the bootstrap address differs between the local broker and a real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, RetriableError, TopicAlreadyExistsError

from recsys import protocol
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)


# Reconnect attempts back off up to this (kafka-python's default, 30 s, would leave clients idle long after
# a restarted broker is back).
RECONNECT_BACKOFF_MAX_MS = 2_000


class BrokerUnavailable(RuntimeError):
    pass


def bootstrap(settings: Settings | None = None) -> list[str]:
    return [b.strip() for b in (settings or get_settings()).kafka_bootstrap.split(",") if b.strip()]


def wait_for_broker(settings: Settings | None = None, timeout_s: float = 30.0) -> None:
    """Block until the first bootstrap server accepts a Kafka metadata request."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            _tcp_check(bootstrap(settings)[0])
            admin = KafkaAdminClient(bootstrap_servers=bootstrap(settings), request_timeout_ms=5000)
            admin.list_topics()
            admin.close()
            return
        except (OSError, KafkaError) as e:
            last_error = e
            time.sleep(0.2)
    raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap(settings)} within {timeout_s:.0f}s: {last_error}")


def _tcp_check(address: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=1.0):
        pass


def ensure_topics(settings: Settings | None = None) -> dict[str, int]:
    """Create missing topics with their configuration (recsys.protocol.topic_specs); leave existing ones alone.

    Returns partitions per topic as found.
    """
    s = settings or get_settings()
    specs = protocol.topic_specs(s)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(s))
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(spec.name, spec.partitions, s.kafka_replication_factor, topic_configs=spec.configs)
            for spec in specs
            if spec.name not in existing
        ]
        if missing:
            # Another process may win the race to create them; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        found = {d["name"]: len(d["partitions"]) for d in admin.describe_topics([spec.name for spec in specs])}
    finally:
        admin.close()
    for spec in specs:
        if found.get(spec.name, 0) < spec.partitions:
            log.warning(
                "topic %s has %s partitions, settings ask for %s", spec.name, found.get(spec.name), spec.partitions
            )
    return found


def producer(settings: Settings | None = None, **overrides) -> KafkaProducer:
    """A producer that waits for the broker's acknowledgement and retries without duplicating.

    acks=all: on a cluster a write is acknowledged once every in-sync replica has it, and topics need
    min.insync.replicas=2 there. Idempotent: a batch retried after a lost answer or a broker restart
    is written once. It retries (without a count limit) for up to `delivery_timeout_ms`, long enough to
    outlast a broker restart; only then does a send fail.
    """
    config = {
        "bootstrap_servers": bootstrap(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "delivery_timeout_ms": 120_000,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    return KafkaProducer(**{**config, **overrides})


def send_acknowledged(
    prod: KafkaProducer,
    topic: str,
    messages: list[tuple[bytes, bytes | None]],
    attempts: int = 10,
    recheck: Callable[[list[tuple[bytes, bytes | None]]], list[tuple[bytes, bytes | None]]] | None = None,
) -> None:
    """Produce (key, value) pairs; return once the broker acknowledged every one, else raise.

    `flush()` alone does not say whether a send failed (a restarted broker refuses in-flight
    batches), and callers commit offsets next: a message must not be skipped silently.
    Failed ones are sent again with backoff; `recheck` may first drop those found written after all.
    """
    for attempt in range(attempts):
        sent = [(m, prod.send(topic, key=m[0], value=m[1])) for m in messages]
        prod.flush()
        failed = [(m, f.exception) for m, f in sent if not f.succeeded()]
        if not failed:
            return
        log.warning("%d messages to %s not acknowledged (%s); retrying", len(failed), topic, failed[0][1])
        time.sleep(min(30.0, 0.5 * 2**attempt))
        messages = [m for m, _ in failed]
        messages = recheck(messages) if recheck else messages
    if messages:
        raise KafkaError(f"the broker did not acknowledge {len(messages)} messages to {topic} after {attempts} tries")


def consumer(group_id: str | None, *topics: str, settings: Settings | None = None, **overrides) -> KafkaConsumer:
    """A consumer that never commits on its own: callers commit after their work is durable.

    Fetches wait on the broker (`fetch_max_wait_ms`) until data arrives: Kafka answers a fetch as soon as
    `fetch_min_bytes` (1) is there, so the wait adds no latency, and an idle consumer sends two fetches a
    second instead of spinning. A member that stops heartbeating is evicted by Kafka's group coordinator
    after `session_timeout_ms` and its partitions go to the others.
    """
    config = {
        "bootstrap_servers": bootstrap(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 5000,
        "fetch_max_wait_ms": 500,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "max_poll_interval_ms": 20000,
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    return KafkaConsumer(*topics, **{**config, **overrides})


def poll_through_outages(
    c: KafkaConsumer, timeout_ms: int, max_records: int | None = None
) -> dict[TopicPartition, list]:
    """`c.poll`, except that a broker outage is an empty poll (after the wait) rather than an exception.

    kafka-python 3.0 can raise KafkaConnectionError out of `poll` while it looks for the group coordinator
    with the broker down (its metadata wait there only expects a timeout). Nothing was fetched or committed,
    and the next poll starts the lookup afresh, so waiting and polling again loses nothing (seen: a speed
    layer and an archiver exiting during a broker restart).
    """
    try:
        return c.poll(timeout_ms=timeout_ms, max_records=max_records)
    except RetriableError as e:
        log.warning("poll failed, the broker is away (%s); polling again", e)
        time.sleep(max(timeout_ms, 100) / 1000)
        return {}


def partitions_of(c: KafkaConsumer, topic: str, attempts: int = 10) -> set[int]:
    """The topic's partitions. On a cluster with a node down, kafka-python may send its metadata request to
    that node and raise; it then knows the node is unreachable, so asking again reaches another one."""
    for attempt in range(attempts):
        try:
            return c.partitions_for_topic(topic) or set()
        except KafkaError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return set()


def end_offsets(topic: str, settings: Settings | None = None) -> dict[int, int]:
    """Next offset to be written, per partition of `topic`."""
    c = consumer(None, settings=settings)
    try:
        parts = partitions_of(c, topic)
        ends = c.end_offsets([TopicPartition(topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        c.close()


def read_to_end(topic: str, settings: Settings | None = None) -> Iterator[list[ConsumerRecord]]:
    """Every message of `topic` from its beginning to its end as of the call, a poll's worth at a time (no group)."""
    c = consumer(None, settings=settings)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions_of(c, topic))]
        if not tps:
            return
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        while any(c.position(tp) < ends[tp] for tp in tps):
            yield from c.poll(timeout_ms=1000).values()
    finally:
        c.close()


def count_messages(topics: Iterable[str], settings: Settings | None = None) -> dict[str, int]:
    """Messages currently held per topic (end offset minus beginning offset, summed over partitions)."""
    c = consumer(None, settings=settings)
    try:
        counts = {}
        for topic in topics:
            tps = [TopicPartition(topic, p) for p in partitions_of(c, topic)]
            begin, end = c.beginning_offsets(tps), c.end_offsets(tps)
            counts[topic] = sum(end[tp] - begin[tp] for tp in tps)
        return counts
    finally:
        c.close()
