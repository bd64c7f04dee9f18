"""The update protocol between the layers: topics, `model-updates` messages, their keys, model versions.

One module owns it (as Oryx's update topic has one owner). Every producer and
reader of `model-updates` goes through `encode` / `decode` here, every topic is
created from `topic_specs`, every key is made by `key_of` and read by `parse_key`, and
model versions are made and compared (`is_newer`, `oldest`, `version_key`) only here.

`model-updates` carries three kinds of message, each under a key that log
compaction keeps the newest of:

    MODEL               a new batch model was published: where it is (never the model itself)
    UP:<kind>:<id>      one user's (or new item's) state since the model's cut-off
    UP@<version>:<kind>:<id>  the same for an A/B test's challenger (its own key: compaction keeps both models')
    FORGET:<user>       erase a user from before their marker on `events`
    AVAIL:<item>        whether an item can be sold (from its latest item update on `events`)

It has one partition, so MODEL and UP messages keep their order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter
from pydantic_core import to_json

if TYPE_CHECKING:
    from collections.abc import Iterable

    from recsys.settings import Settings


# --- topics -------------------------------------------------------------------
class Topics:
    EVENTS = "events"  # keyed by (pseudonymised) user id, so one user's events stay in order
    DLQ = "events.dlq"  # rejected events with the reason
    MODEL_UPDATES = "model-updates"  # MODEL / UP / FORGET / AVAIL messages
    IMPRESSIONS = "impressions"  # what serving showed: many answers per message (contracts.events.Impressions)

    ALL = (EVENTS, DLQ, MODEL_UPDATES, IMPRESSIONS)


# --- update messages on `model-updates` ------------------------------------------------
class ModelMessage(BaseModel):
    """A new batch model is published: where it is, never the model itself."""

    type: Literal["MODEL"] = "MODEL"
    model_version: str
    path: str


class VectorUpdate(BaseModel):
    """One user's (or new item's) state since the model's cut-off, as the speed layer computed it.

    `vector` is the model's real-time state (ALS: the folded-in factors); None for models
    that read the user's latest events at request time. For users, `recent` carries those
    events (the newest `Recommender.recent_events` since the cut-off, oldest first).
    """

    type: Literal["UP"] = "UP"
    model_version: str
    kind: Literal["user", "item"]
    id: str
    vector: list[float] | None = None
    event_ts_ms: int | None = Field(None, description="Time of the newest event folded in, for latency metrics.")
    # Users only: what the user did since the model's cut-off, so servers can filter and explain.
    # Absolute (the whole period, not this batch), like the vector: applying an UP twice changes nothing.
    strengths: dict[str, float] = Field(default_factory=dict, description="Item -> r_ui since the model's cut-off.")
    event_types: dict[str, list[str]] = Field(
        default_factory=dict, description="Item -> the event types seen since the model's cut-off."
    )
    source_offset: int | None = Field(
        None, description="Users: `events` offset of the newest event folded in (their partition is fixed by key)."
    )
    recent: list[tuple[str, str, int]] = Field(
        default_factory=list, description="Users: their latest events since the cut-off as (item, event type, ts ms)."
    )


class ForgetMessage(BaseModel):
    """Erase a user (right to be forgotten): everything from before their marker at (partition, offset) in `events`.

    Events after the marker are new data (the user came back) and are kept.
    """

    type: Literal["FORGET"] = "FORGET"
    user_id: str
    partition: int = Field(-1, description="Partition of `events` holding the user's marker.")
    offset: int = Field(-1, description="Offset of the marker; -1 = everything (no marker).")

    def covers(self, kafka_offsets: dict[int, int]) -> bool:
        """Whether a model whose data ends at `kafka_offsets` may hold the user's data from before the marker."""
        return self.offset < 0 or kafka_offsets.get(self.partition, 0) <= self.offset


class AvailabilityMessage(BaseModel):
    """An item's availability from its latest item update: not tied to a model version (it outlives them all).

    Compaction keeps the newest per item and the topic is never cleaned of them, so a server that reads the
    topic from the beginning starts with every item's current availability. An item's updates are on one
    `events` partition (keyed by the item), so their offset orders them: a speed layer replaying older events
    re-sends older messages, and readers keep the one with the highest offset.
    """

    type: Literal["AVAIL"] = "AVAIL"
    item_id: str
    available: bool
    state: str = Field(description="The item update's event type (item_sold_out, item_hidden, item_back).")
    partition: int = Field(description="Partition of `events` holding the item update.")
    offset: int = Field(description="Its offset there: the newest offset wins.")
    event_ts_ms: int | None = Field(None, description="Time the item update was produced, for latency metrics.")

    def supersedes(self, other: AvailabilityMessage | None) -> bool:
        """Whether this message replaces what `other` said (a replayed older item update does not)."""
        return other is None or (self.partition, self.offset) >= (other.partition, other.offset)


Message = ModelMessage | VectorUpdate | ForgetMessage | AvailabilityMessage
UpdateMessage = Annotated[Message, Field(discriminator="type")]

_MESSAGE: TypeAdapter[Message] = TypeAdapter(UpdateMessage)


# --- keys -------------------------------------------------------------------------------------
MODEL_KEY = b"MODEL"
UPDATE_PARTITION = 0  # `model-updates` has exactly one partition (see topic_specs)


def up_key(kind: str, id_: str, version: str | None = None) -> bytes:
    """The key of an UP: the served model's (whichever version it is: a newer model's UP replaces an older one's
    under compaction), or with `version` an A/B test's challenger's, so both models' UPs of one user are kept."""
    return f"UP@{version}:{kind}:{id_}".encode() if version else f"UP:{kind}:{id_}".encode()


def forget_key(user_id: str) -> bytes:
    return f"FORGET:{user_id}".encode()


def avail_key(item_id: str) -> bytes:
    return f"AVAIL:{item_id}".encode()


def key_of(message: Message) -> bytes:
    if isinstance(message, ModelMessage):
        return MODEL_KEY
    if isinstance(message, VectorUpdate):
        return up_key(message.kind, message.id)
    if isinstance(message, AvailabilityMessage):
        return avail_key(message.item_id)
    return forget_key(message.user_id)


def encode(message: Message) -> tuple[bytes, bytes]:
    """(key, value) of a message on `model-updates`."""
    return key_of(message), message.model_dump_json().encode()


def encode_up(
    version: str,
    kind: Literal["user", "item"],
    id_: str,
    vector: list[float] | None,
    event_ts_ms: int | None,
    strengths: dict[str, float],
    event_types: dict[str, list[str]],
    source_offset: int | None,
    recent: list[tuple[str, str, int]],
    key_version: str | None = None,
) -> tuple[bytes, bytes]:
    """`encode` of the VectorUpdate with these fields, the same bytes, without building the model first.

    The speed layer writes thousands of UPs per micro-batch; constructing each model only to serialise it was a
    tenth of its time. The dict lists VectorUpdate's fields in their order (the unit tests compare the bytes).
    """
    fields = {
        "type": "UP",
        "model_version": version,
        "kind": kind,
        "id": id_,
        "vector": vector,
        "event_ts_ms": event_ts_ms,
        "strengths": strengths,
        "event_types": event_types,
        "source_offset": source_offset,
        "recent": recent,
    }
    return up_key(kind, id_, key_version), to_json(fields)


def tombstone(kind: str, id_: str, version: str | None = None) -> tuple[bytes, None]:
    """A null value under an UP key (`up_key`'s): compaction then drops that id's older UPs (used for erasure)."""
    return up_key(kind, id_, version), None


def decode(value: bytes | None) -> Message | None:
    """The message in a record's value; None for a tombstone. Raises pydantic.ValidationError if malformed."""
    if value is None:
        return None
    return _MESSAGE.validate_json(value)


def is_model_key(key: bytes | None) -> bool:
    return key == MODEL_KEY


@dataclass(frozen=True)
class UpdateKey:
    """What a `model-updates` key names: MODEL, UP:<kind>:<id> (UP@<version>:<kind>:<id>) or FORGET:<user>."""

    type: Literal["MODEL", "UP", "FORGET"]
    kind: str = ""  # UP: "user" or "item"
    id: str = ""  # UP: the user's or item's id; FORGET: the user's; MODEL: none
    version: str = ""  # UP: the challenger's version in its UPs' keys; "" for the served model's

    def is_up(self, kind: str | None = None) -> bool:
        """An UP key (of that kind, if given)."""
        return self.type == "UP" and (kind is None or self.kind == kind)


def parse_key(key: bytes) -> UpdateKey:
    """The inverse of `key_of`; raises ValueError for a key this protocol does not make.

    Ids are split off once, from the left: an id may itself contain ':'.
    """
    text = key.decode()
    if text == MODEL_KEY.decode():
        return UpdateKey("MODEL")
    type_, _, rest = text.partition(":")
    type_, at, version = type_.partition("@")
    if type_ == "UP" and (not at or _VERSION.match(version)):
        kind, sep, id_ = rest.partition(":")
        if sep and kind in ("user", "item"):
            return UpdateKey("UP", kind, id_, version)
    elif type_ == "FORGET" and rest:
        return UpdateKey("FORGET", id=rest)
    raise ValueError(f"not a model-updates key: {key!r}")


# --- model versions ---------------------------------------------------------------------------
# m<creation time, UTC, microseconds>[-<recommender>]: one nightly run trains several candidates at one time.
VERSION_PREFIX = "m"
VERSION_TIME_FORMAT = "%Y%m%dT%H%M%S%f"
_VERSION = re.compile(r"^m(\d{8}T\d{12})(?:-([a-z0-9_]+))?$")


def new_version(now: datetime | None = None, model: str | None = None) -> str:
    """A model version named by its creation time: m20261124T031500123456, or m20261124T031500123456-spark_als."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(f"{VERSION_PREFIX}{VERSION_TIME_FORMAT}")
    return f"{stamp}-{model}" if model else stamp


def version_template(model: str | None = None) -> str:
    """The same format as a Jinja template over an Airflow run's logical time (the DAG's model versions)."""
    stamp = f"{VERSION_PREFIX}{{{{ dag_run.run_after.strftime('{VERSION_TIME_FORMAT}') }}}}"
    return f"{stamp}-{model}" if model else stamp


def version_time(version: str) -> datetime:
    """When a version was made; raises ValueError for a string that is not a model version."""
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not a model version: {version!r} (expected m<YYYYmmddTHHMMSSffffff>[-<recommender>])")
    return datetime.strptime(match.group(1), VERSION_TIME_FORMAT).replace(tzinfo=UTC)


def is_newer(version: str, than: str | None) -> bool:
    """Whether `version` was made after `than` (None: nothing served yet). Compared as times, not strings."""
    return than is None or version_time(version) > version_time(than)


def version_key(version: str) -> tuple[datetime, str]:
    """Sort key: oldest first (the name breaks ties between candidates of one run)."""
    return version_time(version), version


def oldest(versions: Iterable[str]) -> str:
    """The oldest of some model versions, by the protocol's order (`version_key`), not as strings."""
    return min(versions, key=version_key)


# --- topic specifications ---------------------------------------------------------------------
@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the system uses, with its real configuration (created by `recsys.io.kafka.ensure_topics`)."""
    week_ms = str(7 * 24 * 3600 * 1000)
    return [
        # Keyed by pseudonymised user: one user's events stay in order on one partition.
        TopicSpec(Topics.EVENTS, settings.events_partitions, {"retention.ms": week_ms}),
        TopicSpec(Topics.DLQ, 1, {"retention.ms": week_ms}),
        TopicSpec(Topics.IMPRESSIONS, settings.impressions_partitions, {"retention.ms": week_ms}),
        # Compacted: a new replica reads the newest message per key (one MODEL, one UP per user/item, FORGETs),
        # not every update ever made. segment.ms rolls segments so compaction can reach them.
        TopicSpec(
            Topics.MODEL_UPDATES,
            1,
            {
                "cleanup.policy": "compact",
                "segment.ms": str(settings.updates_segment_ms),
                "min.cleanable.dirty.ratio": "0.1",
                "delete.retention.ms": week_ms,
            },
        ),
    ]
