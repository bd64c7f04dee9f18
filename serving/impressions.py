"""Impressions: what each answer showed, produced to `impressions` without holding the answer back.

Every `/recommend` answer (single or batch) carries a fresh `request_id`; `shown` hands the answer's
facts to a bounded in-memory buffer (one append under a lock, on the request's path) and a background
thread produces them, many `Impression`s per message (`Impressions`, up to IMPRESSIONS_MAX_BYTES: one
Kafka send per answer would cost more CPU than the answer). The archiver writes them to the
`impressions` Delta table exactly once, like bronze (jobs/archiver.py).

What can be lost, and is counted in `serving_impressions_lost_total{reason}` (the answer goes out all
the same): an answer arriving while the buffer is full (`buffer_full`: Kafka away long enough to fill
it), a send Kafka refused or never acknowledged (`kafka`), and, uncounted, what is in the buffer when
the process is killed. That last window is closed for the answers that matter: `POST /events` with a
`request_id` first waits (`flush`, bounded) until every impression handed over before it is
acknowledged, so a click acknowledged by this process never points at a list the log does not have.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from recsys.ab_split import CHAMPION
from recsys.contracts.events import IMPRESSIONS_MAX_BYTES, Impression, Impressions
from recsys.io.kafka import producer
from recsys.protocol import Topics
from recsys.settings import Settings
from serving import metrics

log = logging.getLogger("serving.impressions")
RECONNECT_S = 2.0  # between attempts to create the producer while the broker is away
SEND_BLOCK_MS = 1_000  # longest one send may wait for metadata or buffer space (Kafka away): then it is lost


class Shown(NamedTuple):
    request_id: str
    user_id: str
    model_version: str
    items: Sequence[str]
    surface: str
    shown_at_ms: int
    variant: str  # the A/B arm that answered (recsys.ab_split): "champion" unless a test's challenger did


class ImpressionLog:
    """A bounded buffer of answers shown and the thread that produces them to `impressions`."""

    def __init__(self, settings: Settings, make_producer: Callable[[], KafkaProducer] | None = None) -> None:
        self.s = settings
        self._make_producer = make_producer or (lambda: producer(settings, max_block_ms=SEND_BLOCK_MS))
        self._buffer: deque[Shown] = deque()
        self._changed = threading.Condition()
        self._handed = 0  # answers taken from the buffer and sent (or lost): `flush` waits for a count
        self._taken = 0  # answers put into the buffer
        self._stop = False
        self._producer: KafkaProducer | None = None
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._lost_full = metrics.IMPRESSIONS_LOST.labels("buffer_full")
        self._lost_kafka = metrics.IMPRESSIONS_LOST.labels("kafka")

    def start(self) -> None:
        self._thread.start()

    def shown(
        self,
        request_id: str,
        user_id: str,
        model_version: str,
        items: Sequence[str],
        surface: str,
        variant: str = CHAMPION,
    ) -> None:
        """Log one answer; never blocks on Kafka (a full buffer drops it and counts it)."""
        entry = Shown(request_id, user_id, model_version, items, surface, int(time.time() * 1000), variant)
        with self._changed:
            if len(self._buffer) >= self.s.serving_impressions_buffer:
                self._lost_full.inc()
                return
            self._buffer.append(entry)
            self._taken += 1
            self._changed.notify_all()

    def shown_many(
        self, request_ids: Sequence[str], user_ids: Sequence[str], model_version: str, items: Sequence[Sequence[str]]
    ) -> None:
        """`shown` of each answer of a batch call (surface "batch", the champion's), under one lock and one wake-up
        of the producing thread instead of one per answer; the buffer's limit applies answer by answer as there."""
        now_ms = int(time.time() * 1000)
        entries = [
            Shown(request_id, user_id, model_version, shown, "batch", now_ms, CHAMPION)
            for request_id, user_id, shown in zip(request_ids, user_ids, items, strict=True)
        ]
        with self._changed:
            room = max(0, self.s.serving_impressions_buffer - len(self._buffer))
            if len(entries) > room:
                self._lost_full.inc(len(entries) - room)
                entries = entries[:room]
            self._buffer.extend(entries)
            self._taken += len(entries)
            if entries:
                self._changed.notify_all()

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until every impression logged before this call is acknowledged (or lost); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            target = self._taken
            if not self._changed.wait_for(lambda: self._handed >= target or self._stop, timeout_s):
                return False
        if self._producer is None:
            return True
        try:
            self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError:
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Produce what is buffered (while a producer is there to do it) and stop."""
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        # Without a producer (Kafka away since start) the thread may be stuck creating one: don't wait for it.
        self._thread.join(timeout_s if self._producer is not None else 0.2)
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)

    # --- the producing thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._buffer or self._stop)
                if self._stop and not self._buffer:
                    return
                batch = list(self._buffer)
                self._buffer.clear()
            for message, count in self._messages(batch):
                self._send(message, count)
            with self._changed:
                self._handed += len(batch)
                self._changed.notify_all()

    def _messages(self, batch: list[Shown]) -> list[tuple[bytes, int]]:
        """The answers as `Impressions` messages of at most IMPRESSIONS_MAX_BYTES, with how many each carries."""
        out: list[tuple[bytes, int]] = []
        parts: list[bytes] = []
        size = 0
        for entry in batch:
            one = (
                Impression(
                    request_id=entry.request_id,
                    user_id=entry.user_id,
                    model_version=entry.model_version,
                    variant=entry.variant,
                    surface=entry.surface,  # type: ignore[arg-type]  # the routes pass one of the literals
                    items=list(entry.items),
                    shown_at_ms=entry.shown_at_ms,
                )
                .model_dump_json()
                .encode()
            )
            if parts and size + len(one) + 64 > IMPRESSIONS_MAX_BYTES:
                out.append((Impressions.wire(parts), len(parts)))
                parts, size = [], 0
            parts.append(one)
            size += len(one) + 1
        if parts:
            out.append((Impressions.wire(parts), len(parts)))
        return out

    def _send(self, message: bytes, count: int) -> None:
        prod = self._connected()
        if prod is None:
            self._lost_kafka.inc(count)
            return
        try:
            future = prod.send(Topics.IMPRESSIONS, value=message)
        except KafkaError as e:  # no metadata or no buffer space within SEND_BLOCK_MS
            log.debug("impressions not sent: %s", e)
            self._lost_kafka.inc(count)
            return
        future.add_callback(lambda _: metrics.IMPRESSIONS_LOGGED.inc(count))
        future.add_errback(lambda _: self._lost_kafka.inc(count))

    _next_connect = 0.0

    def _connected(self) -> KafkaProducer | None:
        if self._producer is None and time.monotonic() >= self._next_connect:
            try:
                self._producer = self._make_producer()
            except KafkaError as e:
                log.warning("impressions: no producer yet (%s); answers' impressions are lost meanwhile", e)
                self._next_connect = time.monotonic() + RECONNECT_S
        return self._producer


def new_request_id() -> str:
    """A fresh id for one answer: random, so it says nothing about the user or the time."""
    return uuid.uuid4().hex


def new_request_ids(n: int) -> list[str]:
    """`n` fresh ids as `new_request_id` makes them (the hex of a random UUID version 4), from one read of the
    system's random source: `uuid4` per answer costs more than rendering the answer of a batch call."""
    raw = np.frombuffer(os.urandom(16 * n), np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4, as uuid.UUID(bytes=..., version=4) sets it
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = raw.tobytes().hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]
