"""Building a `Dataset` (what every recommender is fitted on) from events as columns.

One builder for the train job (Arrow columns collected from the silver snapshot) and
the evaluation protocol (pandas frames), so both compute r_ui, the event-type bits and
the ordered event log the same way:

    r_ui = Σ over u's events on i of weight · 0.5 ** (age / half-life)   (no decay when half-life = 0)

with the age measured from the newest event in the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.data.inputs import Dataset, EventLog, ItemAttributes

DAY_MS = 86_400_000
# A catalogue row as `recsys.data.catalog.attributes` gives it: (category, title, price, tags).
Attributes = tuple[str | None, str | None, float | None, str]


def positions(values: pa.Array | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each value in `ids` (int64), -1 where absent."""
    found = pc.index_in(pa.array(values, type=pa.string()), value_set=pa.array(ids.astype(str), type=pa.string()))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def sorted_ids(values: pa.Array | np.ndarray) -> np.ndarray:
    """The distinct values, sorted (ids are positions in this order: deterministic)."""
    return np.sort(np.asarray(pc.unique(pa.array(values, type=pa.string())).to_pylist(), dtype=object))


def build(
    user: pa.Array | np.ndarray,
    item: pa.Array | np.ndarray,
    ts_ms: np.ndarray,
    event_type: pa.Array | np.ndarray,
    weight: np.ndarray,
    event_types: Sequence[str],
    *,
    tiebreak: np.ndarray | None = None,
    session: pa.Array | np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
    items: Mapping[str, Attributes] | None = None,
    half_life_days: float = 0.0,
) -> tuple[Dataset, int]:
    """The dataset of these events, and how many were left out (user or item not in the given id orders).

    Events of a user are ordered by time, then `tiebreak` (default: item id, then weight).
    """
    users = sorted_ids(user) if user_ids is None else np.asarray(user_ids, dtype=object)
    item_order = sorted_ids(item) if item_ids is None else np.asarray(item_ids, dtype=object)
    rows, cols = positions(user, users), positions(item, item_order)
    types = list(event_types)
    kinds = positions(event_type, np.asarray(types, dtype=object))
    known = (rows >= 0) & (cols >= 0) & (kinds >= 0)
    ts = np.asarray(ts_ms, dtype=np.int64)
    w = np.asarray(weight, dtype=np.float64)
    if half_life_days > 0 and len(ts):
        w = w * 0.5 ** ((ts.max() - ts) / (half_life_days * DAY_MS))
    ties = np.asarray(tiebreak) if tiebreak is not None else None
    rows, cols, kinds, ts, w = rows[known], cols[known], kinds[known].astype(np.int8), ts[known], w[known]
    # Item positions follow sorted ids, so ordering by position orders ties by item id, as the protocol does.
    keys = (w, cols, ts, rows) if ties is None else (ties[known], ts, rows)
    order = np.lexsort(keys)
    rows, cols, kinds, ts, w = rows[order], cols[order], kinds[order], ts[order], w[order]
    shape = (users.size, item_order.size)
    # COO -> CSR sums duplicate (user, item) entries: repeated events add up to r_ui.
    strengths = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=shape)
    strengths.sum_duplicates()
    strengths.sort_indices()
    codes = None
    if session is not None:
        raw = pa.array(session, type=pa.string()).fill_null("")
        codes = pc.dictionary_encode(raw).indices.to_numpy(zero_copy_only=False).astype(np.int64)[known][order]
    log = EventLog(rows.astype(np.int32), cols.astype(np.int32), ts, kinds, codes, w.astype(np.float32))
    data = Dataset(
        users, item_order, strengths, types, log, or_bits(rows, cols, kinds, strengths), attributes(item_order, items)
    )
    return data, int((~known).sum())


def or_bits(rows: np.ndarray, cols: np.ndarray, kinds: np.ndarray, pattern: sp.csr_matrix) -> sp.csr_matrix:
    """Per (user, item), the OR of 1 << kind over its events, laid out on `pattern`'s sparsity."""
    n_items = pattern.shape[1]
    key = rows.astype(np.int64) * n_items + cols
    uniq, inverse = np.unique(key, return_inverse=True)
    merged = np.zeros(uniq.size, np.int64)
    np.bitwise_or.at(merged, inverse, np.left_shift(1, kinds.astype(np.int64)))
    coo = pattern.tocoo()
    pattern_keys = coo.row.astype(np.int64) * n_items + coo.col
    values = merged[np.searchsorted(uniq, pattern_keys)] if uniq.size else np.zeros(0, np.int64)
    out = sp.csr_matrix((values.astype(np.int32), (coo.row, coo.col)), shape=pattern.shape)
    out.sort_indices()
    return out


def attributes(item_ids: np.ndarray, items: Mapping[str, Attributes] | None) -> ItemAttributes | None:
    """Catalogue attributes aligned with `item_ids`; None without a catalogue."""
    if items is None:
        return None
    rows = [items.get(i, (None, None, None, "")) for i in item_ids.tolist()]
    return ItemAttributes(
        np.array([r[0] for r in rows], dtype=object),
        np.array([r[1] for r in rows], dtype=object),
        np.array([np.nan if r[2] is None else float(r[2]) for r in rows], dtype=np.float64),
        np.array([r[3] or "" for r in rows], dtype=object),
    )


def holdout(data: Dataset, share: float) -> tuple[Dataset, sp.csr_matrix]:
    """Per user, the latest ceil(share · n_u) events held out (the evaluation protocol's rule, on a Dataset).

    Returns the dataset of the earlier events (same ids and positions) and the held-out items
    each user had not touched before them (users × items, 1.0 = relevant). For tuning inside a
    fit: validation carved from the training data, never the test split.
    """
    events = data.events
    ptr = events.indptr(data.n_users)
    n = np.diff(ptr)
    n_out = np.clip(np.ceil(np.round(n * share, 9)).astype(np.int64), 0, np.maximum(n - 1, 0))
    position = np.arange(len(events)) - np.repeat(ptr[:-1], n)
    keep = position < np.repeat(n - n_out, n)
    kept, out = events.take(keep), events.take(~keep)
    weights = kept.weight if kept.weight is not None else np.ones(len(kept), np.float32)
    shape = (data.n_users, data.n_items)
    strengths = sp.csr_matrix((weights, (kept.user, kept.item)), shape=shape)
    strengths.sum_duplicates()
    strengths.sort_indices()
    train = Dataset(
        data.user_ids,
        data.item_ids,
        strengths.astype(np.float32),
        list(data.event_types),
        kept,
        or_bits(kept.user, kept.item, kept.kind, strengths),
        data.items,
    )
    held = sp.csr_matrix((np.ones(len(out), np.float32), (out.user, out.item)), shape=shape)
    held.sum_duplicates()
    held.data[:] = 1.0
    seen = (strengths != 0).astype(np.float32)
    relevant = (held - held.multiply(seen)).tocsr()
    relevant.eliminate_zeros()
    return train, relevant
