"""Request and response models of the HTTP API (they are also its OpenAPI documentation)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictStr, StringConstraints, field_validator

from recsys.contracts.events import ITEM_UPDATES
from serving.openapi import values

# Ids: printable, no control characters (the length limit is a setting: `openapi.values("id")`, checked by the routes).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"

Source = Literal["speed", "batch", "popular", "content"]


class Item(BaseModel):
    item_id: str
    score: float
    title: str | None = None
    category: str | None = None
    from_speed: bool = Field(
        False,
        description="True when the speed layer's view of the user put this item here and the batch model alone "
        "would not have.",
    )
    because: str | None = Field(None, description='Why, in words ("because you viewed X"), when `explain=true`.')


class Recommendations(BaseModel):
    request_id: str = Field(
        description="This answer's id: send it with the events it leads to (`POST /events`), so a click or "
        "purchase is attributed to this list (its impression is logged under the id)."
    )
    user_id: str = Field(description="The pseudonym the user is known by (raw ids are never stored).")
    model_version: str
    source: Source = Field(
        description="`speed`: the model's view of the user includes what they did since the batch model (their "
        "latest events, a folded-in vector); `batch`: the batch model's view alone; `popular`: nothing is known of "
        "the user (or nothing the model can rank), most popular items (within the category, if one is asked for)."
    )
    as_of_ms: int | None = Field(None, description="Time of the newest event behind a `speed` answer.")
    items: list[Item]


class Similar(BaseModel):
    item_id: str
    model_version: str
    source: Source = Field(
        "batch",
        description="`batch`: the model's behavioural similarity; `content`: the items' attributes (a cold "
        "item); `popular`: nothing is known of the item, the most popular items of its category.",
    )
    items: list[Item]


class Popular(BaseModel):
    model_version: str
    category: str | None = None
    items: list[Item]


class Contribution(BaseModel):
    item_id: str
    title: str | None = None
    contribution: float = Field(
        description="This history item's share of the score (for ALS all shares sum to `score`)."
    )


class Explanation(BaseModel):
    user_id: str
    item_id: str
    model_version: str
    score: float = Field(description="The user's score of the item by the served model.")
    because: list[Contribution]


class EventIn(BaseModel):
    """One behaviour event from a shop or app. The user id is pseudonymised here, before Kafka."""

    # Ids are checked for control characters here, on the raw id, before the user id is pseudonymised (a pseudonym
    # would hide them); the other limits are `Event`'s (`validate_event`), stated here so the schema says them.
    user_id: str = Field(
        pattern=ID_PATTERN,
        description="The shop's own user id (or an existing pseudonym).",
        json_schema_extra=values("id"),
    )
    item_id: str = Field(pattern=ID_PATTERN, json_schema_extra=values("id"))
    event_type: str = Field(
        description="One of the configured event types (RECSYS_EVENT_WEIGHTS), or an item update: item_sold_out, "
        "item_hidden (the item leaves every answer) or item_back (it returns); an item update's user_id is who "
        "made the change (e.g. the catalogue feed) and it carries no session_id, request_id, quantity or price.",
        examples=["view", "item_sold_out"],
        json_schema_extra=values("event_type"),
    )
    ts: StrictStr | int | None = Field(
        None,
        json_schema_extra=values("event_time"),
        description="Event time: epoch ms, or an RFC 3339 date-time; default: now. Times before "
        "RECSYS_MIN_EVENT_YEAR or more than RECSYS_MAX_FUTURE_SKEW_S ahead are refused. The schema's bounds are "
        "those of when this document was built; other ISO-8601 forms Python's `datetime.fromisoformat` reads are "
        "accepted too.",
    )
    event_id: str | None = Field(
        None,
        pattern=ID_PATTERN,
        json_schema_extra=values("id"),
        description="Unique id used for de-duplication; default: a new UUID.",
    )
    session_id: str | None = Field(None, pattern=ID_PATTERN, json_schema_extra=values("id"))
    request_id: str | None = Field(
        None,
        pattern=ID_PATTERN,
        json_schema_extra=values("id"),
        description="The `request_id` of the answer this event came from (a click or purchase on a recommended "
        "item): attributes the event to that list.",
    )
    quantity: int | None = Field(None, ge=1, le=100_000)
    price: float | None = Field(None, strict=True, ge=0, le=1e9)

    # An item update carries no session, request, quantity or price (`validate_event`): said in the schema as JSON
    # Schema's if/then, so a request the document allows is one the API accepts.
    model_config = {
        "extra": "forbid",
        "json_schema_extra": {
            "if": {"properties": {"event_type": {"enum": list[Any](sorted(ITEM_UPDATES))}}, "required": ["event_type"]},
            "then": {"properties": {f: {"type": "null"} for f in ("session_id", "request_id", "quantity", "price")}},
        },
    }

    @field_validator("ts", "quantity", mode="before")
    @classmethod
    def _not_a_boolean(cls, v: object) -> object:
        # JSON Schema's integer includes 145.0 (pydantic's lax int takes it, its strict one does not) but not `true`
        # (which the lax int would take as 1).
        if isinstance(v, bool):
            raise ValueError("must be a number, not a boolean")
        return v


class EventAccepted(BaseModel):
    event_id: str
    user_id: str = Field(description="The pseudonym stored in place of the raw user id.")
    partition: int
    offset: int


class ForgetAccepted(BaseModel):
    user_id: str = Field(description="The pseudonym being erased.")
    partition: int = Field(description="Partition of `events` holding the FORGET marker.")
    offset: int = Field(description="Offset of the marker: the user's events before it are erased.")
    status: Literal["requested"] = "requested"
    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    model_version: str | None = None
    caught_up: bool = Field(description="Whether `model-updates` has been read up to where it ended at start.")
    error: str | None = None


class ModelInfo(BaseModel):
    model_version: str
    engine: str
    created_at_ms: int
    params: dict[str, object] = Field(description="The recommender's hyper-parameters.")
    n_users: int
    n_items: int
    new_items: int = Field(description="Items folded in by the speed layer since the model's cut-off.")
    speed_users: int = Field(description="Users whose vector comes from the speed layer.")
    speed_updates_applied: int
    index: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    kafka_offsets: dict[int, int]


class Shopper(BaseModel):
    user_id: str = Field(description="The shopper's pseudonym (usable wherever a user id is asked for).")
    events: int = Field(description="Distinct items in their history in the served model's data.")


class Shoppers(BaseModel):
    model_version: str
    shoppers: list[Shopper]


class Error(BaseModel):
    detail: str


class BatchRequest(BaseModel):
    """Many users in one call (`POST /recommend/batch`), with the options of `GET /recommend/{user_id}`."""

    user_ids: list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]] = Field(
        min_length=1,
        json_schema_extra=values("id"),
        description="The shop's user ids (or pseudonyms), at most RECSYS_SERVING_MAX_BATCH_USERS; answered in "
        "this order, a repeated id as often as it is given.",
    )
    k: int | None = Field(
        None,
        ge=1,
        json_schema_extra=values("k"),
        description="How many items per user (1 to RECSYS_SERVING_MAX_K; default RECSYS_SERVING_DEFAULT_K).",
    )
    exclude_seen: StrictBool = True
    # The pattern of ids and categories in paths and queries: its 422 is in words.
    category: str | None = Field(
        None,
        pattern=ID_PATTERN,
        json_schema_extra=values("category"),
        description="Only items of this catalogue category (any case).",
    )
    explain: StrictBool = False

    model_config = {"extra": "forbid"}


class BatchRecommendations(BaseModel):
    model_version: str = Field(description="The one model every answer of the batch comes from.")
    results: list[Recommendations] = Field(
        description="One answer per requested user, in the request's order, each exactly what "
        "`GET /recommend/{user_id}` with the same options answers."
    )
