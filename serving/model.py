"""What a request reads: one batch model plus the speed layer's updates since its cut-off.

A `ServingModel` is built for each published model and then only grows: UP
messages replace user vectors and add (or move) items that are newer than the
model. Readers never lock. Everything a request needs in one consistent piece
(the items folded in since the model) is an immutable `_NewItems` swapped in as
a whole, and dict assignments are atomic, so a request sees either the state
before an update or after it, never half of one. A new batch model is a new
`ServingModel`, swapped in by the follower in one assignment (see `follower.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from recsys.io.model_store import ModelArtifact
from recsys.models.foldin import explain
from recsys.models.topk import PAD, full_sort_top_k, normalize_rows, top_k_of_scores
from recsys.protocol import ForgetMessage, VectorUpdate
from recsys.settings import Settings
from serving.index import ApproximateIndex

log = logging.getLogger("serving.model")

Source = Literal["speed", "batch", "popular"]


class UnknownId(LookupError):
    """A user or item this model (and the updates since) has never seen."""


@dataclass(frozen=True)
class _NewItems:
    """Items first seen after the batch model, folded in by the speed layer. Replaced whole, never mutated."""

    ids: tuple[str, ...] = ()
    factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    categories: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class _Recent:
    """A user's activity since the model's cut-off, from their latest UP."""

    vector: np.ndarray
    strengths: dict[str, float]
    event_types: dict[str, list[str]]
    as_of_ms: int | None
    source_offset: int | None = None  # `events` offset of the newest event folded in


@dataclass
class Query:
    """One recommend request, prepared: who, what to leave out, and the vectors to score."""

    user_id: str
    k: int
    category: str | None
    excluded: np.ndarray
    vectors: list[np.ndarray]  # [] unknown user; [batch]; [speed]; or [speed, batch]
    recent: _Recent | None


@dataclass
class Ranked:
    item_ids: list[str]
    scores: list[float]
    source: Source
    # Per item, for speed answers: True if the batch vector alone would not have ranked it in the top k.
    from_speed: list[bool]
    as_of_ms: int | None = None


class ServingModel:
    def __init__(self, artifact: ModelArtifact, catalog: dict[str, tuple[str | None, str | None]], s: Settings):
        self.manifest = artifact.manifest
        self.version = artifact.manifest.model_version
        self.settings = s
        self.catalog = catalog
        self.item_factors = np.asarray(artifact.item_factors, dtype=np.float32)  # memory-mapped: pages are shared
        self.user_factors = np.asarray(artifact.user_factors, dtype=np.float32)
        self.item_ids: list[str] = artifact.item_ids.tolist()
        self.item_index = {item: j for j, item in enumerate(self.item_ids)}
        self.user_index = {user: u for u, user in enumerate(artifact.user_ids.tolist())}
        self.interactions = artifact.interactions
        self.seen_types = artifact.seen_types
        self.popularity = np.asarray(artifact.popularity, dtype=np.float32)
        self.n_base = len(self.item_ids)
        self.gram = self.item_factors.T.astype(np.float64) @ self.item_factors.astype(np.float64)
        self.unit_items = normalize_rows(self.item_factors)
        self.categories = np.array([catalog.get(i, (None, None))[1] or "" for i in self.item_ids], dtype=object)
        self.category_names = {c for c in self.categories if c}
        self._category_masks: dict[str, np.ndarray] = {}
        self._exclude_bits = self._bits(s.serving_exclude_event_types)
        self._exclude_types = frozenset(s.serving_exclude_event_types)
        self._new = _NewItems(factors=np.zeros((0, self.manifest.rank), np.float32))
        self._recent: dict[str, _Recent] = {}
        # Right to erasure: users whose batch row is erased, and each user's latest FORGET (to spot older UPs).
        self.erased: set[str] = set()
        self.forgets: dict[str, ForgetMessage] = {}
        self.speed_updates = 0
        self.index = ApproximateIndex.build(self.item_factors, s) if s.serving_index == "approximate" else None

    # --- updates (one writer: the follower thread) ----------------------------------------
    def apply(self, up: VectorUpdate) -> None:
        vector = np.asarray(up.vector, dtype=np.float32)
        if vector.shape != (self.manifest.rank,):
            raise ValueError(
                f"UP for {up.kind} {up.id} has {vector.shape} values, the model's rank is {self.manifest.rank}"
            )
        if up.kind == "user":
            if self._predates_forget(up):
                return
            self._recent[up.id] = _Recent(vector, up.strengths, up.event_types, up.event_ts_ms, up.source_offset)
        elif up.id in self.item_index and self.item_index[up.id] < self.n_base:
            return  # the speed layer folds in only items newer than the model; a model item keeps its vector
        else:
            self._set_new_item(up.id, vector)
        self.speed_updates += 1

    def _set_new_item(self, item_id: str, vector: np.ndarray) -> None:
        new = self._new
        j = self.item_index.get(item_id)
        if j is None:
            factors = np.vstack([new.factors, vector[None, :]])
            category = self.catalog.get(item_id, (None, None))[1]
            self._new = _NewItems((*new.ids, item_id), factors, (*new.categories, category))
            self.item_index[item_id] = self.n_base + len(new.ids)  # after the swap: the index is valid
        else:
            factors = new.factors.copy()
            factors[j - self.n_base] = vector
            self._new = _NewItems(new.ids, factors, new.categories)

    def forget(self, message: ForgetMessage) -> None:
        """Erase what this process holds of a user from before their FORGET marker.

        Their batch row goes if this model's data ends before the marker (a later model
        was cleaned of them); their speed vector goes if it folds in earlier events.
        UPs made from events after the marker (the user came back) are kept.
        """
        user = message.user_id
        self.forgets[user] = message
        if message.covers(self.manifest.kafka_offsets):
            self.erased.add(user)
        recent = self._recent.get(user)
        if recent is not None and (recent.source_offset is None or recent.source_offset < message.offset):
            self._recent.pop(user, None)

    def _predates_forget(self, up: VectorUpdate) -> bool:
        forget = self.forgets.get(up.id)
        return forget is not None and (up.source_offset is None or up.source_offset < forget.offset)

    # --- reads -------------------------------------------------------------------------------
    @property
    def speed_users(self) -> int:
        return len(self._recent)

    @property
    def n_items(self) -> int:
        return self.n_base + len(self._new.ids)

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._recent or (user_id not in self.erased and user_id in self.user_index)

    def item_position(self, item_id: str) -> int:
        j = self.item_index.get(item_id)
        if j is None or j >= self.n_items:
            raise UnknownId(f"unknown item {item_id!r}")
        return j

    def item_meta(self, item_id: str) -> tuple[str | None, str | None]:
        return self.catalog.get(item_id, (None, None))

    def recommend(self, user_id: str, k: int, exclude_seen: bool = True, category: str | None = None) -> Ranked:
        return self.answer([self.prepare(user_id, k, exclude_seen, category)])[0]

    def prepare(self, user_id: str, k: int, exclude_seen: bool = True, category: str | None = None) -> Query:
        """Everything about one request except the scoring, which `answer` does for many requests at once."""
        recent = self._recent.get(user_id)
        row = None if user_id in self.erased else self.user_index.get(user_id)
        excluded = self._excluded(row, recent) if exclude_seen else np.zeros(0, np.int64)
        vectors = []
        if recent is not None:
            vectors.append(recent.vector)
        if row is not None:  # for a speed user, the batch vector tells which items the speed layer brought in
            vectors.append(self.user_factors[row])
        return Query(user_id, k, category, excluded, vectors, recent)

    def answer(self, queries: list[Query]) -> list[Ranked]:
        """Rank for many prepared queries. In `exact` mode all their vectors are scored by one matrix
        product: the item factors are read from memory once per batch instead of once per request."""
        new = self._new  # one consistent view of the newer items for the whole batch
        vectors = [v for q in queries for v in q.vectors]
        block = self._score_block(vectors, new) if vectors and self.settings.serving_index == "exact" else None
        out, row = [], 0
        for q in queries:
            if not q.vectors:
                out.append(self._popular(q.k, q.category, q.excluded, new))
                continue
            rows = [None if block is None else block[row + i] for i in range(len(q.vectors))]
            row += len(q.vectors)
            tops = [self._top(v, q.k, q.excluded, q.category, new, r) for v, r in zip(q.vectors, rows, strict=True)]
            idx, scores = tops[0]
            if q.recent is None:
                out.append(Ranked(self._ids(idx, new), scores.tolist(), "batch", [False] * len(idx)))
                continue
            batch_ids = set(tops[1][0].tolist()) if len(tops) > 1 else set()
            from_speed = [j not in batch_ids for j in idx.tolist()]
            out.append(Ranked(self._ids(idx, new), scores.tolist(), "speed", from_speed, q.recent.as_of_ms))
        return out

    def popular(self, k: int, category: str | None = None) -> Ranked:
        return self._popular(k, category, np.zeros(0, np.int64), self._new)

    def similar(self, item_id: str, k: int) -> Ranked:
        """Items by cosine similarity of their factors, the item itself left out."""
        new = self._new
        j = self.item_position(item_id)
        target = self._item_vector(j, new)
        norm = np.linalg.norm(target)
        unit = target / norm if norm > 0 else target
        scores = self.unit_items @ unit
        if len(new.ids):
            scores = np.concatenate([scores, normalize_rows(new.factors) @ unit])
        scores[j] = -np.inf
        idx, val = top_k_of_scores(scores, k)
        keep = idx != PAD
        return Ranked(self._ids(idx[keep], new), val[keep].tolist(), "batch", [False] * int(keep.sum()))

    def because(self, user_id: str, item_id: str, n: int) -> tuple[float, list[tuple[str, float]]]:
        """The user's items that most explain the score of `item_id`: (score, [(item, contribution)])."""
        new = self._new
        target_j = self.item_position(item_id)
        history = self.history(user_id, new)
        if not history:
            raise UnknownId(f"no history for user {user_id!r}")
        items = np.fromiter(history, dtype=np.int64)
        strengths = np.fromiter(history.values(), dtype=np.float64)
        vectors = np.vstack([self._item_vector(j, new) for j in items.tolist()])
        shares = explain(self.gram, self.manifest.objective, vectors, strengths, self._item_vector(target_j, new))
        order = np.argsort(-shares, kind="stable")[:n]
        return float(shares.sum()), [(self._id(int(items[i]), new), float(shares[i])) for i in order]

    def history(self, user_id: str, new: _NewItems | None = None) -> dict[int, float]:
        """Item position -> r_ui: the training strengths plus everything since the model's cut-off."""
        new = new or self._new
        out: dict[int, float] = {}
        row = None if user_id in self.erased else self.user_index.get(user_id)
        if row is not None:
            start, end = self.interactions.indptr[row], self.interactions.indptr[row + 1]
            out.update(
                zip(
                    self.interactions.indices[start:end].tolist(),
                    self.interactions.data[start:end].tolist(),
                    strict=True,
                )
            )
        recent = self._recent.get(user_id)
        for item, strength in (recent.strengths if recent else {}).items():
            j = self.item_index.get(item)
            if j is not None and j < self.n_base + len(new.ids):
                out[j] = out.get(j, 0.0) + strength
        return out

    # --- internals ---------------------------------------------------------------------------
    def _scores(self, vector: np.ndarray, new: _NewItems) -> np.ndarray:
        scores = self.item_factors @ vector
        return np.concatenate([scores, new.factors @ vector]) if len(new.ids) else scores

    def _score_block(self, vectors: list[np.ndarray], new: _NewItems) -> np.ndarray:
        """(len(vectors), n_items) scores, one row per vector, rows contiguous."""
        v = np.vstack(vectors).astype(np.float32, copy=False)
        # Y·Vᵀ streams the item matrix once; BLAS runs it several times faster than V·Yᵀ here.
        block = np.ascontiguousarray((self.item_factors @ v.T).T)
        return np.hstack([block, v @ new.factors.T]) if len(new.ids) else block

    def _top(
        self, vector: np.ndarray, k: int, excluded: np.ndarray, category: str | None, new: _NewItems,
        scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        if self.index is not None and category is None:
            idx, val = self._top_approximate(vector, k, excluded, new)
        else:
            scores = self._scores(vector, new) if scores is None else scores
            scores[excluded] = -np.inf
            if category is not None:
                scores[~self._category_mask(category, new)] = -np.inf
            select = full_sort_top_k if self.settings.serving_index == "full_sort" else top_k_of_scores
            idx, val = select(scores, k)
        keep = idx != PAD
        return idx[keep], val[keep]

    def _top_approximate(
        self, vector: np.ndarray, k: int, excluded: np.ndarray, new: _NewItems
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates from the IVF index (asked for enough to survive the exclusions) plus the new items."""
        idx, val = self.index.search(vector, k + len(excluded))
        if len(new.ids):
            idx = np.concatenate([idx, self.n_base + np.arange(len(new.ids))])
            val = np.concatenate([val, new.factors @ vector])
        val = val.astype(np.float32, copy=True)
        val[np.isin(idx, excluded)] = -np.inf
        best, best_val = top_k_of_scores(val, k)
        return np.where(best == PAD, PAD, idx[np.maximum(best, 0)]), best_val

    def _popular(self, k: int, category: str | None, excluded: np.ndarray, new: _NewItems) -> Ranked:
        scores = np.concatenate([self.popularity, np.zeros(len(new.ids), np.float32)])
        scores[excluded] = -np.inf
        if category is not None:
            scores[~self._category_mask(category, new)] = -np.inf
        idx, val = top_k_of_scores(scores, k)
        keep = idx != PAD
        return Ranked(self._ids(idx[keep], new), val[keep].tolist(), "popular", [False] * int(keep.sum()))

    def _excluded(self, row: int | None, recent: _Recent | None) -> np.ndarray:
        """Positions of the items the user had one of the excluded event types on (model period and since)."""
        parts = []
        if row is not None:
            start, end = self.interactions.indptr[row], self.interactions.indptr[row + 1]
            cols = self.interactions.indices[start:end]
            if self.seen_types is not None:  # same sparsity pattern as the interactions, by construction
                cols = cols[(self.seen_types.data[start:end] & self._exclude_bits) != 0]
            parts.append(cols)
        if recent is not None:
            recent_items = [i for i, types in recent.event_types.items() if self._exclude_types.intersection(types)]
            limit = self.n_items  # the new items only ever grow, so these positions stay valid for the answer
            js = [j for i in recent_items if (j := self.item_index.get(i)) is not None and j < limit]
            parts.append(np.array(js, dtype=np.int64))
        return np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _bits(self, event_types: list[str]) -> int:
        names = self.manifest.event_types
        return sum(1 << names.index(t) for t in event_types if t in names)

    def _category_mask(self, category: str, new: _NewItems) -> np.ndarray:
        base = self._category_masks.get(category)
        if base is None:
            base = self._category_masks[category] = self.categories == category
        if not len(new.ids):
            return base
        return np.concatenate([base, np.array([c == category for c in new.categories], dtype=bool)])

    def _item_vector(self, j: int, new: _NewItems) -> np.ndarray:
        return self.item_factors[j] if j < self.n_base else new.factors[j - self.n_base]

    def _id(self, j: int, new: _NewItems) -> str:
        return self.item_ids[j] if j < self.n_base else new.ids[j - self.n_base]

    def _ids(self, idx: np.ndarray, new: _NewItems) -> list[str]:
        return [self._id(j, new) for j in idx.tolist()]

    def has_category(self, category: str) -> bool:
        return category in self.category_names or category in self._new.categories
