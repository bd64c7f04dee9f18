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
from dataclasses import dataclass, field

import numpy as np

from recsys.contracts.events import Event
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
        self.user_recent: dict[str, deque[tuple[int, str, int]]] = defaultdict(
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

    def apply(self, events: list[tuple[Event, int]]) -> Updates:
        """Take in one micro-batch of (event, source timestamp ms). Returns what to publish."""
        touched_users: set[str] = set()
        touched_new_items: set[int] = set()
        updates = Updates()
        source_ts_ms = updates.source_ts_ms
        recent_events = self.model.recent_events
        user_delta, user_recent = self.user_delta, self.user_recent
        user_strengths, user_event_types, user_recent_ids = (
            self.user_strengths,
            self.user_event_types,
            self.user_recent_ids,
        )
        # The hottest loop of the speed layer: locals instead of attribute and method look-ups, per event.
        item_index, weights, new_item_delta = self.item_index, self.weights, self.new_item_delta
        n_model_items = self.n_model_items
        for event, source_ts in events:
            user, item, kind, ts_ms = event.user_id, event.item_id, event.event_type, event.ts_ms
            j = item_index.get(item)
            if j is None:
                j = self._item(item)
            strength = weights[kind]
            user_delta[user][j] += strength
            user_recent[user].append((j, kind, ts_ms))
            if user not in touched_users:
                touched_users.add(user)
                if user not in user_strengths:
                    user_strengths[user] = {}
                    user_event_types[user] = {}
                    user_recent_ids[user] = deque(maxlen=recent_events)
            strengths = user_strengths[user]
            strengths[item] = strengths.get(item, 0.0) + strength
            types = user_event_types[user]
            seen = types.get(item)
            if seen is None:
                types[item] = [kind]
            elif kind not in seen:
                types[item] = sorted([*seen, kind])
            user_recent_ids[user].append((item, kind, ts_ms))
            if j >= n_model_items:
                new_item_delta[j][user] += strength
                touched_new_items.add(j)
            newest = source_ts_ms.get(key := ("user", user), 0)
            source_ts_ms[key] = source_ts if source_ts > newest else newest
            newest = source_ts_ms.get(key := ("item", item), 0)
            source_ts_ms[key] = source_ts if source_ts > newest else newest
        users = sorted(touched_users)
        updates.users = self._update_users(users)
        updates.items = self._fold_new_items(sorted(touched_new_items))
        for user in users:
            updates.user_strengths[user] = dict(self.user_strengths[user])
            updates.user_event_types[user] = dict(self.user_event_types[user])
            updates.user_recent[user] = list(self.user_recent_ids[user])
        return updates

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
        kinds = self._kinds
        later = [(j, kinds.get(kind, 0), ts) for j, kind, ts in self.user_recent.get(user_id, ())]
        # A new item without a state yet cannot enter the model's maths: only positions below realtime.n_items.
        usable = self.realtime.n_items
        return self.history.now(row, self.user_delta.get(user_id, {}), later, usable, self.model.recent_events)

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
        vectors = self.realtime.new_items(items, [dict(self.new_item_delta[j]) for j in items])
        if vectors is None:
            return {}
        return {self.item_id(j): v for j, v in zip(items, vectors, strict=True)}

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's current real-time state (folded in since the model, else the model's), else None."""
        if user_id in self.erased and user_id not in self.user_delta:
            return None
        return self.realtime.state(user_id)
