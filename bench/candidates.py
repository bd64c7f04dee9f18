"""Two-stage serving of the hybrid (`recsys.models.hybrid.candidates`) against the dense definition it replaces.

On MovieLens-100K (the hybrid as the DAG fits it) and on synthetic events at 100,000 items
(the serving section's hybrid), fitted on the earlier events of each user with the latest 20%
held out: the share of users whose top 10 from candidates equals the top 10 of the dense
`score` over every item, both lists' NDCG@10 on the held-out items, and the in-process
cost per user of each path (one user per call, as serving answers at low load, and 64 per
call, its largest micro-batch), next to the ALS component's own exact `recommend_many`
(the norm index) on the same users. In process: the HTTP figures are the serving section's.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from recsys.data.datasets import holdout
from recsys.data.inputs import NewItems, UserContext
from recsys.data.movielens import attributes
from recsys.evaluation.metrics import per_user_metrics
from recsys.evaluation.protocol import load_ml100k_events, make_split
from recsys.models.base import Recommender, select
from recsys.models.hybrid import Hybrid, HybridParams, candidates
from recsys.settings import Settings

K = 10


def _dense(model: Hybrid, users: list[UserContext]) -> list[np.ndarray]:
    scores = model.score(users, NewItems())
    return [select(scores[r], K, u.items, None)[0] for r, u in enumerate(users)]


def _two_stage(model: Recommender, users: list[UserContext]) -> list[np.ndarray]:
    """The two-stage answers, whatever the catalogue's size (serving answers small ones densely)."""
    exclude, allowed = [u.items for u in users], [None] * len(users)
    if isinstance(model, Hybrid):
        tops = candidates.recommend_many(model, users, K, exclude, allowed, NewItems(), model.params.serve_depth)
    else:
        tops = model.recommend_many(users, K, exclude, allowed)
    return [i for i, _ in tops]


def _padded(tops: list[np.ndarray]) -> np.ndarray:
    return np.array([np.pad(t, (0, K - len(t)), constant_values=-1) for t in tops], dtype=np.int64)


def _cost_ms(f, users: list[UserContext], batch: int) -> dict:
    """Per-call milliseconds over the users in calls of `batch` (median, p99), and per user."""
    times = []
    for lo in range(0, len(users), batch):
        started = time.perf_counter()
        f(users[lo : lo + batch])
        times.append((time.perf_counter() - started) * 1000)
    per_user = sum(times) / len(users)
    return {
        "call_p50_ms": round(float(np.median(times)), 2),
        "call_p99_ms": round(float(np.percentile(times, 99)), 2),
        "per_user_ms": round(per_user, 3),
    }


def compare(model: Hybrid, train, relevant, rows: np.ndarray, timing_users: int) -> dict:
    users = [train.context(int(r), model.recent_events) for r in rows]
    dense, two = [], []
    for lo in range(0, len(users), 64):
        dense += _dense(model, users[lo : lo + 64])
        two += _two_stage(model, users[lo : lo + 64])
    same = float(np.mean([np.array_equal(a, b) for a, b in zip(dense, two, strict=True)]))
    ndcg_dense = float(per_user_metrics(_padded(dense), relevant[rows])["ndcg"].mean())
    ndcg_two = float(per_user_metrics(_padded(two), relevant[rows])["ndcg"].mean())
    timed = users[:timing_users]
    als = model.components.get("implicit_als")
    cost = {}
    for batch in (1, 64):
        cost[f"batch_{batch}"] = {
            "dense": _cost_ms(lambda u: _dense(model, u), timed, batch),
            "two_stage": _cost_ms(lambda u: _two_stage(model, u), timed, batch),
        }
        if als is not None:
            cost[f"batch_{batch}"]["als_component"] = _cost_ms(lambda u: _two_stage(als, u), timed, batch)
    return {
        "users": len(users),
        "same_top10_share": round(same, 4),
        "ndcg@10_dense": round(ndcg_dense, 5),
        "ndcg@10_two_stage": round(ndcg_two, 5),
        "ndcg_difference": round(ndcg_two - ndcg_dense, 5),
        "n_items": int(train.n_items),
        "reranker": model.reranker is not None,
        "cost": cost,
    }


def movielens() -> dict:
    s = Settings()
    split = make_split(load_ml100k_events(), test_share=0.2, event_types=list(s.event_weights), items=attributes())
    model = Hybrid(HybridParams(), settings=s)
    model.fit(split.train)
    rows = np.flatnonzero(np.diff(split.test.indptr) > 0)
    return compare(model, split.train, split.test, rows, timing_users=300)


def synthetic(quick: bool) -> dict:
    from bench.serving import hybrid_data_and_params

    with tempfile.TemporaryDirectory(prefix="recsys-bench-candidates-") as tmp:
        s = Settings(state_dir=Path(tmp))
        data, params = hybrid_data_and_params(s, 20_000, 100_000, 1_000_000)
        train, relevant = holdout(data, 0.2)
        model = Hybrid(params, settings=s)
        started = time.monotonic()
        model.fit(train)
        fit_s = time.monotonic() - started
    rows = np.flatnonzero(np.diff(relevant.indptr) > 0)
    rows = np.sort(np.random.default_rng(5).choice(rows, min(len(rows), 500 if quick else 2000), replace=False))
    return {**compare(model, train, relevant, rows, timing_users=256), "fit_s": round(fit_s, 1), "events": 1_000_000}


def run(quick: bool) -> dict:
    return {"movielens_100k": movielens(), "synthetic_100k_items": synthetic(quick)}
