"""The local broker over real TCP: lifecycle by PID, topics, keyed partitions, consumer-group offsets."""

import os
import socket
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, TopicPartition

from infra import broker as broker_process
from recsys import protocol
from recsys.io.kafka import BrokerUnavailable, bootstrap, consumer, ensure_topics, producer
from recsys.protocol import Topics

pytestmark = pytest.mark.integration


def produce(topic: str, n: int, settings, keys: int = 20) -> None:
    p = producer(settings)
    for i in range(n):
        p.send(topic, key=f"user-{i % keys}".encode(), value=f"{i}".encode())
    p.flush()
    p.close()


def consume(c, n: int | None = None, idle_polls: int = 3) -> list:
    out, idle = [], 0
    while (n is None or len(out) < n) and idle < idle_polls:
        batch = c.poll(timeout_ms=1000, max_records=(n - len(out)) if n else 500)
        idle = 0 if batch else idle + 1
        for records in batch.values():
            out.extend(records)
    return out


def test_start_is_idempotent_and_creates_the_topics(broker):
    paths = broker_process.BrokerPaths(broker.broker_dir)
    pid = broker_process.running_pid(paths)
    assert pid is not None
    assert broker_process.start(broker) == pid
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(broker))
    described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(list(Topics.ALL))}
    admin.close()
    assert described == {spec.name: spec.partitions for spec in protocol.topic_specs(broker)}
    assert described[Topics.EVENTS] > 1
    assert ensure_topics(broker) == described


@pytest.mark.reliability
def test_the_broker_listens_on_loopback_only(broker):
    pid = broker_process.running_pid(broker_process.BrokerPaths(broker.broker_dir))
    cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert cmdline[cmdline.index("--host") + 1] == "127.0.0.1"
    port = broker.broker_port
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    local = {row[1] for row in listening if row[3] == "0A" and int(row[1].split(":")[1], 16) == port}
    assert local == {f"0100007F:{port:04X}"}


def test_one_users_events_stay_in_one_partition_in_order(unique_topic, broker):
    produce(unique_topic, 300, broker, keys=7)
    c = consumer(None, unique_topic, settings=broker)
    records = consume(c, 300)
    c.close()
    assert len(records) == 300
    partitions_of_key, seen = {}, {}
    for r in records:
        partitions_of_key.setdefault(r.key, set()).add(r.partition)
        seen.setdefault(r.key, []).append(int(r.value))
    assert all(len(p) == 1 for p in partitions_of_key.values())
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1
    assert all(values == sorted(values) for values in seen.values())


def test_consumer_group_resumes_from_committed_offsets(unique_topic, broker):
    produce(unique_topic, 1000, broker)
    first = consumer("group-a", unique_topic, settings=broker)
    got_first = consume(first, 400)
    assert len(got_first) == 400
    first.commit()
    first.close()

    second = consumer("group-a", unique_topic, settings=broker)
    got_second = consume(second)
    values = sorted(int(r.value) for r in got_first + got_second)
    assert values == list(range(1000)), "every message exactly once across the two consumers"
    committed = {tp: second.committed(tp) for tp in second.assignment()}
    second.close()
    # Nothing of the second read was committed: a third member starts where the first left off.
    assert sum(off or 0 for off in committed.values()) == 400

    other_group = consumer("group-b", unique_topic, settings=broker)
    assert len(consume(other_group)) == 1000
    other_group.close()


@pytest.mark.reliability
def test_restart_keeps_messages_and_committed_offsets(unique_topic, broker):
    produce(unique_topic, 200, broker)
    c = consumer("group-restart", unique_topic, settings=broker)
    assert len(consume(c, 150)) == 150
    c.commit()
    c.close()

    assert broker_process.stop(broker)
    assert broker_process.running_pid(broker_process.BrokerPaths(broker.broker_dir)) is None
    broker_process.start(broker)

    c = consumer("group-restart", unique_topic, settings=broker)
    rest = consume(c)
    c.close()
    assert len(rest) == 50
    ends = consumer(None, settings=broker)
    total = sum(ends.end_offsets([TopicPartition(unique_topic, p) for p in range(3)]).values())
    ends.close()
    assert total == 200


def test_stop_never_kills_a_process_that_is_not_our_broker(tmp_path):
    paths = broker_process.BrokerPaths(tmp_path)
    paths.root.mkdir(exist_ok=True)
    paths.pid_file.write_text(str(os.getpid()))  # a stale PID file naming some other live process
    assert broker_process.running_pid(paths) is None


def test_a_taken_port_gives_a_clear_error(tmp_path, settings):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        other = settings.model_copy(
            update={"state_dir": tmp_path, "broker_port": port, "kafka_bootstrap": f"127.0.0.1:{port}"}
        )
        with pytest.raises(BrokerUnavailable, match="taken"):
            broker_process.start(other, timeout_s=5)
