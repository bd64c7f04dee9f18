"""Forgetting a user (right to erasure) across every layer.

A request is anchored in the event log: a FORGET *marker* is produced to `events`
under the user's key, so it lands in their partition after every earlier event
of theirs. Everything before the marker is erased; events after it are new data
(the user came back) and are kept. Each layer erases at its own pace, in order:

- the archiver, on reaching the marker, deletes the user's earlier rows from bronze
  before it commits past it (so a crash repeats the delete, never skips it);
- the speed layer, on reaching the marker, drops the user's state (a replay after
  a crash or a new model meets the marker again);
- the serving layer gets a FORGET message on `model-updates` straight away and
  ignores the user's older UPs (they carry the offset of the events they fold in);
- `complete` deletes the user from silver, vacuums, and erases their rows from
  every model directory on disk; `publish` does the same to each new candidate
  whose data ends before the marker.

`forget_requests` (append-only) records each request and when it was completed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pyarrow as pa

from recsys import protocol
from recsys.contracts.events import CONTROL_HEADER, FORGET_CONTROL, ForgetMarker
from recsys.contracts.tables import FORGET_SCHEMA, Tables
from recsys.io import lake, model_store
from recsys.io.kafka import ensure_topics, producer
from recsys.privacy import is_pseudonym, pseudonymise
from recsys.protocol import ForgetMessage, Topics
from recsys.settings import Settings, get_settings

log = logging.getLogger("recsys.erasure")
REQUESTED, ERASED = "requested", "erased"


def request(user_id: str, settings: Settings | None = None) -> ForgetMessage:
    """Place the marker, record the request, tell the servers. Takes a raw id or a pseudonym."""
    s = settings or get_settings()
    pseudonym = pseudonymise(user_id, s.pseudonym_key_bytes())
    ensure_topics(s)
    prod = producer(s, linger_ms=0)
    try:
        marker = ForgetMarker(user_id=pseudonym, requested_at_ms=int(time.time() * 1000))
        sent = prod.send(Topics.EVENTS, key=pseudonym.encode(), value=marker.to_wire(),
                         headers=[(CONTROL_HEADER, FORGET_CONTROL)]).get(timeout=30)  # fmt: skip
        message = ForgetMessage(user_id=pseudonym, partition=sent.partition, offset=sent.offset)
        _record(message, REQUESTED, s)
        key, value = protocol.encode(message)
        prod.send(Topics.MODEL_UPDATES, key=key, value=value).get(timeout=30)
    finally:
        prod.close()
    log.info("forget %s requested: marker at events[%d]@%d", pseudonym, message.partition, message.offset)
    return message


def complete(message: ForgetMessage, settings: Settings | None = None) -> bool:
    """Erase what the lake and the model files hold of the user from before the marker.

    Returns False (and changes nothing) while the archiver has not passed the marker:
    until then bronze may still receive the user's earlier events.
    """
    s = settings or get_settings()
    bronze = Tables.path(Tables.BRONZE_EVENTS, s)
    if not archived_past(message, s):
        return False
    silver = Tables.path(Tables.SILVER_INTERACTIONS, s)
    if lake.exists(silver):
        lake.delete(silver, before_marker_predicate(message))
    for table in (bronze, silver):
        if lake.exists(table):
            # Files the deletes replaced stay for time travel until the retention has passed.
            lake.vacuum(table, s.vacuum_retention_hours)
    erase_from_models([message], s)
    _record(message, ERASED, s)
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


def complete_pending(settings: Settings | None = None) -> dict[str, int]:
    """Complete every request the archiver has passed (the nightly DAG runs this before `clean`)."""
    s = settings or get_settings()
    done = waiting = 0
    for message in pending(s):
        if complete(message, s):
            done += 1
        else:
            waiting += 1
    return {"completed": done, "waiting_for_archiver": waiting}


def requests(settings: Settings | None = None, status: str = REQUESTED) -> list[ForgetMessage]:
    """Every request with the given status, oldest first."""
    path = Tables.path(Tables.FORGET_REQUESTS, settings or get_settings())
    if not lake.exists(path):
        return []
    rows = lake.read(path).sort_by("recorded_at").to_pylist()
    return [ForgetMessage(user_id=r["user_id"], partition=r["kafka_partition"], offset=r["kafka_offset"])
            for r in rows if r["status"] == status]  # fmt: skip


def pending(settings: Settings | None = None) -> list[ForgetMessage]:
    erased = {(m.user_id, m.partition, m.offset) for m in requests(settings, ERASED)}
    return [m for m in requests(settings) if (m.user_id, m.partition, m.offset) not in erased]


def before_marker_predicate(message: ForgetMessage) -> str:
    """SQL predicate for the user's rows that came before the marker (backfilled rows have partition -1)."""
    if not is_pseudonym(message.user_id):
        raise ValueError(f"not a pseudonym: {message.user_id!r}")  # never splice anything else into SQL
    return (
        f"user_id = '{message.user_id}' AND (kafka_partition < 0 OR "
        f"(kafka_partition = {int(message.partition)} AND kafka_offset < {int(message.offset)}))"
    )


def erase_from_models(messages: list[ForgetMessage], settings: Settings | None = None) -> int:
    """Erase the users from every model directory whose data ends before their marker. Returns rows erased."""
    s = settings or get_settings()
    erased = 0
    for root in (model_store.published_dir(s), model_store.candidates_dir(s)):
        if root.exists():
            for directory in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
                erased += erase_from_model(directory, messages)
    return erased


def erase_from_model(directory, messages: list[ForgetMessage]) -> int:
    """Erase from one model directory the users whose request covers its data."""
    try:
        manifest = model_store.read_manifest(directory)
    except model_store.ModelNotFound:
        return 0  # incomplete: never read by anyone
    users = {m.user_id for m in messages if m.covers(manifest.kafka_offsets)}
    return model_store.erase_users(directory, users) if users else 0


def _record(message: ForgetMessage, status: str, s: Settings) -> None:
    row = {
        "user_id": [message.user_id], "kafka_partition": [message.partition], "kafka_offset": [message.offset],
        "status": [status], "recorded_at": [datetime.now(UTC)],
    }  # fmt: skip
    lake.write(Tables.path(Tables.FORGET_REQUESTS, s), pa.table(row, schema=FORGET_SCHEMA))
