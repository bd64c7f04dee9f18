"""The speed layer's state: the current batch model plus everything that happened since its cut-off.

No Kafka here: events in, user and item updates out. For every micro-batch each touched
user's history (the training strengths from the artifact plus what arrived since) and
latest events go to the model's real-time side (`recsys.models.base.realtime_of`): ALS folds the
user in exactly, NeuMF re-optimises their embedding, request-time models (neighbourhoods,
transitions, sessions) need nothing computed, the latest events are their state. Items
the model has never seen are folded in where the model can (ALS: from the users who
touched them). The state is rebuilt by replaying the events after the model's offsets,
so it never needs saving.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recsys.contracts.event_columns import EventColumns
from recsys.contracts.manifest import ModelManifest
from recsys.data.inputs import UserContext, UserHistory
from recsys.io.model_store import ModelArtifact
from recsys.models.base import realtime_of


@dataclass
class Updates:
    """What to publish after one micro-batch: per user their state (None: the model keeps none), per new item
    its vector, and the newest source timestamp per id."""

    users: dict[str, np.ndarray | None] = field(default_factory=dict)
    items: dict[str, np.ndarray] = field(default_factory=dict)
    source_ts_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    # Per updated user, everything since the model's cut-off: item -> strength, item -> event types, latest events.
    user_strengths: dict[str, dict[str, float]] = field(default_factory=dict)
    user_event_types: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    user_recent: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users) + len(self.items)


class SpeedState:
    def __init__(self, artifact: ModelArtifact, weights: dict[str, float]) -> None:
        self.manifest: ModelManifest = artifact.manifest
        self.data = artifact.data
        self.model = artifact.model
        self.realtime = realtime_of(self.model, self.data)
        self.weights = weights
        self.history = UserHistory(self.data)  # how a user's context is built, as serving builds it
        self.user_index = {u: i for i, u in enumerate(self.data.user_ids.tolist())}
        self.model_item_ids: list[str] = self.data.item_ids.tolist()
        self.item_index = {it: j for j, it in enumerate(self.model_item_ids)}
        self.n_model_items = len(self.model_item_ids)
        self.new_item_ids: list[str] = []  # items first seen after the model, in index order
        self.event_types = list(self.data.event_types)
        self.user_delta: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        # Per user, their latest events since the cut-off as the model's context takes them: (position, kind code, ts).
        self.user_recent: dict[str, deque[tuple[int, int, int]]] = defaultdict(
            lambda: deque(maxlen=self.model.recent_events)
        )
        self.new_item_delta: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.erased: set[str] = set()  # forgotten model users: their training row no longer counts
        # The same per user, keyed by item id, as the UPs carry them: kept up to date event by event, so a batch
        # copies them instead of rebuilding each touched user's whole period since the cut-off (ids from indices).
        self.user_strengths: dict[str, dict[str, float]] = {}
        self.user_event_types: dict[str, dict[str, list[str]]] = {}  # each list sorted, replaced (never mutated)
        self.user_recent_ids: dict[str, deque[tuple[str, str, int]]] = {}
        self._kinds = {name: b for b, name in enumerate(self.event_types)}

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def apply(self, events: EventColumns, source_ts_ms: Sequence[int]) -> Updates:
        """Take in one micro-batch of validated events and each one's source timestamp (ms). Returns what to publish."""
        updates = Updates()
        users, items, kinds = events.user_id, events.item_id, events.event_type
        item_index, weights = self.item_index, self.weights
        known = [item_index.get(item) for item in items]
        positions = [self._item(item) if j is None else j for j, item in zip(known, items, strict=True)]
        strengths = [weights[kind] for kind in kinds]
        codes = [self._kinds.get(kind, 0) for kind in kinds]  # as the model's context takes them (`context`)
        touched = sorted(set(users))
        self._add(touched, users, items, kinds, codes, events.ts_ms, positions, strengths)
        updates.source_ts_ms = {("user", u): ts for u, ts in newest_per_key(users, source_ts_ms).items()}
        updates.users = self._update_users(touched)
        # Only new items get an UP, so only their events' timestamps are needed (most events are of model items).
        new = [row for row, j in enumerate(positions) if j >= self.n_model_items]
        if new:
            newest = newest_per_key([items[row] for row in new], [source_ts_ms[row] for row in new])
            updates.source_ts_ms.update({("item", i): ts for i, ts in newest.items()})
        updates.items = self._fold_new_items(sorted({positions[row] for row in new}))
        for user in touched:
            updates.user_strengths[user] = dict(self.user_strengths[user])
            updates.user_event_types[user] = dict(self.user_event_types[user])
            updates.user_recent[user] = list(self.user_recent_ids[user])
        return updates

    def _add(
        self,
        touched: list[str],
        users: list[str],
        items: list[str],
        kinds: list[str],
        codes: list[int],
        times: list[int],
        positions: list[int],
        strengths: list[float],
    ) -> None:
        """A batch's events into the state of their users (`touched`) and of the new items among them.

        One pass over the columns in the batch's order. Grouping the events by user first (a stable sort, then a
        pass per user) cost twice as much: a batch of 5,000 touches ~2,000 users, two or three events each.
        """
        recent_events = self.model.recent_events
        user_delta, user_recent, new_item_delta = self.user_delta, self.user_recent, self.new_item_delta
        user_strengths, user_event_types, user_recent_ids = (
            self.user_strengths,
            self.user_event_types,
            self.user_recent_ids,
        )
        for user in touched:
            if user not in user_strengths:
                user_strengths[user] = {}
                user_event_types[user] = {}
                user_recent_ids[user] = deque(maxlen=recent_events)
        n_model_items = self.n_model_items
        # The hottest loop of the speed layer: locals only, per event.
        rows = zip(users, positions, items, kinds, codes, times, strengths, strict=True)
        for user, j, item, kind, code, ts_ms, strength in rows:
            user_delta[user][j] += strength
            by_item = user_strengths[user]
            by_item[item] = by_item.get(item, 0.0) + strength
            types = user_event_types[user]
            seen = types.get(item)
            if seen is None:
                types[item] = [kind]
            elif kind not in seen:
                types[item] = sorted([*seen, kind])
            user_recent[user].append((j, code, ts_ms))
            user_recent_ids[user].append((item, kind, ts_ms))
            if j >= n_model_items:
                new_item_delta[j][user] += strength

    def forget(self, user_id: str) -> Updates:
        """Drop everything known about a user so far (right to erasure); later events start them afresh.

        New items they touched are folded in again from the remaining users. Returns those item vectors.
        """
        self.user_delta.pop(user_id, None)
        self.user_recent.pop(user_id, None)
        self.user_strengths.pop(user_id, None)
        self.user_event_types.pop(user_id, None)
        self.user_recent_ids.pop(user_id, None)
        if user_id in self.user_index:
            self.erased.add(user_id)
        self.realtime.forget(user_id)
        touched = [j for j, users in self.new_item_delta.items() if users.pop(user_id, None) is not None]
        updates = Updates()
        updates.items = self._fold_new_items(sorted(j for j in touched if self.new_item_delta[j]))
        return updates

    def item_id(self, j: int) -> str:
        return self.new_item_ids[j - self.n_model_items] if j >= self.n_model_items else self.model_item_ids[j]

    def _item(self, item_id: str) -> int:
        j = self.item_index.get(item_id)
        if j is None:
            j = self.item_index[item_id] = len(self.item_index)
            self.new_item_ids.append(item_id)
        return j

    def context(self, user_id: str) -> UserContext:
        """The user as the model sees them now: training row plus everything since, over items it can use."""
        row = None if user_id in self.erased else self.user_index.get(user_id)
        later = self.user_recent.get(user_id, ())  # kept as the context takes them: no conversion per batch
        # A new item without a state yet cannot enter the model's maths: only positions below realtime.n_items.
        usable = self.realtime.n_items
        # No events for a real-time side that reads none (ALS): building them was ~2 µs per UP (docs/speed.md).
        recent = self.model.recent_events if self.realtime.reads_recent_events else 0
        return self.history.now(row, self.user_delta.get(user_id, {}), later, usable, recent)

    def _update_users(self, user_ids: list[str]) -> dict[str, np.ndarray | None]:
        if not user_ids:
            return {}
        states = self.realtime.users(user_ids, [self.context(u) for u in user_ids])
        if states is None:
            return dict.fromkeys(user_ids)
        return dict(zip(user_ids, states, strict=True))

    def _fold_new_items(self, items: list[int]) -> dict[str, np.ndarray]:
        """New items from the (current) states of the users who touched them since the model."""
        if not items:
            return {}
        # The users' dicts themselves, not copies: `new_items` only reads them, within this call (a popular new item's
        # dict holds every user who touched it since the cut-off, copied again in every batch that touches it).
        vectors = self.realtime.new_items(items, [self.new_item_delta[j] for j in items])
        if vectors is None:
            return {}
        return {self.item_id(j): v for j, v in zip(items, vectors, strict=True)}

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's current real-time state (folded in since the model, else the model's), else None."""
        if user_id in self.erased and user_id not in self.user_delta:
            return None
        return self.realtime.state(user_id)


def newest_per_key(keys: list[str], times: Sequence[int]) -> dict[str, int]:
    """The largest of `times` per key. (A plain loop: ~0.1 µs per event, where pyarrow's group-by's fixed cost
    was ten times that for a batch of 5,000.)"""
    newest: dict[str, int] = {}
    get = newest.get
    for key, ts in zip(keys, times, strict=True):
        if ts > get(key, ts - 1):
            newest[key] = ts
    return newest
