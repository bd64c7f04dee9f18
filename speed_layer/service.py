"""The speed layer process: `events` -> fold-in -> UP messages on `model-updates`.

One consumer group; instances share the partitions and, since events are keyed
by user, each instance owns its users. Per micro-batch: validate, fold in, publish
the UPs, flush, then commit offsets (at-least-once: an UP is an absolute vector,
so applying it twice changes nothing).

State lives in memory and is rebuilt, never saved: whenever a model is loaded or
partitions are assigned, the consumer seeks to the offsets the model's manifest
says it covers, and replays from there. So a crash, a restart or a new model all
resume from committed state (the model and the log) and lose nothing between the
batch cut-off and now.

A FORGET marker on `events` (recsys.erasure) drops the user's state and their
earlier events of the same batch; a replay meets the marker again.

An A/B test's challenger (RECSYS_AB_CHALLENGER_VERSION) with a real-time state (`Updating`:
ALS, NeuMF, the hybrid) gets a second state, loaded from the model store (published,
challengers or candidates folder; tried again every CHALLENGER_RETRY_S while it is not
there). Each event is validated once and folded into both states, each model's own fold-in;
the challenger's UPs, tagged and keyed with its version (`protocol.up_key`), go out in the same
micro-batch before the commit. Each state starts at its own model's offsets, the consumer
reads from the earliest of them, and a state skips the events it already holds
(speed_layer/tracks.py), so a challenger loaded later, or a new champion, replays only what
its state lacks. A FORGET marker drops the user from both. A challenger without a real-time
state (it reads the user's latest events at request time) gets a second state too when its
data ends at other offsets than the champion's: its UPs carry no vector, only what the user did
since its own cut-off. When its offsets are the champion's, serving mirrors the champion's UPs
to it, and an A/A test (the champion's own version) is the champion: neither needs a second
state (`recsys.models.capabilities.mirrors_champion`). Without a challenger the loop does what it
did, plus O(partitions).

Item updates (`item_sold_out` / `item_hidden` / `item_back`) are not folded in: each becomes an AVAIL message
(`recsys.protocol.AvailabilityMessage`) in the same micro-batch, published before the commit like the UPs.

Invalid events are skipped and counted; the archiver owns the dead-letter topic
(two writers would put every bad event there twice).
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Iterable, Iterator

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.abc import Partitioner
from threadpoolctl import threadpool_limits

from recsys import protocol
from recsys.contracts.event_columns import EventColumns, validate_batch
from recsys.contracts.events import FORGET_CONTROL, ITEM_UPDATES, ForgetMarker, control_kind
from recsys.io import model_store
from recsys.io.kafka import consumer, poll_through_outages, producer
from recsys.models.capabilities import mirrors_champion
from recsys.protocol import AvailabilityMessage, ModelMessage, Topics
from recsys.settings import Settings, get_settings
from speed_layer import metrics, publish
from speed_layer.state import SpeedState, Updates, newest_per_key
from speed_layer.tracks import Track, bounds, own_part, replay_start

log = logging.getLogger("speed_layer")
IDLE_POLL_MS = 500
# Reading `model-updates` for MODEL messages means fetching and decoding every UP this layer just wrote there
# (~8 µs of CPU per UP, bench/speed_profile.py). Once a second is soon enough for a new model (its events are
# replayed from its offsets anyway) and takes that poll off every turn of the loop, i.e. off every batch's latency.
MODEL_CHECK_S = 1.0
CHALLENGER_RETRY_S = 30.0  # between attempts to load a named challenger that is not in the model store yet
FETCH_BYTES_PER_EVENT = 512  # an event record is ~250 bytes (bench/speed_profile.py's): twice that, to be sure
UP_BATCH_BYTES = 1_000_000  # under the broker's default message.max.bytes (1,048,588)


class SpeedLayer:
    def __init__(self, settings: Settings | None = None, instance_id: str | None = None) -> None:
        self.s = settings or get_settings()
        self.instance_id = instance_id or self.s.speed_instance_id
        self.artifact: model_store.ModelArtifact | None = None
        self.champion: Track | None = None
        self.challenger_artifact: model_store.ModelArtifact | None = None
        self.challenger: Track | None = None  # the A/B test's challenger, when it is an `Updating` model (see above)
        self._challenger_at = -float("inf")  # when loading the challenger was last tried
        self._challenger_settled = False  # loaded, or found to need no state here: not tried again
        self._stop = False
        self._busy = False
        self._last_lag_check = 0.0
        self._next_model_check = 0.0
        self.events = consumer(
            self.s.speed_group,
            settings=self.s,
            group_instance_id=self.instance_id,
            max_poll_records=self.s.speed_batch_max,
            # A poll returns what one fetch brought, and kafka-python's default fetch is 1 MB per partition (~4,000
            # events): a backlog on four partitions came in micro-batches of ~16,000 whatever speed_batch_max said.
            # Room for a full micro-batch from any one partition (fetch_max_bytes, 50 MB, still caps a fetch).
            max_partition_fetch_bytes=max(1 << 20, self.s.speed_batch_max * FETCH_BYTES_PER_EVENT),
        )
        self.models = consumer(None, settings=self.s)
        updates = TopicPartition(Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION)
        self.models.assign([updates])
        self.models.seek_to_end(updates)  # the model on disk is loaded at start; later ones arrive here
        # A micro-batch's UPs are megabytes (a user's UP carries their period since the cut-off). kafka-python wakes its
        # sender thread on every send while more than one record batch is queued, so batches as large as the broker
        # takes (message.max.bytes: 1 MiB by default) and a linger that leaves them to fill: every micro-batch
        # ends in a flush, which sends at once whatever linger_ms says.
        self.producer = producer(self.s, linger_ms=100, batch_size=UP_BATCH_BYTES, partitioner=_UpdatePartition())
        self.producer.partitions_for(Topics.MODEL_UPDATES)  # the topic's metadata now, not on the first batch's send
        self.events.subscribe([Topics.EVENTS], listener=_ReplayFromModel(self))

    # --- models ----------------------------------------------------------------------------
    @property
    def state(self) -> SpeedState | None:
        """The champion's state (the served model's)."""
        return self.champion.state if self.champion else None

    def tracks(self) -> list[Track]:
        return [t for t in (self.champion, self.challenger) if t is not None]

    def load_model(self, location: model_store.Location) -> None:
        """A new champion: a fresh state from it; the challenger's state, at its own position, is kept."""
        self.artifact = model_store.load_from(location, self.s)
        metrics.MODEL_INFO.info({"model_version": self.artifact.manifest.model_version})
        log.info(
            "model %s loaded; replaying events after %s",
            self.artifact.manifest.model_version,
            self.artifact.manifest.kafka_offsets,
        )
        if self.challenger and self.challenger.state.model_version == self.artifact.manifest.model_version:
            self.challenger = self.challenger_artifact = None  # it became the champion: one state, the served model's
            metrics.CHALLENGER_INFO.info({"model_version": ""})
        self._fresh_states(champion=True, challenger=False)
        self._seek(self.events.assignment())

    def restart_from_model(self, partitions: Iterable[TopicPartition]) -> None:
        """Fresh states from the models, and each partition read again from where the models' data ends.

        Run on every assignment (kafka-python's eager rebalances hand over the whole
        assignment), so no event is ever counted twice or skipped.
        """
        if self.artifact is None:
            return
        self._fresh_states(champion=True, challenger=True)
        self._seek(partitions)

    def _fresh_states(self, champion: bool, challenger: bool) -> None:
        gc.unfreeze()  # the state being replaced (and an older model) may be collected again
        if champion and self.artifact is not None:
            self.champion = Track.fresh(SpeedState(self.artifact, dict(self.s.event_weights)))
        if challenger and self.challenger_artifact is not None:
            state = SpeedState(self.challenger_artifact, dict(self.s.event_weights))
            self.challenger = Track.fresh(state, keyed_by_version=True)
        # The model and the state's indices are millions of long-lived objects: a full collection walking them paused
        # a micro-batch for ~100 ms (the latency tail). Collect what the old state left once, then freeze the rest.
        gc.collect()
        gc.freeze()

    def _seek(self, partitions: Iterable[TopicPartition]) -> None:
        """Each partition from the earliest offset a state still needs (`tracks.replay_start`)."""
        tracks = self.tracks()
        for tp in partitions:
            start = replay_start(tracks, tp.partition)
            if start is None:  # some model holds nothing from this partition: all of it is new
                self.events.seek_to_beginning(tp)
            else:
                self.events.seek(tp, start)

    def _want_challenger(self) -> None:
        """Load the A/B test's challenger (RECSYS_AB_CHALLENGER_VERSION) and give it a state of its own, so its
        users' events since its cut-off reach it too; while it is not in the model store, tried again every
        CHALLENGER_RETRY_S.

        A model without a real-time state whose data ends where the champion's does needs none here (serving gives
        it the champion's UPs, which are then exact: `serving.follower.ModelFollower._mirrors`, the same rule), nor
        does an A/A test (the champion's own version: its UPs are the champion's).
        """
        version = self.s.ab_challenger_version
        if (
            not version
            or self._challenger_settled
            or self.champion is None
            or version == self.champion.state.model_version
            or time.monotonic() - self._challenger_at < CHALLENGER_RETRY_S
        ):
            return
        self._challenger_at = time.monotonic()
        try:
            artifact = model_store.load_from(model_store.find(version, self.s), self.s)
        except Exception as e:  # not published yet, or broken: the champion goes on meanwhile
            log.error("A/B challenger %s not loaded (%s); trying again in %.0f s", version, e, CHALLENGER_RETRY_S)
            return
        self._challenger_settled = True
        if mirrors_champion(
            artifact.model, artifact.manifest.kafka_offsets, self.champion.state.manifest.kafka_offsets
        ):
            log.info(
                "A/B challenger %s keeps no real-time state (%s) and its data ends where the champion's does: "
                "serving gives it the champion's UPs",
                version,
                artifact.model.name,
            )
            return
        self.challenger_artifact = artifact
        self._fresh_states(champion=False, challenger=True)
        metrics.CHALLENGER_INFO.info({"model_version": version})
        log.info("A/B challenger %s loaded; replaying events after %s", version, artifact.manifest.kafka_offsets)
        self._seek(self.events.assignment())

    def _check_for_new_model(self, timeout_ms: int = 0) -> None:
        newest: ModelMessage | None = None
        for records in poll_through_outages(self.models, timeout_ms).values():
            for r in records:
                if protocol.is_model_key(r.key):
                    message = protocol.decode(r.value)
                    newest = message if isinstance(message, ModelMessage) else newest
        if newest and (self.champion is None or newest.model_version != self.champion.state.model_version):
            self.load_model(newest.path)

    def wait_for_model(self) -> None:
        latest = model_store.latest_published(self.s)
        if latest is not None:
            self.load_model(latest)
        seconds = 0
        while self.champion is None and not self._stop:
            if seconds % 10 == 0:
                log.info("waiting for the first published model (none in %s yet)", model_store.published_dir(self.s))
            self._check_for_new_model(timeout_ms=1000)
            seconds += 1

    # --- the loop -------------------------------------------------------------------------
    def run(self, max_idle_s: float | None = None) -> None:
        """Process until stopped (or, for tests and replays, until idle for `max_idle_s`)."""
        self.wait_for_model()
        idle_since = time.monotonic()
        while not self._stop:
            if self.cycle():
                idle_since = time.monotonic()
            elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                break

    def cycle(self) -> int:
        """One turn of the loop: a newer model if one was announced (and the challenger, while it is not loaded),
        a micro-batch, the lag now and then."""
        if time.monotonic() >= self._next_model_check:
            self._next_model_check = time.monotonic() + MODEL_CHECK_S
            self._check_for_new_model()
            self._want_challenger()
        n = self.step()
        self._report_lag()
        return n

    def step(self) -> int:
        """One micro-batch: poll, fold in, publish, flush, commit. Returns the number of records read."""
        # A poll returns as soon as records arrive, so waiting longer when idle adds no latency and keeps an idle
        # instance from looping 50 times a second (idle CPU).
        wait_ms = self.s.speed_batch_ms if self._busy else IDLE_POLL_MS
        polled = poll_through_outages(self.events, wait_ms, self.s.speed_batch_max)
        records = [r for batch in polled.values() for r in batch]
        self._busy = bool(records)
        if not records or self.champion is None:
            return len(records)
        markers = forget_markers(records)
        events = [r for r in records if control_kind(r.headers) is None]
        checked = validate_batch([r.value for r in events], self.s)
        for rejection in checked.rejections.values():
            metrics.INVALID.labels(rejection.reason).inc()
        read = [events[at] for at in checked.events.positions.tolist()]  # the record of each valid event
        availability = availability_records(checked.events, read)
        firsts, lasts = bounds(polled)
        folded = {}
        for track in self.tracks():  # the champion first: its UPs are the ones most shoppers wait for
            part = own_part(track, firsts, records, read)
            if part is None:
                folded[track.key_version] = self._fold(track, checked.events, read, markers)
            else:  # a replay for the other model: only what this one lacks
                mine, keep = part
                valid, own = checked.events.take(np.array(keep, np.int64)), [read[row] for row in keep]
                folded[track.key_version] = self._fold(track, valid, own, forget_markers(mine))
            track.advance(lasts)
        if availability:
            self._send(availability)
            metrics.AVAILABILITY.inc(len(availability))
        self._commit()  # only after the UPs are durable
        metrics.EVENTS.inc(folded[None])
        if self.challenger is not None:
            metrics.CHALLENGER_EVENTS.inc(folded.get(self.challenger.key_version, 0))
        metrics.FORGETS.inc(len(markers))
        return len(records)

    def _fold(self, track: Track, valid: EventColumns, read: list, markers: dict[str, int]) -> int:
        """A batch's events (and FORGET markers) into one model's state, its UPs published and acknowledged.
        Returns the number of events folded in."""
        state = track.state
        valid, read = interactions(valid, read, markers)
        newest = newest_per_key(valid.user_id, [r.offset for r in read])  # per user, their newest event's offset
        started = time.monotonic()
        refolded = [state.forget(user) for user in markers]
        updates = state.apply(valid, [r.timestamp for r in read])
        metrics.SOLVE_SECONDS.observe(time.monotonic() - started)
        # With log compaction, a tombstone removes the forgotten users' older UPs from the topic too.
        if markers:
            tombstones: list[tuple[bytes, bytes | None]] = [
                protocol.tombstone("user", u, track.key_version) for u in markers
            ]
            self._send(tombstones)
        for forgotten in refolded:
            self.publish(forgotten, track=track)
        self.publish(updates, newest, track)
        return len(valid)

    def publish(
        self, updates: Updates, source_offsets: dict[str, int] | None = None, track: Track | None = None
    ) -> None:
        track = track or self.champion
        assert track is not None  # only called for a batch applied to a loaded state
        # Encoded as the batches are filled: the sender thread writes the first while the rest are encoded.
        messages = iter_up_messages(track.state.model_version, updates, source_offsets, track.key_version)
        # The offsets are committed next: an unacknowledged UP must not be skipped (sending one twice is harmless).
        self._send(messages)
        if track.key_version is None:  # the latency shoppers see; a challenger's replay would only blur it
            now_ms = time.time() * 1000
            for ts in updates.source_ts_ms.values():
                metrics.LATENCY.observe(max(0.0, now_ms - ts) / 1000)

    def _send(self, messages: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Records onto `model-updates`, returning once the broker acknowledged each one (`publish.send_acknowledged`:
        whole record batches, not a `send` per record)."""
        publish.send_acknowledged(self.producer, Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION, messages)

    def _commit(self) -> None:
        """Commit the consumed offsets: for lag monitoring (a restart replays from the model's offsets anyway),
        so a broker that is away right now must not stop the speed layer. Asynchronous: a synchronous commit's round
        trip was the largest fixed cost of a small micro-batch (event -> UP latency)."""
        try:
            self.events.commit_async(callback=_commit_done)
        except KafkaError as e:
            log.warning("offset commit failed (lag monitoring only): %s", e)

    def _report_lag(self) -> None:
        if time.monotonic() - self._last_lag_check < 5:
            return
        self._last_lag_check = time.monotonic()
        assigned = list(self.events.assignment())
        if assigned:
            ends = self.events.end_offsets(assigned)
            metrics.LAG.set(sum(max(0, ends[tp] - self.events.position(tp)) for tp in assigned))

    def stop(self, *_: object) -> None:
        self._stop = True

    def close(self) -> None:
        try:  # the last batch's offsets, so the lag reads 0 after a clean stop
            self.events.commit(timeout_ms=5000)
        except KafkaError as e:
            log.warning("final offset commit failed (lag monitoring only): %s", e)
        self.events.close(autocommit=False)
        self.models.close()
        self.producer.close()


def up_messages(
    version: str, updates: Updates, source_offsets: dict[str, int] | None = None, key_version: str | None = None
) -> list[tuple[bytes, bytes | None]]:
    """The (key, value) UP records of one micro-batch's updates: users first, then new items; counts the fold-ins.
    `key_version`: the challenger's version, keyed into its UPs (`protocol.up_key`)."""
    return list(iter_up_messages(version, updates, source_offsets, key_version))


def iter_up_messages(
    version: str, updates: Updates, source_offsets: dict[str, int] | None = None, key_version: str | None = None
) -> Iterator[tuple[bytes, bytes | None]]:
    """`up_messages`, one at a time (the fold-ins are counted at once)."""
    offsets = source_offsets or {}
    encode = protocol.encode_up
    metrics.FOLDINS.labels("user").inc(len(updates.users))
    metrics.FOLDINS.labels("item").inc(len(updates.items))
    source_ts, strengths, event_types, recent = (
        updates.source_ts_ms,
        updates.user_strengths,
        updates.user_event_types,
        updates.user_recent,
    )
    for id_, vector in updates.users.items():
        yield encode(
            version,
            "user",
            id_,
            None if vector is None else vector.tolist(),
            source_ts.get(("user", id_)),
            strengths.get(id_, {}),
            event_types.get(id_, {}),
            offsets.get(id_),
            recent.get(id_, []),
            key_version,
        )
    for id_, vector in updates.items.items():
        yield encode(version, "item", id_, vector.tolist(), source_ts.get(("item", id_)), {}, {}, None, [], key_version)


def availability_records(valid: EventColumns, read: list) -> list[tuple[bytes, bytes | None]]:
    """The AVAIL records of the item updates among a batch's valid events (`read`: the record of each)."""
    return [
        protocol.encode(availability_message(valid.item_id[row], kind, r.partition, r.offset, r.timestamp))
        for row, (kind, r) in enumerate(zip(valid.event_type, read, strict=True))
        if kind in ITEM_UPDATES
    ]


def interactions(valid: EventColumns, read: list, markers: dict[str, int]) -> tuple[EventColumns, list]:
    """The valid events to fold in, and their records: no item updates, and none from before their user's FORGET
    marker (erased)."""
    keep = [
        row
        for row, (kind, user, r) in enumerate(zip(valid.event_type, valid.user_id, read, strict=True))
        if kind not in ITEM_UPDATES and r.offset > markers.get(user, -1)
    ]
    if len(keep) == len(valid):
        return valid, read
    return valid.take(np.array(keep, np.int64)), [read[row] for row in keep]


def availability_message(
    item_id: str, event_type: str, partition: int, offset: int, produced_ms: int
) -> AvailabilityMessage:
    """The AVAIL message of one item update read at (partition, offset) of `events`."""
    return AvailabilityMessage(
        item_id=item_id,
        available=ITEM_UPDATES[event_type],
        state=event_type,
        partition=partition,
        offset=offset,
        event_ts_ms=produced_ms,
    )


def _commit_done(offsets, response) -> None:
    if isinstance(response, Exception):
        log.warning("offset commit failed (lag monitoring only): %s", response)


def forget_markers(records) -> dict[str, int]:
    """User -> offset of their last FORGET marker among `records` (a malformed marker is the archiver's to report)."""
    markers: dict[str, int] = {}
    for r in records:
        if control_kind(r.headers) == FORGET_CONTROL:
            try:
                user = ForgetMarker.model_validate_json(r.value).user_id
            except ValueError:
                continue
            markers[user] = max(markers.get(user, -1), r.offset)
    return markers


class _UpdatePartition(Partitioner):
    """`model-updates` has one partition: no need to hash every UP key (kafka-python's murmur2 is pure Python)."""

    def __init__(self) -> None:
        self.default = DefaultPartitioner()

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster) -> int:
        if topic == Topics.MODEL_UPDATES:
            return protocol.UPDATE_PARTITION
        return self.default.partition(topic, key, serialized_key, value, serialized_value, cluster)


class _ReplayFromModel(ConsumerRebalanceListener):
    def __init__(self, layer: SpeedLayer) -> None:
        self.layer = layer

    def on_partitions_revoked(self, revoked) -> None:
        pass  # every batch is published and committed before the next poll

    def on_partitions_assigned(self, assigned) -> None:
        self.layer.restart_from_model(assigned)


def one_blas_thread() -> threadpool_limits:
    """One BLAS thread for this process. A micro-batch's solves are many small (rank x rank or L x L) systems:
    OpenBLAS's second thread only spins against the consumer's and producer's I/O threads and the broker on two
    cores. Measured (bench/speed_profile.py, docs/speed.md): the drain's fold-in CPU fell from 17 to 4 µs/event."""
    return threadpool_limits(1, user_api="blas")


# The loop keeps many young objects alive for a micro-batch (kafka-python's records, the columns, the UPs), so with
# Python's default threshold (700) a 50,000-event drain run saw ~980 young collections, ~90 middle and 8 full ones
# (walking everything after the model's `gc.freeze`: the state's growing dicts), 0.3-0.6 s in all; with 50,000: 6 young
# ones, ~0.05 s (gc.callbacks around bench/speed_profile.py, docs/speed.md). Nothing here needs cycles freed soon.
GC_YOUNG_GENERATION = 50_000


def fewer_collections() -> None:
    """Python's cyclic collector for this process: the young generation's threshold raised (`GC_YOUNG_GENERATION`)."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_GENERATION), middle, old)


def serve(settings: Settings | None = None, instance_id: str | None = None) -> None:
    s = settings or get_settings()
    one_blas_thread()
    fewer_collections()
    if s.speed_metrics_port:
        metrics.start_server(s.speed_metrics_port)
    layer = SpeedLayer(s, instance_id)
    signal.signal(signal.SIGTERM, layer.stop)
    signal.signal(signal.SIGINT, layer.stop)
    try:
        layer.run()
    finally:
        layer.close()
        log.info("stopped cleanly")
