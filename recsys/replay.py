"""Replay a source of events into the `events` topic at a given rate, and read a topic back.

The sources (MovieLens-100K, the synthetic stream) yield (key, value) pairs that
are already pseudonymised and serialised; this module only paces and produces them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from recsys.contracts.events import Event, control_kind, validate_event
from recsys.io.kafka import count_messages, producer, read_to_end
from recsys.protocol import Topics
from recsys.settings import Settings, get_settings

Message = tuple[bytes, bytes]


@dataclass
class ReplayReport:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    per_partition: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def paced(messages: Iterable[Message], rate: float) -> Iterator[Message]:
    """Yield messages no faster than `rate` per second (0 = as fast as possible)."""
    if rate <= 0:
        yield from messages
        return
    start: float | None = None
    for n, message in enumerate(messages):
        # The schedule starts at the first message, not before it: a source that takes its time to yield the
        # first one (the synthetic stream builds its ids and first block for ~1 s) would otherwise be "behind" by
        # then and sent in one burst of rate x that time (the ~1 s pause, then a burst, of docs/speed.md's Round 3).
        if start is None:
            start = time.monotonic()
        # Sleep only when ahead of schedule; checking every message keeps bursts small.
        ahead = start + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        yield message


def replay(
    messages: Iterable[Message],
    *,
    rate: float = 0.0,
    total: int | None = None,
    topic: str = Topics.EVENTS,
    settings: Settings | None = None,
    progress: bool = True,
) -> ReplayReport:
    """Produce every message to `topic`; returns what the broker acknowledged."""
    report = ReplayReport()
    prod = producer(settings)
    started = time.monotonic()

    def ok(meta) -> None:
        report.sent += 1
        report.per_partition[meta.partition] += 1

    def failed(exc: BaseException) -> None:
        report.failed += 1
        report.errors[type(exc).__name__] += 1

    try:
        with tqdm(total=total, unit="ev", disable=not progress, desc=f"-> {topic}", smoothing=0.1) as bar:
            for key, value in paced(messages, rate):
                prod.send(topic, key=key, value=value).add_callback(ok).add_errback(failed)
                bar.update()
    finally:
        prod.flush()
        prod.close()
        report.seconds = time.monotonic() - started
    return report


@dataclass
class TopicSummary:
    messages: int = 0
    valid: int = 0
    rejected: Counter = field(default_factory=Counter)
    users: set[str] = field(default_factory=set)
    items: set[str] = field(default_factory=set)
    event_types: Counter = field(default_factory=Counter)
    event_ids: set[str] = field(default_factory=set)
    control: int = 0  # control records (FORGET markers), not events

    @property
    def duplicate_event_ids(self) -> int:
        return self.valid - len(self.event_ids)


def read_topic(topic: str = Topics.EVENTS, settings: Settings | None = None, progress: bool = True) -> TopicSummary:
    """Read `topic` from its beginning to its current end (no consumer group) and validate every event."""
    s = settings or get_settings()
    summary = TopicSummary()
    total = count_messages([topic], s)[topic]
    with tqdm(total=total, unit="ev", disable=not progress) as bar:
        for records in read_to_end(topic, s):
            for record in records:
                if control_kind(record.headers) is not None:  # an instruction (e.g. FORGET), not an event
                    summary.control += 1
                    continue
                _tally(summary, validate_event(record.value, s))
            bar.update(len(records))
    return summary


def _tally(summary: TopicSummary, result) -> None:
    summary.messages += 1
    if isinstance(result, Event):
        summary.valid += 1
        summary.users.add(result.user_id)
        summary.items.add(result.item_id)
        summary.event_types[result.event_type] += 1
        summary.event_ids.add(result.event_id)
    else:
        summary.rejected[result.reason] += 1
