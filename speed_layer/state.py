"""The speed layer's state: the current batch model plus everything that happened since its cut-off.

No Kafka here: events in, new vectors out. For every micro-batch the touched users
are folded in against the model's item factors with their whole history (the
training strengths from the artifact plus what arrived since), and items the model
has never seen are folded in against the vectors of the users who touched them.
The state is rebuilt by replaying the events after the model's offsets, so it
never needs saving.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys.contracts.events import Event
from recsys.contracts.manifest import ModelManifest
from recsys.io.model_store import ModelArtifact
from recsys.models.foldin import FoldIn


@dataclass
class Updates:
    """Vectors to publish after one micro-batch (id -> vector), and the newest source timestamp per id."""

    users: dict[str, np.ndarray] = field(default_factory=dict)
    items: dict[str, np.ndarray] = field(default_factory=dict)
    source_ts_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    # Per updated user, everything since the model's cut-off: item -> strength, item -> event types.
    user_strengths: dict[str, dict[str, float]] = field(default_factory=dict)
    user_event_types: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users) + len(self.items)


class SpeedState:
    def __init__(self, artifact: ModelArtifact, weights: dict[str, float]) -> None:
        self.manifest: ModelManifest = artifact.manifest
        self.weights = weights
        self.base = artifact.interactions.tocsr()
        self.user_index = {u: i for i, u in enumerate(artifact.user_ids.tolist())}
        self.model_item_ids: list[str] = artifact.item_ids.tolist()
        self.item_index = {it: j for j, it in enumerate(self.model_item_ids)}
        self.n_model_items = len(artifact.item_ids)
        self.new_item_ids: list[str] = []  # items first seen after the model, in index order
        # Users are solved against item factors (YᵀY once per model) and new items against user factors.
        self.users = FoldIn(artifact.item_factors, self.manifest.objective)
        self.items = FoldIn(artifact.user_factors, self.manifest.objective)
        self.user_delta: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.user_types: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.new_item_delta: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.folded_user_rows: dict[str, int] = {}  # users with a speed vector: their row in self.items
        self.erased: set[str] = set()  # forgotten model users: their training row no longer counts

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def apply(self, events: list[tuple[Event, int]]) -> Updates:
        """Fold in one micro-batch of (event, source timestamp ms). Returns the vectors to publish."""
        touched_users: set[str] = set()
        touched_new_items: set[int] = set()
        updates = Updates()
        for event, source_ts in events:
            j = self._item(event.item_id)
            strength = self.weights[event.event_type]
            self.user_delta[event.user_id][j] += strength
            self.user_types[event.user_id][j].add(event.event_type)
            touched_users.add(event.user_id)
            if j >= self.n_model_items:
                self.new_item_delta[j][event.user_id] += strength
                touched_new_items.add(j)
            for key in (("user", event.user_id), ("item", event.item_id)):
                updates.source_ts_ms[key] = max(updates.source_ts_ms.get(key, 0), source_ts)
        updates.users = self._fold_users(sorted(touched_users))
        updates.items = self._fold_new_items(sorted(touched_new_items))
        for user in updates.users:
            updates.user_strengths[user] = {self.item_id(j): r for j, r in self.user_delta[user].items()}
            updates.user_event_types[user] = {self.item_id(j): sorted(t) for j, t in self.user_types[user].items()}
        return updates

    def forget(self, user_id: str) -> Updates:
        """Drop everything known about a user so far (right to erasure); later events start them afresh.

        New items they touched are folded in again from the remaining users. Returns those item vectors.
        """
        self.user_delta.pop(user_id, None)
        self.user_types.pop(user_id, None)
        if user_id in self.user_index:
            self.erased.add(user_id)
        row = self.user_index.get(user_id, self.folded_user_rows.get(user_id))
        if row is not None and row < self.items.n:
            self.items.set_vectors(np.array([row]), np.zeros((1, self.items.rank)))
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

    def history(self, user_ids: list[str]) -> sp.csr_matrix:
        """Training strengths plus everything since, for these users, over items that have a vector."""
        rows, cols, vals = [], [], []
        for r, user in enumerate(user_ids):
            u = None if user in self.erased else self.user_index.get(user)
            if u is not None:
                start, end = self.base.indptr[u], self.base.indptr[u + 1]
                cols.extend(self.base.indices[start:end])
                vals.extend(self.base.data[start:end])
                rows.extend([r] * (end - start))
            for j, strength in self.user_delta.get(user, {}).items():
                if j < self.users.n:  # a new item without a vector yet cannot enter the solve
                    rows.append(r)
                    cols.append(j)
                    vals.append(strength)
        # Duplicates (a training item seen again) are summed by the CSR constructor.
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(user_ids), self.users.n))

    def _fold_users(self, user_ids: list[str]) -> dict[str, np.ndarray]:
        if not user_ids:
            return {}
        vectors = self.users.vectors(self.history(user_ids))
        rows = [self._user_row(u) for u in user_ids]
        self.items.set_vectors(np.array(rows), vectors)
        return dict(zip(user_ids, vectors, strict=True))

    def _user_row(self, user_id: str) -> int:
        """The user's row among the user factors (new users get one after the model's)."""
        row = self.user_index.get(user_id)
        if row is None:
            row = self.folded_user_rows.get(user_id)
        if row is None:
            row = self.folded_user_rows[user_id] = len(self.user_index) + len(self.folded_user_rows)
        return row

    def _fold_new_items(self, items: list[int]) -> dict[str, np.ndarray]:
        """New items from the (current) vectors of the users who touched them since the model."""
        if not items:
            return {}
        rows, cols, vals = [], [], []
        for r, j in enumerate(items):
            for user, strength in self.new_item_delta[j].items():
                rows.append(r)
                cols.append(self._user_row(user))
                vals.append(strength)
        matrix = sp.csr_matrix((vals, (rows, cols)), shape=(len(items), self.items.n))
        vectors = self.items.vectors(matrix)
        self.users.set_vectors(np.array(items), vectors)
        return {self.item_id(j): v for j, v in zip(items, vectors, strict=True)}

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The current vector of a user: folded in since the model, else the model's, else None."""
        if user_id in self.erased and user_id not in self.user_delta:
            return None
        row = self.user_index.get(user_id, self.folded_user_rows.get(user_id))
        return None if row is None or row >= self.items.n else self.items.factors[row].astype(np.float32)
