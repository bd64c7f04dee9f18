"""The batch validator (recsys.contracts.event_columns) against the contract's own `validate_event`."""

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from recsys.contracts import event_columns
from recsys.contracts.event_columns import validate_batch
from recsys.contracts.events import Event, validate_event
from recsys.privacy import pseudonymise
from recsys.settings import Settings

KEY = b"k" * 32
USER = pseudonymise("alice", KEY)
NOW = datetime(2026, 6, 2, tzinfo=UTC)
NOW_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
S = Settings()
LIMIT_MS = (NOW + timedelta(seconds=S.max_future_skew_s) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    milliseconds=1
)
EARLIEST_MS = int(datetime(S.min_event_year, 1, 1, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(autouse=True)
def columns_however_short(monkeypatch):
    """The columns' path for every batch here (short ones are validated one at a time, by `validate_events`), and
    a refused record alone on the slow path (it takes SLOW_PIECE records with it in production), in chunks of a
    few records (as a batch of thousands is read)."""
    monkeypatch.setattr(event_columns, "BATCH_MIN", 0)
    monkeypatch.setattr(event_columns, "SLOW_PIECE", 1)
    monkeypatch.setattr(event_columns, "PARSE_CHUNK", 32)


def good(**overrides) -> dict:
    event = {"event_id": "e-1", "user_id": USER, "item_id": "i-9", "event_type": "view", "ts": NOW_MS}
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def wire(**overrides) -> bytes:
    return json.dumps(good(**overrides), separators=(",", ":")).encode()


CORPUS: list[bytes] = [
    wire(),
    wire(item_id="i-2", event_type="purchase", session_id="s", quantity=3, price=9.5, request_id="r"),
    json.dumps(good()).encode(),  # spaces after ':' and ','
    b" " + wire() + b" ",
    wire(ts=LIMIT_MS),  # the newest accepted
    wire(ts=LIMIT_MS + 1),
    wire(ts=EARLIEST_MS),  # the oldest accepted
    wire(ts=EARLIEST_MS - 1),
    wire(ts=-5),
    wire(ts=10**20),
    wire(ts=2**63 - 1),
    wire(ts="2026-06-01T10:00:00+00:00"),  # valid, the slow way
    wire(ts="2026-06-01T10:00:00"),
    wire(ts="yesterday"),
    wire(ts=1.5e12),
    wire(ts=True),
    wire(ts=None),
    wire(ts=...),
    wire(user_id="alice"),
    wire(user_id=USER.upper()),
    wire(user_id=USER + "0"),
    wire(user_id=5),
    wire(user_id=None),
    wire(user_id=...),
    wire(item_id=""),
    wire(item_id="x" * S.max_id_length),
    wire(item_id="x" * (S.max_id_length + 1)),
    wire(event_id="e" * (S.max_id_length + 1)),
    wire(session_id="s" * (S.max_id_length + 1)),
    wire(request_id=""),
    wire(session_id=None, request_id=None, quantity=None, price=None),
    wire(item_id="caf\u00e9"),  # valid, the slow way
    json.dumps(good(item_id="caf\u00e9"), ensure_ascii=False).encode(),
    wire(item_id="a\u0001b"),
    wire(item_id="a\u007fb"),
    wire(item_id='a"b'),
    wire(item_id="a\\b"),
    wire(item_id="a\nb"),
    wire(event_type="click"),
    wire(event_type=7),
    wire(event_type="item_sold_out", user_id=pseudonymise("feed", KEY)),
    wire(event_type="item_back"),
    wire(event_type="item_hidden", price=1.0),
    wire(event_type="item_hidden", session_id="s"),
    wire(quantity=0),
    wire(quantity=1),
    wire(quantity=100_000),
    wire(quantity=100_001),
    wire(quantity=3.0),
    wire(quantity=True),
    wire(quantity="3"),
    wire(price=0),
    wire(price=-0.0),
    wire(price=-0.5),
    wire(price=1e9),
    wire(price=1e9 + 1),
    wire(price="9.5"),
    wire(price=float("nan")),
    wire(price=float("inf")),
    wire(price=float("-inf")),
    wire(schema_version=1),
    wire(schema_version=2),
    wire(schema_version=1.0),
    wire(schema_version="1"),
    wire(extra="field"),
    wire()[:-1] + b',"user_id":"' + USER.encode() + b'"}',  # a repeated field
    wire() + wire(),  # two objects in one record
    wire() + b" " + wire(),
    wire()[:-1] + b"}null{}",
    wire()[:-1] + b',"s":{"a":1}}',
    b"{}",
    b"{not json",
    b"\xff\xfe",
    b"[1, 2]",
    b"null",
    b"1",
    b"",
    b" ",
    b"{",
    b"}",
    "\ufeff".encode() + wire(),
    wire(item_id="x" * 20_000),
    wire(event_id="e-2"),
]


def verdicts(results) -> list:
    return [
        (r.user_id, r.item_id, r.event_type, r.ts_ms) if isinstance(r, Event) else (r.reason, r.detail) for r in results
    ]


def batch_verdicts(raws, **kw) -> list:
    batch = validate_batch(raws, S, now=NOW, **kw)
    out: list = [None] * len(raws)
    for k, i in enumerate(batch.events.positions.tolist()):
        out[i] = (batch.events.user_id[k], batch.events.item_id[k], batch.events.event_type[k], batch.events.ts_ms[k])
    for i, rejection in batch.rejections.items():
        assert out[i] is None, "an index is accepted or rejected, not both"
        out[i] = (rejection.reason, rejection.detail)
    return out


@pytest.mark.parametrize("require_pseudonym", [True, False])
def test_a_batch_gets_the_verdicts_and_reasons_of_one_at_a_time(require_pseudonym):
    # Each odd record among plain ones, as in a real batch: refusals sparse enough to be split off one by one.
    raws = [raw for odd in CORPUS for raw in (odd, *(wire(event_id=f"p-{n}") for n in range(31)))]
    one_at_a_time = [validate_event(r, S, now=NOW, require_pseudonym=require_pseudonym) for r in raws]
    assert batch_verdicts(raws, require_pseudonym=require_pseudonym) == verdicts(one_at_a_time)
    odd = one_at_a_time[::32]
    assert 10 <= sum(isinstance(r, Event) for r in odd) < len(CORPUS) - 40  # both verdicts, plenty of each


def test_each_record_alone_gets_the_same_verdict_as_in_the_batch():
    assert [batch_verdicts([r])[0] for r in CORPUS] == batch_verdicts(CORPUS)


def test_mutated_records_get_the_verdicts_of_one_at_a_time():
    rng = random.Random(7)
    base = [
        wire(),
        wire(event_type="purchase", quantity=2, price=3.25, session_id="s-1"),
        wire(event_type="item_sold_out"),
    ]
    alphabet = b'{}[]":,.-+0123456789eE \\nultrafsi_N\x00\x7f\xc3'
    raws = []
    for n in range(3000):
        raw = bytearray(base[n % len(base)])
        for _ in range(rng.randint(1, 3) if n % 7 == 0 else 0):  # sparse: most chunks read, their refusals split
            at = rng.randrange(len(raw))
            match rng.randrange(3):
                case 0:
                    raw[at] = rng.choice(alphabet)
                case 1:
                    del raw[at]
                case _:
                    raw.insert(at, rng.choice(alphabet))
        raws.append(bytes(raw))
    one_at_a_time = [validate_event(r, S, now=NOW) for r in raws]
    assert batch_verdicts(raws) == verdicts(one_at_a_time)
    assert 2000 < sum(isinstance(r, Event) for r in one_at_a_time) < 2900


def test_plain_valid_records_are_not_validated_one_by_one(monkeypatch):
    slow: list[bytes] = []

    def counted(raw, *args, **kwargs):
        slow.append(raw)
        return validate_event(raw, *args, **kwargs)

    monkeypatch.setattr(event_columns, "validate_event", counted)
    plain = [wire(event_id=f"e-{n}", item_id=f"i-{n}") for n in range(50)]
    odd = [wire(ts="2026-06-01T10:00:00+00:00"), wire(user_id="alice")]
    batch = validate_batch(plain[:20] + odd + plain[20:], S, now=NOW)
    assert len(batch.events) == 51 and list(batch.rejections) == [21]
    assert slow == odd  # the two that are not plain valid ones, nothing else
    assert batch.events.item_id == [f"i-{n}" for n in range(20)] + ["i-9"] + [f"i-{n}" for n in range(20, 50)]


def test_records_that_are_not_bytes_take_the_slow_path_with_the_same_verdicts():
    raws = [wire(), wire().decode(), wire(user_id="alice").decode(), "{bad"]
    one_at_a_time = [validate_event(r, S, now=NOW) for r in raws]
    assert batch_verdicts(raws) == verdicts(one_at_a_time)


def test_a_short_batch_validated_one_at_a_time_gets_the_same_verdicts(monkeypatch):
    monkeypatch.setattr(event_columns, "BATCH_MIN", len(CORPUS) + 1)
    assert batch_verdicts(CORPUS) == verdicts([validate_event(r, S, now=NOW) for r in CORPUS])


def test_a_refused_record_sends_few_others_the_slow_way_and_dense_refusals_cost_few_reads(monkeypatch):
    monkeypatch.setattr(event_columns, "SLOW_PIECE", 16)
    monkeypatch.setattr(event_columns, "PARSE_CHUNK", 1024)
    slow: list[bytes] = []
    reads: list[int] = []

    def counted(raw, *args, **kwargs):
        slow.append(raw)
        return validate_event(raw, *args, **kwargs)

    def read(records):
        reads.append(len(records))
        return real_read(records)

    real_read = event_columns._read
    monkeypatch.setattr(event_columns, "validate_event", counted)
    monkeypatch.setattr(event_columns, "_read", read)
    plain = [wire(event_id=f"e-{n}") for n in range(1000)]
    iso = wire(ts="2026-06-01T10:00:00+00:00")
    batch = validate_batch([*plain[:500], iso, *plain[500:]], S, now=NOW)
    assert len(batch.events) == 1001 and iso in slow and len(slow) <= 16
    slow.clear()
    reads.clear()
    text_ts = [wire(event_id=f"e-{n}", ts="2026-06-01T10:00:00+00:00") for n in range(3000)]
    assert len(validate_batch(text_ts, S, now=NOW).events) == 3000
    assert len(slow) == 3000 and sum(reads) <= 2 * 3000  # each chunk read whole, then its two halves
