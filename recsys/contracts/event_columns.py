"""A micro-batch of raw events validated at once, into columns: the speed layer's validation.

`validate_event` checks one record with pydantic and Python: ~5 µs per event, as much as the rest of the
speed layer's own work per event. Here the common record (compact ASCII JSON with an integer `ts`, as
`Event.to_wire` writes it) is parsed for the whole batch by one call into pyarrow's JSON reader, and the
contract's checks run over the batch's columns. Every record this fast path does not accept goes through
`validate_event`, which owns every rejection and its reason. So the fast path only has to accept nothing that
`validate_event` refuses, with the same values; it may send a valid record the slow way (non-ASCII ids, escapes,
an ISO `ts`), which then costs what it did before. tests/unit/test_event_columns.py compares the two on a corpus.

Why each fast-path condition is enough:
- bytes 0x20..0x7e only, no backslash: no escapes, so a decoded string is its bytes (no control characters,
  lengths in bytes are lengths in characters), and no newline inside a record (one line per record);
- a record starts with '{' and ends with '}', and the batch parses to exactly one row per line: one object per
  record (pyarrow reads several objects on a line, or `null`, as rows of their own; and pyarrow 26 crashes the
  process on a line that is only `null`, which this keeps out: the mutation test meets one without it);
- the reader's explicit schema refuses unknown and repeated fields and any value of another JSON type (a string
  for a number, 3.0 for an integer, true for either) as an error: the batch is then split in halves until the
  records that fail are single, and those go the slow way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from recsys.contracts.events import (
    EPOCH,
    ITEM_UPDATES,
    SCHEMA_VERSION,
    Event,
    Rejection,
    ts_to_ms,
    validate_event,
    validate_events,
)
from recsys.privacy import PSEUDONYM_RE
from recsys.settings import Settings, get_settings

# The JSON type the fast path takes for each of the Event's fields (anything else goes the slow way): integers
# for `ts` (epoch ms, as `Event.to_wire` writes it), `quantity` and `schema_version`, a number for `price`, and a
# string for the rest (the ids and the event type).
_NUMBERS = {"ts": pa.int64(), "quantity": pa.int64(), "price": pa.float64(), "schema_version": pa.int64()}
_SCHEMA = pa.schema([(name, _NUMBERS.get(name, pa.string())) for name in Event.model_fields])
_REQUIRED = ("event_id", "user_id", "item_id", "event_type", "ts")
_OPTIONAL_IDS = ("session_id", "request_id")
# Every field is checked below: a new Event field needs its type above and its check in `_passes_checks`.
assert set(Event.model_fields) == {*_REQUIRED, *_OPTIONAL_IDS, *_NUMBERS}
_PARSE = pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="error")
_BACKSLASH, _OPEN, _CLOSE = ord("\\"), ord("{"), ord("}")
_PLAIN_BYTES = bytes(b for b in range(0x20, 0x7F) if b != _BACKSLASH)
# Below this many records, `validate_events` one at a time costs less than the reader's and the columns' fixed
# costs (~0.7 ms a batch; ~4.7 µs per record one at a time against ~1.8 in columns: measured at 7 to 5,000).
BATCH_MIN = 256
# Records per read: the reader's fixed cost (~0.1 ms) spread over many, and a refused record costs its chunk only.
PARSE_CHUNK = 2048
# A refused run is halved down to this many records, which then go the slow way with the refused one(s).
SLOW_PIECE = 16
_QUANTITY = Event.model_fields["quantity"].metadata  # ge / le, read below so the bounds live in Event only
_PRICE = Event.model_fields["price"].metadata


def _bound(metadata: list, name: str) -> float:
    return next(getattr(m, name) for m in metadata if getattr(m, name, None) is not None)


@dataclass(frozen=True)
class EventColumns:
    """The accepted events of a batch, in input order: the fields the speed layer reads, one list per field."""

    positions: np.ndarray  # each accepted event's index in the input
    user_id: list[str]
    item_id: list[str]
    event_type: list[str]
    ts_ms: list[int]

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, rows: np.ndarray) -> EventColumns:
        """The events at `rows` (indices into these columns)."""
        return EventColumns(
            self.positions[rows],
            [self.user_id[i] for i in rows],
            [self.item_id[i] for i in rows],
            [self.event_type[i] for i in rows],
            [self.ts_ms[i] for i in rows],
        )

    @staticmethod
    def of(events: Sequence[Event]) -> EventColumns:
        """Columns of already validated events (positions 0..n-1)."""
        return EventColumns(
            np.arange(len(events)),
            [e.user_id for e in events],
            [e.item_id for e in events],
            [e.event_type for e in events],
            [e.ts_ms for e in events],
        )


@dataclass(frozen=True)
class ValidatedBatch:
    events: EventColumns
    rejections: dict[int, Rejection]  # input index -> why (every input index is in exactly one of the two)


def validate_batch(
    raws: Sequence[bytes],
    settings: Settings | None = None,
    *,
    require_pseudonym: bool = True,
    now: datetime | None = None,
) -> ValidatedBatch:
    """`validate_event` of each record of a batch, as columns: the same verdicts, the same reasons."""
    s = settings or get_settings()
    now = now or datetime.now(UTC)  # one clock reading per batch, not per event
    if len(raws) < BATCH_MIN:
        return _one_at_a_time(raws, s, require_pseudonym, now)
    n = len(raws)
    user, item, kind = np.empty(n, object), np.empty(n, object), np.empty(n, object)
    ts = np.zeros(n, np.int64)
    accepted = np.zeros(n, bool)
    candidates = _plain_records(raws, s)
    for start, table in _parse([raws[i] for i in candidates]):
        rows = candidates[start : start + table.num_rows]
        ok = _passes_checks(table, s, require_pseudonym, now)
        at = rows[ok]
        user[at] = table.column("user_id").filter(ok).to_numpy(zero_copy_only=False)
        item[at] = table.column("item_id").filter(ok).to_numpy(zero_copy_only=False)
        kind[at] = table.column("event_type").filter(ok).to_numpy(zero_copy_only=False)
        ts[at] = table.column("ts").filter(ok).to_numpy()
        accepted[at] = True
    rejections: dict[int, Rejection] = {}
    for i in np.flatnonzero(~accepted).tolist():
        result = validate_event(raws[i], s, require_pseudonym=require_pseudonym, now=now)
        if isinstance(result, Rejection):
            rejections[i] = result
        else:
            user[i], item[i], kind[i], ts[i] = result.user_id, result.item_id, result.event_type, result.ts_ms
            accepted[i] = True
    positions = np.flatnonzero(accepted)
    events = EventColumns(
        positions, user[positions].tolist(), item[positions].tolist(), kind[positions].tolist(), ts[positions].tolist()
    )
    return ValidatedBatch(events, rejections)


def _one_at_a_time(raws: Sequence[bytes], s: Settings, require_pseudonym: bool, now: datetime) -> ValidatedBatch:
    """`validate_batch` by `validate_events`: cheaper for a short batch than the columns' fixed costs."""
    positions: list[int] = []
    users: list[str] = []
    items: list[str] = []
    kinds: list[str] = []
    times: list[int] = []
    rejections: dict[int, Rejection] = {}
    for i, result in enumerate(validate_events(raws, s, require_pseudonym=require_pseudonym, now=now)):
        if isinstance(result, Rejection):
            rejections[i] = result
            continue
        positions.append(i)
        users.append(result.user_id)
        items.append(result.item_id)
        kinds.append(result.event_type)
        times.append(result.ts_ms)
    return ValidatedBatch(EventColumns(np.array(positions, np.int64), users, items, kinds, times), rejections)


def _plain_records(raws: Sequence[bytes], s: Settings) -> np.ndarray:
    """Indices of the records in the fast path's form (see the module's docstring), over the joined batch."""
    if not all(type(r) is bytes for r in raws):
        return np.array([i for i, r in enumerate(raws) if type(r) is bytes and _plain(r, s)], np.int64)
    lengths = np.fromiter(map(len, raws), np.int64, len(raws))
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    ends = starts + lengths
    joined = b"\n".join(raws)
    ok = (lengths > 1) & (lengths <= s.max_event_bytes)
    if len(joined.translate(None, _PLAIN_BYTES)) > len(raws) - 1:  # not just the separators: find whose they are
        buffer = np.frombuffer(joined, np.uint8)
        outside = (buffer < 0x20) | (buffer > 0x7E) | (buffer == _BACKSLASH)
        outside[ends[:-1]] = False
        bad = np.concatenate([[0], np.cumsum(outside)])
        ok &= bad[ends] == bad[starts]
    buffer = np.frombuffer(joined, np.uint8)
    ok[ok] = (buffer[starts[ok]] == _OPEN) & (buffer[ends[ok] - 1] == _CLOSE)
    return np.flatnonzero(ok)


def _plain(raw: bytes, s: Settings) -> bool:
    """`_plain_records` for one record (a batch with a value that is not bytes)."""
    return (
        1 < len(raw) <= s.max_event_bytes
        and raw[0] == _OPEN
        and raw[-1] == _CLOSE
        and b"\\" not in raw
        and all(0x20 <= b <= 0x7E for b in raw)
    )


def _parse(records: list[bytes]) -> list[tuple[int, pa.Table]]:
    """(index of its first record, table) of each run of records pyarrow reads one row per record, a chunk of
    PARSE_CHUNK at a time; the records it refuses are left out, for the slow path."""
    out: list[tuple[int, pa.Table]] = []
    for start in range(0, len(records), PARSE_CHUNK):
        chunk = records[start : start + PARSE_CHUNK]
        table = _read(chunk)
        out += [(start, table)] if table is not None else _split(chunk, start)
    return out


def _split(records: list[bytes], start: int) -> list[tuple[int, pa.Table]]:
    """A refused run read again in halves, down to SLOW_PIECE records (the slow path's); where both halves are
    refused, refusals are dense (a producer writing `ts` as text, say) and all of it goes the slow way: a batch
    of them costs ~2 extra reads, not one per level of halving."""
    if len(records) <= SLOW_PIECE:
        return []
    half = len(records) // 2
    pieces = [(start, records[:half]), (start + half, records[half:])]
    tables = [_read(piece) for _, piece in pieces]
    if all(table is None for table in tables):
        return []
    out: list[tuple[int, pa.Table]] = []
    for (at, piece), table in zip(pieces, tables, strict=True):
        out += [(at, table)] if table is not None else _split(piece, at)
    return out


def _read(records: list[bytes]) -> pa.Table | None:
    """The records as one table of a row each, or None where pyarrow refuses them (or reads another count)."""
    data = b"\n".join(records)
    # One block, one thread: the speed layer's other threads (kafka-python's I/O) and the broker share two cores.
    read = pj.ReadOptions(use_threads=False, block_size=len(data) + 1)
    try:
        table = pj.read_json(pa.BufferReader(data), read_options=read, parse_options=_PARSE)
    except (pa.ArrowException, ValueError):
        return None
    return table if table.num_rows == len(records) else None


def _passes_checks(table: pa.Table, s: Settings, require_pseudonym: bool, now: datetime) -> np.ndarray:
    """Per row, whether `validate_event` accepts it, for rows in the fast path's form (ASCII, no escapes).

    numpy over the columns' buffers where it can: a pyarrow compute call costs ~5-25 µs however short the batch.
    """
    table = table.combine_chunks()
    column = {name: table.column(name).chunk(0) for name in table.column_names}
    present = {name: np.asarray(arr.is_valid()) for name, arr in column.items()}
    m = s.max_id_length
    ok = present["ts"] & present["event_type"]
    for name in (*_REQUIRED[:3], *_OPTIONAL_IDS):
        length = _lengths(column[name])
        ok &= ((length >= 1) & (length <= m)) | (~present[name] if name in _OPTIONAL_IDS else False)
    kinds = pc.dictionary_encode(column["event_type"])
    named = kinds.dictionary.to_pylist()
    code = np.asarray(kinds.indices.fill_null(0))
    interaction = np.array([k in s.event_weights for k in named] or [False])[code]
    item_update = np.array([k in ITEM_UPDATES for k in named] or [False])[code]
    bare = ~(present["quantity"] | present["price"] | present["session_id"] | present["request_id"])
    ok &= interaction | (item_update & bare)
    quantity = np.asarray(column["quantity"].fill_null(_bound(_QUANTITY, "ge")))
    ok &= (quantity >= _bound(_QUANTITY, "ge")) & (quantity <= _bound(_QUANTITY, "le"))
    # NaN compares false (rejected, as `_finite` does); infinities are out of range.
    price = np.asarray(column["price"].fill_null(_bound(_PRICE, "ge")))
    ok &= (price >= _bound(_PRICE, "ge")) & (price <= _bound(_PRICE, "le"))
    ok &= np.asarray(column["schema_version"].fill_null(SCHEMA_VERSION)) == SCHEMA_VERSION
    # `ts` in epoch ms from the first day of min_event_year to now + the allowed skew (integer ms: ts > limit
    # exactly when ts_ms > floor(limit in ms)); both ends are in datetime's range, so no ts here overflows.
    earliest = ts_to_ms(datetime(s.min_event_year, 1, 1, tzinfo=UTC))
    latest = (now + timedelta(seconds=s.max_future_skew_s) - EPOCH) // timedelta(milliseconds=1)
    ts = np.asarray(column["ts"].fill_null(earliest - 1))
    ok &= (ts >= earliest) & (ts <= latest)
    if require_pseudonym:
        ok &= np.asarray(pc.match_substring_regex(column["user_id"], PSEUDONYM_RE.pattern).fill_null(False))
    return ok


def _lengths(strings: pa.Array) -> np.ndarray:
    """Byte length of each string (0 for a null), from the array's offsets."""
    offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset : strings.offset + len(strings) + 1]
    return np.diff(offsets)
