"""What the operator's dashboard (`GET /dashboard`) reads: read-only views behind `/ops/...`.

- the model registry (the `model_registry` Delta table): every version's statuses over time, its
  NDCG next to the popularity baseline, which one is served, and why candidates were rejected;
- the live system, from Prometheus metrics only: this process's own registry plus the speed
  layer's `/metrics` on 127.0.0.1:RECSYS_SPEED_METRICS_PORT when that port is set;
- one user (recent events since the cut-off and from the model's data, current answer with its
  source and explanations) and one item (attributes, similar, bought together, who touched it).

Serving stays a pure reader: the registry is read from the lake, nothing is written.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.request
from collections import defaultdict

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from recsys.settings import Settings
from serving import metrics
from serving.model import ServingModel, UnknownId

log = logging.getLogger("serving.ops")


# --- the registry ------------------------------------------------------------------------------------
def registry(s: Settings, served: str | None, metric: str) -> dict:
    """Every model version with its status history, `metric` for it and for popularity, and the reason."""
    from recsys.contracts.tables import Tables
    from recsys.io import lake

    path = Tables.path(Tables.MODEL_REGISTRY, s)
    rows = lake.read(path).sort_by("recorded_at").to_pylist() if lake.exists(path) else []
    versions: dict[str, dict] = {}
    for row in rows:
        v = versions.setdefault(
            row["model_version"],
            {"model_version": row["model_version"], "history": [], "metric": None, "popularity": None},
        )
        at = row["recorded_at"]
        at_ms = int(at.timestamp() * 1000) if at is not None else None
        v["history"].append({"status": row["status"], "at_ms": at_ms, "reason": row["reason"] or ""})
        v.update(status=row["status"], engine=row["engine"], at_ms=at_ms, reason=row["reason"] or "")
        v.setdefault("first_at_ms", at_ms)
        found = json.loads(row["metrics_json"] or "{}")
        model_metrics = found.get("model", found) if isinstance(found.get("model"), dict) else found
        if _number(model_metrics.get(metric)) is not None:
            v["metric"] = _number(model_metrics.get(metric))
        if isinstance(found.get("popularity"), dict) and _number(found["popularity"].get(metric)) is not None:
            v["popularity"] = _number(found["popularity"].get(metric))
    out = sorted(versions.values(), key=lambda v: (v["first_at_ms"] or 0, v["model_version"]))
    for v in out:
        v["served"] = v["model_version"] == served
    return {"metric": metric, "served": served, "versions": out}


def _number(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(float(x)) else None


# --- the live system -----------------------------------------------------------------------------------
def live(s: Settings) -> dict:
    """The live figures from Prometheus metrics: this server's and, if configured, the speed layer's."""
    own = _samples(metrics.exposition()[0].decode())
    speed, speed_error = {}, None
    if s.speed_metrics_port:
        url = f"http://127.0.0.1:{s.speed_metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                speed = _samples(r.read().decode())
        except OSError as e:
            speed_error = f"speed layer metrics at {url}: {e}"
    return {
        "at_ms": int(time.time() * 1000),
        "speed_metrics": None if not s.speed_metrics_port else f"127.0.0.1:{s.speed_metrics_port}",
        "speed_error": speed_error,
        "speed": {
            "lag": _total(speed, "speed_consumer_lag"),
            "events_total": _total(speed, "speed_events_total"),
            "updates_total": _total(speed, "speed_foldins_total"),
            "invalid_by_reason": _by(speed, "speed_invalid_events_total", "reason"),
            "event_to_publish_s": _quantiles(speed, "speed_event_to_publish_seconds"),
        },
        "serving": {
            "answers_by_source": _by(own, "serving_recommend_source_total", "source"),
            "updates_by_outcome": _by(own, "serving_model_updates_total", "outcome"),
            "update_to_serve_s": _quantiles(own, "serving_update_lag_seconds"),
            "events_accepted": _total(own, "serving_events_accepted_total"),
            "events_rejected_by_reason": _by(own, "serving_events_rejected_total", "reason"),
            "requests_by_route": _by(own, "serving_requests_total", "route"),
            "model_swaps": _total(own, "serving_model_swaps_total"),
        },
    }


def _samples(text: str) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((dict(sample.labels), float(sample.value)))
    return out


def _total(samples: dict, name: str) -> float | None:
    found = samples.get(name)
    return None if not found else float(sum(v for _, v in found))


def _by(samples: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        out[labels.get(label, "")] += value
    return dict(out)


def _quantiles(samples: dict, name: str, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict:
    """Quantiles estimated from a histogram's cumulative buckets (the upper bound of the bucket reached)."""
    buckets: dict[float, float] = defaultdict(float)
    for labels, value in samples.get(f"{name}_bucket", []):
        buckets[float(labels["le"])] += value
    count = sum(v for _, v in samples.get(f"{name}_count", []))
    out: dict = {"count": count}
    if not count:
        return out
    bounds = sorted(buckets)
    for q in qs:
        target = q * count
        out[f"p{round(q * 100)}"] = next((b for b in bounds if buckets[b] >= target), None)
    total = sum(v for _, v in samples.get(f"{name}_sum", []))
    out["mean"] = total / count
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in out.items()}


# --- one user, one item --------------------------------------------------------------------------------
def user_view(model: ServingModel, pseudonym: str, k: int) -> dict:
    """The user's events since the model's cut-off and in the model's data, and their answer now, explained."""
    recent = model._recent.get(pseudonym)
    since = [_event(model, item, kind, ts) for item, kind, ts in (recent.events if recent else [])]
    row = None if pseudonym in model.erased else model.user_index.get(pseudonym)
    in_model = []
    if row is not None:
        ev, lo, hi = model.data.events, model.user_history.ptr[row], model.user_history.ptr[row + 1]
        names = model.data.event_types
        tail = zip(ev.item[lo:hi].tolist(), ev.kind[lo:hi].tolist(), ev.ts_ms[lo:hi].tolist(), strict=True)
        in_model = [_event(model, model.item_ids[j], names[c], t) for j, c, t in tail]
    ranked = model.recommend(pseudonym, k, explain=True)
    items = [
        {
            "item_id": i,
            "title": model.item_meta(i)[0],
            "category": model.item_meta(i)[1],
            "score": score,
            "from_speed": fresh,
            "because": why,
        }
        for i, score, fresh, why in zip(
            ranked.item_ids,
            ranked.scores,
            ranked.from_speed,
            ranked.reasons or [None] * len(ranked.item_ids),
            strict=True,
        )
    ]
    history = int(model.interactions.indptr[row + 1] - model.interactions.indptr[row]) if row is not None else 0
    return {
        "user_id": pseudonym,
        "model_version": model.version,
        "known": model.knows_user(pseudonym),
        "in_model_data": row is not None,
        "items_in_model_data": history,
        "since_cutoff": since[::-1],
        "from_model_data": in_model[::-1],
        "speed_as_of_ms": recent.as_of_ms if recent else None,
        "recommendations": {"source": ranked.source, "as_of_ms": ranked.as_of_ms, "items": items},
    }


def _event(model: ServingModel, item: str, kind: str, ts: int) -> dict:
    return {"item_id": item, "title": model.item_meta(item)[0], "event_type": kind, "ts_ms": int(ts)}


def item_view(model: ServingModel, item_id: str, k: int) -> dict:
    """An item's attributes, its neighbours by the served model, and how many users touched it, by event type."""
    j = model.item_position(item_id)  # UnknownId -> 404
    title, category = model.item_meta(item_id)
    attrs = model.data.items
    price = tags = None
    if j < model.n_base and attrs is not None:
        p = attrs.price[j]
        price = None if p is None or (isinstance(p, float) and math.isnan(p)) else float(p)
        tags = [t for t in str(attrs.tags[j] or "").split("|") if t]
    counts: dict[str, int] = {}
    users = 0
    if j < model.n_base:
        column = _columns(model, "_ops_strengths_csc", model.interactions)
        lo, hi = column.indptr[j], column.indptr[j + 1]
        users = int(np.count_nonzero(column.data[lo:hi]))
        if model.seen_types is not None:
            bits = _columns(model, "_ops_types_csc", model.seen_types)
            values = bits.data[bits.indptr[j] : bits.indptr[j + 1]]
            counts = {name: int(np.count_nonzero(values & (1 << b))) for b, name in enumerate(model.data.event_types)}
    # Users who touched it since the cut-off, by event type (from their latest UPs).
    since: defaultdict[str, int] = defaultdict(int)
    for recent in list(model._recent.values()):
        for kind in recent.event_types.get(item_id, ()):
            since[kind] += 1

    def listing(ranked) -> dict:
        return {
            "source": ranked.source,
            "items": [
                {"item_id": i, "title": model.item_meta(i)[0], "score": score}
                for i, score in zip(ranked.item_ids, ranked.scores, strict=True)
            ],
        }

    return {
        "item_id": item_id,
        "model_version": model.version,
        "title": title,
        "category": category,
        "price": price,
        "tags": tags,
        "in_model": j < model.n_base,
        "new_since_model": j >= model.n_base,
        "users_in_model_data": users,
        "users_by_event_type": counts,
        "users_since_cutoff_by_event_type": dict(since),
        "popularity_rank": _popularity_rank(model, j),
        "similar": listing(model.similar(item_id, k)),
        "bought_together": listing(model.bought_together(item_id, k)),
    }


def _columns(model: ServingModel, attribute: str, matrix):
    cached = getattr(model, attribute, None)
    if cached is None:
        cached = matrix.tocsc()
        setattr(model, attribute, cached)
    return cached


def _popularity_rank(model: ServingModel, j: int) -> int | None:
    if j >= model.n_base:
        return None
    return int(np.count_nonzero(model.popularity > model.popularity[j])) + 1


__all__ = ["UnknownId", "item_view", "live", "registry", "user_view"]
