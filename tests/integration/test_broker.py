"""The local Apache Kafka over real TCP: lifecycle by PID, logs, loopback only, topics and their configs,
keyed partitions, consumer-group offsets, restarts (SIGTERM and kill -9) under a write burst, log compaction."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from serving_stack import wait_for

from infra import broker as broker_process
from recsys import protocol
from recsys.io.kafka import BrokerUnavailable, bootstrap, consumer, ensure_topics, producer, read_to_end
from recsys.protocol import Topics, VectorUpdate

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


def topic_configs(s, topic: str) -> dict[str, str]:
    """The topic's effective configuration (defaults included)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(s))
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    finally:
        admin.close()
    [configs] = found.values()
    return {key: (entry["value"] if isinstance(entry, dict) else entry) for key, entry in configs[topic].items()}


def test_start_is_idempotent_and_creates_the_topics_with_their_configs(broker):
    pid = broker_process.running_pid(broker)
    assert pid is not None
    assert broker_process.start(broker) == pid
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(broker))
    described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(list(Topics.ALL))}
    admin.close()
    assert described == {spec.name: spec.partitions for spec in protocol.topic_specs(broker)}
    assert described[Topics.EVENTS] > 1
    assert ensure_topics(broker) == described
    updates = topic_configs(broker, Topics.MODEL_UPDATES)
    assert updates["cleanup.policy"] == "compact"
    assert updates["segment.ms"] == str(broker.updates_segment_ms)
    assert topic_configs(broker, Topics.EVENTS)["cleanup.policy"] == "delete"


def test_it_is_apache_kafka_in_kraft_mode_and_it_logs(broker):
    """Kafka from the fetched jars, one combined broker + controller; SLF4J reaches Log4j 2 (else no log lines)."""
    paths = broker_process.BrokerPaths(broker.broker_dir).node(1)
    cmdline = Path(f"/proc/{broker_process.running_pid(broker)}/cmdline").read_text().split("\0")
    assert broker_process.MAIN_CLASS in cmdline and str(paths.config) in cmdline
    assert "-Xmx512m" in cmdline
    config = paths.config.read_text()
    assert "process.roles=broker,controller" in config and "controller.quorum.bootstrap.servers=" in config
    assert "controller.quorum.voters" not in config
    log = (paths.logs / "server.log").read_text(errors="replace")
    assert "Kafka Server started" in log, log[-2000:]
    assert "Kafka version: 4.3.1" in log
    assert "SLF4J" not in paths.console_log.read_text(errors="replace")  # no "no binding, NOP logger" warning


def listening_sockets(pid: int) -> set[str]:
    """Local addresses (ip:port) of the TCP sockets the process listens on, IPv4 and IPv6."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in (line.split() for line in Path(table).read_text().splitlines()[1:]):
            if row[3] == "0A" and row[9] in inodes:  # 0A = LISTEN
                address, port = row[1].split(":")
                raw = bytes.fromhex(address)
                # /proc/net/tcp* print each 32-bit word in host (little-endian) order
                ip = socket.inet_ntop(
                    socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                    b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)),
                )
                found.add(f"{ip.removeprefix('::ffff:')}:{int(port, 16)}")  # an IPv4-mapped address is IPv4
    return found


@pytest.mark.reliability
def test_the_broker_listens_on_loopback_only(broker):
    """Every socket the Kafka process listens on (clients, controller, anything else) is on 127.0.0.1."""
    [node] = broker_process.layout(broker)
    assert listening_sockets(broker_process.running_pid(broker)) == {
        f"127.0.0.1:{node.port}",
        f"127.0.0.1:{node.controller_port}",
    }


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


class AckedWrites:
    """A producer writing numbered messages in a thread, recording which ones the broker acknowledged."""

    def __init__(self, s, topic: str) -> None:
        self.s, self.topic = s, topic
        self.acked: set[int] = set()
        self.failed = 0
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ok(self, n: int):
        def callback(_metadata) -> None:
            with self._lock:
                self.acked.add(n)

        return callback

    def _err(self, _exc) -> None:
        with self._lock:
            self.failed += 1

    def _run(self) -> None:
        p = producer(self.s, retries=2_000, delivery_timeout_ms=120_000, request_timeout_ms=5_000)
        while not self._stop.is_set():
            for _ in range(200):
                n = self.sent
                p.send(self.topic, key=f"k{n % 50}".encode(), value=str(n).encode()).add_callback(
                    self._ok(n)
                ).add_errback(self._err)
                self.sent += 1
            time.sleep(0.01)
        p.flush(timeout=180)
        p.close()

    def __enter__(self) -> "AckedWrites":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(240)


@pytest.mark.reliability
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_restart_in_the_middle_of_a_write_burst_loses_nothing_acknowledged(isolated_stack, how):
    """SIGTERM (controlled shutdown) or kill -9 of the broker while a producer writes as fast as it can, then a
    restart: every message the broker acknowledged is in the log afterwards, exactly once (idempotent producer)."""
    s = isolated_stack
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(s))
    admin.create_topics([NewTopic("burst", 3, 1)])
    admin.close()
    with AckedWrites(s, "burst") as writes:
        time.sleep(3)
        before = len(writes.acked)
        if how == "SIGTERM":
            assert broker_process.stop(s)
        else:
            broker_process.kill_node(s, 1)
        in_flight = writes.sent - len(writes.acked)
        broker_process.start(s)
        time.sleep(3)
    assert before > 1_000, "the producer was not writing when the broker went down"
    assert in_flight > 0, "nothing was in flight when the broker went down"
    values = [int(r.value) for records in read_to_end("burst", s) for r in records]
    assert len(values) == len(set(values)), "a message was written twice"
    lost = writes.acked - set(values)
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
    assert writes.failed == 0 and len(writes.acked) == writes.sent, (writes.failed, writes.sent, len(writes.acked))


@pytest.mark.reliability
def test_restart_keeps_messages_and_committed_offsets(unique_topic, broker):
    produce(unique_topic, 200, broker)
    c = consumer("group-restart", unique_topic, settings=broker)
    assert len(consume(c, 150)) == 150
    c.commit()
    c.close()

    assert broker_process.stop(broker)
    assert broker_process.running_pid(broker) is None
    broker_process.start(broker)

    c = consumer("group-restart", unique_topic, settings=broker)
    rest = consume(c)
    c.close()
    assert len(rest) == 50
    ends = consumer(None, settings=broker)
    total = sum(ends.end_offsets([TopicPartition(unique_topic, p) for p in range(3)]).values())
    ends.close()
    assert total == 200


def test_compaction_shrinks_what_a_new_serving_replica_reads_at_start(isolated_stack):
    """`model-updates` as `ensure_topics` creates it, with segments rolled every second: 20,000 UPs for 50 users,
    and once Kafka's log cleaner ran, a reader from the beginning (what a new serving replica does) gets the
    newest UP per user plus at most the still-open segment, not 20,000 messages."""
    s = isolated_stack.model_copy(update={"updates_segment_ms": 1_000})
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(s))
    admin.delete_topics([Topics.MODEL_UPDATES])
    admin.close()
    deadline = time.monotonic() + 60
    while True:  # deletion is asynchronous: recreate once the name is free
        try:
            ensure_topics(s)
            if topic_configs(s, Topics.MODEL_UPDATES)["segment.ms"] == "1000":
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "model-updates was not recreated"
        time.sleep(0.5)
    assert topic_configs(s, Topics.MODEL_UPDATES)["cleanup.policy"] == "compact"

    p = producer(s)
    users, rounds = 50, 400
    for r in range(rounds):
        for u in range(users):
            key, value = _up(u, r)
            p.send(Topics.MODEL_UPDATES, key=key, value=value)
        if r % 50 == 49:
            p.flush()
            time.sleep(1.1)  # the next write rolls the segment: only closed segments are compacted
    p.flush()
    time.sleep(1.1)
    key, value = _up(0, rounds)
    p.send(Topics.MODEL_UPDATES, key=key, value=value).get(30)  # rolls the last full segment
    p.close()
    written = users * rounds + 1

    def read_from_start() -> dict[str, int]:
        newest, n = {}, 0
        for records in read_to_end(Topics.MODEL_UPDATES, s):
            for record in records:
                n += 1
                up = protocol.decode(record.value)
                newest[up.id] = int(up.vector[0])
        return {"records": n, **{"newest_" + k: v for k, v in newest.items()}}

    deadline = time.monotonic() + 120
    seen = read_from_start()
    while seen["records"] > written // 10 and time.monotonic() < deadline:
        time.sleep(2)
        seen = read_from_start()
    assert seen["records"] <= written // 10, f"compaction left {seen['records']} of {written} records"
    # What compaction keeps is the newest UP of every key: a replica rebuilds the same state.
    assert {k: v for k, v in seen.items() if k.startswith("newest_")} == {
        f"newest_u{u}": (rounds if u == 0 else rounds - 1) for u in range(users)
    }
    server_log = broker_process.BrokerPaths(s.broker_dir).node(1).logs / "server.log"

    def cleaner_said_so() -> bool:
        log = server_log.read_text(errors="replace")
        return "Log cleaner thread 0 cleaned log model-updates-0" in log or "cleaned log model-updates" in log.lower()

    # The cleaner logs its summary just after it swaps the cleaned segments in, so a reader can see them first.
    wait_for(cleaner_said_so, timeout_s=30, every_s=0.5)


def _up(user: int, n: int) -> tuple[bytes, bytes]:
    return protocol.encode(
        VectorUpdate(model_version="m20260101T000000000000", kind="user", id=f"u{user}", vector=[float(n), 0.0])
    )


def test_stop_never_kills_a_process_that_is_not_our_broker(tmp_path, settings):
    s = settings.model_copy(update={"state_dir": tmp_path})
    paths = broker_process.BrokerPaths(s.broker_dir)
    node = paths.node(1)
    node.root.mkdir(parents=True)
    paths.layout_file.write_text('{"cluster_id": "x", "nodes": [{"node_id": 1}], "directories": {}}')
    node.pid_file.write_text(str(os.getpid()))  # a stale PID file naming some other live process
    assert node.pid_file.exists() and broker_process.node_pid(node) is None
    assert broker_process.running_pid(s) is None
    assert broker_process.stop(s) is False  # nothing was signalled: this test process is still here


def test_a_taken_port_gives_a_clear_error(tmp_path, settings):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        other = settings.model_copy(
            update={
                "state_dir": tmp_path,
                "kafka_bootstrap": f"127.0.0.1:{port}",
                "kafka_controller_port": broker_process.free_port(),
            }
        )
        with pytest.raises(BrokerUnavailable, match="taken"):
            broker_process.start(other, timeout_s=5)
