"""A seeded synthetic e-commerce event stream, for scale, streaming and fault tests.

The model, in one paragraph: every item belongs to one category and has a
power-law popularity (Zipf over a random permutation of the items). Every user
likes 1-3 categories, one of them most. Users arrive in sessions: a session
picks a category from the user's current taste and views a few items of it,
weighted by popularity; a view may lead to add-to-cart, and a cart to a
purchase. Between sessions a user's favourite category may drift. Sessions
start as a Poisson process, so sessions of different users overlap in time;
the stream is ordered by event time.

Everything is generated in numpy chunks and streamed, so tens of millions of
events never sit in memory at once, and no pydantic object is built per event
on the bulk paths (`iter_batches`, `iter_messages`). The same config gives a
byte-identical stream; the internal chunking does not depend on `batch_size`,
and a shorter stream is a prefix of a longer one with the same seed.

Timestamps start at `start_ts_ms` (2026-01-01 by default) and advance about
`events_per_second` per second; validation rejects events more than a day in
the future, so keep `n_events / events_per_second` within the time until now.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recsys.contracts.events import SCHEMA_VERSION, RejectReason
from recsys.contracts.tables import EVENT_COLUMNS
from recsys.privacy import pseudonymise
from recsys.settings import get_settings

EVENT_TYPES = ("view", "add_to_cart", "purchase")  # index = the funnel step, used as the type code
SESSIONS_PER_CHUNK = 16_384  # ~100k events per generation chunk at the default session length
BLOCK = 65_536  # malformed positions are drawn per block of stream positions, so counting them is cheap

# The event columns of the data contract, so batches append straight to bronze.
BATCH_SCHEMA = EVENT_COLUMNS


# --- configuration -------------------------------------------------------------------
class Funnel(BaseModel):
    """Conversion probabilities: each view may become a cart, each cart a purchase."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    view_to_cart: float = Field(0.1, ge=0, le=1)
    cart_to_purchase: float = Field(0.4, ge=0, le=1)


class SyntheticConfig(BaseModel):
    """Everything that shapes the stream; two equal configs give byte-identical streams."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_users: int = Field(10_000, ge=1)
    n_items: int = Field(5_000, ge=1)
    n_categories: int = Field(20, ge=1)
    n_events: int = Field(100_000, ge=0, description="Messages in the stream, malformed ones included.")
    seed: int = Field(0, ge=0)
    zipf_exponent: float = Field(1.1, gt=0, description="Item popularity ~ rank^-exponent.")
    user_activity_sigma: float = Field(1.0, ge=0, description="Log-normal spread of how often users come back.")
    session_mean_events: float = Field(6.0, ge=1, description="Mean events per session, funnel events included.")
    view_gap_mean_s: float = Field(30.0, ge=0, description="Mean think time between views in a session.")
    funnel_gap_mean_s: float = Field(15.0, ge=0, description="Mean delay from a view to its cart, and on to purchase.")
    explore_prob: float = Field(0.1, ge=0, le=1, description="Share of sessions in a random category.")
    cross_category_prob: float = Field(0.05, ge=0, le=1, description="Share of views that wander off the category.")
    drift_prob: float = Field(0.05, ge=0, le=1, description="Per-session chance the favourite category changes.")
    malformed_share: float = Field(0.0, ge=0, lt=1, description="Share of `iter_messages` output that is invalid.")
    start_ts_ms: int = Field(1_767_225_600_000, ge=788_918_400_000, description="First event time (>= 1995).")
    events_per_second: float = Field(50.0, gt=0, description="Mean event rate of the timestamps.")
    funnel: Funnel = Funnel()

    @model_validator(mode="after")
    def _every_category_has_items(self) -> SyntheticConfig:
        if self.n_items < self.n_categories:
            raise ValueError(f"n_items ({self.n_items}) must be >= n_categories ({self.n_categories})")
        return self


# --- the catalogue ---------------------------------------------------------------------
def _rng(config: SyntheticConfig, stream: int, *more: int) -> np.random.Generator:
    """Independent random streams per purpose, so changing one part never shifts another."""
    return np.random.default_rng([config.seed, stream, *more])


def item_category(config: SyntheticConfig) -> np.ndarray:
    """Category of every item (int, index = item number); every category has items."""
    return _rng(config, 1).permutation(np.arange(config.n_items) % config.n_categories)


def item_popularity(config: SyntheticConfig) -> np.ndarray:
    """Sampling weight of every item (sums to 1): Zipf over a random permutation of the items."""
    ranks = _rng(config, 2).permutation(config.n_items) + 1
    weights = ranks.astype(np.float64) ** -config.zipf_exponent
    return weights / weights.sum()


def item_price(config: SyntheticConfig) -> np.ndarray:
    """Price of every item in cents-rounded currency units, log-normal like real shop prices."""
    prices = np.round(_rng(config, 3).lognormal(3.0, 1.0, config.n_items), 2)
    return np.clip(prices, 0.99, 5_000.0)


@dataclass(frozen=True)
class _Catalogue:
    """Items grouped by category with cumulative popularity, for vectorised sampling within a category."""

    by_category: np.ndarray  # item numbers, sorted by category
    offsets: np.ndarray  # by_category[offsets[c]:offsets[c+1]] are category c's items
    cum: np.ndarray  # c + cumulative within-category popularity, increasing over the whole array
    category_mass: np.ndarray  # total popularity of each category

    @classmethod
    def build(cls, config: SyntheticConfig) -> _Catalogue:
        cats, pop = item_category(config), item_popularity(config)
        order = np.argsort(cats, kind="stable")
        counts = np.bincount(cats, minlength=config.n_categories)
        offsets = np.r_[0, np.cumsum(counts)]
        mass = np.bincount(cats, weights=pop, minlength=config.n_categories)
        within = pop[order] / mass[cats[order]]
        total = np.cumsum(within)
        seg_cum = total - np.repeat(total[offsets[:-1]] - within[offsets[:-1]], counts)  # restarts per category
        return cls(order, offsets, cats[order] + seg_cum, mass / mass.sum())

    def draw(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One item per entry of `categories`, by popularity within it; `u` are uniforms in [0, 1)."""
        idx = np.searchsorted(self.cum, categories + u, side="right")
        # c + u can round up to c + 1 for u within an ulp of 1; stay inside the category.
        idx = np.minimum(idx, self.offsets[categories + 1] - 1)
        return self.by_category[idx]


# --- users -------------------------------------------------------------------------------
_TASTE_WEIGHTS = np.array([[1.0, 0.0, 0.0], [0.7, 0.3, 0.0], [0.6, 0.25, 0.15]])  # by number of liked categories


@dataclass
class _Users:
    """Per-user taste and activity; `primary` (the favourite category) is the part that drifts."""

    activity_cum: np.ndarray  # cumulative, normalised activity weights for choosing who starts a session
    taste_cum: np.ndarray  # (n_users, 3) cumulative weights of favourite slots 0..2
    favourites: np.ndarray  # (n_users, 3) categories; slot 0 is replaced by `primary`
    primary: np.ndarray

    @classmethod
    def build(cls, config: SyntheticConfig, category_mass: np.ndarray) -> _Users:
        rng = _rng(config, 4)
        activity = rng.lognormal(0.0, config.user_activity_sigma, config.n_users)
        n_liked = rng.integers(1, 4, config.n_users)
        # Popular categories have more fans.
        favourites = rng.choice(config.n_categories, size=(config.n_users, 3), p=category_mass)
        taste_cum = np.cumsum(_TASTE_WEIGHTS[n_liked - 1], axis=1)
        taste_cum[:, -1] = 1.0  # exact, so a uniform in [0, 1) always lands in a slot
        return cls(np.cumsum(activity) / activity.sum(), taste_cum, favourites, favourites[:, 0].copy())

    def drift(self, users: np.ndarray, drifts: np.ndarray, new_primary: np.ndarray) -> np.ndarray:
        """Primary category in effect at each session (in order), applying drifts and updating the state.

        Vectorised forward fill: within each user's sessions, the latest drift at
        or before a session sets its primary; without one, the carried state does.
        """
        order = np.argsort(users, kind="stable")
        u, d, new = users[order], drifts[order], new_primary[order]
        idx = np.arange(len(u))
        first = np.r_[True, u[1:] != u[:-1]]
        group_start = np.maximum.accumulate(np.where(first, idx, 0))
        last_drift = np.maximum.accumulate(np.where(d, idx, -1))
        value = np.where(last_drift >= group_start, new[np.maximum(last_drift, 0)], self.primary[u])
        last = np.r_[first[1:], True]
        self.primary[u[last]] = value[last]
        out = np.empty_like(value)
        out[order] = value
        return out


# --- generation ------------------------------------------------------------------------------
Rows = dict[str, np.ndarray]  # columnar events: user, item, etype, ts_ms, session, quantity (0 = none)


@dataclass
class _Generator:
    """The session process, advanced one chunk of sessions at a time."""

    config: SyntheticConfig
    catalogue: _Catalogue
    users: _Users
    rng: np.random.Generator
    t_ms: float = 0.0  # start of the latest session, ms after start_ts_ms
    seq: int = 0  # events generated so far (generation order, the tie-break for equal timestamps)
    sessions: int = 0

    def chunk(self, n_sessions: int) -> tuple[Rows, int]:
        """Events of the next `n_sessions` sessions (in generation order) and the time horizon.

        No later session starts before the horizon, so events up to it are final.
        """
        users, cats, starts = self._sessions(n_sessions)
        view_session, view_t = self._views(cats, starts)
        view_item = self.catalogue.draw(self._wander(cats[view_session]), self.rng.random(len(view_session)))
        rows = self._funnel(view_session, view_t, view_item)
        rows["user"] = users[rows["session"]]
        rows["session"] += self.sessions  # global session number
        self.sessions += n_sessions
        rows["seq"] = self.seq + np.arange(len(rows["ts_ms"]), dtype=np.int64)
        self.seq += len(rows["ts_ms"])
        return rows, self.config.start_ts_ms + int(np.floor(starts[-1]))

    def _sessions(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User, category and start time (ms after start_ts_ms) of the next `n` sessions."""
        c, rng = self.config, self.rng
        users = np.minimum(np.searchsorted(self.users.activity_cum, rng.random(n), side="right"), c.n_users - 1)
        primary = self.users.drift(users, rng.random(n) < c.drift_prob, rng.integers(0, c.n_categories, n))
        slot = np.minimum((rng.random(n)[:, None] >= self.users.taste_cum[users]).sum(axis=1), 2)
        cats = np.where(slot == 0, primary, self.users.favourites[users, slot])
        cats = np.where(rng.random(n) < c.explore_prob, rng.integers(0, c.n_categories, n), cats)
        # Poisson session arrivals at the rate that gives `events_per_second` events on average.
        gaps = rng.exponential(1000.0 * c.session_mean_events / c.events_per_second, n)
        starts = self.t_ms + np.cumsum(gaps)
        self.t_ms = float(starts[-1])
        return users.astype(np.int32), cats, starts

    def _views(self, cats: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Session index and time of every view; views in a session are spaced by think time."""
        f = self.config.funnel
        events_per_view = 1 + f.view_to_cart + f.view_to_cart * f.cart_to_purchase
        extra = max(self.config.session_mean_events / events_per_view - 1.0, 0.0)
        n_views = 1 + self.rng.poisson(extra, len(cats))
        session = np.repeat(np.arange(len(cats)), n_views)
        gaps = self.rng.exponential(1000.0 * self.config.view_gap_mean_s, len(session))
        first = np.cumsum(n_views) - n_views
        gaps[first] = 0.0  # a session starts with its first view
        offsets = np.cumsum(gaps)
        # Bracketed so the in-session offset is exactly >= 0: no event may precede its session's start,
        # which the streaming merge in `_generate` relies on.
        return session, starts[session] + (offsets - offsets[first][session])

    def _wander(self, cats: np.ndarray) -> np.ndarray:
        """A few views leave the session's category, so sessions are mostly, not perfectly, on topic."""
        c = self.config
        wander = self.rng.random(len(cats)) < c.cross_category_prob
        return np.where(wander, self.rng.integers(0, c.n_categories, len(cats)), cats)

    def _funnel(self, session: np.ndarray, view_t: np.ndarray, item: np.ndarray) -> Rows:
        """Expand views into view / add_to_cart / purchase events; a purchase needs a cart first."""
        f, rng, n = self.config.funnel, self.rng, len(session)
        cart = rng.random(n) < f.view_to_cart
        bought = cart & (rng.random(n) < f.cart_to_purchase)
        delays = rng.exponential(1000.0 * self.config.funnel_gap_mean_s, (2, n))
        quantity = rng.geometric(0.75, n).astype(np.int32)
        per_view = 1 + cart.astype(np.int64) + bought
        view = np.repeat(np.arange(n), per_view)
        step = np.arange(len(view)) - (np.cumsum(per_view) - per_view)[view]
        t = view_t[view] + delays[0][view] * (step >= 1) + delays[1][view] * (step >= 2)
        return {
            "item": item[view].astype(np.int32),
            "etype": step.astype(np.int8),
            "ts_ms": self.config.start_ts_ms + np.floor(t).astype(np.int64),
            "session": session[view].astype(np.int64),
            "quantity": np.where(step == 2, quantity[view], 0).astype(np.int32),
        }


def _take(rows: Rows, index: np.ndarray | slice) -> Rows:
    return {k: v[index] for k, v in rows.items()}


def _concat(parts: list[Rows]) -> Rows:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _length(rows: Rows) -> int:
    return len(next(iter(rows.values())))


def _generate(config: SyntheticConfig) -> Iterator[Rows]:
    """The first `n_events` events of an endless time-ordered stream (ties in generation order), in chunks.

    Cutting by time rather than by session keeps the event rate even up to the
    end, and makes a shorter stream a prefix of a longer one with the same seed.
    Events that a later session may still overtake wait in a small buffer (those
    of the sessions running at the chunk boundary).
    """
    catalogue = _Catalogue.build(config)
    gen = _Generator(config, catalogue, _Users.build(config, catalogue.category_mass), _rng(config, 0))
    pending: Rows | None = None
    remaining = config.n_events
    while remaining > 0:
        rows, horizon = gen.chunk(SESSIONS_PER_CHUNK)
        pending = rows if pending is None else _concat([pending, rows])
        pending = _take(pending, np.lexsort((pending["seq"], pending["ts_ms"])))
        cut = min(int(np.searchsorted(pending["ts_ms"], horizon, side="right")), remaining)
        if cut:
            yield _take(pending, slice(0, cut))
            remaining -= cut
        pending = _take(pending, slice(cut, None))


def _rechunk(chunks: Iterable[Rows], size: int) -> Iterator[Rows]:
    """The same rows regrouped into chunks of exactly `size` (the last may be shorter).

    Concatenates once per incoming chunk, then hands out views, so small sizes stay linear.
    """
    buffer: list[Rows] = []
    held = 0
    for rows in chunks:
        buffer.append(rows)
        held += _length(rows)
        if held < size:
            continue
        merged, full = _concat(buffer), held - held % size
        for start in range(0, full, size):
            yield _take(merged, slice(start, start + size))
        buffer, held = ([_take(merged, slice(full, None))], held - full) if held > full else ([], 0)
    if held:
        yield _concat(buffer)


def _blocks(config: SyntheticConfig) -> Iterator[tuple[int, Rows]]:
    """The stream in position blocks of BLOCK rows: (block number, rows with their stream position `pos`)."""
    for block, rows in enumerate(_rechunk(_generate(config), BLOCK)):
        rows["pos"] = block * BLOCK + np.arange(_length(rows), dtype=np.int64)
        yield block, rows


# --- malformed messages ------------------------------------------------------------------
# Kind -> the reason `validate_event` gives under default settings.
MALFORMED_KINDS: dict[str, RejectReason] = {
    "truncated_json": "invalid_json",
    "json_array": "not_an_object",
    "missing_field": "invalid_field",
    "numeric_event_id": "invalid_field",
    "control_character": "invalid_field",
    "unknown_event_type": "unknown_event_type",
    "future_ts": "ts_out_of_range",
    "ancient_ts": "ts_out_of_range",
    "oversized": "too_large",
    "raw_user_id": "not_pseudonymised",
}
_KIND_NAMES = tuple(MALFORMED_KINDS)
_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
_ANCIENT_MS = 631_152_000_000  # 1990-01-01


def _malformed_count(rng: np.random.Generator, share: float) -> int:
    """How many of a full block's positions are malformed: the first draw of the block's generator."""
    return int(rng.binomial(BLOCK, share)) if share > 0 else 0


def _malformed_in_block(config: SyntheticConfig, block: int, length: int) -> dict[int, str]:
    """Offsets below `length` within the block that carry a malformed message, and the kind of each.

    Drawn for the full block whatever its length, so a position's fate does not
    depend on where the stream ends (a shorter stream is a prefix of a longer one).
    """
    rng = _rng(config, 5, block)
    k = _malformed_count(rng, config.malformed_share)
    if k == 0:
        return {}
    offsets = rng.choice(BLOCK, k, replace=False)
    kinds = rng.integers(0, len(_KIND_NAMES), k)
    return {int(o): _KIND_NAMES[kind] for o, kind in zip(offsets, kinds, strict=True) if o < length}


def n_valid_events(config: SyntheticConfig) -> int:
    """Valid events in the stream: the rows of `iter_batches`, the accepted messages of `iter_messages`.

    Cheap: one random draw per 65,536 events (one small sample for the last, partial block);
    no events are generated.
    """
    full, rest = divmod(config.n_events, BLOCK)
    bad = sum(_malformed_count(_rng(config, 5, b), config.malformed_share) for b in range(full))
    if rest:
        bad += len(_malformed_in_block(config, full, rest))
    return config.n_events - bad


def _corrupt(kind: str, event: dict, wire: bytes, raw_user: str) -> bytes:
    """A malformed variant of a valid event, of the given kind."""
    if kind == "truncated_json":
        return wire[: len(wire) // 2]
    if kind == "json_array":
        return b"[" + wire + b"]"
    bad = dict(event)
    if kind == "missing_field":
        del bad["item_id"]
    elif kind == "numeric_event_id":
        bad["event_id"] = int(event["event_id"].rsplit("-", 1)[1])
    elif kind == "control_character":
        bad["item_id"] = event["item_id"].replace("-", "-\n", 1)
    elif kind == "unknown_event_type":
        bad["event_type"] = "wishlist"
    elif kind == "future_ts":
        bad["ts"] = _FUTURE_MS
    elif kind == "ancient_ts":
        bad["ts"] = _ANCIENT_MS
    elif kind == "oversized":
        bad["session_id"] = "x" * 20_000  # over the 16 KiB default limit
    elif kind == "raw_user_id":
        bad["user_id"] = raw_user
    return json.dumps(bad, separators=(",", ":")).encode()


# --- output ------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _pseudonyms(n_users: int, key: bytes) -> tuple[str, ...]:
    """All users' pseudonyms, computed once (about 1 s per million users)."""
    return tuple(pseudonymise(f"user-{i}", key) for i in range(n_users))


@dataclass(frozen=True)
class _Ids:
    """String forms of users, items and prices, built once per stream, so per-event work is a `take`."""

    users: pa.Array
    user_keys: tuple[bytes, ...]
    items: pa.Array
    price_json: pa.Array  # ',"price":12.5' per item
    prices: np.ndarray

    @classmethod
    def build(cls, config: SyntheticConfig, key: bytes | None) -> _Ids:
        key = key if key is not None else get_settings().pseudonym_key_bytes()
        users = _pseudonyms(config.n_users, key)
        prices = item_price(config)
        # repr() of a float is its shortest round-trip form, which is also what pydantic writes.
        price_json = pa.array([f',"price":{float(p)!r}' for p in prices])
        items = pa.array([f"item-{j}" for j in range(config.n_items)])
        return cls(pa.array(users), tuple(u.encode() for u in users), items, price_json, prices)


def _digits(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _string_columns(config: SyntheticConfig, rows: Rows, ids: _Ids) -> dict[str, pa.Array]:
    """The string fields of each event, vectorised in Arrow."""
    return {
        "event_id": pc.binary_join_element_wise(f"syn-{config.seed}-", _digits(rows["pos"]), ""),
        "user_id": ids.users.take(rows["user"]),
        "item_id": ids.items.take(rows["item"]),
        "event_type": pa.array(EVENT_TYPES).take(rows["etype"]),
        "session_id": pc.binary_join_element_wise(f"syn-{config.seed}-s", _digits(rows["session"]), ""),
    }


def _record_batch(config: SyntheticConfig, rows: Rows, ids: _Ids) -> pa.RecordBatch:
    text, etype = _string_columns(config, rows, ids), rows["etype"]
    return pa.RecordBatch.from_arrays(
        [
            *(text[k] for k in ("event_id", "user_id", "item_id", "event_type")),
            pa.array(rows["ts_ms"] * 1000, type=pa.timestamp("us", tz="UTC")),
            text["session_id"],
            pa.array(rows["quantity"], mask=rows["quantity"] == 0, type=pa.int32()),
            pa.array(ids.prices[rows["item"]], mask=etype == 0, type=pa.float64()),
            pa.array(np.full(len(etype), SCHEMA_VERSION, np.int32)),
        ],
        schema=BATCH_SCHEMA,
    )


def _valid_rows(config: SyntheticConfig) -> Iterator[Rows]:
    """Rows of the valid positions of the stream."""
    for block, rows in _blocks(config):
        bad = _malformed_in_block(config, block, _length(rows))
        if bad:
            keep = np.ones(_length(rows), bool)
            keep[list(bad)] = False
            rows = _take(rows, keep)
        yield rows


def iter_batches(
    config: SyntheticConfig, batch_size: int = 100_000, key: bytes | None = None
) -> Iterator[pa.RecordBatch]:
    """The valid events as Arrow batches (schema `BATCH_SCHEMA`), for bulk backfill into the bronze table.

    Yields `n_valid_events(config)` rows in total (= `n_events` when
    `malformed_share` is 0): exactly the events `iter_messages` gives as valid
    messages, in the same order. `key` is the pseudonym key (None: the settings' key).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    ids = _Ids.build(config, key)
    for rows in _rechunk(_valid_rows(config), batch_size):
        yield _record_batch(config, rows, ids)


def _wire(config: SyntheticConfig, rows: Rows, ids: _Ids) -> list[bytes]:
    """`Event.to_wire()` of each event, built column-wise: same field order, omissions and number format."""
    text, etype = _string_columns(config, rows, ids), rows["etype"]
    price = ids.price_json.take(rows["item"])
    purchase = pc.binary_join_element_wise(',"quantity":', _digits(rows["quantity"]), price, "")
    tail = pc.if_else(pa.array(etype == 2), purchase, pc.if_else(pa.array(etype == 1), price, pa.scalar("")))
    parts = [
        '{"event_id":"',
        text["event_id"],
        '","user_id":"',
        text["user_id"],
        '","item_id":"',
        text["item_id"],
        '","event_type":"',
        text["event_type"],
        '","ts":',
        _digits(rows["ts_ms"]),
        ',"session_id":"',
        text["session_id"],
        '"',
        tail,
        f',"schema_version":{SCHEMA_VERSION}}}',
    ]
    return pc.binary_join_element_wise(*parts, "").cast(pa.binary()).to_pylist()


def _block_messages(config: SyntheticConfig, block: int, rows: Rows, ids: _Ids) -> list[tuple[bytes, bytes]]:
    values = _wire(config, rows, ids)
    users = rows["user"].tolist()
    for offset, kind in _malformed_in_block(config, block, len(values)).items():
        values[offset] = _corrupt(kind, json.loads(values[offset]), values[offset], f"user-{users[offset]}")
    return list(zip([ids.user_keys[u] for u in users], values, strict=True))


def iter_messages(config: SyntheticConfig, key: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(Kafka key, value) pairs for replay into the `events` topic: exactly `n_events` messages.

    Valid values equal `Event.to_wire()` of the event; a `malformed_share` of
    positions instead carry a malformed message (see `MALFORMED_KINDS`) that
    `validate_event` rejects. The key is always the user's pseudonym, so a bad
    message lands on the same partition as that user's good ones.
    """
    ids = _Ids.build(config, key)
    for block, rows in _blocks(config):
        yield from _block_messages(config, block, rows, ids)
