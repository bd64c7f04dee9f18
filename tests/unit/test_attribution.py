"""The attribution join: which events count for which list, once each, in the list's hour (serving/attribution.py)."""

from datetime import UTC, datetime

import pyarrow as pa

from recsys.contracts.tables import IMPRESSIONS_SCHEMA
from serving.attribution import IMPRESSION_COLUMNS, attribute, totals

H9, H10 = datetime(2026, 1, 5, 9, tzinfo=UTC), datetime(2026, 1, 5, 10, tzinfo=UTC)


def shown(request_id: str, items: list[str], version: str, at: datetime) -> list[dict]:
    return [
        {
            "request_id": request_id,
            "item_id": i,
            "position": n,
            "model_version": version,
            "variant": "champion",
            "shown_at": at.replace(minute=7 + n),
        }
        for n, i in enumerate(items)
    ]


def events(*rows: tuple[str, str | None, str, str]) -> pa.Table:
    names = ["event_id", "request_id", "item_id", "event_type"]
    return pa.Table.from_pylist(
        [dict(zip(names, r, strict=True)) for r in rows], schema=pa.schema([(n, pa.string()) for n in names])
    )


def test_an_event_counts_once_for_the_list_it_names_if_the_list_showed_its_item():
    impressions = pa.Table.from_pylist(
        shown("r1", ["a", "b"], "m1", H9) + shown("r2", ["c"], "m2", H9) + shown("r3", ["a"], "m1", H10),
        schema=IMPRESSIONS_SCHEMA,
    ).select(IMPRESSION_COLUMNS)
    got = attribute(
        impressions,
        events(
            ("e1", "r1", "a", "view"),  # a click on r1's first item
            ("e1", "r1", "a", "view"),  # the same event sent twice: one click
            ("e2", "r1", "c", "view"),  # r1 did not show c: not r1's
            ("e3", "r1", "b", "purchase"),  # a conversion of r1
            ("e4", None, "a", "view"),  # no request id
            ("e5", "nope", "a", "view"),  # an id no answer had
            ("e6", "r1", "a", "add_to_cart"),  # neither a click nor a conversion
            ("e7", "r3", "a", "view"),  # r3's, in the next hour
            ("e8", "r3", "a", "view"),  # a second click on it: counts
        ),
        click="view",
        conversion="purchase",
    )
    h9, h10 = int(H9.timestamp() * 1000), int(H10.timestamp() * 1000)
    assert got == [
        {
            "hour_ms": h9,
            "model_version": "m1",
            "variant": "champion",
            "impressions": 1,
            "clicks": 1,
            "conversions": 1,
            "ctr": 1.0,
            "conversion": 1.0,
        },
        {
            "hour_ms": h9,
            "model_version": "m2",
            "variant": "champion",
            "impressions": 1,
            "clicks": 0,
            "conversions": 0,
            "ctr": 0.0,
            "conversion": 0.0,
        },
        {
            "hour_ms": h10,
            "model_version": "m1",
            "variant": "champion",
            "impressions": 1,
            "clicks": 2,
            "conversions": 0,
            "ctr": 2.0,
            "conversion": 0.0,
        },
    ]
    assert totals(got)[0] == {
        "model_version": "m1",
        "variant": "champion",
        "impressions": 2,
        "clicks": 3,
        "conversions": 1,
        "ctr": 1.5,
        "conversion": 0.5,
    }
