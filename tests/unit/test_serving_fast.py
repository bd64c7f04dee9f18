"""The raw ASGI path of GET /recommend answers exactly as the FastAPI route, and leaves everything else to it."""

import threading

import pytest
from fastapi.testclient import TestClient
from test_serving_model import CATALOG, artifact

from recsys.settings import Settings
from serving.api import create_app
from serving.follower import ModelFollower
from serving.model import ServingModel

KEY = "unit-test-pseudonym-key-0123456789abcdef"


class StaticFollower:
    """A follower that serves one model (and an A/B test's challenger, if given) and reads no topic."""

    def __init__(self, model: ServingModel, challenger: ServingModel | None = None) -> None:
        self.current = model
        self.challenger = challenger
        self.s = model.settings
        self.caught_up = threading.Event()
        self.caught_up.set()
        self.error = None

    ready = True
    model_for = ModelFollower.model_for  # the real choice of a shopper's arm

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    s = Settings(state_dir=tmp_path_factory.mktemp("fast"), pseudonym_key=KEY, serving_write_token="t" * 32)
    model = ServingModel(artifact(), CATALOG, s)
    with (
        TestClient(create_app(s, StaticFollower(model), fast_path=True)) as fast,
        TestClient(create_app(s, StaticFollower(model), fast_path=False)) as slow,
    ):
        yield fast, slow


PATHS = [
    "/recommend/u0",
    "/recommend/u0?k=3",
    "/recommend/u1?k=40&exclude_seen=false",
    "/recommend/u2?category=even",
    "/recommend/u2?category=EVEN&k=5",
    "/recommend/u0?explain=true&k=4",
    "/recommend/nobody?k=7",
    "/recommend/u3?k=10&unknown=1",
    "/recommend/u0?exclude_seen=1&explain=0",
    # errors and odd cases: the fast path hands them to the route
    "/recommend/u0?k=0",
    "/recommend/u0?k=1000",
    "/recommend/u0?k=abc",
    "/recommend/u0?k=",
    "/recommend/u0?k=3&k=4",
    "/recommend/u0?category=nope",
    "/recommend/u0?category=",
    "/recommend/u0?exclude_seen=maybe",
    "/recommend/u0?exclude_seen=TRUE",
    "/recommend/" + "x" * 200,
    "/recommend/a%00b",
    "/recommend/a%2Fb",
    "/recommend/",
    "/recommend/u0/",
]


@pytest.mark.parametrize("path", PATHS)
def test_the_fast_path_answers_as_the_route(clients, path):
    fast, slow = clients
    a, b = fast.get(path, follow_redirects=False), slow.get(path, follow_redirects=False)
    assert a.status_code == b.status_code, (path, a.text, b.text)
    assert a.headers.get("content-type") == b.headers.get("content-type")
    if a.headers.get("content-type") == "application/json":
        ours, theirs = a.json(), b.json()
        if a.status_code == 200:  # each answer its own id (its impression's), in the same form
            ids = ours.pop("request_id"), theirs.pop("request_id")
            assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
        assert ours == theirs


def test_the_fast_path_counts_its_answers(clients):
    fast, _ = clients
    before = fast.get("/metrics").text
    fast.get("/recommend/u0?k=2")
    after = fast.get("/metrics").text

    def count(text: str) -> float:
        line = next(
            (
                x
                for x in text.splitlines()
                if x.startswith('serving_requests_total{route="/recommend/{user_id}",status="200"}')
            ),
            None,
        )
        return float(line.split()[-1]) if line else 0.0

    assert count(after) == count(before) + 1


def _fast_answers(client) -> float:
    line = next(
        (x for x in client.get("/metrics").text.splitlines() if x.startswith("serving_fast_path_answers_total ")), None
    )
    return float(line.split()[-1]) if line else 0.0


# The plain requests of PATHS (the first nine) are the fast path's to answer; the rest go on to the route.
PLAIN, HANDED_ON = PATHS[:9], PATHS[9:]


@pytest.mark.parametrize("path", PLAIN)
def test_the_fast_path_itself_answers_plain_requests(clients, path):
    """The comparison above passes if the fast path hands everything on; this one fails then."""
    fast, slow = clients  # one process: they share the (global) counter
    before = _fast_answers(fast)
    assert slow.get(path).status_code == 200 and _fast_answers(fast) == before
    assert fast.get(path).status_code == 200 and _fast_answers(fast) == before + 1


@pytest.mark.parametrize("path", [*HANDED_ON, "/recommend/u0?k=3&exclude=i1", "/recommend/u0?max_per_category=1"])
def test_the_fast_path_hands_unusual_requests_to_the_route(clients, path):
    fast, _ = clients
    before = _fast_answers(fast)
    fast.get(path, follow_redirects=False)
    assert _fast_answers(fast) == before


def test_during_an_ab_test_the_fast_path_and_the_route_answer_each_shopper_from_their_arm(tmp_path):
    from recsys.ab_split import CHALLENGER, arm
    from recsys.privacy import pseudonymise

    challenger_v = "m20260101T000000000001"
    s = Settings(
        state_dir=tmp_path, pseudonym_key=KEY, serving_write_token="t" * 32, ab_challenger_version=challenger_v
    )
    champion, challenger = (
        ServingModel(artifact(), CATALOG, s),
        ServingModel(artifact(challenger_v, seed=1), CATALOG, s),
    )
    with (
        TestClient(create_app(s, StaticFollower(champion, challenger), fast_path=True)) as fast,
        TestClient(create_app(s, StaticFollower(champion, challenger), fast_path=False)) as slow,
    ):
        arms = set()
        for n in range(40):
            chosen = arm(pseudonymise(f"shopper{n}", s.pseudonym_key_bytes()), challenger_v, s.ab_challenger_share)
            want = challenger_v if chosen == CHALLENGER else champion.version
            arms.add(chosen)
            for path in (f"/recommend/shopper{n}?k=5", f"/recommend/shopper{n}?k=5&max_per_category=3"):  # fast, route
                ours, theirs = fast.get(path).json(), slow.get(path).json()
                ours.pop("request_id"), theirs.pop("request_id")
                assert ours == theirs and ours["model_version"] == want, (path, chosen)
        assert len(arms) == 2


def test_during_an_ab_test_because_explains_by_the_shoppers_arm(tmp_path):
    from recsys.ab_split import CHALLENGER, arm
    from recsys.privacy import pseudonymise

    challenger_v = "m20260101T000000000001"
    s = Settings(
        state_dir=tmp_path, pseudonym_key=KEY, serving_write_token="t" * 32, ab_challenger_version=challenger_v
    )
    known = [pseudonymise(f"shopper{n}", s.pseudonym_key_bytes()) for n in range(30)]  # both models know them
    champion = ServingModel(artifact(n_users=30, user_ids=known), CATALOG, s)
    challenger = ServingModel(artifact(challenger_v, n_users=30, seed=1, user_ids=known), CATALOG, s)
    with TestClient(create_app(s, StaticFollower(champion, challenger))) as client:
        arms = set()
        for n in range(30):
            chosen = arm(known[n], challenger_v, s.ab_challenger_share)
            answer = client.get(f"/because/shopper{n}/i5")
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == (challenger_v if chosen == CHALLENGER else champion.version)
            arms.add(chosen)
        assert len(arms) == 2
