"""Example builders for the neural trainers (numpy only): negatives, sessions, next-item prefixes, windows.

Everything is indexed by the `Dataset`'s positions (user row, item column), so the trainers,
the numpy scorers and the evaluation talk about the same integers.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import numpy as np

from recsys.data.inputs import EventLog


def cpu_seconds() -> float:
    """User + system CPU time of this process (every thread): on a shared machine wall time alone misleads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- negative sampling (NeuMF) -------------------------------------------------------------------------
def sample_negatives(
    rng: np.random.Generator, users: np.ndarray, n_items: int, k: int, positive_keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """k uniform items per entry of `users` that the user has not interacted with (resampled until true).

    `positive_keys` = sorted user * n_items + item of all positives; the check is one searchsorted.
    """
    u = np.repeat(users.astype(np.int64), k)
    items = rng.integers(0, n_items, u.size)
    bad = _is_positive(u, items, n_items, positive_keys)
    while bad.any():
        items[bad] = rng.integers(0, n_items, int(bad.sum()))
        bad[bad] = _is_positive(u[bad], items[bad], n_items, positive_keys)
    return u.astype(np.int32), items.astype(np.int32)


def _is_positive(users: np.ndarray, items: np.ndarray, n_items: int, keys: np.ndarray) -> np.ndarray:
    if not keys.size:
        return np.zeros(users.size, bool)
    q = users * n_items + items
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return keys[pos] == q


def epoch_examples(
    rng: np.random.Generator,
    pos_users: np.ndarray,
    pos_items: np.ndarray,
    n_items: int,
    k: int,
    positive_keys: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, ...]:
    """One epoch: all positives + k fresh negatives each, shuffled, cut into (n_batches, batch_size) arrays.

    The remainder that does not fill a batch is dropped (a different one every epoch), so every
    step has one shape and XLA compiles the step once. Fewer examples than a batch: one short batch.
    """
    nu, ni = sample_negatives(rng, pos_users, n_items, k, positive_keys)
    users = np.concatenate([pos_users, nu])
    items = np.concatenate([pos_items, ni])
    labels = np.concatenate([np.ones(pos_users.size, np.float32), np.zeros(nu.size, np.float32)])
    order = rng.permutation(users.size)
    size = min(batch_size, users.size)
    n_batches = users.size // size
    take = order[: n_batches * size].reshape(n_batches, size)
    return users[take], items[take], labels[take]


# --- sessions (SR-GNN) ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sessions:
    """Sessions as one flat item array (CSR style): session s is items[offsets[s]:offsets[s+1]], oldest first."""

    items: np.ndarray  # int32 item positions
    offsets: np.ndarray  # int64, len = n_sessions + 1
    users: np.ndarray  # user row per session
    start_ts: np.ndarray  # ts of each session's first event

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def session_starts(events: EventLog, gap_ms: int) -> np.ndarray:
    """True where an event starts a session: a new user, a new session id (where the log has them), or else more
    than `gap_ms` since the user's previous event."""
    n = len(events)
    start = np.ones(n, dtype=bool)
    if n == 0:
        return start
    start[1:] = events.user[1:] != events.user[:-1]
    if events.session is not None:
        start[1:] |= events.session[1:] != events.session[:-1]
    else:
        start[1:] |= np.diff(events.ts_ms) > gap_ms
    return start


def within_session_gaps(events: EventLog, starts: np.ndarray) -> np.ndarray:
    """Time from each event to the next one of the same session (ms)."""
    if len(events) < 2:
        return np.zeros(0, np.int64)
    same = ~starts[1:]
    return np.diff(events.ts_ms)[same]


def build_sessions(events: EventLog, starts: np.ndarray, dedupe_consecutive: bool = True) -> Sessions:
    """Group an ordered log into sessions at `starts`; optionally drop an item repeated right after itself.

    Why dedupe: "A then A again" (a view then its cart) carries no next-item information, and a
    model would learn to predict the item just seen.
    """
    sid = np.cumsum(starts) - 1
    items, users, ts = events.item, events.user, events.ts_ms
    keep = np.ones(len(items), bool)
    if dedupe_consecutive and len(items) > 1:
        keep[1:] = ~((items[1:] == items[:-1]) & (sid[1:] == sid[:-1]))
    sid, items, users, ts = sid[keep], items[keep], users[keep], ts[keep]
    if not len(items):
        return Sessions(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    first = np.r_[True, sid[1:] != sid[:-1]]
    offsets = np.r_[np.flatnonzero(first), len(items)].astype(np.int64)
    return Sessions(items.astype(np.int32), offsets, users[first].astype(np.int64), ts[first].astype(np.int64))


def prefix_examples(sessions: Sessions, min_context: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every prefix of every session predicts its next item: (begin, end, target) with context = items[begin:end].

    `end` is the flat index of the target, `begin` its session's first index (the model keeps the last L).
    """
    lengths = sessions.lengths
    starts = sessions.offsets[:-1]
    n_ex = np.maximum(lengths - min_context, 0)
    sess = np.repeat(np.arange(len(lengths)), n_ex)
    pos = np.arange(n_ex.sum()) - np.repeat(np.cumsum(n_ex) - n_ex, n_ex)
    ends = starts[sess] + min_context + pos
    return starts[sess].astype(np.int64), ends.astype(np.int64), sessions.items[ends].astype(np.int64)


def gather_windows(
    flat: np.ndarray, begins: np.ndarray, ends: np.ndarray, max_len: int, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Windows flat[max(begin, end − L):end], left-aligned and padded with `pad`: (seqs (n, L) int32, lengths)."""
    lengths = np.minimum(ends - begins, max_len)
    idx = (ends - lengths)[:, None] + np.arange(max_len)[None, :]
    valid = np.arange(max_len)[None, :] < lengths[:, None]
    seqs = np.where(valid, flat[np.clip(idx, 0, max(len(flat) - 1, 0))] if len(flat) else pad, pad)
    return seqs.astype(np.int32), lengths.astype(np.int32)
