"""Forgetting a user (right to erasure) across every layer.

A request is anchored in the event log: a FORGET *marker* is produced to `events`
under the user's key, so it lands in their partition after every earlier event
of theirs. Everything before the marker is erased; events after it are new data
(the user came back) and are kept. `request` only writes to Kafka (the marker, and
a FORGET message on `model-updates`), so whoever takes a request (the serving
layer's `POST /admin/forget`, the `recsys forget` CLI) needs no write access to the
lake. Each layer then erases at its own pace, in order:

- the archiver, on reaching the marker, records the request in `forget_requests`
  and deletes the user's earlier rows from bronze, both before the commit that moves
  past the marker (so a crash repeats them, never skips them); right after that
  commit it runs `complete` (below);
- the speed layer, on reaching the marker, drops the user's state (a replay after
  a crash or a new model meets the marker again), an A/B challenger's too; `request`
  tombstones the user's UPs under every challenger's keys (a test that ended leaves them);
- the serving layer gets the FORGET message on `model-updates` straight away and
  ignores the user's older UPs (they carry the offset of the events they fold in);
- `complete` deletes the user from silver, vacuums bronze and silver, and erases
  their rows from every model directory on disk; `publish` does the same to each new
  candidate whose data ends before the marker. A request the archiver could not
  complete at once (silver busy with a long writer) stays pending: the archiver
  retries it, and the nightly `archive_compact` (Delta DELETE and VACUUM on Spark)
  and `recsys forget --pending` complete whatever is pending.

`forget_requests` (append-only) records each request and when it was completed. Bronze, silver,
`user_top_n` (`USER_TABLES`; the nightly top-N lists of `jobs/top_n.py`, which leaves out users already
forgotten: all of a user's rows go) and `impressions` (what serving showed the user: all their rows up to
the completion go, and the impressions archiver leaves out any shown before the request that arrive later,
`drop_forgotten`) are the only other tables holding user ids (the catalogue and the model registry hold
none): a new one must be erased here too (`test_privacy_end_to_end.py` checks every table under the lake).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from recsys import protocol
from recsys.contracts.events import CONTROL_HEADER, FORGET_CONTROL, ForgetMarker
from recsys.contracts.tables import FORGET_SCHEMA, Tables
from recsys.io import lake, model_store
from recsys.io.kafka import ensure_topics, producer
from recsys.privacy import is_pseudonym, pseudonymise
from recsys.protocol import ForgetMessage, Topics
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("recsys.erasure")
REQUESTED, ERASED = "requested", "erased"
# Every table holding a user's rows but the forget log (which keeps the pseudonym as the record of the request).
USER_TABLES = (Tables.BRONZE_EVENTS, Tables.SILVER_INTERACTIONS, Tables.USER_TOP_N, Tables.IMPRESSIONS)


def request(user_id: str, settings: Settings | None = None) -> ForgetMessage:
    """Place the marker and tell the servers: Kafka only, nothing written to the lake (the archiver records
    the request when it reaches the marker). Takes a raw id or a pseudonym."""
    s = settings or get_settings()
    pseudonym = pseudonymise(user_id, s.pseudonym_key_bytes())
    ensure_topics(s)
    prod = producer(s, linger_ms=0)
    try:
        marker = ForgetMarker(user_id=pseudonym, requested_at_ms=int(time.time() * 1000))
        sent = prod.send(
            Topics.EVENTS, key=pseudonym.encode(), value=marker.to_wire(), headers=[(CONTROL_HEADER, FORGET_CONTROL)]
        ).get(timeout=30)
        message = ForgetMessage(user_id=pseudonym, partition=sent.partition, offset=sent.offset)
        key, value = protocol.encode(message)
        prod.send(Topics.MODEL_UPDATES, key=key, value=value).get(timeout=30)
        for key, tombstone in challenger_tombstones(pseudonym, s):
            prod.send(Topics.MODEL_UPDATES, key=key, value=tombstone).get(timeout=30)
    finally:
        prod.close()
    log.info("forget %s requested: marker at events[%d]@%d", pseudonym, message.partition, message.offset)
    return message


def challenger_tombstones(pseudonym: str, s: Settings) -> list[tuple[bytes, None]]:
    """Tombstones for the user's UPs under A/B challengers' keys (`protocol.up_key`): the speed layer tombstones
    those of the challenger it folds into when it meets the marker, but a test that has ended leaves its
    challenger's UPs on `model-updates`, which no later model's UPs replace. Every challenger in the store, and the
    one named now (it may be a candidate's or a published model's version)."""
    versions = set(model_store.versions_in(model_store.challengers_dir(s))) | {s.ab_challenger_version}
    return [protocol.tombstone("user", pseudonym, v) for v in sorted(versions) if v]


def complete(message: ForgetMessage, settings: Settings | None = None, spark: SparkSession | None = None) -> bool:
    """Erase what the lake and the model files hold of the user from before the marker.

    Returns False (and changes nothing) while the archiver has not passed the marker:
    until then bronze may still receive the user's earlier events. With `spark`, the
    deletes and vacuums are Delta's own (delta-spark); without, delta-rs's.
    """
    s = settings or get_settings()
    if not archived_past(message, s):
        return False
    silver = Tables.path(Tables.SILVER_INTERACTIONS, s)
    if lake.exists(silver):
        lake.delete(silver, before_marker_predicate(message), spark=spark)
    # `user_top_n`: derived from a model of data before the marker; `impressions`: what was shown until now (those
    # shown before the request and archived later, the impressions archiver leaves out). All the user's rows go.
    for name in (Tables.USER_TOP_N, Tables.IMPRESSIONS):
        table = Tables.path(name, s)
        if lake.exists(table):
            lake.delete(table, user_predicate(message.user_id), spark=spark)
    for table in (Tables.path(name, s) for name in USER_TABLES):
        if lake.exists(table):
            # Files the deletes replaced stay for time travel until the retention has passed.
            lake.vacuum(table, s.vacuum_retention_hours, spark=spark)
    erase_from_models([message], s)
    record([message], ERASED, s)
    log.info("forget %s completed: lake and model files hold nothing from before the marker", message.user_id)
    return True


def archived_past(message: ForgetMessage, settings: Settings) -> bool:
    """True once bronze records an offset beyond the marker for its partition."""
    bronze = Tables.path(Tables.BRONZE_EVENTS, settings)
    return lake.archived_offsets(bronze, Topics.EVENTS, [message.partition])[message.partition] > message.offset


def wait_and_complete(message: ForgetMessage, settings: Settings | None = None, timeout_s: float = 120) -> bool:
    """`complete`, retried until the archiver has passed the marker or `timeout_s` is over."""
    deadline = time.monotonic() + timeout_s
    while not complete(message, settings):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def complete_pending(settings: Settings | None = None, spark: SparkSession | None = None) -> dict[str, int]:
    """Complete every request the archiver has passed (the nightly DAG's archive_compact runs this)."""
    s = settings or get_settings()
    done = waiting = 0
    for message in pending(s):
        if complete(message, s, spark):
            done += 1
        else:
            waiting += 1
    return {"completed": done, "waiting_for_archiver": waiting}


def requests(settings: Settings | None = None, status: str = REQUESTED) -> list[ForgetMessage]:
    """Every request with the given status, oldest first, each once (a crash may have recorded one twice)."""
    path = Tables.path(Tables.FORGET_REQUESTS, settings or get_settings())
    if not lake.exists(path):
        return []
    rows = lake.read(path).sort_by("recorded_at").to_pylist()
    found = {(r["user_id"], r["kafka_partition"], r["kafka_offset"]): None for r in rows if r["status"] == status}
    return [ForgetMessage(user_id=u, partition=p, offset=o) for u, p, o in found]


def pending(settings: Settings | None = None) -> list[ForgetMessage]:
    erased = {(m.user_id, m.partition, m.offset) for m in requests(settings, ERASED)}
    return [m for m in requests(settings) if (m.user_id, m.partition, m.offset) not in erased]


class Forgotten:
    """Who asked to be forgotten, and when the request was recorded: `forget_requests`, read again only when
    its version moved (the impressions archiver asks before every commit)."""

    def __init__(self, settings: Settings) -> None:
        self.path = Tables.path(Tables.FORGET_REQUESTS, settings)
        self._version: int | None = None
        self._since: dict[str, datetime] = {}

    def since(self) -> dict[str, datetime]:
        """Pseudonym -> when their latest request was recorded."""
        version = lake.version(self.path)
        if version is not None and version != self._version:
            rows = lake.read(self.path, columns=["user_id", "status", "recorded_at"]).to_pylist()
            latest: dict[str, datetime] = {}
            for r in rows:
                if r["status"] == REQUESTED and (r["user_id"] not in latest or r["recorded_at"] > latest[r["user_id"]]):
                    latest[r["user_id"]] = r["recorded_at"]
            self._since, self._version = latest, version
        return self._since


def drop_forgotten(rows: pa.Table, since: dict[str, datetime], at: str = "shown_at") -> pa.Table:
    """`rows` without those of a forgotten user from before their request was recorded (column `at`)."""
    if not since or rows.num_rows == 0:
        return rows
    users, times = rows["user_id"].to_pylist(), rows[at].to_pylist()
    keep = [u not in since or t >= since[u] for u, t in zip(users, times, strict=True)]
    return rows.filter(pa.array(keep))


def before_marker_predicate(message: ForgetMessage) -> str:
    """SQL predicate for the user's rows that came before the marker (backfilled rows have partition -1)."""
    if not is_pseudonym(message.user_id):
        raise ValueError(f"not a pseudonym: {message.user_id!r}")  # never splice anything else into SQL
    return (
        f"user_id = '{message.user_id}' AND (kafka_partition < 0 OR "
        f"(kafka_partition = {int(message.partition)} AND kafka_offset < {int(message.offset)}))"
    )


def user_predicate(user_id: str) -> str:
    """SQL predicate for every row of the user (tables derived from a model, such as `user_top_n`)."""
    if not is_pseudonym(user_id):
        raise ValueError(f"not a pseudonym: {user_id!r}")  # never splice anything else into SQL
    return f"user_id = '{user_id}'"


def erase_from_models(messages: list[ForgetMessage], settings: Settings | None = None) -> int:
    """Erase the users from every model directory whose data ends before their marker. Returns rows erased."""
    s = settings or get_settings()
    erased = 0
    for folder, location in (
        (model_store.published_dir(s), model_store.published),
        (model_store.challengers_dir(s), model_store.challenger),
        (model_store.candidates_dir(s), model_store.candidate),
    ):
        for version in model_store.versions_in(folder):
            erased += erase_from_model(location(version, s), messages, s)
    return erased


def erase_from_model(
    location: model_store.Location, messages: list[ForgetMessage], settings: Settings | None = None
) -> int:
    """Erase from one model the users whose request covers its data."""
    try:
        manifest = model_store.read_manifest(location)
    except model_store.ModelNotFound:
        return 0  # incomplete: never read by anyone
    users = {m.user_id for m in messages if m.covers(manifest.kafka_offsets)}
    return model_store.erase_users(location, users, settings) if users else 0


def record(messages: list[ForgetMessage], status: str, settings: Settings | None = None) -> None:
    """Append the requests' status rows to `forget_requests` (the archiver records REQUESTED, `complete` ERASED)."""
    if not messages:
        return
    now = datetime.now(UTC)
    row = {
        "user_id": [m.user_id for m in messages],
        "kafka_partition": [m.partition for m in messages],
        "kafka_offset": [m.offset for m in messages],
        "status": [status] * len(messages),
        "recorded_at": [now] * len(messages),
    }
    lake.write(
        Tables.path(Tables.FORGET_REQUESTS, settings or get_settings()),
        pa.table(row, schema=FORGET_SCHEMA),
        writer="erasure",
    )
