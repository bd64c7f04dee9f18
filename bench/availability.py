"""Availability: how long an item marked unavailable keeps showing up in answers, under load.

The broker, the speed layer and one serving process run as in `make demo`, over a published ALS model
(rank 32). A load generator (`bench/loadgen.py`, its own process) offers `rate` GET /recommend per second
over every user of the model. Meanwhile, per trial, the first item of a probe user's list is marked
`item_sold_out` by POST /events (the shop's feed: Kafka -> the speed layer's AVAIL message -> each
server's filter), and the lists of the probe users (every sampled user whose top 10 holds the item) are
read back to back until a whole round holds it nowhere. The trial's time runs from the POST's answer to
the start of that round; the lists are then read for `STABLE_S` more, and a reappearance fails the trial.
`item_back` ends it (timed the same way, until the item is back in the first probe user's list).
Target: p99 <= 1 s at 500 requests/s (the issue's). With 30 trials the p99 is the worst but one.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from bench.serving import _loadgen, _paths
from bench.speed import bench_settings, build_model
from infra import broker, processes

TARGET_RATE = 500
TARGET_P99_S = 1.0
STABLE_S = 0.3
TOKEN = "bench-availability-token-" + "0" * 16


def _items(url: str, user: str, k: int = 10) -> list[str]:
    with urllib.request.urlopen(f"{url}/recommend/{user}?k={k}", timeout=5) as r:
        return [i["item_id"] for i in json.loads(r.read())["items"]]


def _post_update(url: str, item: str, event_type: str) -> None:
    body = json.dumps({"user_id": "catalogue-feed", "item_id": item, "event_type": event_type}).encode()
    request = urllib.request.Request(
        f"{url}/events", body, {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        if r.status != 202:
            raise RuntimeError(f"POST /events answered {r.status}")


def _until(condition, timeout_s: float = 10.0) -> float:
    """Seconds until `condition()` (checked back to back) first holds; raises after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        at = time.monotonic()
        if condition():
            return at - started
    raise TimeoutError(f"not within {timeout_s:.0f} s")


def trial(url: str, probe: list[str], item: str) -> dict:
    """One sold-out -> back cycle of `item` as seen in the probe users' lists."""
    _post_update(url, item, "item_sold_out")
    gone_s = _until(lambda: not any(item in _items(url, u) for u in probe))
    deadline, reappeared = time.monotonic() + STABLE_S, False
    while time.monotonic() < deadline:
        reappeared |= any(item in _items(url, u) for u in probe)
    _post_update(url, item, "item_back")
    back_s = _until(lambda: item in _items(url, probe[0], k=100))
    return {"gone_s": gone_s, "back_s": back_s, "reappeared": reappeared, "probe_users": len(probe)}


def run(quick: bool) -> dict:
    trials = 10 if quick else 30
    load_s = 40.0 if quick else 100.0
    with tempfile.TemporaryDirectory(prefix="recsys-bench-availability-") as tmp:
        s = bench_settings(Path(tmp), broker.free_port()).model_copy(update={"serving_write_token": SecretStr(TOKEN)})
        broker.start(s)
        s = s.model_copy(update={"serving_port": broker.free_port()})  # once the broker holds its two ports
        procs = {}
        try:
            artifact = build_model(s, n_users=5_000, n_items=5_000, rank=32, history_events=200_000)
            users = [str(u) for u in artifact.user_ids]
            logs = s.state_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            procs["speed"] = processes.start("speed_layer", s, "--instance-id", "speed-avail", log=logs / "speed.log")
            procs["serving"] = processes.start("serving", s, log=logs / "serving.log")
            processes.wait_ready(s, procs["serving"], timeout_s=300)
            url = processes.serving_url(s)
            tops = {u: _items(url, u) for u in users[:300]}
            load: dict = {}
            paths = _paths(s, users, 10)
            loader = threading.Thread(target=lambda: load.update(_loadgen(url, paths, 16, load_s, TARGET_RATE)))
            loader.start()
            time.sleep(3)  # the offered load is on before the first trial
            results = []
            for t in range(trials):
                first = users[t]
                item = tops[first][0]
                probe = [first, *[u for u, top in tops.items() if u != first and item in top][:3]]
                results.append(trial(url, probe, item))
            loader.join()
            assert all(p.poll() is None for p in procs.values()), "a service exited"
        finally:
            for p in procs.values():
                processes.stop(p)
            broker.stop(s)
    gone = np.array([r["gone_s"] for r in results])
    back = np.array([r["back_s"] for r in results])
    out = {
        "trials": trials,
        "offered_rate": TARGET_RATE,
        "load": load,
        "gone_p50_s": round(float(np.median(gone)), 3),
        "gone_p99_s": round(float(np.quantile(gone, 0.99)), 3),
        "gone_max_s": round(float(gone.max()), 3),
        "back_p50_s": round(float(np.median(back)), 3),
        "back_p99_s": round(float(np.quantile(back, 0.99)), 3),
        "reappeared": sum(r["reappeared"] for r in results),
        "trials_detail": results,
    }
    achieved = float(load.get("requests_per_s", 0.0))
    out["targets"] = {
        "gone_p99_le_1s": out["gone_p99_s"] <= TARGET_P99_S and out["reappeared"] == 0,
        "load_held_500_per_s": achieved >= 0.95 * TARGET_RATE,
    }
    return out
