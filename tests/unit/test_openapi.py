"""The OpenAPI document says what the API accepts and answers (`serving/openapi.py`): in process, no Kafka.

The fuzz test (`tests/integration/test_fuzz_api.py`) checks the same against the real server with schemathesis;
these pin the pieces cheaply: 422 answers as `Error`, the categories a pattern the API agrees with (and that
follows the served model), event types and id limits from the settings, event times the API accepts."""

import json
import re
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serving_fast import StaticFollower
from test_serving_model import CATALOG, artifact

from recsys.contracts.events import ITEM_UPDATES, Event, validate_event
from recsys.settings import Settings
from serving.api import create_app
from serving.model import ServingModel
from serving.openapi import category_pattern, event_time_bounds

S = Settings(
    pseudonym_key="k" * 40,
    serving_write_token="t" * 32,
    kafka_bootstrap="127.0.0.1:1",
    max_id_length=64,
    event_weights={"view": 1.0, "like": 2.0},
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = S.model_copy(update={"state_dir": tmp_path_factory.mktemp("openapi")})
    follower = StaticFollower(ServingModel(artifact(), CATALOG, s))
    with TestClient(create_app(s, follower)) as client:
        yield client, follower


def query_schema(doc: dict, path: str, name: str) -> dict:
    (param,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
    # A repeatable parameter (a list) carries the constraint on its items.
    branches = [b.get("items", b) if b.get("type") == "array" else b for b in param["schema"]["anyOf"]]
    return next(b for b in branches if b.get("type") == "string")


def test_every_422_is_documented_as_the_sentence_the_api_answers(served):
    client, _ = served
    doc = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc) and "x-recsys-values" not in json.dumps(doc)
    operations = [op for ops in doc["paths"].values() for op in ops.values()]
    answers = [op["responses"]["422"] for op in operations if "422" in op["responses"]]
    assert len(answers) >= 10
    assert all(a["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"} for a in answers)
    r = client.get("/admin/shoppers?k=0", headers={"Authorization": "Bearer " + "t" * 32})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def test_the_category_pattern_is_what_the_api_accepts_and_follows_the_served_model(served):
    client, follower = served
    pattern = query_schema(client.get("/openapi.json").json(), "/popular", "category")["pattern"]
    for value in ("even", "EVEN", "Odd", "oDD", "nope", "eve", "evens", "0"):
        status = client.get("/popular", params={"category": value}).status_code
        assert (status == 200) == bool(re.fullmatch(pattern, value)), (value, status, pattern)
    assert query_schema(client.get("/openapi.json").json(), "/recommend/{user_id}", "category")["pattern"] == pattern
    model = follower.current
    follower.current = ServingModel(artifact(), {**CATALOG, "i1": ("Item 1", "Shoes & Bags")}, model.settings)
    try:
        now = query_schema(client.get("/openapi.json").json(), "/popular", "category")["pattern"]
        assert re.fullmatch(now, "shoes & bags") and client.get("/popular?category=shoes+%26+bags").status_code == 200
    finally:
        follower.current = model


def test_event_types_and_id_lengths_come_from_the_settings(served):
    client, _ = served
    doc = client.get("/openapi.json").json()
    event = doc["components"]["schemas"]["EventIn"]["properties"]
    # the weighted event types, and the item updates (availability) serving also accepts
    assert event["event_type"]["enum"] == sorted(["like", "view", *ITEM_UPDATES])
    assert event["user_id"]["maxLength"] == event["item_id"]["maxLength"] == 64
    user = next(p for p in doc["paths"]["/recommend/{user_id}"]["get"]["parameters"] if p["name"] == "user_id")
    assert user["schema"]["maxLength"] == 64


def test_every_k_is_documented_and_checked_with_the_settings_limit_and_default(tmp_path):
    """`k`'s limit and default are settings: the routers, built once for every app, check them per app, and the
    document of each app states that app's (`serving.dependencies.K`, `serving.openapi`'s k fillers)."""
    s = S.model_copy(update={"state_dir": tmp_path, "serving_max_k": 37, "serving_default_k": 7})
    with TestClient(create_app(s, StaticFollower(ServingModel(artifact(), CATALOG, s)))) as client:
        doc = client.get("/openapi.json").json()
        ks = {
            path: next(p for p in op["parameters"] if p["name"] == "k")
            for path, ops in doc["paths"].items()
            for op in ops.values()
            if any(p["name"] == "k" for p in op.get("parameters", []))
        }
        assert len(ks) == 8
        for path, k in ks.items():
            assert k["schema"]["maximum"] == 37 and k["schema"]["minimum"] == 1, path
            assert k["description"] == k["schema"]["description"] == "How many items (1 to 37).", path
        defaults = {path: k["schema"]["default"] for path, k in ks.items()}
        assert defaults.pop("/because/{user_id}/{item_id}") == 5 and defaults.pop("/admin/shoppers") == 20
        assert set(defaults.values()) == {7}
        assert len(client.get("/popular").json()["items"]) == 7
        assert len(client.get("/popular?k=37").json()["items"]) == 37
        too_many = client.get("/similar/i1?k=38")
        assert too_many.status_code == 422
        assert too_many.json() == {"detail": "query.k: Input should be less than or equal to 37"}


def test_category_patterns_match_in_any_case_only_what_should():
    pattern = category_pattern({"Sci-Fi", "Children's"}, {"New"})
    assert all(re.fullmatch(pattern, v) for v in ("sci-fi", "SCI-FI", "Sci-Fi", "children's", "New"))
    assert not any(re.fullmatch(pattern, v) for v in ("new", "scifi", "Sci-Fi ", "children", ""))
    assert not re.fullmatch(category_pattern(set(), set()), "")


NOW = datetime.now(UTC)  # one clock for every example (the bounds move with it)


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_every_event_time_the_document_allows_is_accepted(data):
    now = NOW
    text = data.draw(st.from_regex(event_time_bounds(S, now, "string")["pattern"], fullmatch=True))
    ints = event_time_bounds(S, now, "integer")
    ms = data.draw(st.integers(ints["minimum"], ints["maximum"]))
    for ts, ok in (
        (text, True),
        (ms, True),
        (ints["minimum"], True),
        (ints["maximum"], True),
        (ints["minimum"] - 1, False),
        (ints["maximum"] + 1, False),
    ):
        checked = validate_event(
            {"event_id": "e", "user_id": "u", "item_id": "i", "event_type": "view", "ts": ts},
            S,
            require_pseudonym=False,
            now=now,
        )
        assert isinstance(checked, Event) == ok, (ts, checked)
