"""Keeps a server's model current: loads the latest published model, then follows `model-updates`.

One background thread per server process (every replica follows the whole topic;
there is no consumer group, so no replica misses an update). Messages, in log order:

- MODEL: a newer model than the one served is loaded here, off the request path,
  then swapped in with one assignment; requests already running finish on the
  old one. UPs tagged with the new version that arrived before its MODEL message
  (a speed layer that found the model on disk first) were kept aside and are
  applied before the swap.
- UP: applied to the served model if tagged with its version; older versions'
  UPs are stale (the newer model's data covers them) and dropped.
- FORGET: the user's data from before their marker is erased from this model and
  from every later model whose data ends before the marker; their older UPs,
  held or still to come, are dropped (see `ServingModel.forget`).
- AVAIL: an item's availability, whatever the model version: kept here (the newest
  per item by its `events` offset) and set on the served model and on every model
  swapped in later, so an unavailable item leaves every answer at once.

At start the topic is read from the beginning, so a restarted replica rebuilds
exactly the state of the others. (With log compaction on `model-updates`, keyed
`UP:<kind>:<id>`, that read stays proportional to users and items, not events.)

An A/B test's challenger (RECSYS_AB_CHALLENGER_VERSION) is held next to the served
model (the champion): loaded from the model store by its version at start (and
tried again every CHALLENGER_RETRY_S until it is there), it gets every FORGET and
AVAIL the champion gets, and the UPs tagged with its version (those that arrive
before it is loaded are held for it). A challenger with a real-time state
(`Updating`: ALS, NeuMF, the hybrid) has a state of its own in the speed layer
(speed_layer/tracks.py), folded in from its own offsets and published under keys of
its own (`UP@<version>:<kind>:<id>`, `protocol.up_key`), so its shoppers' lists react
to their clicks as the champion's do. A challenger without one reads the user's
latest events at request time: when its data ends at the same `events` offsets as the
champion's, it gets the champion's user UPs, without their state vector (they are then
exactly its own); otherwise the speed layer keeps a state for it too and publishes its
UPs under its own keys, without a vector (`recsys.models.capabilities.mirrors_champion`,
the rule both layers apply). While the speed layer does not name the same challenger,
its shoppers are answered from the batch view of them, which biases a test against it
(docs/ab-tests.md).
`model_for` says which model answers a shopper (`recsys.ab_split`). Naming the
champion's own version makes an A/A test: a second copy of the champion, given
the same UPs (a check of the split and the statistics: it must find nothing).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from kafka import TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from recsys import protocol
from recsys.ab_split import CHALLENGER, CHAMPION, Arm, arm
from recsys.data import catalog
from recsys.io import model_store
from recsys.io.kafka import BrokerUnavailable, consumer, ensure_topics, wait_for_broker
from recsys.models.capabilities import mirrors_champion
from recsys.protocol import AvailabilityMessage, ForgetMessage, ModelMessage, Topics, VectorUpdate
from recsys.settings import Settings
from serving import metrics
from serving.model import ServingModel

log = logging.getLogger("serving.follower")
MAX_PENDING = 1_000_000  # UPs held for a model not loaded yet; beyond this the oldest version's are dropped
CHALLENGER_RETRY_S = 30.0  # between attempts to load a named challenger that is not in the model store yet


class ModelFollower:
    def __init__(self, s: Settings, loader: Callable[[model_store.Location], ServingModel] | None = None) -> None:
        self.s = s
        self.current: ServingModel | None = None
        self.challenger: ServingModel | None = None  # the A/B test's challenger, when one is named and loaded
        self.mirrored = False  # whether the champion's user UPs are applied to the challenger (see the docstring)
        self._challenger_at = -float("inf")  # when loading the challenger was last tried
        self.caught_up = threading.Event()
        self.forgotten: dict[str, ForgetMessage] = {}
        self.availability: dict[str, AvailabilityMessage] = {}  # item -> its newest AVAIL
        self._pending: dict[str, list[VectorUpdate]] = defaultdict(list)
        self._loader = loader or self._load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)
        self.error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def ready(self) -> bool:
        return self.current is not None and self.caught_up.is_set() and self.error is None

    def model_for(self, pseudonym: str) -> tuple[ServingModel | None, Arm]:
        """The model that answers this shopper and their arm: the champion, or the challenger for its share of
        shoppers while it is loaded (before that its shoppers get the champion, logged as the champion's)."""
        champion, challenger = self.current, self.challenger
        chosen = arm(pseudonym, self.s.ab_challenger_version, self.s.ab_challenger_share)
        if challenger is not None and champion is not None and chosen == CHALLENGER:
            return challenger, CHALLENGER
        return champion, CHAMPION

    # --- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        latest = model_store.latest_published(self.s)
        if latest is not None:
            self._try_swap(latest)
        self._want_challenger()
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as e:  # never die silently: /ready reports it, and we start over
                self.error = f"{type(e).__name__}: {e}"
                log.exception("following %s failed; starting over in 2 s", Topics.MODEL_UPDATES)
                self._stop.wait(2)

    def _follow(self) -> None:
        updates = TopicPartition(Topics.MODEL_UPDATES, protocol.UPDATE_PARTITION)
        reader = self._connect(updates)
        try:
            reader.seek_to_beginning(updates)
            target = reader.end_offsets([updates])[updates]
            self.error = None
            while not self._stop.is_set():
                for records in reader.poll(timeout_ms=200, max_records=5_000).values():
                    for record in records:
                        self.handle(record.value)
                self._want_challenger()
                if not self.caught_up.is_set() and reader.position(updates) >= target:
                    log.info("caught up with %s at offset %d", Topics.MODEL_UPDATES, target)
                    self.caught_up.set()
        finally:
            reader.close()

    def _connect(self, updates: TopicPartition):
        while not self._stop.is_set():
            try:
                wait_for_broker(self.s, timeout_s=10)
                ensure_topics(self.s)
                reader = consumer(None, settings=self.s)
                reader.assign([updates])
                return reader
            except (BrokerUnavailable, KafkaError) as e:
                log.warning("broker unavailable (%s); retrying in 2 s", e)
                time.sleep(2)
        raise RuntimeError("stopped before the broker was reachable")

    # --- messages ----------------------------------------------------------------------------
    def handle(self, raw: bytes | None) -> None:
        try:
            message = protocol.decode(raw)
        except ValidationError as e:
            metrics.UPDATES.labels("invalid").inc()
            log.warning("skipping an invalid model-updates message: %s", str(e)[:200])
            return
        if message is None:  # a tombstone: lets log compaction drop a forgotten user's last UP; nothing to apply
            return
        if isinstance(message, ModelMessage):
            self._on_model(message)
        elif isinstance(message, ForgetMessage):
            self._on_forget(message)
        elif isinstance(message, AvailabilityMessage):
            self._on_availability(message)
        else:
            self._on_update(message)

    def _on_model(self, message: ModelMessage) -> None:
        current = self.current.version if self.current else ""
        if not protocol.is_newer(message.model_version, current or None):  # never go back to an older model
            return
        path: model_store.Location = message.path
        if not model_store.exists(path):
            try:
                path = model_store.find(message.model_version, self.s)
            except model_store.ModelNotFound:
                metrics.MODEL_LOAD_FAILURES.inc()
                log.error(
                    "MODEL %s points at %s, which is not here; keeping %s",
                    message.model_version,
                    message.path,
                    current or "no model",
                )
                return
        self._try_swap(path)

    def _try_swap(self, path: model_store.Location) -> None:
        try:
            self._swap(path)
        except Exception:  # a broken model directory must not take the served one down
            metrics.MODEL_LOAD_FAILURES.inc()
            log.exception(
                "could not load the model at %s; keeping %s", path, self.current.version if self.current else "no model"
            )

    def _on_forget(self, message: ForgetMessage) -> None:
        known = self.forgotten.get(message.user_id)
        if known is None or message.offset >= known.offset:
            self.forgotten[message.user_id] = message
        for model in self._models():
            model.forget(self.forgotten[message.user_id])
        metrics.UPDATES.labels("forget").inc()

    def _on_availability(self, message: AvailabilityMessage) -> None:
        if not message.supersedes(self.availability.get(message.item_id)):
            metrics.UPDATES.labels("stale").inc()  # a replayed older item update
            return
        self.availability[message.item_id] = message
        for model in self._models():
            model.set_available(message.item_id, message.available)
        metrics.UPDATES.labels("availability").inc()
        if message.event_ts_ms:
            metrics.UPDATE_LAG.observe(max(0.0, time.time() - message.event_ts_ms / 1000))

    def _models(self) -> list[ServingModel]:
        return [m for m in (self.current, self.challenger) if m is not None]

    def _on_update(self, up: VectorUpdate) -> None:
        current, challenger = self.current, self.challenger
        if challenger is not None and up.model_version == challenger.version:
            self._apply(challenger, up)
            if current is None or up.model_version != current.version:
                return  # else an A/A test (the champion's own version as the challenger): both arms get it
        if current is not None and up.model_version == current.version:
            if challenger is not None and self.mirrored and up.kind == "user" and challenger.version != current.version:
                self._apply(challenger, up.model_copy(update={"model_version": challenger.version, "vector": None}))
            try:
                current.apply(up)
            except ValueError as e:
                metrics.UPDATES.labels("invalid").inc()
                log.warning("%s", e)
                return
            metrics.UPDATES.labels("applied").inc()
            if up.event_ts_ms:
                metrics.UPDATE_LAG.observe(max(0.0, time.time() - up.event_ts_ms / 1000))
        elif (
            current is None
            or protocol.is_newer(up.model_version, current.version)
            or up.model_version == self.s.ab_challenger_version  # the challenger's, before it is loaded
        ):
            self._hold(up)
        else:
            metrics.UPDATES.labels("stale").inc()

    def _hold(self, up: VectorUpdate) -> None:
        self._pending[up.model_version].append(up)
        if sum(len(v) for v in self._pending.values()) > MAX_PENDING:
            dropped = protocol.oldest(self._pending)
            log.warning("dropping %d UPs held for model %s, never announced", len(self._pending[dropped]), dropped)
            del self._pending[dropped]

    def _apply(self, model: ServingModel, up: VectorUpdate) -> None:
        """A challenger's UP (its own or the champion's mirrored): applied, or counted as invalid."""
        try:
            model.apply(up)
        except ValueError as e:
            metrics.UPDATES.labels("invalid").inc()
            log.warning("challenger %s: %s", model.version, e)

    def _loaded(self, path: model_store.Location) -> ServingModel:
        """A model loaded and brought up to what this process knows: erasures, availability, UPs held for it."""
        model = self._loader(path)
        for message in self.forgotten.values():
            model.forget(message)
        model.set_unavailable(item for item, m in self.availability.items() if not m.available)
        for up in self._pending.pop(model.version, []):
            model.apply(up)
        return model

    def _want_challenger(self) -> None:
        """Load the named challenger if it is not loaded yet (at most every CHALLENGER_RETRY_S)."""
        version = self.s.ab_challenger_version
        if not version or self.challenger is not None or time.monotonic() - self._challenger_at < CHALLENGER_RETRY_S:
            return
        self._challenger_at = time.monotonic()
        try:
            challenger = self._loaded(model_store.find(version, self.s))
        except Exception as e:  # not published yet, or broken: the champion answers everyone meanwhile
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("A/B challenger %s not loaded (%s); its shoppers get the champion", version, e)
            return
        self.mirrored = self._mirrors(challenger, self.current)
        self.challenger = challenger
        log.info("A/B challenger %s loaded (the champion's user UPs applied to it: %s)", version, self.mirrored)

    @staticmethod
    def _mirrors(challenger: ServingModel | None, champion: ServingModel | None) -> bool:
        """Whether the champion's user UPs, stripped of their state, are exactly what the challenger's would be."""
        if challenger is None or champion is None:
            return False
        return mirrors_champion(challenger.model, challenger.manifest.kafka_offsets, champion.manifest.kafka_offsets)

    def _swap(self, path: model_store.Location) -> None:
        started = time.monotonic()
        model = self._loaded(path)
        challenger = self.s.ab_challenger_version  # its UPs are not older news: they wait for it
        for version in [v for v in self._pending if protocol.is_newer(model.version, v) and v != challenger]:
            del self._pending[version]
        old = self.current.version if self.current else None
        self.mirrored = self._mirrors(self.challenger, model)
        self.current = model  # the swap: one assignment; running requests keep the model they started with
        # The model's objects (id maps, catalogue strings) live until the next swap: out of the cyclic GC, whose full
        # collections walked them all and paused requests (reference counting still frees them).
        gc.collect()
        gc.freeze()
        metrics.show_model(model.version, old)
        metrics.MODEL_SWAPS.inc()
        metrics.MODEL_LOAD_SECONDS.observe(time.monotonic() - started)
        log.info("serving model %s (was %s), loaded in %.2f s", model.version, old, time.monotonic() - started)

    def _load(self, path: model_store.Location) -> ServingModel:
        return ServingModel(model_store.load_from(path, self.s), catalog.read(self.s), self.s)
