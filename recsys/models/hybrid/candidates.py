"""Two-stage serving: the hybrid's top k computed from a few hundred candidates per user, not from every item.

The blend `s1 = Σ_c w_c · s_c / m_c + pop` (`blend.py`) is scored densely by `Hybrid.score`
(evaluation, tuning). A request needs only its top k, and most components can say cheaply
which items can score well for a user:

- item-to-item components and session-KNN (`sparse_scores`): only the items in the rows of
  the user's latest items are stored; every other item scores exactly 0;
- factor components (ALS) on catalogues of `INDEX_FROM` items or more: the exact top M / `FACTOR_SHARE`
  by the norm index (`recsys.models.norm_index`); on smaller ones, as any other component;
- the content model on such catalogues: the exact top M by its block index
  (`recsys.models.hybrid.content_index`: each distinct attribute row once, blocks bounded per token);
- any other component (the neural models): its dense scores, top M by selection;
- popularity: the M most popular items (what answers a user nothing else can score).

Stage 1 runs on the union C of each source's top M (after the request's exclusions and
filter), with each component's per-user scale m_c computed as the dense path does (its
largest score over the user's unseen items). An item outside C is outside every source's
list, so its score is at most

    B = Σ_c w_c · max(b_c, 0) / m_c + b_pop,

b_c being source c's last value (its M-th; the norm index's M / `FACTOR_SHARE`-th; 0 for a sparse
source: unstored items score 0). If the k-th best candidate beats B (with a float32 rounding margin,
`SLACK`), the candidates' top k *is* the top k over all items; with the re-ranker, the blend's top
`n_candidates` unseen items must be certified the same way (they are what the re-ranker reorders). A user whose
answer is not certified is retried with M × 4; once M covers the catalogue the popularity list enumerates
every item, so the loop ends. A list that enumerates everything the filter allows (fewer
than M items) certifies at once: a narrow category filter costs no more than a wide one.

The values are those of the dense path, operation for operation (the same float32 divisions
and the same order of the weighted sum; the content index's rows times the profile by the same CSR
product), except the factor scores read through the norm index: its canonical x·y (one fixed
summation order) instead of a BLAS product, which differ in the last bits. Nothing per request is as
large as the catalogue on these catalogues: the seen and excluded items are looked up as sorted keys,
never as (users × items) masks, and the dense `score` is only the reference the tests and
`bench/candidates.py` compare against (and the answer for a catalogue smaller than the re-ranker's list).
The unit tests compare both paths' top 10 on MovieLens-100K (with and without the norm index);
`bench/candidates.py` measures both on MovieLens-100K and at 100,000 items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import numpy as np
import scipy.sparse as sp

from recsys.data.inputs import NewItems, UserContext
from recsys.models.base import Recommender, select
from recsys.models.capabilities import has_factors, scores_sparsely
from recsys.models.content import Content
from recsys.models.hybrid.blend import blend, finite, unseen_max
from recsys.models.hybrid.content_index import ContentIndex
from recsys.models.hybrid.reranker import features
from recsys.models.norm_index import NormIndex
from recsys.topk import PAD, select_top, sorted_unique, top_k_of_scores

if TYPE_CHECKING:
    from recsys.models.hybrid.model import Hybrid

# Catalogues from this size read factor and content models through their indexes; below it one pass over every item
# (the dense path's own scores) costs less than an index's walk. At 100k items the norm index's top 400 costs 0.5 ms
# against 6.7 ms for the BLAS pass (in process, one user; `bench/candidates.py` measures the whole call).
INDEX_FROM = 20_000
# Catalogues below this size are answered from the dense scores (`dense_top`): one pass over every item costs less
# than the candidates' bookkeeping there (MovieLens-100K, 1,612 items: 2.4 against 4.7 ms for one user, 0.75 against
# 2.0 per user for 64; at 100k items the two-stage path is the cheaper one, `bench/candidates.py`). Same answers.
TWO_STAGE_FROM = INDEX_FROM
# Relative margin on B: the float32 rounding of a dozen-term weighted sum is below 1e-6 of its positive part.
SLACK = 1e-5
DEEPEN = 4
# The norm index's list is this many times shorter than the pool's depth: its M-th score only feeds B, and ALS's
# 100th bounds as well as its 400th for nearly every user (2 of 1,024 deepened at 100k items), while a 64-user
# batch's top 400 by the norm index cost ~2 ms per user (`docs/batch_scale.md`).
FACTOR_SHARE = 4

Answer = tuple[np.ndarray, np.ndarray]
Index = NormIndex | ContentIndex  # both: top_k(x, k, exclude, allowed) and pair_scores(x, rows, items), exact


@dataclass
class Scored:
    """A batch's per-component raw scores and per-user scales, computed once whatever the candidate depth."""

    sparse: dict[str, sp.csr_matrix] = field(default_factory=dict)  # sorted rows; unstored = 0
    sparse_keys: dict[str, np.ndarray] = field(default_factory=dict)  # row * n_items + column of each stored entry
    # Indexed components (factor: norm index, content: its block index): the index and each user's query vector.
    indexed: dict[str, tuple[Index, np.ndarray]] = field(default_factory=dict)
    # Per indexed component: the first depth, what it excluded per user and each user's top.
    indexed_first: dict[str, tuple[int, Sequence[np.ndarray], list[Answer]]] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)  # users × items
    scales: dict[str, np.ndarray] = field(default_factory=dict)  # users, float32


@dataclass(frozen=True)
class Pairs:
    """(batch row, item) pairs as sorted keys row · width + item: a users × items boolean table without its size."""

    keys: np.ndarray
    width: int

    @staticmethod
    def of(items: Sequence[np.ndarray], width: int) -> Pairs:
        parts = [r * width + a[(a >= 0) & (a < width)].astype(np.int64) for r, a in enumerate(items)]
        return Pairs(sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64), width)

    def contains(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(items), dtype=bool)
        key = np.asarray(rows, np.int64) * self.width + np.asarray(items, np.int64)
        at = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return self.keys[at] == key


@dataclass
class Pool:
    """The candidates of some users (rows of the batch) at one depth, and what an item outside them can score."""

    keys: np.ndarray  # sorted unique i * n_items + item, i the user's place in the pool's rows
    bound: np.ndarray  # B per user
    exhaustive: np.ndarray  # the pool holds every item the user's filter allows

    def replaced(self, rows: np.ndarray, other: Pool, n_items: int) -> Pool:
        """This pool with its rows `rows` (sorted) replaced by the rows of `other`, in that order."""
        keep = ~np.isin(self.keys // n_items, rows)
        moved = rows[other.keys // n_items] * n_items + other.keys % n_items
        bound, exhaustive = self.bound.copy(), self.exhaustive.copy()
        bound[rows], exhaustive[rows] = other.bound, other.exhaustive
        return Pool(np.sort(np.concatenate([self.keys[keep], moved])), bound, exhaustive)


def recommend_many(
    model: Hybrid,
    users: Sequence[UserContext],
    k: int,
    exclude: Sequence[np.ndarray | None],
    allowed: Sequence[np.ndarray | None],
    new: NewItems,
    depth: int,
) -> list[Answer]:
    """`Recommender.recommend_many` for the hybrid (same contract): exact, from candidates (see the module doc)."""
    n = model.n_items
    seen = [sorted_unique(u.items[(u.items >= 0) & (u.items < n)]) for u in users]
    excluded = [np.zeros(0, np.int64) if e is None else np.asarray(e, np.int64) for e in exclude]
    model_excluded = [sorted_unique(e[(e >= 0) & (e < n)]) for e in excluded]
    # The same as (batch row, item) keys: what a users × items boolean table would say, without its size.
    seen_pairs, excluded_pairs = Pairs.of(seen, n + len(new)), Pairs.of(excluded, n + len(new))
    # Without a filter, and excluding only items the user has seen (purchases, the cool-down), the final pool bounds
    # unseen items too (an unseen item is not excluded): one pool serves the blend's top and the re-ranker's.
    plain = np.array([allowed[r] is None and bool(np.isin(e, seen[r]).all()) for r, e in enumerate(model_excluded)])
    views = model._views(users)
    names = [c for c in model.components if model.weights.get(c, 0.0) > 0 or model.reranker is not None]
    m = max(depth, k)
    # The factor models' first lists exclude what the final pool excludes where that pool serves both.
    first = [model_excluded[r] if plain[r] else seen[r] for r in range(len(users))]
    scored = score_components(model, names, views, seen, seen_pairs, first, m)
    new_block = model.new_item_scores(new, views, scored.scales) if len(new) else np.zeros((len(users), 0))
    out: list[Answer | None] = [None] * len(users)
    todo = np.arange(len(users))
    while len(todo):
        final = gather(
            model,
            scored,
            todo,
            m,
            [model_excluded[r] for r in todo],
            excluded_pairs,
            [allowed[int(r)] for r in todo],
        )
        unseen = None
        if model.reranker is not None:
            # The final pool is the unseen pool of the plain rows; only the others need their own.
            other = np.flatnonzero(~plain[todo])
            unseen = final
            if len(other):
                rows = todo[other]
                own = gather(model, scored, rows, m, [seen[r] for r in rows], seen_pairs, [None] * len(rows))
                unseen = final.replaced(other, own, n)
        answers, certified = evaluate(
            model, scored, users, todo, final, unseen, k, seen_pairs, excluded_pairs, allowed, new_block
        )
        for i, r in enumerate(todo):
            if certified[i]:
                out[r] = answers[i]
        todo = todo[~certified]
        if len(todo) and m >= n:  # only a catalogue smaller than the re-ranker's candidates: the dense definition
            rest = dense_top(
                model, [users[r] for r in todo], k, [exclude[r] for r in todo], [allowed[r] for r in todo], new
            )
            for r, answer in zip(todo, rest, strict=True):
                out[r] = answer
            break
        m *= DEEPEN
    return [a for a in out if a is not None]


def dense_top(
    model: Hybrid,
    users: Sequence[UserContext],
    k: int,
    exclude: Sequence[np.ndarray | None],
    allowed: Sequence[np.ndarray | None],
    new: NewItems,
) -> list[Answer]:
    """The definition the candidates reproduce: every item's dense score, then each user's top k."""
    scores = model.score(users, new)
    return [select(scores[r], k, exclude[r], allowed[r]) for r in range(len(users))]


def score_components(
    model: Hybrid,
    names: Sequence[str],
    views: dict[str, list[UserContext]],
    seen: Sequence[np.ndarray],
    seen_pairs: Pairs,
    first: Sequence[np.ndarray],
    depth: int,
) -> Scored:
    """Each component's raw scores in its cheapest exact form, and its per-user scale (as `score` has it);
    for factor models, each user's top `depth` excluding `first` (the first pool's list, kept)."""
    out = Scored()
    n, b = model.n_items, len(seen)
    for name in names:
        component = model.components[name]
        if scores_sparsely(component):
            s = component.sparse_scores(views[name])
            s.data = finite(s.data)
            out.sparse[name] = s
            out.sparse_keys[name] = np.repeat(np.arange(b, dtype=np.int64), np.diff(s.indptr)) * n + s.indices
            out.scales[name] = _sparse_scales(s, seen_pairs)
        elif (query := _indexed(model, name, component, views[name])) is not None:
            index, x = query
            out.indexed[name] = (index, x)
            top = index.top_k(x, list_depth(index, depth), list(first), [None] * b)
            out.indexed_first[name] = (depth, first, top)
            out.scales[name] = _indexed_scales(index, x, top, seen)
        else:
            raw = np.array(component.score(views[name]), dtype=np.float32)
            if not np.isfinite(raw).all():
                np.nan_to_num(raw, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            out.dense[name] = raw
            out.scales[name] = unseen_max(raw, seen)
    return out


def _indexed(
    model: Hybrid, name: str, component: Recommender, views: list[UserContext]
) -> tuple[Index, np.ndarray] | None:
    """The component's index and the users' query vectors, if it has one and the catalogue is large enough."""
    if model.n_items < INDEX_FROM:
        return None
    if has_factors(component):
        return component.norm_index, np.ascontiguousarray(component.user_vectors(views), dtype=np.float32)
    if isinstance(component, Content):
        # The profile exactly as `Content.score` builds it (the index's rows times it are its scores).
        profile = (component._weights(views) @ component.features).toarray().astype(np.float32)
        return model.content_index(name), np.ascontiguousarray(profile)
    return None


def _indexed_scales(index: Index, x: np.ndarray, top: list[Answer], seen: Sequence[np.ndarray]) -> np.ndarray:
    """Each user's best score over unseen items if positive, else 1: the first unseen item of their list, or (when
    the list holds none) one more index call that excludes everything they have seen."""
    best = np.zeros(len(top), np.float32)
    missing = []
    for r, (idx, val) in enumerate(top):
        unseen = np.flatnonzero(~np.isin(idx, seen[r]))
        if len(unseen):
            best[r] = val[unseen[0]]
        elif len(idx):  # a full list of seen items: the unseen best is further down
            missing.append(r)
    if missing:
        again = index.top_k(x[missing], 1, [seen[r] for r in missing], [None] * len(missing))
        best[missing] = [v[0] if len(v) else 0.0 for _, v in again]
    return np.where(best > 0, best, 1.0).astype(np.float32)


def _sparse_scales(s: sp.csr_matrix, seen: Pairs) -> np.ndarray:
    """Each row's largest stored value over unseen items if positive, else 1: the dense row's `unseen_max`, since
    every unstored item scores 0."""
    row = np.repeat(np.arange(s.shape[0], dtype=np.int64), np.diff(s.indptr))
    val = np.where(seen.contains(row, s.indices), 0.0, s.data).astype(np.float32)  # a seen item is never the scale
    top = np.zeros(s.shape[0], np.float32)
    filled = np.flatnonzero(np.diff(s.indptr) > 0)
    if len(filled):
        top[filled] = np.maximum.reduceat(val, s.indptr[filled])
    return np.where(top > 0, top, 1.0).astype(np.float32)


def list_depth(index: Index, m: int) -> int:
    """How deep a source's list goes at pool depth m: the norm index's lists are `FACTOR_SHARE` times shorter."""
    return max(m // FACTOR_SHARE, 1) if isinstance(index, NormIndex) else m


def _row_entries(s: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `s.data` of the given rows' entries, and each entry's place in `rows`."""
    lo, counts = s.indptr[rows], np.diff(s.indptr)[rows]
    place = np.repeat(np.arange(len(rows)), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(rows) else np.zeros(0, np.int64)
    return (np.repeat(lo - offsets, counts) + np.arange(int(counts.sum()))).astype(np.int64), place


def _top_per_row(place: np.ndarray, val: np.ndarray, n_rows: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries (indices into `val`, grouped by a nondecreasing `place`) of each row's m largest values, and each
    row's m-th value where the row has more than m (0 elsewhere)."""
    counts = np.bincount(place, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(counts)])
    kth = np.zeros(n_rows)
    chosen = [np.zeros(0, np.int64)]
    for i in range(n_rows):
        lo, hi = starts[i], starts[i + 1]
        if hi - lo <= m:
            chosen.append(np.arange(lo, hi))
            continue
        part = np.argpartition(-val[lo:hi], m - 1)[:m]
        kth[i] = float(val[lo:hi][part].min())
        chosen.append(lo + part)
    return np.concatenate(chosen), kth


def gather(
    model: Hybrid,
    scored: Scored,
    rows: np.ndarray,
    m: int,
    excluded: Sequence[np.ndarray],
    excluded_pairs: Pairs,
    allowed: Sequence[np.ndarray | None],
) -> Pool:
    """Every source's top m per user (rows of the batch) after exclusions (as positions and as boolean rows over
    the model's items) and the filter, and the bound B."""
    n, nr = model.n_items, len(rows)
    masks = [None if a is None else a[:n] for a in allowed]
    keys: list[np.ndarray] = []
    bound = np.zeros(nr)
    exhaustive = np.zeros(nr, dtype=bool)

    def add(name: str | None, kth: np.ndarray) -> None:  # a non-positive bound adds nothing to B's positive part
        if name is None:
            bound[:] += np.maximum(kth, 0.0)
        else:
            bound[:] += np.maximum(model.weights[name] * np.maximum(kth, 0.0) / scored.scales[name][rows], 0.0)

    def weighed(sources: dict) -> dict:  # a zero-weight component (kept for the re-ranker) adds nothing to stage 1
        return {name: v for name, v in sources.items() if model.weights.get(name, 0.0) > 0}

    for name, (index, x) in weighed(scored.indexed).items():
        depth, done, cached = scored.indexed_first[name]
        mc = list_depth(index, m)
        # The first lists answer the rows whose exclusions they were made with (and no filter); the rest are asked.
        reuse = [depth == m and masks[i] is None and np.array_equal(excluded[i], done[r]) for i, r in enumerate(rows)]
        asked = [i for i, again in enumerate(reuse) if not again]
        fresh = index.top_k(x[rows[asked]], mc, [excluded[i] for i in asked], [masks[i] for i in asked])
        tops = [cached[r] for r in rows]
        for i, top in zip(asked, fresh, strict=True):
            tops[i] = top
        kth = np.array([float(v[-1]) if len(v) == mc else 0.0 for _, v in tops])
        exhaustive |= np.array([len(v) < mc for _, v in tops], dtype=bool)
        keys.extend(i * n + idx for i, (idx, _) in enumerate(tops))
        add(name, kth)
    for name, s in weighed(scored.sparse).items():
        at, place = _row_entries(s, rows)
        idx, val = s.indices[at].astype(np.int64), s.data[at]
        keep = ~excluded_pairs.contains(rows[place], idx)
        for i in (i for i, mask in enumerate(masks) if mask is not None):
            mine = place == i
            keep[mine] &= cast(np.ndarray, masks[i])[idx[mine]]
        idx, val, place = idx[keep], val[keep], place[keep]
        chosen, kth = _top_per_row(place, val, nr, m)  # an unstored item scores 0: the bound is at least that
        keys.append(place[chosen] * n + idx[chosen])
        add(name, kth)
    for i, r in enumerate(rows):
        ex, mask = excluded[i], masks[i]
        for name, block in weighed(scored.dense).items():
            row = block[r].copy()
            row[ex] = -np.inf
            if mask is not None:
                row[~mask] = -np.inf
            idx, val = top_k_of_scores(row, m)
            keep = (idx != PAD) & np.isfinite(val)
            exhaustive[i] |= int(keep.sum()) < m
            keys.append(i * n + idx[keep])
            if keep.all():
                bound[i] += max(model.weights[name] * float(val[-1]) / float(scored.scales[name][r]), 0.0)
        order = model.pop_order if mask is None else model.pop_order[mask[model.pop_order]]
        top = order[: m + len(ex)]
        top = top[~excluded_pairs.contains(np.full(len(top), r), top)][:m] if len(ex) else top[:m]
        exhaustive[i] |= len(top) < m
        keys.append(i * n + top)
        if len(top) == m:
            bound[i] += float(model.pop_term[top[-1]])
    return Pool(sorted_unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64), bound * (1 + SLACK), exhaustive)


def evaluate(
    model: Hybrid,
    scored: Scored,
    users: Sequence[UserContext],
    rows: np.ndarray,
    final: Pool,
    unseen: Pool | None,
    k: int,
    seen_pairs: Pairs,
    excluded_pairs: Pairs,
    allowed: Sequence[np.ndarray | None],
    new_block: np.ndarray,
) -> tuple[list[Answer], np.ndarray]:
    """Stage 1 (and the re-ranker) on the candidates; per user the top k and whether B certifies it."""
    n = model.n_items
    keys = final.keys if unseen is None or unseen is final else sorted_unique(np.concatenate([final.keys, unseen.keys]))
    prow, item = keys // n, keys % n
    sizes = np.bincount(prow, minlength=len(rows))
    batch_row = rows[prow]
    norm: dict[str, np.ndarray] = {}
    for name, s in scored.sparse.items():
        stored, key = scored.sparse_keys[name], batch_row * n + item
        at = np.minimum(np.searchsorted(stored, key), max(len(stored) - 1, 0))
        hit = stored[at] == key if len(stored) else np.zeros(len(key), dtype=bool)
        raw = np.where(hit, s.data[at] if len(stored) else 0, 0).astype(np.float32)
        norm[name] = raw / scored.scales[name][batch_row]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    # Each candidate's column in its row's grid: the pool is sorted by (row, item), so columns follow items.
    grid = _Grid(prow, np.arange(len(item)) - starts[prow], len(rows), int(sizes.max(initial=0)))
    for name, (index, x) in scored.indexed.items():
        norm[name] = finite(index.pair_scores(x, batch_row, item)) / scored.scales[name][batch_row]
    for name, block in scored.dense.items():
        norm[name] = block[batch_row, item] / scored.scales[name][batch_row]
    stage1 = blend(norm, model.weights) if norm else np.zeros(len(item), np.float32)
    stage1 += model.pop_term[item]
    is_seen = seen_pairs.contains(batch_row, item)
    scores, certified = stage1, np.ones(len(rows), dtype=bool)
    if unseen is not None and model.reranker is not None:
        scores, certified = _rerank(model, norm, stage1, item, grid, is_seen, [users[r] for r in rows], unseen)
    # The new items go after the pool's columns (their positions follow the model's): ties still go by position.
    new = n + np.arange(new_block.shape[1])
    val = np.hstack([grid.of(scores), new_block[rows].astype(np.float32)])
    val[:, : grid.width][grid.of(excluded_pairs.contains(batch_row, item), fill=False)] = -np.inf
    if len(new):
        new_excluded = excluded_pairs.contains(np.repeat(rows, len(new)), np.tile(new, len(rows)))
        val[:, grid.width :][new_excluded.reshape(len(rows), len(new))] = -np.inf
    for i in (i for i, r in enumerate(rows) if allowed[r] is not None):
        mask = cast(np.ndarray, allowed[rows[i]])
        lo, hi = starts[i], starts[i + 1]
        val[i, : hi - lo][~mask[item[lo:hi]]] = -np.inf
        val[i, grid.width :][~mask[new]] = -np.inf
    cols, top = select_top(val, k)  # the head of a stable sort: ties go to the lowest column, the lowest position
    answers = []
    for i in range(len(rows)):
        c = cols[i][cols[i] != PAD]
        pooled = c < grid.width
        idx = n + c - grid.width
        idx[pooled] = item[starts[i] + c[pooled]]
        answers.append((idx.astype(np.int64), top[i, : len(c)]))
        certified[i] &= final.exhaustive[i] or (len(c) == k and float(top[i, k - 1]) > final.bound[i])
    return answers, certified


@dataclass(frozen=True)
class _Grid:
    """The pool's candidates as a users x width table (a row's columns in item order, padding after): what
    `select_top` ranks, each row's ties going to its lowest position."""

    row: np.ndarray
    col: np.ndarray
    rows: int
    width: int

    def of(self, values: np.ndarray, fill: float | bool = -np.inf) -> np.ndarray:
        out = np.full((self.rows, self.width), fill, dtype=values.dtype)
        out[self.row, self.col] = values
        return out


def _rerank(
    model: Hybrid,
    norm: dict[str, np.ndarray],
    stage1: np.ndarray,
    item: np.ndarray,
    grid: _Grid,
    is_seen: np.ndarray,
    users: list[UserContext],
    unseen: Pool,
) -> tuple[np.ndarray, np.ndarray]:
    """The re-ranker over each user's blend top `n_candidates` unseen candidates (as `score` does over all
    items); certified where the last of them beats what an item outside the candidates can score."""
    reranker, priors = model.reranker, model.priors
    assert reranker is not None and priors is not None
    n_cand, n_rows = reranker.n_candidates, len(users)
    full = np.bincount(grid.row[~is_seen], minlength=n_rows) >= n_cand
    scores = stage1.copy()
    certified = np.zeros(n_rows, dtype=bool)
    if not full.any():
        return scores, certified
    # Each full row's blend top n_cand unseen candidates (score descending, then position), as pool entries.
    entry = grid.of(np.arange(len(item)), fill=-1)
    cols, _ = select_top(grid.of(np.where(is_seen, np.float32(-np.inf), stage1))[full], n_cand)
    fp = np.take_along_axis(entry[full], cols, 1)
    cand = item[fp]
    comp = np.stack([norm[c][fp] if c in norm else np.zeros(cand.shape) for c in reranker.components], axis=-1)
    feats = features(comp, priors, [u for u, f in zip(users, full, strict=True) if f], cand)
    order = reranker.order(feats)
    values = np.sort(stage1[fp], axis=1)[:, ::-1]
    scores[np.take_along_axis(fp, order, 1)] = values
    certified[full] = unseen.exhaustive[full] | (values[:, -1] > unseen.bound[full])
    return scores, certified
