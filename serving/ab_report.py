"""The A/B test's report: each arm's share of answers clicked and converted, with intervals, and whether the
challenger differs from the champion (serving/ab_stats.py), from the same tables as the attribution.

The test's answers are the `recommend` answers (the storefront's; bulk lists for campaigns are all the champion's)
logged under the running test: the challenger arm's under the challenger's model version, and the champion arm's
shown since the first challenger answer, so the champion's answers from before the test do not count. (Naming a
finished test's challenger again reads its champion arm up to now: read a test while it runs.)

A rate here is answers with at least one attributed click (or conversion) over answers shown: one trial per
answer, which the z-test needs (the attribution's CTR counts clicks, possibly several per answer).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from recsys.ab_split import ARMS, CHALLENGER, CHAMPION
from serving import ab_stats

SURFACE = "recommend"
COLUMNS = ["request_id", "item_id", "model_version", "variant", "surface", "shown_at"]


def report(
    impressions: pa.Table,
    events: pa.Table,
    click: str,
    conversion: str,
    challenger_version: str,
    share: float,
    alpha: float = ab_stats.ALPHA,
) -> dict:
    """The test's figures per arm and the comparison of the challenger with the champion, per metric."""
    shown = _test_answers(impressions.select(COLUMNS), challenger_version)
    listed = shown.group_by(["request_id", "item_id", "variant"]).aggregate([])
    wanted = events.filter(pc.is_valid(events["request_id"])).select(["request_id", "item_id", "event_type"])
    hits = wanted.join(listed, ["request_id", "item_id"], join_type="inner")
    answers = _count_by_arm(shown.group_by(["request_id", "variant"]).aggregate([]))
    arms: dict[str, dict] = {a: {"answers": answers[a]} for a in ARMS}
    comparisons = {}
    for metric, event_type in (("ctr", click), ("conversion", conversion)):
        by_answer = hits.filter(pc.equal(hits["event_type"], event_type)).group_by(["request_id", "variant"])
        successes = _count_by_arm(by_answer.aggregate([]))
        for a in ARMS:
            n, k = answers[a], successes[a]
            low, high = ab_stats.wilson(k, n, alpha)
            arms[a][metric] = {"answers": k, "rate": k / n if n else None, "interval": [low, high]}
        test = ab_stats.two_proportions(
            successes[CHAMPION], answers[CHAMPION], successes[CHALLENGER], answers[CHALLENGER]
        )
        better = None if test.difference == 0 else (CHALLENGER if test.difference > 0 else CHAMPION)
        comparisons[metric] = {
            "difference": test.difference,
            "z": test.z,
            "p_value": test.p_value,
            "significant": test.significant(alpha),
            "better": better,
            # How many answers per arm a test needs to find a difference this large (at `alpha`, 80% power).
            "needed_per_arm": _needed(arms[CHAMPION][metric]["rate"], arms[CHALLENGER][metric]["rate"], alpha),
        }
    times = pc.min_max(shown.filter(pc.equal(shown["variant"], CHALLENGER))["shown_at"]).as_py()
    champion_rows = shown.filter(pc.equal(shown["variant"], CHAMPION))
    return {
        "challenger_version": challenger_version,
        "challenger_share": share,
        "alpha": alpha,
        "started_ms": _ms(times["min"]),
        "latest_ms": _ms(times["max"]),
        "champion_versions": sorted(set(champion_rows["model_version"].to_pylist())),
        "arms": arms,
        "comparison": comparisons,
    }


def _test_answers(shown: pa.Table, challenger_version: str) -> pa.Table:
    """The impressions of the running test: the challenger's, and the champion's shown since it started."""
    on_surface = shown.filter(pc.equal(shown["surface"], SURFACE))
    challenger = on_surface.filter(
        pc.and_(pc.equal(on_surface["variant"], CHALLENGER), pc.equal(on_surface["model_version"], challenger_version))
    )
    if challenger.num_rows == 0:
        return challenger
    started = pc.min(challenger["shown_at"])
    champion = on_surface.filter(
        pc.and_(pc.equal(on_surface["variant"], CHAMPION), pc.greater_equal(on_surface["shown_at"], started))
    )
    return pa.concat_tables([challenger, champion])


def _count_by_arm(rows: pa.Table) -> dict[str, int]:
    """Rows (one per answer) counted per arm."""
    counted: dict[str, int] = {a: 0 for a in ARMS}
    for r in rows.group_by("variant").aggregate([("request_id", "count")]).to_pylist():
        if r["variant"] in counted:
            counted[r["variant"]] = r["request_id_count"]
    return counted


def _needed(p1: float | None, p2: float | None, alpha: float) -> int | None:
    if p1 is None or p2 is None or p1 == p2:
        return None
    return ab_stats.answers_per_arm(p1, p2, alpha)


def _ms(value) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)
