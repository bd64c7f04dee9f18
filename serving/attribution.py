"""CTR and conversion per model version and variant, by hour: the answers shown (`impressions`) joined with
the events that carry their `request_id` (bronze), read from the lake with delta-rs.

An event is attributed to an answer when it carries the answer's `request_id` and its item is one the answer
showed (an id names one answer; a click on something else the list did not show is not the list's). Each
event counts once (by `event_id`: a re-sent event is one click), in the hour the list was shown.

    CTR        = attributed clicks (RECSYS_ATTRIBUTION_CLICK_TYPE) / answers shown
    conversion = attributed conversions (RECSYS_ATTRIBUTION_CONVERSION_TYPE) / answers shown

`attribute` is the pure join (pyarrow); `Attribution` reads the latest `ops_attribution_hours` of both tables
(row groups outside the window are skipped by their statistics) at most every `ops_attribution_cache_s`, and
not at all while neither table has a new version. Serving only reads the lake. While an A/B test runs, the
same read also gives the test's report (`serving/ab_report.py`).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from recsys.contracts.tables import Tables
from recsys.io import lake
from recsys.settings import Settings
from serving import ab_report

GROUP = ["hour", "model_version", "variant"]
IMPRESSION_COLUMNS = ["request_id", "item_id", "model_version", "variant", "shown_at"]
READ_COLUMNS = list(dict.fromkeys(IMPRESSION_COLUMNS + ab_report.COLUMNS))
EVENT_COLUMNS = ["event_id", "request_id", "item_id", "event_type"]


def attribute(impressions: pa.Table, events: pa.Table, click: str, conversion: str) -> list[dict]:
    """Per (hour, model_version, variant): answers shown, attributed clicks and conversions, CTR, conversion rate.

    `impressions`: one row per item shown (IMPRESSION_COLUMNS); `events`: EVENT_COLUMNS, any request id or none.
    """
    shown = impressions.select(IMPRESSION_COLUMNS).append_column(
        "hour", pc.floor_temporal(impressions["shown_at"], unit="hour")
    )
    answers = shown.group_by(GROUP).aggregate([("request_id", "count_distinct")])
    listed = shown.group_by(["request_id", "item_id", *GROUP]).aggregate([])  # an item once per answer
    wanted = events.select(EVENT_COLUMNS).filter(
        pc.and_(pc.is_valid(events["request_id"]), pc.is_in(events["event_type"], pa.array([click, conversion])))
    )
    distinct = wanted.group_by(EVENT_COLUMNS).aggregate([])  # one row per event, however often it was sent
    attributed = distinct.join(listed, ["request_id", "item_id"], join_type="inner")
    counted = attributed.group_by([*GROUP, "event_type"]).aggregate([("event_id", "count_distinct")])
    counts = {
        (r["hour"], r["model_version"], r["variant"], r["event_type"]): r["event_id_count_distinct"]
        for r in counted.to_pylist()
    }
    out = []
    for r in answers.to_pylist():
        key = (r["hour"], r["model_version"], r["variant"])
        n, clicks, bought = (
            r["request_id_count_distinct"],
            counts.get((*key, click), 0),
            counts.get((*key, conversion), 0),
        )
        out.append(
            {
                "hour_ms": int(r["hour"].timestamp() * 1000),
                "model_version": r["model_version"],
                "variant": r["variant"],
                "impressions": n,
                "clicks": clicks,
                "conversions": bought,
                "ctr": clicks / n,
                "conversion": bought / n,
            }
        )
    return sorted(out, key=lambda r: (r["hour_ms"], r["model_version"], r["variant"]))


def totals(rows: list[dict]) -> list[dict]:
    """The hours summed per (model_version, variant)."""
    summed: dict[tuple[str, str], dict] = {}
    for r in rows:
        t = summed.setdefault(
            (r["model_version"], r["variant"]),
            {
                "model_version": r["model_version"],
                "variant": r["variant"],
                "impressions": 0,
                "clicks": 0,
                "conversions": 0,
            },
        )
        for k in ("impressions", "clicks", "conversions"):
            t[k] += r[k]
    for t in summed.values():
        t["ctr"], t["conversion"] = t["clicks"] / t["impressions"], t["conversions"] / t["impressions"]
    return sorted(summed.values(), key=lambda t: (t["model_version"], t["variant"]))


class Attribution:
    """`attribute` over the lake's latest hours, cached (one computation at a time)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.impressions = Tables.path(Tables.IMPRESSIONS, settings)
        self.bronze = Tables.path(Tables.BRONZE_EVENTS, settings)
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._versions: tuple[int | None, int | None] | None = None
        self._result: dict = {}

    def view(self) -> dict:
        with self._lock:
            if time.monotonic() - self._at >= self.s.ops_attribution_cache_s:
                versions = (lake.version(self.impressions), lake.version(self.bronze))
                if versions != self._versions:
                    self._result = self._compute(versions)
                    self._versions = versions
                self._at = time.monotonic()
            return self._result

    def _compute(self, versions: tuple[int | None, int | None]) -> dict:
        since = datetime.now(UTC) - timedelta(hours=self.s.ops_attribution_hours)
        rows: list[dict] = []
        ab: dict | None = None
        if versions[0] is not None:
            shown = _read(self.impressions, READ_COLUMNS, ds.field("shown_at") >= pa.scalar(since))
            events = pa.Table.from_pylist([], schema=pa.schema([(c, pa.string()) for c in EVENT_COLUMNS]))
            if versions[1] is not None and "request_id" in lake.open_table(self.bronze).schema().to_arrow().names:
                # Events come after the list they were picked from: those older than the window can't count.
                recent = (ds.field("ts") >= pa.scalar(since)) & ds.field("request_id").is_valid()
                events = _read(self.bronze, EVENT_COLUMNS, recent)
            click, conversion = self.s.attribution_click_type, self.s.attribution_conversion_type
            rows = attribute(shown, events, click, conversion)
            if self.s.ab_challenger_version:
                challenger, share = self.s.ab_challenger_version, self.s.ab_challenger_share
                ab = ab_report.report(shown, events, click, conversion, challenger, share)
        return {
            "hours": self.s.ops_attribution_hours,
            "since_ms": int(since.timestamp() * 1000),
            "click_type": self.s.attribution_click_type,
            "conversion_type": self.s.attribution_conversion_type,
            "table_versions": {Tables.IMPRESSIONS: versions[0], Tables.BRONZE_EVENTS: versions[1]},
            "by_hour": rows,
            "totals": totals(rows),
            "ab": ab,  # the running A/B test (RECSYS_AB_CHALLENGER_VERSION), None without one
        }


def _read(path: str, columns: list[str], where: ds.Expression) -> pa.Table:
    return lake.open_table(path).to_pyarrow_dataset().to_table(columns=columns, filter=where)
