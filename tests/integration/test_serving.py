"""The serving process against the real broker, the real speed layer and a real published model."""

import random
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from ab_simulation import Shopper, planned_rates, population, visit
from published_models import produce, publish_model
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from serving_stack import TOKEN, call, get, start_stack, stop_stack, wait_for
from test_archiver import kill_9_at_work
from test_storefront import browser  # noqa: F401  (the fixture)

from infra import processes
from jobs.publish import announce
from recsys.ab_split import arm
from recsys.contracts.tables import Tables
from recsys.io import lake, model_store
from serving import ab_stats

pytestmark = pytest.mark.integration
CHAMPION = "m20260101T000000000000"  # the stack's published model


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    st = start_stack(tmp_path_factory.mktemp("serving"))
    yield st
    stop_stack(st)


def known_user(stack) -> tuple[str, str]:
    """(raw id, pseudonym) of a user the batch model knows, who bought something."""
    model_users = {e.user_id for e in stack.events if e.event_type == "purchase"}
    for n in range(300):
        raw = stack.raw_user(n)
        if stack.pseudonym(raw) in model_users:
            return raw, stack.pseudonym(raw)
    raise AssertionError("no model user found")


def post_event(stack, user: str, item: str, event_type: str = "view", token: str | None = TOKEN):
    return call("POST", f"{stack.url}/events", {"user_id": user, "item_id": item, "event_type": event_type}, token)


def test_recommend_similar_because_popular_for_a_batch_user(stack):
    raw, pseudonym = known_user(stack)
    status, body = get(stack, f"/recommend/{raw}?k=7")
    assert status == 200 and body["source"] == "batch" and body["user_id"] == pseudonym
    assert body["model_version"] == "m20260101T000000000000" and len(body["items"]) == 7
    assert all(item["title"] and item["category"] for item in body["items"])  # from the catalogue table
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    purchased = {e.item_id for e in stack.events if e.user_id == pseudonym and e.event_type == "purchase"}
    _, everything = get(stack, f"/recommend/{raw}?k=100")
    assert not purchased & {i["item_id"] for i in everything["items"]}
    _, unfiltered = get(stack, f"/recommend/{raw}?k=100&exclude_seen=false")
    assert purchased and purchased & {i["item_id"] for i in unfiltered["items"]}  # what the filter took out

    _, in_category = get(stack, f"/recommend/{raw}?k=5&category=category-2")
    assert {i["category"] for i in in_category["items"]} == {"category-2"}

    item = body["items"][0]["item_id"]
    status, sim = get(stack, f"/similar/{item}?k=5")
    assert status == 200 and len(sim["items"]) == 5 and item not in {i["item_id"] for i in sim["items"]}

    status, why = get(stack, f"/because/{raw}/{item}?k=50")
    history = {e.item_id for e in stack.events if e.user_id == pseudonym}
    assert status == 200 and {c["item_id"] for c in why["because"]} <= history
    assert sum(c["contribution"] for c in why["because"]) == pytest.approx(why["score"], rel=1e-4)

    status, popular = get(stack, "/popular?k=3")
    counts = {}
    for e in stack.events:
        counts.setdefault(e.item_id, set()).add(e.user_id)
    top = sorted(counts, key=lambda i: (-len(counts[i]), i))[:3]
    assert status == 200 and [i["item_id"] for i in popular["items"]] == top


def test_a_batch_of_users_gets_each_users_single_call_answer(stack):
    raws = [stack.raw_user(n) for n in range(120)] + [f"stranger-{uuid.uuid4().hex}"]
    body = {"user_ids": raws, "k": 6, "category": "category-1"}
    status, batch = call("POST", f"{stack.url}/recommend/batch", body, TOKEN)
    assert status == 200, batch
    singles = [get(stack, f"/recommend/{raw}?k=6&category=category-1")[1] for raw in raws]
    ids = [answer.pop("request_id") for answer in batch["results"] + singles]  # each answer its own
    assert len(set(ids)) == len(ids)
    assert batch["results"] == singles
    assert {r["source"] for r in singles} >= {"batch", "popular"}
    assert call("POST", f"{stack.url}/recommend/batch", body)[0] == 401  # a bulk read of personal data


def test_unknown_user_gets_popular_items_and_unknown_ids_get_404(stack):
    _, body = get(stack, f"/recommend/stranger-{uuid.uuid4().hex}?k=3")
    _, popular = get(stack, "/popular?k=3")
    assert body["source"] == "popular" and body["items"] == popular["items"]
    assert get(stack, "/similar/no-such-item")[0] == 404
    assert get(stack, "/because/stranger/item-1")[0] == 404
    raw, _ = known_user(stack)
    status, body = get(stack, f"/because/{raw}/no-such-item")
    assert status == 404 and "no-such-item" in body["detail"]


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/recommend/user-1?k=0", 422, "greater than or equal to 1"),
        ("/recommend/user-1?k=101", 422, "less than or equal to 100"),
        ("/recommend/user-1?k=ten", 422, "valid integer"),
        ("/recommend/user-1?category=nonsense", 422, "unknown category"),
        ("/recommend/" + "x" * 200, 422, "longer than 128"),
        ("/similar/item-1?k=-3", 422, "greater than or equal to 1"),
        ("/nowhere", 404, "Not Found"),
    ],
)
def test_bad_reads_get_clear_4xx(stack, path, status, says):
    got, body = get(stack, path)
    assert got == status and says in body["detail"]


@pytest.mark.reliability
def test_writes_need_the_token_and_valid_events(stack):
    assert post_event(stack, "user-1", "item-1", token=None)[0] == 401
    assert post_event(stack, "user-1", "item-1", token="wrong")[0] == 403
    status, body = call("POST", f"{stack.url}/events", raw=b'{"user_id": "user-1", "item_id": ', token=TOKEN)
    assert status == 422 and "JSON" in body["detail"]
    status, body = post_event(stack, "user-1", "item-1", event_type="wishlist")
    assert status == 422 and body["detail"].startswith("unknown_event_type")
    status, body = call(
        "POST", f"{stack.url}/events", {"user_id": "u", "item_id": "i", "event_type": "view", "colour": "red"}, TOKEN
    )
    assert status == 422 and "colour" in body["detail"]
    status, body = call(
        "POST",
        f"{stack.url}/events",
        {"user_id": "u", "item_id": "i", "event_type": "view", "ts": "2999-01-01T00:00:00Z"},
        TOKEN,
    )
    assert status == 422 and body["detail"].startswith("ts_out_of_range")


def test_a_posted_event_changes_the_users_recommendations_within_moments(stack):
    raw = f"visitor-{uuid.uuid4().hex[:8]}"
    assert get(stack, f"/recommend/{raw}?k=5")[1]["source"] == "popular"
    _, popular = get(stack, "/popular?k=1")
    bought = popular["items"][0]["item_id"]
    status, accepted = post_event(stack, raw, bought, "purchase")
    assert status == 202 and accepted["user_id"] == stack.pseudonym(raw)  # the raw id never left the service
    started = time.monotonic()
    body = wait_for(lambda: (b := get(stack, f"/recommend/{raw}?k=10")[1])["source"] == "speed" and b, timeout_s=10)
    assert time.monotonic() - started < 5
    assert body["as_of_ms"] and all(i["from_speed"] for i in body["items"])  # no batch vector: all from speed
    assert bought not in {i["item_id"] for i in body["items"]}  # bought: left out
    _, why = get(stack, f"/because/{raw}/{body['items'][0]['item_id']}")
    assert [c["item_id"] for c in why["because"]] == [bought]
    _, info = get(stack, "/models")
    assert info["speed_users"] >= 1 and info["speed_updates_applied"] >= 1


def test_an_item_update_takes_the_item_out_of_every_answer_until_it_is_back(stack):
    """POST /events -> Kafka -> the speed layer's AVAIL message -> the server's filter, on the real processes."""
    raw, _ = known_user(stack)
    _, before = get(stack, f"/recommend/{raw}?k=10")
    item = before["items"][0]["item_id"]
    category = before["items"][0]["category"]

    # An item whose similar items include this one (the speed layer's filter applies to /similar as well).
    def similar(of: str) -> set[str]:
        return {i["item_id"] for i in get(stack, f"/similar/{of}?k=100")[1]["items"]}

    neighbour = next(other for other in similar(item) if item in similar(other))
    pages = [
        f"/recommend/{raw}?k=10",
        f"/recommend/{raw}?k=20&category={category}&category=category-0",
        "/popular?k=100",
        f"/similar/{neighbour}?k=100",
    ]

    def shown() -> list[bool]:
        return [item in {i["item_id"] for i in get(stack, page)[1]["items"]} for page in pages]

    assert shown() == [True] * 4
    for state, want in (("item_sold_out", [False] * 4), ("item_back", [True] * 4)):
        status, _ = post_event(stack, "catalogue-feed", item, state)
        assert status == 202
        started = time.monotonic()
        wait_for(lambda want=want: shown() == want, timeout_s=10, every_s=0.02)
        took = time.monotonic() - started
        assert took < 3, f"{state} took {took:.2f} s to reach every answer"  # 1 s when the machine is not shared
    assert get(stack, f"/recommend/{raw}?k=10")[1]["items"][0]["item_id"] == item  # back where it was


@pytest.mark.reliability
def test_metrics_docs_and_loopback_only(stack):
    get(stack, "/recommend/user-2?k=3")
    with urllib.request.urlopen(f"{stack.url}/metrics") as r:
        text = r.read().decode()
    assert 'serving_requests_total{route="/recommend/{user_id}",status="200"}' in text
    assert 'serving_model_loaded{model_version="m20260101T000000000000"} 1.0' in text
    status, spec = get(stack, "/openapi.json")
    assert status == 200 and {"/recommend/{user_id}", "/events", "/because/{user_id}/{item_id}"} <= set(spec["paths"])
    port = stack.s.serving_port
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    mine = [cols[1] for cols in listening if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == port]
    assert mine == ["0100007F:" + f"{port:04X}"]  # 127.0.0.1 only


def answers_and_clicks(stack, numbers: range, posted: dict, answers: dict, kill_serving_at: int = -1) -> None:
    """Answers `numbers` (the fast path, the route, the batch route in turn), each clicked with its request id (every
    third also bought); serving killed with SIGKILL right after the click of answer `kill_serving_at`, and restarted."""
    for i in numbers:
        raw = stack.raw_user(i % 150)
        if i % 3 == 2:
            _, body = call("POST", f"{stack.url}/recommend/batch", {"user_ids": [raw], "k": 5}, TOKEN)
            answer = body["results"][0]
        else:
            answer = get(stack, f"/recommend/{raw}?k=5" + ("&max_per_category=5" if i % 3 else ""))[1]
        answers[answer["request_id"]] = answer
        position = i % len(answer["items"])
        for kind in ("view", "purchase") if i % 3 == 0 else ("view",):
            event_id = f"{kind}-{i}"
            body = {"user_id": raw, "item_id": answer["items"][position]["item_id"], "event_type": kind}
            status, _ = call(
                "POST", f"{stack.url}/events", {**body, "event_id": event_id, "request_id": answer["request_id"]}, TOKEN
            )
            assert status == 202
            posted[event_id] = (answer["request_id"], position)
        if i == kill_serving_at:
            stack.procs["serving"].send_signal(signal.SIGKILL)
            stack.procs["serving"].wait()
            log = stack.s.state_dir / "serving-restarted.log"
            stack.procs["serving"] = processes.start("serving", stack.s, log=log)
            processes.wait_ready(stack.s, stack.procs["serving"])


@pytest.mark.reliability
def test_every_click_with_a_request_id_joins_its_list_exactly_once_through_kill_9s(stack):
    """Answers, and clicks and purchases carrying their request ids, through the real server, Kafka and the archiver
    (both streams) while the archiver is SIGKILLed at random moments and serving once right after a click: every
    event with a request id joins exactly one impression row, the item at the position its answer showed, under the
    answer's model version; the impressions table holds each answer once; /ops/attribution counts them."""
    posted: dict[str, tuple[str, int]] = {}
    answers: dict[str, dict] = {}
    traffic = threading.Thread(target=answers_and_clicks, args=(stack, range(150), posted, answers, 60))
    traffic.start()
    start = partial(processes.start, "jobs.archiver", stack.s, log=stack.s.state_dir / "archiver.log")
    rng, kills = random.Random(3), 0
    while traffic.is_alive() or kills < 3:
        if not traffic.is_alive():  # no more traffic: give the archiver a last batch to be killed in
            answers_and_clicks(stack, range(1000 + 3 * kills, 1003 + 3 * kills), posted, answers)
        kill_9_at_work(start, Tables.path(Tables.IMPRESSIONS, stack.s), rng)
        kills += 1
    traffic.join()
    final = processes.start("jobs.archiver", stack.s, "--until-caught-up", log=stack.s.state_dir / "archiver.log")
    assert final.wait(timeout=180) == 0

    shown = lake.read(Tables.path(Tables.IMPRESSIONS, stack.s))
    slots = list(zip(shown["request_id"].to_pylist(), shown["position"].to_pylist(), strict=True))
    assert len(set(slots)) == len(slots), "an answer's impression was archived twice"
    bronze = lake.read(Tables.path(Tables.BRONZE_EVENTS, stack.s)).filter(pc.is_valid(pc.field("request_id")))
    assert len(set(bronze["event_id"].to_pylist())) == bronze.num_rows == len(posted)  # each event once
    joined = bronze.join(shown, ["request_id", "item_id"], join_type="inner", right_suffix="_shown")
    assert sorted(joined["event_id"].to_pylist()) == sorted(posted)  # each joins its list, exactly once
    for row in joined.to_pylist():
        request_id, position = posted[row["event_id"]]
        answer = answers[request_id]
        assert row["request_id"] == request_id and row["position"] == position
        assert row["model_version"] == answer["model_version"] and row["user_id_shown"] == answer["user_id"]
    for request_id, answer in answers.items():  # each clicked answer whole, in its order
        items = shown.filter(pc.field("request_id") == request_id).sort_by("position")["item_id"].to_pylist()
        assert items == [i["item_id"] for i in answer["items"]]

    totals = get(stack, "/ops/attribution")[1]["totals"]
    assert [(t["model_version"], t["variant"]) for t in totals] == [("m20260101T000000000000", "champion")]
    assert totals[0]["clicks"] == sum(k.startswith("view") for k in posted)
    assert totals[0]["conversions"] == sum(k.startswith("purchase") for k in posted)
    assert totals[0]["impressions"] >= len(answers)


def serving_with(stack, **settings) -> None:
    """Restart the stack's serving process with these settings on top (an A/B test is set when serving starts)."""
    processes.stop(stack.procs["serving"])
    s = stack.s.model_copy(update=settings)
    stack.procs["serving"] = processes.start("serving", s, log=stack.s.state_dir / "serving-ab.log")
    processes.wait_ready(s, stack.procs["serving"])


def ab_test(stack, shoppers: list[Shopper], challenger: str, enough: int | None = None) -> tuple[dict, dict]:
    """Run an A/B test against `challenger` on the live stack: serving restarted with it, shoppers visiting in turn
    (all of them, or until each arm has answered `enough`), the archiver run. Returns /ops/attribution's `ab` and
    [answers, clicked] per arm counted here, from the first challenger answer on as the report counts, each
    shopper's arm from the split's own function and each answer checked to come from its arm's model."""
    share = 0.5
    serving_with(stack, ab_challenger_version=challenger, ab_challenger_share=share, ops_attribution_cache_s=0)
    counted: dict[str, list[int]] = {}
    visits = 0
    for shopper in shoppers:
        version, clicked = visit(stack, shopper)
        visits += 1
        chosen = arm(shopper.pseudonym, challenger, share)
        assert version == (challenger if chosen == "challenger" else CHAMPION), (version, chosen)
        if chosen == "challenger" or "challenger" in counted:
            answers_clicks = counted.setdefault(chosen, [0, 0])
            answers_clicks[0] += 1
            answers_clicks[1] += clicked is not None
        if enough and len(counted) == 2 and min(n for n, _ in counted.values()) >= enough:
            break
    wait_for(lambda: metric(stack, "serving_impressions_logged_total") >= visits)  # every answer's impression in Kafka
    archiver = processes.start("jobs.archiver", stack.s, "--until-caught-up", log=stack.s.state_dir / "archiver.log")
    assert archiver.wait(timeout=180) == 0
    status, body = get(stack, "/ops/attribution")
    assert status == 200 and body["ab"]["challenger_loaded"], body
    return body["ab"], counted


def metric(stack, name: str) -> float:
    with urllib.request.urlopen(f"{stack.url}/metrics") as r:
        lines = [x for x in r.read().decode().splitlines() if x.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def dashboard_verdict(stack, browser) -> tuple[str, str, list[str]]:  # noqa: F811
    """What the dashboard's A/B panel says about CTR: (significant, better arm, the arms' rows)."""
    browser.get(f"{stack.url}/dashboard")
    verdict = WebDriverWait(browser, 20).until(
        lambda d: (e := d.find_element(By.ID, "ab-verdict-ctr")).get_attribute("data-significant") and e
    )
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#ab-arms tr[data-arm]")]
    return verdict.get_attribute("data-significant"), verdict.get_attribute("data-better"), [*rows, verdict.text]


def test_an_ab_test_names_the_better_model_after_the_planned_answers_and_an_aa_test_names_none(stack, browser):  # noqa: F811
    """Shoppers who click what they truly want next (tests/integration/ab_simulation.py), split by the real serving
    process between the champion and a challenger: against the champion itself (A/A: its own version named as the
    challenger, a second copy given the same speed-layer updates) the report finds no significant difference over
    its whole population; against a model fitted on the same events with the items' names reversed by popularity
    (A/B), it names the champion significantly better once each arm has the answers a power calculation (90 %
    power at the planned rates) asks for. The dashboard's A/B panel says the same."""
    champion, worse = CHAMPION, "m20260101T000000000002-reversed"
    # The worse model: the same events with the items' names reversed by popularity (the most popular item is
    # called the least popular one's name, and so on), so what it ranks high is what few shoppers want.
    counts = Counter(e.item_id for e in stack.events)
    names = sorted(counts, key=lambda i: (-counts[i], i))
    permuted = dict(zip(names, names[::-1], strict=True))
    publish_model(
        stack.s,
        [e.model_copy(update={"item_id": permuted[e.item_id]}) for e in stack.events],
        worse,
        as_challenger=True,
    )
    # Two populations: a shopper's click changes what they want and what the champion shows them next (the speed
    # layer folds it in; a just-viewed item cools down), so the A/B test's shoppers must not have been in the A/A's.
    shoppers = population(stack)
    aa_shoppers, ab_shoppers = shoppers[0::2], shoppers[1::2]
    good, bad = planned_rates(stack, ab_shoppers, [champion, worse])
    planned = ab_stats.answers_per_arm(good, bad, power=0.9)
    assert good > bad and 2 * planned < 0.8 * len(ab_shoppers), (good, bad, planned, len(ab_shoppers))
    try:
        aa, counted = ab_test(stack, aa_shoppers, champion)  # A/A: the champion's own version as the challenger
        for name in ("champion", "challenger"):
            assert [aa["arms"][name]["answers"], aa["arms"][name]["ctr"]["answers"]] == counted[name]
        assert min(n for n, _ in counted.values()) >= planned  # the A/A had as many answers as the A/B gets, or more
        assert not aa["comparison"]["ctr"]["significant"], aa["comparison"]
        significant, _, shown = dashboard_verdict(stack, browser)
        assert significant == "false" and "not significant" in shown[-1] and len(shown) == 3, shown

        ab, counted = ab_test(stack, ab_shoppers, worse, enough=planned)
        for name in ("champion", "challenger"):
            assert [ab["arms"][name]["answers"], ab["arms"][name]["ctr"]["answers"]] == counted[name]
        assert min(ab["arms"][name]["answers"] for name in ("champion", "challenger")) == planned
        ctr = ab["comparison"]["ctr"]
        assert ctr["better"] == "champion" and ctr["significant"], (good, bad, planned, ab)
        significant, better, shown = dashboard_verdict(stack, browser)
        assert (significant, better) == ("true", "champion") and "SIGNIFICANT" in shown[-1], shown
        assert shown[0].startswith("champion") and shown[1].startswith(f"challenger {worse}"), shown
        low, _ = ab["arms"]["champion"]["ctr"]["interval"]
        assert low <= ab["arms"]["champion"]["ctr"]["rate"] and ab["challenger_share"] == 0.5
    finally:
        serving_with(stack)


@pytest.fixture
def swap_stack(tmp_path):
    st = start_stack(tmp_path)
    yield st
    stop_stack(st)


@pytest.mark.reliability
def test_hot_swap_under_concurrent_requests_fails_nothing_and_keeps_later_updates(swap_stack):
    st = swap_stack
    raw, _ = known_user(st)
    failures, versions, done = [], [], threading.Event()

    def hammer() -> None:
        while not done.is_set():
            status, body = get(st, f"/recommend/{raw}?k=10")
            if status != 200 or len(body["items"]) != 10:
                failures.append((status, body))
            else:
                versions.append(body["model_version"])

    clients = [threading.Thread(target=hammer) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        # m2 covers everything produced so far; one event arrives after its cut-off, before it is announced.
        more = produce(st.s, seed=2, n=1_500)
        m2 = publish_model(st.s, st.events + more, "m20260102T000000000000", rank=24)
        late_user = f"late-{uuid.uuid4().hex[:6]}"
        assert post_event(st, late_user, "item-3", "purchase")[0] == 202
        wait_for(lambda: get(st, f"/recommend/{late_user}")[1]["source"] == "speed")
        announce("m20260102T000000000000", model_store.published_dir(st.s) / "m20260102T000000000000", st.s)
        wait_for(lambda: get(st, "/models")[1]["model_version"] == "m20260102T000000000000")
        # The speed layer replays from m2's offsets: the late event is folded in against m2, and stays applied.
        late = wait_for(
            lambda: (
                (b := get(st, f"/recommend/{late_user}")[1])["source"] == "speed"
                and b["model_version"] == "m20260102T000000000000"
                and b
            )
        )
        assert "item-3" not in {i["item_id"] for i in late["items"]}
        time.sleep(0.5)
    finally:
        done.set()
        for c in clients:
            c.join()
    assert failures == []
    assert "m20260101T000000000000" in versions and versions[-1] == "m20260102T000000000000" and len(versions) > 100
    assert np.asarray(m2.item_factors).shape[1] == get(st, "/models")[1]["params"]["rank"] == 24
