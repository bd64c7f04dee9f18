"""Data contracts shared by every layer: topics, tables, the event schema, update messages, the model manifest.

A layer talks to another only through what is defined here (a Kafka message,
a Delta table, a model directory), never through the other's internals.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_serializer,
    field_validator,
)

from recsys.privacy import is_pseudonym
from recsys.settings import Settings, get_settings

SCHEMA_VERSION = 1


# --- topics -------------------------------------------------------------------
class Topics:
    EVENTS = "events"  # keyed by (pseudonymised) user id, so one user's events stay in order
    DLQ = "events.dlq"  # rejected events with the reason
    MODEL_UPDATES = "model-updates"  # MODEL / UP / FORGET messages

    ALL = (EVENTS, DLQ, MODEL_UPDATES)


# --- tables ---------------------------------------------------------------------
class Tables:
    BRONZE_EVENTS = "bronze_events"  # every accepted event, with its Kafka partition and offset
    SILVER_INTERACTIONS = "silver_interactions"  # validated, deduplicated, bots dropped
    MODEL_REGISTRY = "model_registry"  # one row per trained model version
    FORGET_REQUESTS = "forget_requests"  # erasure requests and their completion (append-only)
    CATALOG = "catalog"  # item metadata for display and business filters (title, category)

    @staticmethod
    def path(name: str, settings: Settings | None = None) -> Path:
        return (settings or get_settings()).lake_dir / name

    @staticmethod
    def archiver_txn_id(topic: str, partition: int) -> str:
        """The Delta transaction id under which bronze records the next offset archived from a partition."""
        return f"archiver:{topic}:{partition}"


_TS = pa.timestamp("us", tz="UTC")

# The event's own fields, as columns (the wire format's `ts` becomes a UTC timestamp).
EVENT_COLUMNS = pa.schema(
    [
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("event_type", pa.string()), ("ts", _TS), ("session_id", pa.string()),
        ("quantity", pa.int32()), ("price", pa.float64()), ("schema_version", pa.int32()),
    ]
)  # fmt: skip

# Bronze: every accepted event as it arrived, and where from (backfilled rows have partition -1).
BRONZE_SCHEMA = pa.schema(
    [*EVENT_COLUMNS, ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()), ("ingested_at", _TS)]
)

# Silver: what training reads. One row per distinct event, user ids pseudonymised, bots dropped.
SILVER_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
        ("event_type", pa.string()), ("weight", pa.float64()), ("ts", _TS),
        ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
    ]
)  # fmt: skip

# The catalogue: one row per item, overwritten whole by whoever owns the product data.
CATALOG_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()), ("category", pa.string())])

# The model registry: append-only; the last row of a version is its current status.
REGISTRY_SCHEMA = pa.schema(
    [
        ("model_version", pa.string()), ("status", pa.string()), ("engine", pa.string()),
        ("recorded_at", _TS), ("silver_table_version", pa.int64()), ("path", pa.string()),
        ("metrics_json", pa.string()), ("reason", pa.string()),
    ]
)  # fmt: skip


def event_weights(settings: Settings | None = None) -> dict[str, float]:
    """Strength each event type adds to a (user, item) pair; its keys are the accepted event types."""
    return dict((settings or get_settings()).event_weights)


# --- the event ---------------------------------------------------------------------
# Ids: non-empty, no control characters (they break logs and CSV exports), bounded length.
_Id = Annotated[str, StringConstraints(strict=True, min_length=1, pattern=r"^[^\x00-\x1f\x7f]+$")]


class Event(BaseModel):
    """One behaviour event, as carried on the `events` topic (JSON, key = user_id)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: _Id
    user_id: _Id
    item_id: _Id
    event_type: str = Field(strict=True)
    ts: datetime = Field(description="Event time: ISO-8601 string or epoch milliseconds; stored as UTC.")
    session_id: _Id | None = None
    quantity: int | None = Field(None, strict=True, ge=1, le=100_000)
    price: float | None = Field(None, ge=0, le=1e9)
    schema_version: Literal[1] = SCHEMA_VERSION

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, v: Any) -> datetime:
        if isinstance(v, bool):
            raise ValueError("ts must be an ISO-8601 string or epoch milliseconds, not a boolean")
        if isinstance(v, int):
            try:
                return EPOCH + timedelta(milliseconds=v)
            except OverflowError as e:
                raise ValueError(f"epoch milliseconds out of range: {v}") from e
        if isinstance(v, str):
            try:
                parsed = datetime.fromisoformat(v)
            except ValueError as e:
                raise ValueError(f"not an ISO-8601 timestamp: {v[:40]!r}") from e
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        if isinstance(v, datetime):
            return v if v.tzinfo else v.replace(tzinfo=UTC)
        raise ValueError("ts must be an ISO-8601 string or epoch milliseconds")

    @field_validator("price")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("price must be finite")
        return v

    @field_serializer("ts")
    def _ts_to_ms(self, ts: datetime) -> int:
        return ts_to_ms(ts)

    @property
    def ts_ms(self) -> int:
        return ts_to_ms(self.ts)

    def key(self) -> bytes:
        return self.user_id.encode()

    def to_wire(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts_to_ms(ts: datetime) -> int:
    """Epoch milliseconds, in integer arithmetic (float seconds would round some values down by 1 ms)."""
    return (ts - EPOCH) // timedelta(milliseconds=1)


# --- validation with a reason ------------------------------------------------------
RejectReason = Literal[
    "too_large",
    "invalid_json",
    "not_an_object",
    "invalid_field",
    "unknown_event_type",
    "ts_out_of_range",
    "not_pseudonymised",
    "invalid_control",
]


@dataclass(frozen=True)
class Rejection:
    reason: RejectReason
    detail: str


def validate_event(
    raw: bytes | str | dict,
    settings: Settings | None = None,
    *,
    require_pseudonym: bool = True,
    now: datetime | None = None,
) -> Event | Rejection:
    """Parse and check one event. Never raises: a bad event comes back as a `Rejection`.

    `require_pseudonym` is on for everything read from the `events` topic; producers
    (which pseudonymise themselves) validate with it off.
    """
    s = settings or get_settings()
    if isinstance(raw, dict):
        obj: Any = raw
    else:
        size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
        if size > s.max_event_bytes:
            return Rejection("too_large", f"{size} bytes > limit {s.max_event_bytes}")
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            return Rejection("invalid_json", str(e)[:200])
    if not isinstance(obj, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    try:
        event = Event.model_validate(obj)
    except ValidationError as e:
        return Rejection("invalid_field", _summarise(e))
    except (ValueError, TypeError, OverflowError) as e:  # e.g. integers too large to convert
        return Rejection("invalid_field", str(e)[:200])
    return _check_semantics(event, s, require_pseudonym, now)


def _check_semantics(event: Event, s: Settings, require_pseudonym: bool, now: datetime | None) -> Event | Rejection:
    too_long = [
        f for f in ("event_id", "user_id", "item_id", "session_id") if len(getattr(event, f) or "") > s.max_id_length
    ]
    if too_long:
        return Rejection("invalid_field", f"{', '.join(too_long)} longer than {s.max_id_length} characters")
    if event.event_type not in s.event_weights:
        return Rejection("unknown_event_type", f"{event.event_type[:40]!r} not in {sorted(s.event_weights)}")
    now = now or datetime.now(UTC)
    if event.ts > now + timedelta(seconds=s.max_future_skew_s):
        return Rejection("ts_out_of_range", f"{event.ts.isoformat()} is in the future")
    if event.ts.year < s.min_event_year:
        return Rejection("ts_out_of_range", f"{event.ts.isoformat()} is before {s.min_event_year}")
    if require_pseudonym and not is_pseudonym(event.user_id):
        return Rejection(
            "not_pseudonymised", "user_id is not a pseudonym; producers must call recsys.privacy.pseudonymise"
        )
    return event


def _summarise(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)[:500]


class DeadLetter(BaseModel):
    """What goes to `events.dlq`: the reason, where the event came from, and its (truncated) payload."""

    reason: RejectReason
    detail: str
    payload: str = Field(description="The raw message, decoded leniently and cut to 4 KiB.")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    rejected_at_ms: int

    @classmethod
    def of(cls, raw: bytes | str, rejection: Rejection, **source: Any) -> DeadLetter:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return cls(
            reason=rejection.reason,
            detail=rejection.detail,
            payload=text[:4096],
            rejected_at_ms=ts_to_ms(datetime.now(UTC)),
            **source,
        )

    def to_wire(self) -> bytes:
        return self.model_dump_json().encode()


# Erasure log: one "requested" row per forget request, one "erased" row once the lake and models hold nothing
# of the user from before the request. Keyed by where the request's marker sits in `events`.
FORGET_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
        ("status", pa.string()), ("recorded_at", _TS),
    ]
)  # fmt: skip


# --- control records on `events` -------------------------------------------------------------
# A record with this header is an instruction, not an event: it is neither archived nor dead-lettered.
CONTROL_HEADER = "recsys-control"
FORGET_CONTROL = b"forget"


class ForgetMarker(BaseModel):
    """Put on `events` under the user's key, so it sits after every earlier event of that user."""

    user_id: str
    requested_at_ms: int

    def to_wire(self) -> bytes:
        return self.model_dump_json().encode()


def control_kind(headers: list[tuple[str, bytes]] | None) -> bytes | None:
    """The control instruction a record carries (None for an ordinary event)."""
    for name, value in headers or ():
        if name == CONTROL_HEADER:
            return value
    return None


# --- update messages on `model-updates` ------------------------------------------------
class ModelMessage(BaseModel):
    """A new batch model is published: where it is, never the model itself."""

    type: Literal["MODEL"] = "MODEL"
    model_version: str
    path: str


class VectorUpdate(BaseModel):
    """One user's or item's new factor vector, folded in by the speed layer."""

    type: Literal["UP"] = "UP"
    model_version: str
    kind: Literal["user", "item"]
    id: str
    vector: list[float]
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


UpdateMessage = Annotated[ModelMessage | VectorUpdate | ForgetMessage, Field(discriminator="type")]


# --- the model artifact's manifest -----------------------------------------------------
class Objective(BaseModel):
    """Which implicit-ALS objective the factors minimise; the speed layer folds in with exactly this.

    confidence: `one_plus_alpha_r` (Spark MLlib, Hu et al.) is c = 1 + alpha*r;
    `alpha_r` (the `implicit` library) is c = alpha*r.
    reg_scaling: `count` (Spark, ALS-WR) is lambda_u = reg * |I(u)|; `none` is lambda_u = reg.
    """

    confidence: Literal["one_plus_alpha_r", "alpha_r"]
    reg_scaling: Literal["count", "none"]
    alpha: float = Field(gt=0)
    reg: float = Field(ge=0)


class ModelManifest(BaseModel):
    """`manifest.json` in each model directory. Written last, so a directory without it is incomplete."""

    model_version: str
    created_at_ms: int
    engine: Literal["spark_als", "implicit"]
    objective: Objective
    rank: int = Field(gt=0)
    hyperparameters: dict[str, Any]
    n_users: int
    n_items: int
    silver_table_version: int | None = Field(None, description="Delta version of the silver table trained on.")
    kafka_offsets: dict[int, int] = Field(
        default_factory=dict,
        description="Next offset per `events` partition not covered by this model; the speed layer replays from here.",
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    baseline_metrics: dict[str, float] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="Logical name -> file name in the model directory.")
    event_types: list[str] = Field(
        default_factory=list,
        description="Bit i of a `seen_types` entry means event type event_types[i] was seen for that (user, item).",
    )


MANIFEST_FILE = "manifest.json"
