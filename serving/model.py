"""What a request reads: one published model plus the speed layer's updates since its cut-off.

A `ServingModel` wraps one artifact (its `Recommender` and the data it was fitted on)
and then only grows: user UPs replace what is known of a user since the cut-off (their
state, strengths, event types and latest events), item UPs add (or move) items newer
than the model. Readers never lock. Everything a request needs in one consistent piece
(the items folded in since the model) is an immutable `NewItems` swapped in whole, and
dict assignments are atomic, so a request sees either the state before an update or
after it, never half of one. A new batch model is a new `ServingModel`, swapped in by
the follower in one assignment (see `follower.py`).

Scoring goes through the recommender interface only: `answer` builds one `UserContext`
per request and scores a whole micro-batch with one `Recommender.score` call (for
factor models: one matrix product, the item matrix read once per batch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recsys.data.inputs import NewItems, UserContext, UserHistory
from recsys.io.model_store import ModelArtifact
from recsys.models.base import select
from recsys.models.capabilities import bought_together, has_factors, similar_source, state_size
from recsys.protocol import ForgetMessage, VectorUpdate
from recsys.settings import Settings
from recsys.topk import PAD, full_sort_top_k, top_k_of_scores
from serving.filters import CAP_OVERFETCH, Unavailable, capped, full, union
from serving.index import ApproximateIndex

log = logging.getLogger("serving.model")

Source = Literal["speed", "batch", "popular", "content"]
VERBS = {"view": "viewed", "add_to_cart": "added", "purchase": "bought"}
EXCLUDED_CACHE = 200_000  # users whose model-data exclusions are kept between requests


class UnknownId(LookupError):
    """A user or item this model (and the updates since) has never seen."""


@dataclass(frozen=True)
class _Recent:
    """A user's activity since the model's cut-off, from their latest UP."""

    state: np.ndarray | None
    strengths: dict[str, float]
    event_types: dict[str, list[str]]
    events: list[tuple[str, str, int]]  # (item, event type, ts ms), oldest first
    as_of_ms: int | None
    source_offset: int | None = None  # `events` offset of the newest event folded in


@dataclass
class Query:
    """One recommend request, prepared: who, what to leave out, and the views of the user to score."""

    user_id: str
    k: int
    categories: tuple[str, ...] | None  # only items of these categories (None: any)
    excluded: np.ndarray  # seen, cooling down, asked to leave out, unavailable
    contexts: list[UserContext]  # [] unknown user; [batch]; [speed]; or [speed, batch]
    recent: _Recent | None
    explain: bool = False
    max_per_category: int | None = None

    @property
    def fetch(self) -> int:
        """How many candidates to rank: more than k when the category cap may drop some."""
        return self.k if self.max_per_category is None else self.k * CAP_OVERFETCH


@dataclass
class Ranked:
    item_ids: list[str]
    scores: list[float]
    source: Source
    # Per item, for speed answers: True if the batch view of the user alone would not have ranked it in the top k.
    from_speed: list[bool]
    as_of_ms: int | None = None
    reasons: list[str | None] | None = None  # "because you viewed X", when asked for


class ServingModel:
    def __init__(self, artifact: ModelArtifact, catalog: dict[str, tuple[str | None, str | None]], s: Settings):
        self.manifest = artifact.manifest
        self.version = artifact.manifest.model_version
        self.settings = s
        self.catalog = catalog
        self.data = artifact.data
        self.model = artifact.model
        self.item_ids: list[str] = self.data.item_ids.tolist()
        self.item_index = {item: j for j, item in enumerate(self.item_ids)}
        self.user_index = {user: u for u, user in enumerate(self.data.user_ids.tolist())}
        self.interactions = self.data.strengths
        self.seen_types = self.data.seen_types
        self.popularity = self.data.popularity()
        self.n_base = len(self.item_ids)
        self.user_history = UserHistory(self.data)  # how a user's context is built, as the speed layer builds it
        self._kinds = {name: b for b, name in enumerate(self.data.event_types)}
        self.categories = np.array([self._category_of(i, j) for j, i in enumerate(self.item_ids)], dtype=object)
        self.category_names = {c for c in self.categories if c}
        self._lower_categories = {c.lower(): c for c in self.category_names}
        self._category_masks: dict[str, np.ndarray] = {}
        self._exclude_bits = self._bits(s.serving_exclude_event_types)
        self._exclude_types = frozenset(s.serving_exclude_event_types)
        self._cooldown_types = frozenset(s.serving_recent_exclude_types)
        self._cooling_kinds = np.array([name in self._cooldown_types for name in self.data.event_types] or [False])
        self._new = NewItems(states=np.zeros((0, 0), np.float32))
        self._new_categories: tuple[str | None, ...] = ()
        # Items the shop cannot sell now (AVAIL messages, set by the follower); left out of every answer.
        self.unavailable = Unavailable()
        self._unavailable_at: tuple[Unavailable, int, np.ndarray] = (self.unavailable, 0, np.zeros(0, np.int64))
        self._recent: dict[str, _Recent] = {}
        self._batch_excluded: dict[int, np.ndarray] = {}  # row -> its exclusions from the model's data alone
        self._json: dict[str, tuple[bytes, bytes]] = {}  # item -> the constant parts of its JSON in an answer
        # Right to erasure: users whose batch row is erased, and each user's latest FORGET (to spot older UPs).
        self.erased: set[str] = set()
        self.forgets: dict[str, ForgetMessage] = {}
        self.speed_updates = 0
        self.index = (
            ApproximateIndex.build(np.asarray(self.model.item_factors), s)
            if s.serving_index == "approximate" and has_factors(self.model)
            else None
        )
        if self.index is None and s.serving_index == "exact":
            # Before the first request, not during it: whatever the model's serving path builds (ALS: its norm index).
            self.model.recommend_many([UserContext()], 1, [None], [None])

    def _category_of(self, item_id: str, j: int | None = None) -> str:
        meta = self.catalog.get(item_id)
        if meta is not None and meta[1]:
            return meta[1]
        if j is not None and self.data.items is not None:
            return self.data.items.category[j] or ""
        return ""

    # --- updates (one writer: the follower thread) ----------------------------------------
    def apply(self, up: VectorUpdate) -> None:
        state = None if up.vector is None else np.asarray(up.vector, dtype=np.float32)
        if state is not None and state.shape != (state_size(self.model),):
            raise ValueError(
                f"UP for {up.kind} {up.id} has {state.shape[0]} values; the model's state size "
                f"(ALS: its rank) is {state_size(self.model)}"
            )
        if up.kind == "user":
            if self._predates_forget(up):
                return
            self._recent[up.id] = _Recent(
                state, up.strengths, up.event_types, list(up.recent), up.event_ts_ms, up.source_offset
            )
        elif up.id in self.item_index and self.item_index[up.id] < self.n_base:
            return  # the speed layer folds in only items newer than the model; a model item keeps its state
        elif state is not None:
            self._set_new_item(up.id, state)
        self.speed_updates += 1

    def _set_new_item(self, item_id: str, state: np.ndarray) -> None:
        new = self._new
        if len(new) and new.states.shape[1] != state.shape[0]:
            raise ValueError(
                f"UP for item {item_id} has {state.shape[0]} values, the model's states have {new.states.shape[1]}"
            )
        j = self.item_index.get(item_id)
        if j is None:
            states = np.vstack([new.states.reshape(len(new), -1), state[None, :]]) if len(new) else state[None, :]
            self._new_categories = (*self._new_categories, self._category_of(item_id) or None)
            self._new = NewItems((*new.ids, item_id), states)
            self.item_index[item_id] = self.n_base + len(new.ids)  # after the swap: the index is valid
        else:
            states = new.states.copy()
            states[j - self.n_base] = state
            self._new = NewItems(new.ids, states)

    def forget(self, message: ForgetMessage) -> None:
        """Erase what this process holds of a user from before their FORGET marker.

        Their batch row goes if this model's data ends before the marker (a later model
        was cleaned of them); their speed state goes if it folds in earlier events.
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

    def set_available(self, item_id: str, available: bool) -> None:
        self.unavailable = self.unavailable.changed(item_id, available)

    def set_unavailable(self, item_ids: Iterable[str]) -> None:
        """Every unavailable item at once (a model about to be swapped in)."""
        self.unavailable = Unavailable(frozenset(item_ids))

    def unavailable_positions(self) -> np.ndarray:
        """Positions of the items that cannot be sold now (recomputed when they or the new items change)."""
        # Keyed by the id map's size, which grows after the new items do (see `_set_new_item`): a position computed
        # between the two is computed again once the new item has its id.
        unavailable, known = self.unavailable, len(self.item_index)
        cached, cached_known, positions = self._unavailable_at
        if cached is not unavailable or cached_known != known:
            positions = unavailable.positions(self.item_index, self.n_items)
            self._unavailable_at = (unavailable, known, positions)  # one assignment: readers never see half
        return positions

    # --- reads -------------------------------------------------------------------------------
    @property
    def speed_users(self) -> int:
        return len(self._recent)

    @property
    def n_items(self) -> int:
        return self.n_base + len(self._new.ids)

    def shoppers(self, k: int) -> list[tuple[str, int]]:
        """The k users with the most events in the model's data (pseudonyms), for demos and operators."""
        totals = np.diff(self.interactions.indptr)
        out = []
        for u in np.lexsort((np.arange(len(totals)), -totals)):
            user = str(self.data.user_ids[u])
            if user not in self.erased and not user.startswith("erased-"):
                out.append((user, int(totals[u])))
            if len(out) == k:
                break
        return out

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._recent or (user_id not in self.erased and user_id in self.user_index)

    def item_position(self, item_id: str) -> int:
        j = self.item_index.get(item_id)
        if j is None or j >= self.n_items:
            raise UnknownId(f"unknown item {item_id!r}")
        return j

    def item_meta(self, item_id: str) -> tuple[str | None, str | None]:
        meta = self.catalog.get(item_id)
        if meta is not None:
            return meta
        j = self.item_index.get(item_id)
        if j is not None and j < self.n_base and self.data.items is not None:
            return self.data.items.title[j], self.data.items.category[j]
        return None, None

    def item_json(self, item_id: str) -> tuple[bytes, bytes]:
        """The constant parts of an item's JSON object in an answer, around its score: `{"item_id":…,"score":` and
        `,"title":…,"category":…,"from_speed":` (built once per item: the hot endpoint joins bytes, see fast.py)."""
        parts = self._json.get(item_id)
        if parts is None:
            title, category = self.item_meta(item_id)
            head = '{"item_id":' + json.dumps(item_id, ensure_ascii=False) + ',"score":'
            tail = (
                ',"title":'
                + json.dumps(title, ensure_ascii=False)
                + ',"category":'
                + json.dumps(category, ensure_ascii=False)
                + ',"from_speed":'
            )
            parts = self._json[item_id] = (head.encode(), tail.encode())
        return parts

    def items_json(self, item_ids: list[str]) -> list[tuple[bytes, bytes]]:
        """`item_json` of many items (a batch call's answers): cached parts looked up without a call per item."""
        parts = list(map(self._json.get, item_ids))
        if None in parts:  # items not written yet
            parts = [p if p is not None else self.item_json(i) for i, p in zip(item_ids, parts, strict=True)]
        return parts  # type: ignore[return-value]  # no None left

    def canonical_category(self, category: str) -> str | None:
        """The catalogue's spelling of a category, matched without regard to case; None if unknown."""
        if category in self.category_names or category in self._new_categories:
            return category
        return self._lower_categories.get(category.lower())

    def accepted_categories(self) -> tuple[set[str], set[str]]:
        """What `canonical_category` accepts: (these in any case, these only as spelled): the API's document."""
        return set(self.category_names), {c for c in self._new_categories if c} - self.category_names

    def has_category(self, category: str) -> bool:
        return self.canonical_category(category) is not None

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool = True,
        category: str | Sequence[str] | None = None,
        explain: bool = False,
        *,
        exclude: Sequence[str] = (),
        max_per_category: int | None = None,
    ) -> Ranked:
        return self.answer(
            [
                self.prepare(
                    user_id, k, exclude_seen, category, explain, exclude=exclude, max_per_category=max_per_category
                )
            ]
        )[0]

    def context(self, user_id: str, with_speed: bool = True) -> UserContext | None:
        """The user as the model sees them now (training data plus their latest UP); None if nothing is known."""
        recent = self._recent.get(user_id) if with_speed else None
        row = None if user_id in self.erased else self.user_index.get(user_id)
        if row is None and recent is None:
            return None
        if recent is None:  # the batch view: slices of the model's arrays, no per-item Python
            assert row is not None  # ruled out above: one of the two is known
            return self.user_history.at_cutoff(row, self.model.recent_events)
        added = {j: s for item, s in recent.strengths.items() if (j := self.item_index.get(item)) is not None}
        later = [
            (j, self._kinds.get(kind, 0), ts)
            for item, kind, ts in recent.events
            if (j := self.item_index.get(item)) is not None
        ]
        # Request-time models index the model's own items; new items enter through their state.
        return self.user_history.now(row, added, later, self.n_base, self.model.recent_events, state=recent.state)

    def prepare(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool = True,
        category: str | Sequence[str] | None = None,
        explain: bool = False,
        *,
        exclude: Sequence[str] = (),
        max_per_category: int | None = None,
    ) -> Query:
        """Everything about one request except the scoring, which `answer` does for many requests at once.

        `category`: one category or several (an item of any of them qualifies); `exclude`: item ids the caller
        leaves out; `max_per_category`: at most that many items of one category. Unavailable items never come back.
        """
        recent = self._recent.get(user_id)
        row = None if user_id in self.erased else self.user_index.get(user_id)
        excluded: np.ndarray | None
        if not exclude_seen:
            excluded = np.zeros(0, np.int64)
        elif recent is None and row is not None:  # depends on the model's data alone: computed once per user
            excluded = self._batch_excluded.get(row)
            if excluded is None:
                if len(self._batch_excluded) >= EXCLUDED_CACHE:
                    self._batch_excluded.clear()
                excluded = self._batch_excluded[row] = self._excluded(row, None)
        else:
            excluded = self._excluded(row, recent)
        contexts = []
        now = self.context(user_id)
        if now is not None:
            contexts.append(now)
            if recent is not None and row is not None:  # the batch view tells which items the speed layer brought in
                batch = self.context(user_id, with_speed=False)
                assert batch is not None  # the user has a row
                contexts.append(batch)
        asked_out = [j for i in exclude if (j := self.item_index.get(i)) is not None and j < self.n_items]
        excluded = union(excluded, asked_out, self.unavailable_positions())
        return Query(user_id, k, self._canonical(category), excluded, contexts, recent, explain, max_per_category)

    def _canonical(self, category: str | Sequence[str] | None) -> tuple[str, ...] | None:
        if category is None:
            return None
        names = (category,) if isinstance(category, str) else tuple(category)
        return tuple(dict.fromkeys(self.canonical_category(c) or c for c in names)) or None

    def answer(self, queries: list[Query]) -> list[Ranked]:
        """Rank for many prepared queries: all their contexts are ranked by one call to the recommender."""
        new = self._new  # one consistent view of the newer items for the whole batch
        tops = iter(self._tops(queries, new))
        out = []
        for q in queries:
            if not q.contexts:
                out.append(self._popular(q.k, q.categories, q.excluded, new, q.max_per_category))
                continue
            ranked_views = [self._capped(view, q, new) for view in (next(tops) for _ in q.contexts)]
            idx, scores = ranked_views[0]
            if len(idx) == 0:  # nothing the model can rank for this user (or this filter)
                out.append(self._popular(q.k, q.categories, q.excluded, new, q.max_per_category))
                continue
            if q.recent is None:
                ranked = Ranked(self._ids(idx, new), scores.tolist(), "batch", [False] * len(idx))
            else:
                batch_ids = set(ranked_views[1][0].tolist()) if len(ranked_views) > 1 else set()
                from_speed = [j not in batch_ids for j in idx.tolist()]
                ranked = Ranked(self._ids(idx, new), scores.tolist(), "speed", from_speed, q.recent.as_of_ms)
            if len(idx) < q.k:  # top up with popular items rather than answer short
                ranked = self._top_up(ranked, q, new)
            if q.explain:
                ranked.reasons = [self._reason(q.contexts[0], j) for j in self._positions(ranked.item_ids)]
            out.append(ranked)
        return out

    def _capped(self, view: tuple[np.ndarray, np.ndarray], q: Query, new: NewItems) -> tuple[np.ndarray, np.ndarray]:
        """One ranked view with the category cap applied (as it is when the query has none)."""
        if q.max_per_category is None:
            return view
        idx, scores = view
        keep = capped(self._categories_at(idx, new), q.max_per_category, q.k, {})
        return idx[keep], scores[keep]

    def _categories_at(self, idx: np.ndarray, new: NewItems) -> list[str | None]:
        n_base, extra = self.n_base, self._new_categories
        return [self.categories[j] if j < n_base else extra[j - n_base] for j in idx.tolist()]

    def _tops(self, queries: list[Query], new: NewItems) -> list[tuple[np.ndarray, np.ndarray]]:
        """(positions, scores) per context of every query, in order: one `recommend_many` call for the batch
        (exact), or the naive full sort / the approximate index per context (benchmark and large-catalogue modes)."""
        pairs = [(q, c) for q in queries for c in q.contexts]
        if not pairs:
            return []
        if self.index is None and self.settings.serving_index == "exact":
            k = max(q.fetch for q, _ in pairs)
            allowed = [self._allowed(q.categories, new) for q, _ in pairs]
            tops = self.model.recommend_many([c for _, c in pairs], k, [q.excluded for q, _ in pairs], allowed, new)
            return [(i[: q.fetch], v[: q.fetch]) for (q, _), (i, v) in zip(pairs, tops, strict=True)]
        block = self._score_block([c for _, c in pairs], new) if self.index is None else None
        return [
            self._top(c, q.fetch, q.excluded, q.categories, new, None if block is None else block[r])
            for r, (q, c) in enumerate(pairs)
        ]

    def popular(self, k: int, category: str | Sequence[str] | None = None) -> Ranked:
        return self._popular(k, self._canonical(category), self.unavailable_positions(), self._new)

    def similar(self, item_id: str, k: int) -> Ranked:
        """Items like this one by the model's own notion (factors, co-occurrence, attributes), itself left out.

        An item the model has nothing on gets the popular items of its category, marked as such.
        """
        j = self.item_position(item_id)
        hidden = self.unavailable_positions()
        asked = k + len(hidden)  # enough to survive leaving the unavailable ones out
        idx, val = self.model.similar_items(j, asked) if j < self.n_base else (np.zeros(0, np.int64), np.zeros(0))
        keep = (idx != PAD) & np.isfinite(val) & (val > 0) & ~np.isin(idx, hidden)
        idx, val = idx[keep][:k], val[keep][:k]
        if len(idx) == 0:
            return self._popular(k, self._own_category(j), union([j], hidden), self._new)
        source: Source = similar_source(self.model, j)
        return Ranked(self._ids(idx, self._new), val.astype(float).tolist(), source, [False] * len(idx))

    def bought_together(self, item_id: str, k: int) -> Ranked:
        """Items carted or bought together with this one; the popular items of its category when the model has none."""
        j = self.item_position(item_id)
        hidden = self.unavailable_positions()
        asked = k + len(hidden)  # enough to survive leaving the unavailable ones out
        idx, val = bought_together(self.model, j, asked) if j < self.n_base else (np.zeros(0, np.int64), np.zeros(0))
        keep = (idx != PAD) & np.isfinite(val) & (val > 0) & ~np.isin(idx, hidden)
        idx, val = idx[keep][:k], val[keep][:k]
        if not len(idx):
            return self._popular(k, self._own_category(j), union([j], hidden), self._new)
        return Ranked(self._ids(idx, self._new), val.astype(float).tolist(), "batch", [False] * len(idx))

    def _own_category(self, j: int) -> tuple[str, ...] | None:
        category = self.categories[j] if j < self.n_base else self._new_categories[j - self.n_base]
        return (category,) if category else None

    def because(self, user_id: str, item_id: str, n: int) -> tuple[float, list[tuple[str, float]]]:
        """The user's items that most explain the score of `item_id`: (score, [(item, contribution)])."""
        target = self.item_position(item_id)
        ctx = self.context(user_id)
        if ctx is None or (not len(ctx.items) and not len(ctx.recent)):
            raise UnknownId(f"no history for user {user_id!r}")
        if target >= self.n_base:
            return 0.0, []
        if self.model.additive_explanations:  # the shares of all the user's items make up the score
            every = self.model.explain(ctx, target, len(ctx.items) + len(ctx.recent))
            score = float(sum(r.share for r in every))
        else:
            score = float(self.model.score([ctx])[0, target])
        reasons = self.model.explain(ctx, target, n)
        return score, [(self.item_ids[r.item], r.share) for r in reasons]

    def history(self, user_id: str) -> dict[int, float]:
        """Item position -> r_ui: the training strengths plus everything since the model's cut-off."""
        new = self._new
        row = None if user_id in self.erased else self.user_index.get(user_id)
        out = self._batch_history(row)
        recent = self._recent.get(user_id)
        for item, strength in (recent.strengths if recent else {}).items():
            j = self.item_index.get(item)
            if j is not None and j < self.n_base + len(new.ids):
                out[j] = out.get(j, 0.0) + strength
        return out

    # --- internals ---------------------------------------------------------------------------
    def _batch_history(self, row: int | None) -> dict[int, float]:
        return self.user_history.strengths(row)

    def _score_block(self, contexts: list[UserContext], new: NewItems) -> np.ndarray:
        """(len(contexts), n_items) scores, one row per context, rows contiguous."""
        return np.ascontiguousarray(self.model.score(contexts, new), dtype=np.float32)

    def _top(
        self,
        ctx: UserContext,
        k: int,
        excluded: np.ndarray,
        categories: tuple[str, ...] | None,
        new: NewItems,
        scores: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.index is not None and categories is None:
            return self._top_approximate(ctx, k, excluded, new)
        if scores is None:
            scores = self._score_block([ctx], new)[0]
        scores = scores.copy()
        scores[excluded[excluded < len(scores)]] = -np.inf
        allowed = self._allowed(categories, new)
        if allowed is not None:
            scores[~allowed] = -np.inf
        if self.settings.serving_index == "full_sort":
            idx, val = full_sort_top_k(scores, k)
        else:
            idx, val = top_k_of_scores(scores, k)
        keep = (idx != PAD) & np.isfinite(val)
        return idx[keep], val[keep]

    def _top_approximate(self, ctx: UserContext, k: int, excluded: np.ndarray, new: NewItems):
        """Candidates from the IVF index (asked for enough to survive the exclusions) plus the new items."""
        assert self.index is not None and has_factors(self.model)  # the index is built for factor models only
        vector = self.model.user_vectors([ctx])[0]
        idx, val = self.index.search(vector, k + len(excluded))
        if len(new):
            idx = np.concatenate([idx, self.n_base + np.arange(len(new))])
            val = np.concatenate([val, new.states @ vector])
        val = val.astype(np.float32, copy=True)
        val[np.isin(idx, excluded)] = -np.inf
        best, best_val = top_k_of_scores(val, k)
        keep = best != PAD
        return idx[best[keep]], best_val[keep]

    def _popular(
        self,
        k: int,
        categories: tuple[str, ...] | None,
        excluded: np.ndarray,
        new: NewItems,
        max_per_category: int | None = None,
        counts: dict[str, int] | None = None,
    ) -> Ranked:
        """The most popular items; under a category cap, ranked again without the categories that filled up
        (each pass fills one at least, or runs out of items), so the answer is short only if the items are."""
        scores = np.concatenate([self.popularity, np.zeros(len(new), np.float32)])
        allowed = self._allowed(categories, new)
        if max_per_category is None:
            idx, val = select(scores, k, excluded, allowed)
            return Ranked(self._ids(idx, new), val.tolist(), "popular", [False] * len(idx))
        counts = dict(counts or {})
        taken_idx, taken_val = np.zeros(0, np.int64), np.zeros(0, np.float32)
        while len(taken_idx) < k:
            mask = allowed.copy() if allowed is not None else np.ones(len(scores), dtype=bool)
            for category in full(counts, max_per_category):
                mask &= ~self._category_mask(category, new)
            need = k - len(taken_idx)
            idx, val = select(scores, need * CAP_OVERFETCH, union(excluded, taken_idx), mask)
            keep = capped(self._categories_at(idx, new), max_per_category, need, counts)
            taken_idx, taken_val = np.concatenate([taken_idx, idx[keep]]), np.concatenate([taken_val, val[keep]])
            if len(idx) < need * CAP_OVERFETCH:
                break  # every allowed item was ranked: there are no more
        return Ranked(self._ids(taken_idx, new), taken_val.tolist(), "popular", [False] * len(taken_idx))

    def _top_up(self, ranked: Ranked, q: Query, new: NewItems) -> Ranked:
        positions = np.asarray(self._positions(ranked.item_ids), np.int64)
        taken = np.concatenate([q.excluded, positions])
        counts: dict[str, int] = {}
        for category in self._categories_at(positions, new):
            if category:
                counts[category] = counts.get(category, 0) + 1
        extra = self._popular(q.k - len(ranked.item_ids), q.categories, taken, new, q.max_per_category, counts)
        ranked.item_ids += extra.item_ids
        ranked.scores += [0.0] * len(extra.item_ids)  # below every model score: they only fill the list
        ranked.from_speed += [False] * len(extra.item_ids)
        return ranked

    def _positions(self, item_ids: list[str]) -> list[int]:
        return [self.item_index[i] for i in item_ids]

    def _reason(self, ctx: UserContext, item: int) -> str | None:
        """'because you viewed X': the user's event that carries most of this item's score."""
        if item >= self.n_base:
            return None
        reasons = self.model.explain(ctx, item, 1)
        if not reasons:
            return None
        source = reasons[0].item
        kind = self._last_kind(ctx, source)
        title = self.item_meta(self.item_ids[source])[0] or self.item_ids[source]
        return f"because you {VERBS.get(kind, 'viewed')} {title}"

    def _last_kind(self, ctx: UserContext, item: int) -> str:
        hits = np.flatnonzero(ctx.recent == item)
        if len(hits):
            return self.data.event_types[int(ctx.recent_kinds[hits[-1]])]
        return "view"

    def _excluded(self, row: int | None, recent: _Recent | None) -> np.ndarray:
        """Positions not to recommend: items the user had an excluded event type on (model period and since),
        and items they viewed or carted within the cool-down before their latest event."""
        parts = []
        if row is not None:
            start, end = self.interactions.indptr[row], self.interactions.indptr[row + 1]
            cols = self.interactions.indices[start:end]
            if self.seen_types is not None:  # same sparsity pattern as the interactions, by construction
                cols = cols[(self.seen_types.data[start:end] & self._exclude_bits) != 0]
            parts.append(cols)
        limit = self.n_items  # the new items only ever grow, so these positions stay valid for the answer
        if recent is not None:
            recent_items = [i for i, types in recent.event_types.items() if self._exclude_types.intersection(types)]
            js = [j for i in recent_items if (j := self.item_index.get(i)) is not None and j < limit]
            parts.append(np.array(js, dtype=np.int64))
        parts.append(self._cooling(row, recent, limit))
        return np.unique(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    def _cooling(self, row: int | None, recent: _Recent | None, limit: int) -> np.ndarray:
        window_ms = self.settings.serving_recent_exclude_s * 1000
        if window_ms <= 0 or not self._cooldown_types:
            return np.zeros(0, np.int64)
        items, ts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        cooling = np.zeros(0, dtype=bool)
        if row is not None:
            ev, lo, hi = self.data.events, self.user_history.ptr[row], self.user_history.ptr[row + 1]
            items, ts = ev.item[lo:hi].astype(np.int64), ev.ts_ms[lo:hi].astype(np.int64)
            cooling = self._cooling_kinds[ev.kind[lo:hi].astype(np.int64)]
        if recent is not None and recent.events:
            extra = [
                (j, kind in self._cooldown_types, t)
                for item, kind, t in recent.events
                if (j := self.item_index.get(item)) is not None and j < limit
            ]
            if extra:
                items = np.concatenate([items, np.array([e[0] for e in extra], np.int64)])
                cooling = np.concatenate([cooling, np.array([e[1] for e in extra], dtype=bool)])
                ts = np.concatenate([ts, np.array([e[2] for e in extra], np.int64)])
        if not len(items):
            return np.zeros(0, np.int64)
        # Relative to the user's own latest event: replayed history keeps its meaning, live traffic is "now".
        return items[cooling & (ts.max() - ts <= window_ms)]

    def _bits(self, event_types: list[str]) -> int:
        names = self.manifest.event_types
        return sum(1 << names.index(t) for t in event_types if t in names)

    def _allowed(self, categories: tuple[str, ...] | None, new: NewItems) -> np.ndarray | None:
        """The allowed-items filter of a category filter: items of any of the categories (None: no filter)."""
        if categories is None:
            return None
        if len(categories) == 1:
            return self._category_mask(categories[0], new)
        return np.logical_or.reduce([self._category_mask(c, new) for c in categories])

    def _category_mask(self, category: str, new: NewItems) -> np.ndarray:
        base = self._category_masks.get(category)
        if base is None:
            base = self._category_masks[category] = self.categories == category
        if not len(new):
            return base
        return np.concatenate([base, np.array([c == category for c in self._new_categories], dtype=bool)])

    def _id(self, j: int, new: NewItems) -> str:
        return self.item_ids[j] if j < self.n_base else new.ids[j - self.n_base]

    def _ids(self, idx: np.ndarray, new: NewItems) -> list[str]:
        positions = idx.tolist()
        if not len(new) or max(positions, default=0) < self.n_base:  # model items only: one C-level lookup
            return list(map(self.item_ids.__getitem__, positions))
        return [self._id(j, new) for j in positions]
