"""Reactivity and cold items: does what a shopper sees change after a click, and can a never-seen item be found.

MovieLens-100K, the per-user time split. Reactivity: for every user with at least
`MIN_EVENTS` train events, one new `view` on an item they have not seen (a seeded pick
among the 50 most popular) is appended after their last event, through the model's
real-time path (history and latest events grow; stateful models update the user as
the speed layer does). Reported per recommender: the mean number of the top-10 items
that change (the viewed item itself never counts: it is excluded before and after),
and the share of users who see no change at all.

Cold items: the split's item positions include every catalogue item, so test items no
one touched in train can be ranked (by attributes). Reported: recall@10 on those cold
test items, and, for a new visitor whose first click is a cold item, how many of the 10
answers have a score ≤ 0 (serving would fall back to popular items for those).
"""

from __future__ import annotations

import numpy as np

from recsys import registry
from recsys.data.inputs import UserContext
from recsys.data.movielens import attributes
from recsys.evaluation.protocol import load_ml100k_events, make_split, time_split
from recsys.models.base import Recommender
from recsys.models.capabilities import updates_users
from recsys.settings import Settings, get_settings
from recsys.topk import select_top

MIN_EVENTS = 100
K = 10


def _after_view(ctx: UserContext, item: int, kind: int, weight: float) -> UserContext:
    """The user with one more view at the end of their history."""
    items, strengths = ctx.items.tolist(), ctx.strengths.tolist()
    if item in items:
        strengths[items.index(item)] += weight
    else:
        items.append(item)
        strengths.append(weight)
    ts = int(ctx.recent_ts_ms[-1]) + 1000 if len(ctx.recent_ts_ms) else 0
    return UserContext(
        row=ctx.row,
        items=np.array(items, np.int64),
        strengths=np.array(strengths, np.float32),
        recent=np.append(ctx.recent, item),
        recent_ts_ms=np.append(ctx.recent_ts_ms, ts),
        recent_kinds=np.append(ctx.recent_kinds, np.int8(kind)),
    )


def _top(model: Recommender, contexts: list[UserContext], exclude: np.ndarray) -> np.ndarray:
    scores = np.array(model.score(contexts), dtype=np.float32)
    scores[exclude] = -np.inf
    return select_top(scores, K)[0]


def reactivity(model: Recommender, train, seed: int = 0) -> dict:
    counts = np.diff(train.events.indptr(train.n_users))
    rows = np.flatnonzero(counts >= MIN_EVENTS)
    popular = np.argsort(-train.popularity(), kind="stable")[:50]
    rng = np.random.default_rng(seed)
    view = train.event_types.index("view")
    weight = 1.0
    before_ctx = train.contexts(rows, model.recent_events)
    after_ctx, picked = [], []
    seen = train.strengths[rows].toarray() > 0
    for r, ctx in enumerate(before_ctx):
        choices = [j for j in popular if not seen[r, j]]
        item = int(rng.choice(choices))
        picked.append(item)
        after_ctx.append(_after_view(ctx, item, view, weight))
    if updates_users(model):  # both views through the real-time path, so only the new event differs
        for view in (before_ctx, after_ctx):
            for ctx, state in zip(view, model.update_users(view), strict=True):  # type: ignore[arg-type]  # a state per user
                ctx.state = state
    exclude = seen.copy()
    exclude[np.arange(len(rows)), picked] = True  # the viewed item is never a recommendation, before or after
    before, after = _top(model, before_ctx, exclude), _top(model, after_ctx, exclude)
    changed = np.array([K - len(set(b) & set(a)) for b, a in zip(before.tolist(), after.tolist(), strict=True)])
    return {"users": len(rows), "mean_changed": float(changed.mean()), "share_unchanged": float((changed == 0).mean())}


def cold_items(model: Recommender, split, cold: np.ndarray) -> dict:
    """Recall@10 on held-out cold items, and non-positive scores in a cold-clicking visitor's top 10."""
    relevant = split.test.tocsc()[:, cold].tocsr()
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    recall = []
    if len(users):
        contexts = split.train.contexts(users, model.recent_events)
        exclude = split.train.strengths[users].toarray() > 0
        top = _top(model, contexts, exclude)
        cold_set = set(cold.tolist())
        for r, u in enumerate(users):
            wanted = {int(cold[c]) for c in relevant[u].indices}
            hits = len(wanted & (set(top[r].tolist()) & cold_set))
            recall.append(hits / min(K, len(wanted)))
    visitors = [
        UserContext(
            items=np.array([j]),
            strengths=np.array([1.0], np.float32),
            recent=np.array([j]),
            recent_ts_ms=np.array([0]),
            recent_kinds=np.array([0], np.int8),
        )
        for j in cold
    ]
    zero = 0
    if visitors:
        scores = np.array(model.score(visitors), dtype=np.float32)
        scores[np.arange(len(cold)), cold] = -np.inf
        top, val = select_top(scores, K)
        zero = int((val <= 0).sum())
    return {
        "cold_items": len(cold),
        "users_with_cold_test_items": len(users),
        "recall@10_on_cold": float(np.mean(recall)) if recall else None,
        "visitor_answers_scoring_zero_or_less": zero,
        "visitor_answers": len(cold) * K,
    }


def run(quick: bool, settings: Settings | None = None, only: list[str] | None = None) -> dict:
    s = settings or get_settings()
    events = load_ml100k_events()
    items = attributes()
    split = make_split(
        events, test_share=s.eval_test_share, event_types=list(s.event_weights), items=items, item_universe=list(items)
    )
    train_items = set(time_split(events, s.eval_test_share)[0]["item_id"].astype(str))
    cold = np.array([j for j, i in enumerate(split.train.item_ids.tolist()) if i not in train_items], np.int64)
    out: dict = {"params": {"k": K, "min_events": MIN_EVENTS}}
    names = [n for n in registry.names() if n != "spark_als" and (not only or n in only)]
    for name in names:
        model = registry.create(name, s)
        model.fit(split.train)
        out[name] = {**reactivity(model, split.train), **cold_items(model, split, cold)}
    return out


__all__ = ["cold_items", "reactivity", "run"]
