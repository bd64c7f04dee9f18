"""Kafka's own ceiling on this machine, next to what our Python clients get out of the same broker.

- kafka-python raw consume: a consumer configured as the services' (`recsys.io.kafka.consumer`) reads a range
  of `events` and does nothing with the records: the most a Python consumer of this broker can hand on.
- Kafka's `org.apache.kafka.tools.ConsumerPerformance` and `ProducerPerformance` from the fetched jars
  (`.jars/kafka/`), same topic, same record count and (for the producer) the same record size with acks=all:
  the broker's own reference ceiling.

Used by the speed section of `make bench` (bench/speed.py), which puts these next to the speed layer's
throughput on the same events.
"""

from __future__ import annotations

import re
import subprocess
import time

from kafka import TopicPartition

from infra import broker, jars
from recsys.io.kafka import bootstrap, consumer
from recsys.protocol import Topics
from recsys.settings import Settings


def kafka_python_consume(s: Settings, start: dict[int, int], end: dict[int, int]) -> dict:
    """Records/s of a kafka-python consumer reading `events` from `start` to `end` offsets and nothing else."""
    c = consumer(None, settings=s)
    tps = [TopicPartition(Topics.EVENTS, p) for p in sorted(end)]
    c.assign(tps)
    for tp in tps:
        c.seek(tp, start.get(tp.partition, 0))
    n, size = 0, 0
    started = time.monotonic()
    try:
        while any(c.position(tp) < end[tp.partition] for tp in tps):
            for records in c.poll(timeout_ms=1000, max_records=5000).values():
                n += len(records)
                size += sum(len(r.value) for r in records)
    finally:
        seconds = time.monotonic() - started
        c.close()
    return {
        "records": n,
        "seconds": round(seconds, 2),
        "records_per_s": round(n / seconds),
        "mean_record_bytes": round(size / max(n, 1)),
    }


def _java(main: str, *args: str, timeout_s: float = 600) -> str:
    cmd = [
        broker.java(),
        "-Xmx256m",
        "-cp",
        str(jars.folder("kafka") / "*"),
        "-Dlog4j2.configurationFile=" + str(_quiet_log4j()),
        main,
        *args,
    ]
    jars.jars("kafka")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"{main} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def _quiet_log4j():
    path = jars.JARS / "tools-log4j2.properties"
    path.write_text("status = error\nrootLogger.level = WARN\n")
    return path


def consumer_performance(s: Settings, records: int) -> dict:
    """Kafka's ConsumerPerformance reading `records` records of `events` from the beginning (a group of its own)."""
    out = _java(
        "org.apache.kafka.tools.ConsumerPerformance",
        "--bootstrap-server",
        ",".join(bootstrap(s)),
        "--topic",
        Topics.EVENTS,
        "--num-records",
        str(records),
        "--group",
        f"perf-{time.time_ns()}",
        "--timeout",
        "60000",
    )
    header, row = [line for line in out.splitlines() if line.strip()][-2:]
    stats = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in row.split(",")], strict=False))
    return {
        "records": int(stats["data.consumed.in.nMsg"]),
        "records_per_s": round(float(stats["nMsg.sec"])),
        "fetch_records_per_s": round(float(stats["fetch.nMsg.sec"])),
        "mb_per_s": float(stats["MB.sec"]),
    }


def _create_topic(s: Settings, topic: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap(s))
    try:
        admin.create_topics([NewTopic(topic, s.events_partitions, s.kafka_replication_factor)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def _group(pattern: str, text: str) -> str:
    """The first group of `pattern` in the tool's summary line."""
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)  # the tool's output format changed
    return match[1]


def producer_performance(s: Settings, records: int, record_bytes: int, topic: str = "perf-producer") -> dict:
    """Kafka's ProducerPerformance: `records` records of `record_bytes` as fast as it can, acks=all, idempotent,
    the same linger and batch size as our producers (`recsys.io.kafka.producer`)."""
    _create_topic(s, topic)  # the broker does not create topics on first use: the tool would wait forever
    out = _java(
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_bytes),
        "--throughput",
        "-1",
        "--bootstrap-server",
        ",".join(bootstrap(s)),
        "--producer-props",
        "acks=all",
        "enable.idempotence=true",
        "linger.ms=5",
        f"batch.size={256 * 1024}",
    )
    last = [line for line in out.splitlines() if "records sent" in line][-1]
    # "500000 records sent, 123456.7 records/sec (23.55 MB/sec), 12.34 ms avg latency, 345.00 ms max latency,
    #  10 ms 50th, 30 ms 95th, 40 ms 99th, 50 ms 99.9th."
    rate = _group(r"([\d.]+) records/sec", last)
    p50, p99 = _group(r"(\d+) ms 50th", last), _group(r"(\d+) ms 99th", last)
    return {
        "records": records,
        "record_bytes": record_bytes,
        "records_per_s": round(float(rate)),
        "latency_ms_p50": int(p50),
        "latency_ms_p99": int(p99),
    }
