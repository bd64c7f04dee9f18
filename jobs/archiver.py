"""The archiver: `events` topic -> bronze Delta table, exactly once; bad events -> `events.dlq`, exactly once.
The same code path, as a second instance (`IMPRESSIONS`, its own consumer group), archives the `impressions`
topic (what serving showed) into the `impressions` table, with the same guarantees.

How "exactly once" holds across crashes:

- Bronze rows and the next Kafka offset of every partition they came from are
  written in ONE Delta commit (Delta transaction identifiers `archiver:<topic>:<p>`).
  On start and on every partition assignment the archiver seeks to the offsets
  the table records, not to the consumer group's: the table is the truth. The
  group offsets are committed too, but only so lag can be monitored.
- A FORGET marker (a control record, see recsys.erasure) is recorded in
  `forget_requests` and deletes the user's earlier rows from bronze, both before
  the commit that moves past it, and keeps their earlier rows of the same batch
  out of it: a crash repeats them. After that commit the archiver completes the
  request (silver delete, vacuums, model files: `erasure.complete`); one it cannot
  complete at once (silver held by a long writer) it retries while it runs.
- Dead letters are produced, and each one acknowledged, before that commit (a send
  that fails is retried; the commit never moves past an unacknowledged letter).
  A crash after the acknowledgements but before the commit would replay them, so
  each dead letter is keyed by its source `topic:partition:offset`, and on start
  the archiver reads which source positions past the table's offsets the DLQ holds
  already, and skips exactly those.

- Impressions carry no FORGET markers (erasure requests are anchored in `events`). A forgotten user's
  impressions shown before their request are deleted by `erasure.complete`; the impressions archiver, holding
  the table's writer lock from reading `forget_requests` to its commit, leaves out those that arrive later
  (`erasure.drop_forgotten`), so none can slip in between.

    python -m jobs.archiver             # both streams (a thread each), until SIGTERM / Ctrl-C
    python -m jobs.archiver --until-caught-up
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import typer
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError

from recsys import erasure
from recsys.contracts.events import (
    EPOCH,
    FORGET_CONTROL,
    DeadLetter,
    Event,
    ForgetMarker,
    Impressions,
    Rejection,
    control_kind,
    validate_event,
    validate_impressions,
)
from recsys.contracts.tables import BRONZE_SCHEMA, IMPRESSIONS_SCHEMA, Tables
from recsys.erasure import before_marker_predicate
from recsys.io import lake
from recsys.io.kafka import consumer, poll_through_outages, producer, read_to_end, send_acknowledged
from recsys.privacy import is_pseudonym
from recsys.protocol import ForgetMessage, Topics
from recsys.settings import Settings, get_settings

log = logging.getLogger("archiver")
# Completing an erasure waits this long for silver's writer lock (a clean job may hold it for minutes);
# then the request stays pending and is retried every ERASURE_RETRY_S, so archiving never stalls on it.
ERASURE_LOCK_WAIT_S = 10.0
ERASURE_RETRY_S = 30.0


txn_id = Tables.archiver_txn_id


def dlq_key(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}:{offset}".encode()


@dataclass(frozen=True)
class Stream:
    """What one archiver instance reads and writes; everything else (offsets in the table's commits, dead letters,
    seeking, crashes) is the one code path below."""

    name: str
    topic: str  # the default source topic
    table: str  # a `Tables` name
    parse: Callable[[bytes, Settings], Event | Impressions | Rejection]
    rows: Callable[[list], pa.Table]  # (record, partition, offset) triples -> the table's rows
    forgets: bool  # FORGET markers travel on this topic (erasure requests are anchored in `events`)

    def group(self, s: Settings) -> str:
        return s.archiver_group if self.name == "events" else f"{s.archiver_group}-{self.name}"

    def instance_id(self, s: Settings) -> str:
        return s.archiver_instance_id if self.name == "events" else f"{s.archiver_instance_id}-{self.name}"


@dataclass
class Batch:
    rows: list[tuple[Event | Impressions, int, int]] = field(default_factory=list)  # (record, partition, offset)
    dead: list[tuple[bytes, Rejection, int, int]] = field(default_factory=list)
    forgets: list[ForgetMessage] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows) + len(self.dead) + len(self.forgets)


@dataclass
class ArchiverStats:
    archived: int = 0
    dead_lettered: int = 0
    dead_letters_skipped: int = 0  # already in the DLQ from before a crash
    commits: int = 0
    forgets: int = 0  # FORGET markers acted on
    erased: int = 0  # rows of forgotten users deleted or never written


class Archiver:
    def __init__(
        self, settings: Settings | None = None, topic: str | None = None, stream: Stream | None = None
    ) -> None:
        self.s = settings or get_settings()
        self.stream = stream or EVENTS
        self.topic = topic or self.stream.topic
        self.table = Tables.path(self.stream.table, self.s)
        self.stats = ArchiverStats()
        self._stop = False
        self._pending = Batch()
        # Requests recorded, not completed (e.g. a crash between); only the stream that carries the markers acts.
        self._erasures_due = erasure.pending(self.s) if self.stream.forgets else []
        self._next_erasure_try = 0.0
        self._forgotten = erasure.Forgotten(self.s)
        # Static membership: a restarted archiver takes its old place in the group at once instead of
        # waiting for the dead member to time out (and a second copy with the same id is fenced off).
        self.consumer = consumer(
            self.stream.group(self.s),
            settings=self.s,
            max_poll_records=self.s.archiver_batch_max,
            group_instance_id=self.stream.instance_id(self.s),
        )
        self.producer = producer(self.s)
        self.dead_lettered = dead_lettered_positions(self.topic, self.s, self._table_offsets())
        self.consumer.subscribe([self.topic], listener=_SeekToTable(self))

    # --- offsets recorded in the table ------------------------------------------------
    def table_offset(self, partition: int) -> int | None:
        return lake.committed_app_version(self.table, txn_id(self.topic, partition))

    def seek_to_table(self, partitions) -> None:
        """Start each partition where the table says, whatever the group's offsets say."""
        for tp in partitions:
            offset = self.table_offset(tp.partition)
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))

    def forget_pending(self, partitions) -> None:
        """Drop unwritten events of partitions taken from us: their new owner reads them from the table offset."""
        lost = {tp.partition for tp in partitions}
        self._pending.rows = [r for r in self._pending.rows if r[1] not in lost]
        self._pending.dead = [d for d in self._pending.dead if d[2] not in lost]
        self._pending.forgets = [f for f in self._pending.forgets if f.partition not in lost]
        self._pending.next_offsets = {p: o for p, o in self._pending.next_offsets.items() if p not in lost}

    # --- the loop -----------------------------------------------------------------------
    def run(self, until_caught_up: bool = False) -> ArchiverStats:
        """Archive until stopped; with `until_caught_up`, stop once the end offsets seen at start are reached."""
        targets: dict[int, int] | None = None
        while not self._stop:
            batch = self.poll_batch()
            if len(batch):
                self.write(batch)
            self.complete_erasures()
            if until_caught_up:
                targets = targets or self._end_offsets()
                if self._caught_up(targets):
                    break
        return self.stats

    def stop(self, *_: object) -> None:
        self._stop = True

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.producer.close()

    def poll_batch(self) -> Batch:
        self._pending = batch = Batch()
        deadline = time.monotonic() + self.s.archiver_batch_ms / 1000
        while len(batch) < self.s.archiver_batch_max and time.monotonic() < deadline and not self._stop:
            # Empty, wait up to the batch's deadline (records end the wait at once): an idle archiver wakes once a
            # batch period rather than ten times (two streams run in one process). Holding records, 100 ms as ever.
            left_ms = int((deadline - time.monotonic()) * 1000)
            wait_ms = max(1, min(100, left_ms) if len(batch) else min(1_000, left_ms))
            polled = poll_through_outages(self.consumer, wait_ms, self.s.archiver_batch_max - len(batch))
            for tp, records in polled.items():
                for r in records:
                    batch.next_offsets[tp.partition] = r.offset + 1
                    if control_kind(r.headers) is not None:
                        self._control(batch, r, tp.partition)
                        continue
                    result = self.stream.parse(r.value, self.s)
                    if not isinstance(result, Rejection):
                        batch.rows.append((result, tp.partition, r.offset))
                    else:
                        batch.dead.append((r.value, result, tp.partition, r.offset))
            if not polled and len(batch):
                break  # nothing more waiting: write what we have rather than sit on it
        return batch

    def _control(self, batch: Batch, record, partition: int) -> None:
        """A control record is an instruction, not an event; a malformed one is dead-lettered like a bad event."""
        try:
            if control_kind(record.headers) != FORGET_CONTROL or not self.stream.forgets:
                raise ValueError(f"unknown control record {control_kind(record.headers)!r} on {self.topic}")
            marker = ForgetMarker.model_validate_json(record.value)
            if not is_pseudonym(marker.user_id) or record.key != marker.user_id.encode():
                raise ValueError("a FORGET marker must carry a pseudonym, keyed by it")
        except ValueError as e:
            batch.dead.append((record.value, Rejection("invalid_control", str(e)[:200]), partition, record.offset))
            return
        forget = ForgetMessage(user_id=marker.user_id, partition=partition, offset=record.offset)
        batch.forgets.append(forget)
        before = len(batch.rows)
        batch.rows = [
            (e, p, o)
            for e, p, o in batch.rows
            if not (isinstance(e, Event) and e.user_id == forget.user_id and p == partition and o < record.offset)
        ]
        self.stats.erased += before - len(batch.rows)

    def write(self, batch: Batch) -> None:
        self._dead_letter(batch.dead)
        self._erase(batch.forgets)
        txns = {txn_id(self.topic, p): off for p, off in batch.next_offsets.items()}
        rows = self.stream.rows(batch.rows)
        # Held from reading who is forgotten to the commit: an erasure's delete of this table comes before
        # (and its request is read here) or after (and deletes these rows), never in between.
        with lake.writer_lock(self.table, "archiver"):
            if not self.stream.forgets:
                kept = erasure.drop_forgotten(rows, self._forgotten.since())
                self.stats.erased += rows.num_rows - kept.num_rows
                rows = kept
            lake.write(
                self.table,
                rows,
                txns=txns,
                metadata={"writer": "archiver", "offsets": batch.next_offsets},
                writer="archiver",
            )
        self.stats.archived += len(batch.rows)
        self.stats.commits += 1
        # Only after the table holds them. The group's offsets are for lag monitoring only (the table is the
        # truth), so a broker that is away right now must not stop the archiver.
        try:
            offsets = {TopicPartition(self.topic, p): _offset_meta(o) for p, o in batch.next_offsets.items()}
            self.consumer.commit(offsets)
        except KafkaError as e:
            log.warning("could not commit group offsets (lag monitoring only): %s", e)

    def complete_erasures(self) -> None:
        """Complete the erasure requests whose markers bronze has passed (see recsys.erasure.complete)."""
        if not self._erasures_due or time.monotonic() < self._next_erasure_try:
            return
        for message in list(self._erasures_due):
            try:
                with lake.lock_timeout(ERASURE_LOCK_WAIT_S):
                    done = erasure.complete(message, self.s)
            except lake.TableLocked as e:
                log.info("erasure of %s waits for the lake (retried in %.0fs): %s", message.user_id, ERASURE_RETRY_S, e)
                self._next_erasure_try = time.monotonic() + ERASURE_RETRY_S
                return
            if done:
                self._erasures_due.remove(message)

    def _erase(self, forgets: list[ForgetMessage]) -> None:
        """Record the requests and delete forgotten users' earlier rows: before the commit that moves past their
        markers (a crash repeats both; readers of `forget_requests` count a request once)."""
        erasure.record(forgets, erasure.REQUESTED, self.s)
        self._erasures_due += [f for f in forgets if f not in self._erasures_due]
        if forgets and lake.exists(self.table):
            for forget in forgets:
                self.stats.erased += lake.delete(self.table, before_marker_predicate(forget))
        self.stats.forgets += len(forgets)
        for forget in forgets:
            log.info("forgot %s: rows before events[%d]@%d deleted", forget.user_id, forget.partition, forget.offset)

    def _dead_letter(self, dead: list[tuple[bytes, Rejection, int, int]]) -> None:
        """Produce the batch's dead letters; return only once the broker acknowledged every one of them."""
        todo = {
            dlq_key(self.topic, p, o): self._letter(raw, rejection, p, o)
            for raw, rejection, p, o in dead
            if (p, o) not in self.dead_lettered
        }
        self.stats.dead_letters_skipped += len(dead) - len(todo)

        def not_in_dlq_yet(failed: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
            # A send reported failed may still have been written: ask the DLQ before sending again.
            self.dead_lettered |= dead_lettered_positions(self.topic, self.s, self._table_offsets())
            return [(k, v) for k, v in failed if _position(k) not in self.dead_lettered]

        send_acknowledged(self.producer, Topics.DLQ, list(todo.items()), recheck=not_in_dlq_yet)
        self.dead_lettered |= {_position(k) for k in todo}
        self.stats.dead_lettered += len(todo)

    def _letter(self, raw: bytes, rejection: Rejection, partition: int, offset: int) -> bytes:
        return DeadLetter.of(
            raw, rejection, source_topic=self.topic, source_partition=partition, source_offset=offset
        ).to_wire()

    def _table_offsets(self) -> dict[int, int]:
        return lake.archived_offsets(self.table, self.topic, self.consumer.partitions_for_topic(self.topic) or set())

    def _end_offsets(self) -> dict[int, int]:
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        ends = self.consumer.end_offsets([TopicPartition(self.topic, p) for p in parts])
        return {tp.partition: off for tp, off in ends.items()}

    def _caught_up(self, targets: dict[int, int]) -> bool:
        archived = lake.archived_offsets(self.table, self.topic, targets)
        return all(end == 0 or archived[p] >= end for p, end in targets.items())


class _SeekToTable(ConsumerRebalanceListener):
    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    def on_partitions_revoked(self, revoked) -> None:
        self.archiver.forget_pending(revoked)

    def on_partitions_assigned(self, assigned) -> None:
        self.archiver.seek_to_table(assigned)


def _offset_meta(offset: int):
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(offset, "", -1)


def bronze_rows(rows: list[tuple[Event, int, int]]) -> pa.Table:
    now = datetime.now(UTC)
    columns = {
        "event_id": [e.event_id for e, _, _ in rows],
        "user_id": [e.user_id for e, _, _ in rows],
        "item_id": [e.item_id for e, _, _ in rows],
        "event_type": [e.event_type for e, _, _ in rows],
        "ts": [e.ts for e, _, _ in rows],
        "session_id": [e.session_id for e, _, _ in rows],
        "quantity": [e.quantity for e, _, _ in rows],
        "price": [e.price for e, _, _ in rows],
        "schema_version": [e.schema_version for e, _, _ in rows],
        "kafka_partition": [p for _, p, _ in rows],
        "kafka_offset": [o for _, _, o in rows],
        "ingested_at": [now] * len(rows),
        "request_id": [e.request_id for e, _, _ in rows],
    }
    return pa.table(columns, schema=BRONZE_SCHEMA)


def impression_rows(rows: list[tuple[Impressions, int, int]]) -> pa.Table:
    """One row per item shown, with its position: a click joins its list on (request_id, item_id)."""
    now = datetime.now(UTC)
    shown = [(i, p, o, n, item) for m, p, o in rows for i in m.impressions for n, item in enumerate(i.items)]
    columns = {
        "request_id": [i.request_id for i, *_ in shown],
        "user_id": [i.user_id for i, *_ in shown],
        "item_id": [item for *_, item in shown],
        "position": [n for *_, n, _ in shown],
        "model_version": [i.model_version for i, *_ in shown],
        "variant": [i.variant for i, *_ in shown],
        "surface": [i.surface for i, *_ in shown],
        "shown_at": [EPOCH + timedelta(milliseconds=i.shown_at_ms) for i, *_ in shown],
        "kafka_partition": [p for _, p, *_ in shown],
        "kafka_offset": [o for _, _, o, *_ in shown],
        "ingested_at": [now] * len(shown),
    }
    return pa.table(columns, schema=IMPRESSIONS_SCHEMA)


EVENTS = Stream("events", Topics.EVENTS, Tables.BRONZE_EVENTS, validate_event, bronze_rows, forgets=True)
IMPRESSIONS = Stream(
    "impressions", Topics.IMPRESSIONS, Tables.IMPRESSIONS, validate_impressions, impression_rows, forgets=False
)
STREAMS = {s.name: s for s in (EVENTS, IMPRESSIONS)}


def _position(key: bytes) -> tuple[int, int]:
    """(partition, offset) from a dead letter's key `topic:partition:offset`."""
    _, partition, offset = key.decode().rsplit(":", 2)
    return int(partition), int(offset)


def dead_lettered_positions(source_topic: str, settings: Settings, since: dict[int, int]) -> set[tuple[int, int]]:
    """(partition, offset) of every `source_topic` message the DLQ holds at or after the offsets in `since`.

    Earlier positions are behind the table's offsets and never read again, so they need not be remembered.
    """
    found: set[tuple[int, int]] = set()
    for records in read_to_end(Topics.DLQ, settings):
        for r in records:
            topic, _, rest = (r.key or b"").decode().partition(":")
            partition, _, offset = rest.partition(":")
            ours = topic == source_topic and partition.isdigit() and offset.isdigit()
            if ours and int(offset) >= since.get(int(partition), 0):
                found.add((int(partition), int(offset)))
    return found


def main(
    until_caught_up: bool = typer.Option(False, help="Stop once everything in the topic at start is archived."),
    topic: str = typer.Option(None, help="Source topic (default: each stream's own, all streams)."),
    stream: str = typer.Option(None, help=f"Only this stream: {', '.join(STREAMS)} (default: all; --topic: events)."),
) -> None:
    """Archive `events` into the bronze Delta table and `impressions` into its table (a thread each)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if stream is not None and stream not in STREAMS:
        raise typer.BadParameter(f"unknown stream {stream!r}; one of {', '.join(STREAMS)}")
    chosen = [STREAMS[stream or "events"]] if topic or stream else list(STREAMS.values())
    archivers = [Archiver(topic=topic, stream=st) for st in chosen]

    def stop(*_: object) -> None:
        for archiver in archivers:
            archiver.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        with ThreadPoolExecutor(len(archivers), thread_name_prefix="archiver") as pool:
            runs = [pool.submit(a.run, until_caught_up) for a in archivers]
            wait(runs, return_when=FIRST_EXCEPTION)
            stop()  # one failed (or all are done): the others stop too, and the failure is raised below
            for run in runs:
                run.result()
    finally:
        for archiver in archivers:
            archiver.close()
    for archiver in archivers:
        stats = archiver.stats
        log.info(
            "%s: archived %s records, %s dead letters (%s already there), %s commits",
            archiver.topic,
            stats.archived,
            stats.dead_lettered,
            stats.dead_letters_skipped,
            stats.commits,
        )


if __name__ == "__main__":
    from jobs.common import run_cli

    run_cli(main)
