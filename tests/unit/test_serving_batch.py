"""Bulk lookups: `POST /recommend/batch` and the batcher's bulk queue give each user exactly the single call's
answer (in process, no Kafka: a served ALS model with speed users and a new item)."""

import asyncio
import dataclasses
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_serving_fast import StaticFollower
from test_serving_model import CATALOG, RANK, artifact

from recsys.io.model_store import ModelArtifact
from recsys.privacy import pseudonymise
from recsys.protocol import VectorUpdate
from recsys.settings import Settings
from serving import batcher as batcher_module
from serving import metrics
from serving.api import create_app
from serving.batcher import Batcher
from serving.fast import FastRecommend
from serving.impressions import ImpressionLog, new_request_id, new_request_ids
from serving.model import Ranked, ServingModel

TOKEN = "t" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VERSION = "m20260101T000000000000"
KEY = "k" * 40
N_USERS = 150  # more than two of the batcher's MAX_BATCH


def pseudonym(raw: str) -> str:
    return pseudonymise(raw, KEY.encode())


def served(s: Settings) -> ServingModel:
    """The unit tests' ALS model, its users known by the pseudonyms of u0, u1, ... (as the HTTP layer makes them)."""
    a = artifact(n_users=N_USERS)
    data = dataclasses.replace(a.data, user_ids=a.data.user_ids.astype(object))
    data.user_ids[:] = [pseudonym(u) for u in a.data.user_ids]
    m = ServingModel(ModelArtifact(a.manifest, data, a.model), CATALOG, s)
    for u, vector in ((1, [1.0, -1.0, 0.5, 0.0]), (70, [0.2, 0.3, -0.4, 1.0])):  # speed users, in two chunks
        m.apply(
            VectorUpdate(
                model_version=VERSION,
                kind="user",
                id=pseudonym(f"u{u}"),
                vector=vector,
                strengths={"i3": 1.0},
                event_types={"i3": ["view"]},
            )
        )
    m.apply(VectorUpdate(model_version=VERSION, kind="item", id="fresh", vector=[0.1] * RANK))
    return m


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    s = Settings(
        state_dir=tmp_path_factory.mktemp("batch"),
        pseudonym_key=KEY,
        serving_write_token=TOKEN,
        kafka_bootstrap="127.0.0.1:1",
        serving_max_batch_users=N_USERS + 10,
    )
    with TestClient(create_app(s, StaticFollower(served(s)))) as c:
        yield c


def users() -> list[str]:
    """Raw ids as a shop sends them: every model user, one the model does not know, and a repeated one."""
    return [f"u{u}" for u in range(N_USERS)] + ["a-stranger", "u3"]


def test_the_batcher_answers_many_queries_as_each_alone():
    m = served(Settings())
    asks = [(pseudonym(u), 5 + n % 7, n % 5 != 0, "odd" if n % 4 == 0 else None) for n, u in enumerate(users())]

    async def together():
        return await Batcher().submit_many(m, [m.prepare(*a) for a in asks])

    answers = asyncio.run(together())
    alone = [m.recommend(*a) for a in asks]
    assert [(r.item_ids, r.scores, r.source, r.from_speed) for r in answers] == [
        (r.item_ids, r.scores, r.source, r.from_speed) for r in alone
    ]
    assert {r.source for r in answers} == {"batch", "speed", "popular"}


def test_single_requests_are_scored_before_a_waiting_bulk_request(monkeypatch):
    m = served(Settings())
    sizes: list[list[str]] = []
    answer = m.answer
    monkeypatch.setattr(m, "answer", lambda queries: sizes.append([q.user_id for q in queries]) or answer(queries))

    async def bulk_then_single():
        b = Batcher()
        bulk = asyncio.ensure_future(b.submit_many(m, [m.prepare(pseudonym(u), 3) for u in users()]))
        await asyncio.sleep(0)  # the bulk request queued first; the first flush is scheduled
        single = b.submit(m, m.prepare(pseudonym("u5"), 3))
        await asyncio.gather(bulk, single)

    asyncio.run(bulk_then_single())
    assert sizes[0][0] == pseudonym("u5") and len(sizes[0]) == batcher_module.MAX_BATCH  # the single one first
    assert [u for chunk in sizes for u in chunk] == [pseudonym(u) for u in ["u5", *users()]]


def test_batch_over_http_gives_the_single_calls_answers(client):
    for options in ({"k": 7}, {"k": 4, "category": "EVEN", "explain": True, "exclude_seen": False}):
        r = client.post("/recommend/batch", json={"user_ids": users(), **options}, headers=AUTH)
        assert r.status_code == 200, r.text
        body = r.json()
        query = "&".join(f"{k}={str(v).lower()}" for k, v in options.items())
        singles = [client.get(f"/recommend/{u}?{query}").json() for u in users()]
        ids = [a.pop("request_id") for a in body["results"] + singles]  # each answer its own id
        assert len(set(ids)) == len(ids)
        assert body["results"] == singles and body["model_version"] == VERSION
    assert {a["source"] for a in body["results"]} == {"batch", "speed", "popular"}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"user_ids": []}, "body.user_ids: List should have at least 1 item"),
        ({"user_ids": [f"x{n}" for n in range(N_USERS + 11)]}, f"at most {N_USERS + 10} users per request"),
        ({"user_ids": ["u0", "a\x00b"]}, "body.user_ids: must not contain control characters"),
        ({"user_ids": ["u0", "x" * 129]}, "body.user_ids[1] longer than 128 characters"),
        ({"user_ids": ["u0"], "k": 101}, "body.k: Input should be less than or equal to 100"),
        ({"user_ids": ["u0"], "k": 0}, "body.k: Input should be greater than or equal to 1"),
        ({"user_ids": ["u0"], "category": "nope"}, "unknown category 'nope'"),
        ({"user_ids": ["u0"], "category": "a\x00"}, "body.category: must not contain control characters"),
        ({"user_ids": ["u0"], "ks": 3}, "body.ks: Extra inputs are not permitted"),
        ({"users": ["u0"]}, "body.user_ids: Field required"),
    ],
)
def test_bad_batches_get_a_422_that_says_why(client, body, says):
    r = client.post("/recommend/batch", json=body, headers=AUTH)
    assert r.status_code == 422 and says in r.json()["detail"], r.text


def test_the_batch_needs_the_token(client):
    assert client.post("/recommend/batch", json={"user_ids": ["u0"]}).status_code == 401
    wrong = {"Authorization": "Bearer " + "w" * 32}
    assert client.post("/recommend/batch", json={"user_ids": ["u0"]}, headers=wrong).status_code == 403


def test_the_batch_renderer_writes_each_answer_as_the_single_calls_bytes():
    """`render_many` is `render` of each answer joined, byte for byte, whatever the answer holds: explanations
    (quotes, non-ASCII), items from the speed layer, an as-of time, popular items' 0.0, an empty list."""
    odd = {"i1": ('Le "grand" thé', "Catégorie"), "i2": (None, None), "i3": ("back\\slash\ttab", "odd")}
    m = ServingModel(artifact(n_users=3), {**CATALOG, **odd}, Settings())
    answers = [
        Ranked(["i1", "i2", "i3"], [0.123456789, -1.5e-07, 3.0], "batch", [False] * 3),
        Ranked(["i3", "i1"], [2.5, 1e16], "speed", [True, False], as_of_ms=1_765_000_000_123),
        Ranked(["i2", "i4"], [0.1, 0.0], "batch", [False, False], reasons=['because you viewed "x" é', None]),
        Ranked([], [], "popular", []),
        Ranked(["i5"], [np.float32(0.3)], "popular", [False]),  # a numpy score is written as its float
    ]
    renderer = FastRecommend(None, Settings())
    users = ["u_aaaaaaaaaaaaaaaaaaaaaaaa", 'odd "id" é', "u_bbbbbbbbbbbbbbbbbbbbbbbb", "x", "y"]
    ids = new_request_ids(len(answers))
    first = renderer.render_many(m, users, answers, ids)  # the items' parts not built yet: built here
    alone = b",".join(renderer.render(m, u, r, rid) for u, r, rid in zip(users, answers, ids, strict=True))
    assert first == alone and renderer.render_many(m, users, answers, ids) == alone  # and from the cache
    assert renderer.render_many(m, [], [], []) == b""


def test_the_batch_renderer_refuses_an_answer_whose_scores_do_not_match_its_items():
    m = ServingModel(artifact(n_users=3), CATALOG, Settings())
    broken = [Ranked(["i1", "i2"], [1.0], "batch", [False, False]), Ranked(["i3"], [2.0, 3.0], "batch", [False])]
    with pytest.raises(ValueError, match="2 items but 1 scores, 2 flags"):
        FastRecommend(None, Settings()).render_many(m, ["a", "b"], broken, new_request_ids(2))


def test_request_ids_made_in_bulk_are_random_uuid4_hex_like_one_alone():
    ids = new_request_ids(2_000)
    assert len(set(ids)) == len(ids)
    for rid in [*ids, new_request_id()]:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_batchs_impressions_are_each_answers_own_within_the_buffers_limit(tmp_path):
    s = Settings(state_dir=tmp_path, serving_impressions_buffer=5)
    one_by_one, at_once = ImpressionLog(s), ImpressionLog(s)  # not started: the buffers keep what they are given
    users, lists = [f"u{n}" for n in range(4)], [["i1", "i2"], [], ["i3"], ["i4", "i1"]]
    for rid, u, items in zip(["r0", "r1", "r2", "r3"], users, lists, strict=True):
        one_by_one.shown(rid, u, VERSION, items, "batch")
    at_once.shown_many(["r0", "r1", "r2", "r3"], users, VERSION, lists)
    assert [e._replace(shown_at_ms=0) for e in at_once._buffer] == [
        e._replace(shown_at_ms=0) for e in one_by_one._buffer
    ]
    lost = metrics.IMPRESSIONS_LOST.labels("buffer_full")
    before = lost._value.get()
    at_once.shown_many(["r4", "r5", "r6"], users[:3], VERSION, lists[:3])  # room for one more
    assert [e.request_id for e in at_once._buffer] == ["r0", "r1", "r2", "r3", "r4"]
    assert lost._value.get() - before == 2 and at_once._taken == 5


def test_a_cancelled_bulk_request_leaves_the_rest_of_its_queries_unscored(monkeypatch):
    m = served(Settings())
    scored: list[int] = []
    answer = m.answer
    monkeypatch.setattr(m, "answer", lambda queries: scored.append(len(queries)) or answer(queries))

    async def cancel_after_the_first_answers():
        b = Batcher()
        bulk = asyncio.ensure_future(b.submit_many(m, [m.prepare(pseudonym(u), 3) for u in users()]))
        while not scored:
            await asyncio.sleep(0)
        bulk.cancel()
        for _ in range(10):  # room for every flush still scheduled
            await asyncio.sleep(0)
        return bulk

    bulk = asyncio.run(cancel_after_the_first_answers())
    # Cancelled once the task saw its first answers (a second chunk may already be scored by then): the last
    # chunk never is.
    assert bulk.cancelled() and sum(scored) < len(users()) and set(scored) == {batcher_module.MAX_BATCH}
