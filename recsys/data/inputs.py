"""What every recommender is fitted on and asked about, as arrays: the ground floor under models, IO and evaluation.

- `Dataset` (with its `EventLog` and `ItemAttributes`): the training data of a model, built from the silver
  snapshot by `recsys.data.datasets` and carried by every artifact (`recsys.io.model_store`);
- `UserContext`: one user as a model scores them, and `UserHistory`, the one place a context is built, for
  the batch view (the model's data at its cut-off), the speed layer and serving (plus what came since);
- `NewItems`: items first seen after the model, with the state the speed layer gave them.

Nothing here imports a model, so `io`, `data` and `evaluation` need not import `recsys.models`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_F = np.zeros(0, np.float32)


# --- the data a model is fitted on ------------------------------------------------------------
@dataclass(frozen=True)
class EventLog:
    """Events as parallel arrays, ordered by user, then time (ties in a fixed order).

    `user` and `item` are positions in the dataset's id arrays, `kind` a position in its
    `event_types`. `indptr[u]:indptr[u+1]` are user u's events, oldest first.
    """

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    ts_ms: np.ndarray  # int64
    kind: np.ndarray  # int8
    session: np.ndarray | None = None  # int64 session codes, if the data has sessions
    weight: np.ndarray | None = None  # float32: the strength each event adds to r_ui (None: not kept)

    @staticmethod
    def empty() -> EventLog:
        return EventLog(
            np.zeros(0, np.int32),
            np.zeros(0, np.int32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int8),
            None,
            np.zeros(0, np.float32),
        )

    def __len__(self) -> int:
        return len(self.user)

    def indptr(self, n_users: int) -> np.ndarray:
        return np.searchsorted(self.user, np.arange(n_users + 1)).astype(np.int64)

    def tail(self, n_users: int, n: int) -> EventLog:
        """The latest `n` events of each user (what an artifact carries for request-time models)."""
        ptr = self.indptr(n_users)
        end = np.repeat(ptr[1:], np.diff(ptr))
        keep = np.arange(len(self)) >= end - n
        return self.take(keep)

    def take(self, mask_or_index: np.ndarray) -> EventLog:
        s = None if self.session is None else self.session[mask_or_index]
        w = None if self.weight is None else self.weight[mask_or_index]
        return EventLog(
            self.user[mask_or_index],
            self.item[mask_or_index],
            self.ts_ms[mask_or_index],
            self.kind[mask_or_index],
            s,
            w,
        )


@dataclass(frozen=True)
class ItemAttributes:
    """Catalogue attributes aligned with the dataset's items (None / NaN where unknown)."""

    category: np.ndarray  # object: str | None
    title: np.ndarray  # object: str | None
    price: np.ndarray  # float64, NaN = unknown
    tags: np.ndarray  # object: str, '|'-separated ("" = none)

    @staticmethod
    def unknown(n_items: int) -> ItemAttributes:
        return ItemAttributes(
            np.full(n_items, None, object),
            np.full(n_items, None, object),
            np.full(n_items, np.nan),
            np.full(n_items, "", object),
        )


@dataclass(frozen=True)
class Dataset:
    """The training data every model is fitted on, and the shared part of every artifact.

    `strengths[u, i]` is r_ui, the summed event weights of user u on item i; `seen_types`
    has the same sparsity, bit b set = event type `event_types[b]` was seen for (u, i).
    `events` is the whole ordered log for fitting; an artifact keeps only its tail.
    """

    user_ids: np.ndarray  # str
    item_ids: np.ndarray  # str
    strengths: sp.csr_matrix  # float32 (n_users, n_items)
    event_types: list[str]
    events: EventLog = field(default_factory=EventLog.empty)
    seen_types: sp.csr_matrix | None = None  # int32, same pattern as strengths
    items: ItemAttributes | None = None

    def __post_init__(self) -> None:
        shape = (len(self.user_ids), len(self.item_ids))
        if self.strengths.shape != shape:
            raise ValueError(f"strengths have shape {self.strengths.shape}, ids say {shape}")
        if self.seen_types is not None and self.seen_types.shape != shape:
            raise ValueError(f"seen_types have shape {self.seen_types.shape}, ids say {shape}")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def attributes(self) -> ItemAttributes:
        return self.items if self.items is not None else ItemAttributes.unknown(self.n_items)

    def popularity(self) -> np.ndarray:
        """Distinct users per item (one heavy user does not make a hit)."""
        m = self.strengths
        return np.bincount(m.indices[m.data != 0], minlength=m.shape[1]).astype(np.float32)

    @cached_property
    def history(self) -> UserHistory:
        """Every user's history, built once: its index over the event log is a pass over the whole log."""
        return UserHistory(self)

    def context(self, row: int, recent: int | None = None) -> UserContext:
        """A training user as the models see them at the model's cut-off."""
        return self.history.at_cutoff(row, recent)

    def contexts(self, rows: Sequence[int] | np.ndarray, recent: int | None = None) -> list[UserContext]:
        history = self.history
        return [history.at_cutoff(int(r), recent) for r in rows]


def _read_only(values: np.ndarray, dtype: type) -> np.ndarray:
    """`values` as `dtype` (a view when it already is one) that cannot be written through."""
    out: np.ndarray = np.asarray(values, dtype).view()
    out.flags.writeable = False
    return out


# --- what a score is asked for ------------------------------------------------------------------
@dataclass
class UserContext:
    """One user as a model scores them: who they are to the model, and what they did (oldest first).

    `items`/`strengths` are the user's whole history r_ui over item positions (training
    data plus everything since the cut-off); `recent*` their latest events in time order
    (bounded); `state` what the speed layer computed for them (`update_users`), if anything.
    """

    row: int | None = None
    items: np.ndarray = field(default_factory=lambda: _EMPTY_I)
    strengths: np.ndarray = field(default_factory=lambda: _EMPTY_F)
    recent: np.ndarray = field(default_factory=lambda: _EMPTY_I)
    recent_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    recent_kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    state: np.ndarray | None = None

    @property
    def is_empty(self) -> bool:
        return self.row is None and not len(self.items) and not len(self.recent) and self.state is None


@dataclass(frozen=True)
class NewItems:
    """Items first seen after the model, with the state the speed layer gave each (ALS: a folded-in vector)."""

    ids: tuple[str, ...] = ()
    states: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __len__(self) -> int:
        return len(self.ids)


# One event since the model's cut-off, as a history holds it: (item position, event-type position, ts ms).
LaterEvent = tuple[int, int, int]


class UserHistory:
    """The one place a `UserContext` is built: a user's row of the model's data, plus what came since.

    The batch view (`Dataset.context`, evaluation), the speed layer (`SpeedState.context`: the training row
    plus the events it folded in) and serving (`ServingModel.context`: the training row plus the user's latest
    UP) all ask it, so a user is the same history to a model wherever it is scored.
    """

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self.ptr = data.events.indptr(data.n_users)  # the user's rows of the (tail of the) event log
        # `at_cutoff`'s arrays in a context's dtypes, converted once: a user's context is then five slices, not
        # five copies (serving builds one per request; a 1,000-user bulk call spent more on copies than on BLAS).
        # Read-only, so a context cannot write into the model's data through its views.
        m, ev = data.strengths, data.events
        self._items = _read_only(m.indices, np.int64)
        self._strengths = _read_only(m.data, np.float32)
        self._recent = _read_only(ev.item, np.int64)
        self._recent_ts_ms = _read_only(ev.ts_ms, np.int64)
        self._recent_kinds = _read_only(ev.kind, np.int8)

    def strengths(self, row: int | None) -> dict[int, float]:
        """Item position -> r_ui of the training row ({} for a user the model does not know)."""
        if row is None:
            return {}
        m = self.data.strengths
        start, end = m.indptr[row], m.indptr[row + 1]
        return dict(zip(m.indices[start:end].tolist(), m.data[start:end].tolist(), strict=True))

    def at_cutoff(self, row: int, recent: int | None = None) -> UserContext:
        """The training user at the model's cut-off: read-only slices of the model's arrays, no per-item Python."""
        indptr = self.data.strengths.indptr
        start, end = indptr[row], indptr[row + 1]
        hi = self.ptr[row + 1]
        lo = self.ptr[row] if recent is None else max(self.ptr[row], hi - recent)
        return UserContext(
            row=row,
            items=self._items[start:end],
            strengths=self._strengths[start:end],
            recent=self._recent[lo:hi],
            recent_ts_ms=self._recent_ts_ms[lo:hi],
            recent_kinds=self._recent_kinds[lo:hi],
        )

    def now(
        self,
        row: int | None,
        added: Mapping[int, float],
        later: Iterable[LaterEvent],
        usable: int,
        recent: int,
        state: np.ndarray | None = None,
    ) -> UserContext:
        """The user now: the training row (if the model knows them) plus the strengths `added` and the events
        `later` since the cut-off; only item positions below `usable` (what the model's maths can index), the
        latest `recent` events (none for `recent` = 0: a caller whose model reads no events skips building them,
        ~2 µs per user in the speed layer's ALS fold-in)."""
        items = self.strengths(row)
        for j, strength in added.items():
            items[j] = items.get(j, 0.0) + strength
        events: list[LaterEvent] = []
        if row is not None and recent > 0:
            ev, lo, hi = self.data.events, self.ptr[row], self.ptr[row + 1]
            events = list(zip(ev.item[lo:hi].tolist(), ev.kind[lo:hi].tolist(), ev.ts_ms[lo:hi].tolist(), strict=True))
        if recent > 0:  # (a slice [-0:] would keep them all)
            events += later
            events = [e for e in events if e[0] < usable][-recent:]
        keys = np.fromiter((j for j in items if j < usable), np.int64)
        return UserContext(
            row=row,
            items=keys,
            strengths=np.array([items[j] for j in keys.tolist()], np.float32),
            recent=np.array([e[0] for e in events], np.int64),
            recent_kinds=np.array([e[1] for e in events], np.int8),
            recent_ts_ms=np.array([e[2] for e in events], np.int64),
            state=state,
        )
