"""The event contract: what a behaviour event on `events` looks like, how it is validated, and what a
rejected one becomes on `events.dlq`. Also the control records (FORGET markers) that share the topic.

Item updates (`item_sold_out`, `item_hidden`, `item_back`) share the topic and the format: an event whose
`user_id` is who made the change (the shop's feed or operator, pseudonymised like any id) and whose type says
whether the item can be sold. They are archived like every event, but are not interactions: they carry no
weight, clean keeps them out of silver, and the speed layer turns them into availability updates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

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

SCHEMA_VERSION: Final = 1


def event_weights(settings: Settings | None = None) -> dict[str, float]:
    """Strength each event type adds to a (user, item) pair; its keys are the accepted interaction types."""
    return dict((settings or get_settings()).event_weights)


# Item updates: event type -> whether the item can be sold after it. A type of its own per state, so bronze
# stores the state in the column it already has (no schema change) and clean can tell them from interactions.
ITEM_UPDATES: Final = {"item_sold_out": False, "item_hidden": False, "item_back": True}


def is_item_update(event_type: str) -> bool:
    return event_type in ITEM_UPDATES


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
    # The `request_id` of the recommendation answer the event came from (a click or purchase on a list): what
    # attributes it to that list (`impressions`). Optional, so every event written before it stays valid.
    request_id: _Id | None = None
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
        """One user's events stay in order on one partition; so do one item's updates (keyed by the item)."""
        if is_item_update(self.event_type):
            return f"item:{self.item_id}".encode()
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


def validate_events(
    raws: Sequence[bytes],
    settings: Settings | None = None,
    *,
    require_pseudonym: bool = True,
    now: datetime | None = None,
) -> list[Event | Rejection]:
    """`validate_event` of each of a batch of raw records, with the same results, faster.

    A valid event (the common case) is parsed by pydantic-core straight from its bytes: one pass in Rust, no
    Python dict in between. Anything that path refuses goes through `validate_event` for its exact reason and
    detail, so a record is accepted here exactly when `validate_event` accepts it, as the same `Event`.
    """
    s = settings or get_settings()
    now = now or datetime.now(UTC)  # one clock reading per batch, not per event
    parse = Event.model_validate_json
    out: list[Event | Rejection] = []
    for raw in raws:
        if type(raw) is bytes and len(raw) <= s.max_event_bytes:  # a str's length is not its size in bytes
            try:
                event = parse(raw)
            except (ValueError, TypeError, OverflowError):  # ValidationError is a ValueError: the slow path says why
                pass
            else:
                out.append(_check_semantics(event, s, require_pseudonym, now))
                continue
        out.append(validate_event(raw, s, require_pseudonym=require_pseudonym, now=now))
    return out


ID_FIELDS: Final = ("event_id", "user_id", "item_id", "session_id", "request_id")


def _check_semantics(event: Event, s: Settings, require_pseudonym: bool, now: datetime | None) -> Event | Rejection:
    m = s.max_id_length
    # One comparison per id for the common case; the list of offenders only for a rejection.
    if (
        len(event.event_id) > m
        or len(event.user_id) > m
        or len(event.item_id) > m
        or len(event.session_id or "") > m
        or len(event.request_id or "") > m
    ):
        too_long = [f for f in ID_FIELDS if len(getattr(event, f) or "") > m]
        return Rejection("invalid_field", f"{', '.join(too_long)} longer than {s.max_id_length} characters")
    if is_item_update(event.event_type):
        if any(x is not None for x in (event.quantity, event.price, event.session_id, event.request_id)):
            return Rejection("invalid_field", "an item update carries no session_id, request_id, quantity or price")
    elif event.event_type not in s.event_weights:
        known = sorted([*s.event_weights, *ITEM_UPDATES])
        return Rejection("unknown_event_type", f"{event.event_type[:40]!r} not in {known}")
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


# --- impressions: what serving showed ---------------------------------------------------------
# One message carries the impressions of many answers (producing each alone would cost serving more CPU than
# the answer): at most this many bytes, under Kafka's default message size limit.
IMPRESSIONS_MAX_BYTES: Final = 512 * 1024


class Impression(BaseModel):
    """One recommendation answer as it was shown. `items` in the order shown (position 0 first). Events that
    carry the answer's `request_id` are attributed to it (CTR and conversion: `serving/attribution.py`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: _Id
    user_id: _Id
    model_version: _Id
    variant: _Id
    surface: Literal["recommend", "batch"]
    items: list[_Id] = Field(max_length=1_000)
    shown_at_ms: int = Field(ge=0)


class Impressions(BaseModel):
    """What one message on the `impressions` topic carries (JSON, no key: impressions need no order)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    impressions: list[Impression] = Field(min_length=1)

    @staticmethod
    def wire(impressions_json: list[bytes]) -> bytes:
        """The message of already serialised impressions (`Impression.model_dump_json`), without re-parsing."""
        return b'{"impressions":[' + b",".join(impressions_json) + b"]}"


def validate_impressions(raw: bytes, settings: Settings | None = None) -> Impressions | Rejection:
    """Parse and check one `impressions` message; never raises. Every user id must be a pseudonym (stored)."""
    if len(raw) > IMPRESSIONS_MAX_BYTES:
        return Rejection("too_large", f"{len(raw)} bytes > limit {IMPRESSIONS_MAX_BYTES}")
    try:
        message = Impressions.model_validate_json(raw)
    except ValidationError as e:
        return Rejection("invalid_field", _summarise(e))
    except (ValueError, TypeError) as e:
        return Rejection("invalid_field", str(e)[:200])
    if not all(is_pseudonym(i.user_id) for i in message.impressions):
        return Rejection("not_pseudonymised", "an impression's user_id must be a pseudonym")
    return message
