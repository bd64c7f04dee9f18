"""A/B tests: the split of shoppers into arms (recsys/ab_split.py), the statistics (serving/ab_stats.py) and the
report from the impressions and events (serving/ab_report.py)."""

import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from recsys.ab_split import CHALLENGER, CHAMPION, arm, bucket
from recsys.contracts.tables import IMPRESSIONS_SCHEMA
from serving import ab_stats
from serving.ab_report import COLUMNS, report

SHOPPERS = [f"p{n:05d}" for n in range(20_000)]


# --- the split ------------------------------------------------------------------------------------
def test_the_split_gives_the_challenger_its_share_within_binomial_error():
    for share in (0.1, 0.5, 0.9):
        n = sum(arm(p, "m20260101T000000000000-ease", share) == CHALLENGER for p in SHOPPERS)
        sigma = math.sqrt(len(SHOPPERS) * share * (1 - share))
        assert abs(n - share * len(SHOPPERS)) < 4 * sigma, (share, n)


def test_a_shopper_keeps_their_arm_across_processes_and_a_new_test_reshuffles():
    test, other = "m20260101T000000000000-ease", "m20260102T000000000000-ease"
    here = "".join("B" if arm(p, test, 0.5) == CHALLENGER else "A" for p in SHOPPERS[:2_000])
    code = (
        "from recsys.ab_split import arm, CHALLENGER\n"
        f"print(''.join('B' if arm(f'p{{n:05d}}', {test!r}, 0.5) == CHALLENGER else 'A' for n in range(2000)))"
    )
    for seed in ("1", "2"):  # another process, another str hash salt: the same arms
        env = {**os.environ, "PYTHONHASHSEED": seed}
        assert (
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == here
        )
    # Another test: whether a shopper is a challenger again is independent of the last test (overlap ~ share^2).
    both = sum(arm(p, test, 0.5) == arm(p, other, 0.5) == CHALLENGER for p in SHOPPERS)
    assert abs(both - 0.25 * len(SHOPPERS)) < 4 * math.sqrt(len(SHOPPERS) * 0.25 * 0.75)
    # A larger share keeps the challengers of a smaller one (the buckets are fixed; the share is the threshold).
    assert all(arm(p, test, 0.6) == CHALLENGER for p in SHOPPERS if arm(p, test, 0.3) == CHALLENGER)


def test_no_test_means_the_champion_for_everyone():
    assert {arm(p, "", 0.5) for p in SHOPPERS[:500]} == {CHAMPION}
    assert {arm(p, "m20260101T000000000000", 0.0) for p in SHOPPERS[:500]} == {CHAMPION}
    assert {arm(p, "m20260101T000000000000", 1.0) for p in SHOPPERS[:500]} == {CHALLENGER}
    assert all(0 <= bucket(p, "t") < 1 for p in SHOPPERS[:500])


# --- the statistics ---------------------------------------------------------------------------------
def test_the_wilson_interval_matches_the_hand_computed_values():
    low, high = ab_stats.wilson(8, 10)  # Wilson's 95 % interval for 8 of 10: 0.4902 - 0.9433 (Newcombe 1998)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = ab_stats.wilson(0, 20)  # no successes: starts at 0, not empty
    assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)  # z^2 / (n + z^2)
    assert ab_stats.wilson(0, 0) == (0.0, 1.0)


def test_the_z_test_matches_scipy_and_the_hand_computed_value():
    c = ab_stats.two_proportions(50, 100, 65, 100)
    # pooled p 0.575, se = sqrt(0.575 * 0.425 * 0.02) = 0.069910, z = 0.15 / 0.069910 = 2.1456, p = 0.0319
    assert c.difference == pytest.approx(0.15) and c.z == pytest.approx(2.1456, abs=1e-4)
    assert c.p_value == pytest.approx(0.0319, abs=1e-4) and c.significant()
    # The same test as a chi-squared test of the 2x2 table (z^2 = chi^2, no continuity correction).
    chi2, p, _, _ = stats.chi2_contingency([[50, 50], [65, 35]], correction=False)
    assert c.z**2 == pytest.approx(chi2) and c.p_value == pytest.approx(p)
    assert not ab_stats.two_proportions(50, 100, 55, 100).significant()
    assert ab_stats.two_proportions(0, 10, 0, 10).p_value == 1.0


def test_the_power_calculation_gives_the_power_it_promises():
    n = ab_stats.answers_per_arm(0.5, 0.65)
    # (1.96 sqrt(2 * 0.575 * 0.425) + 0.8416 sqrt(0.25 + 0.2275))^2 / 0.15^2 = 169.3 -> 170
    assert n == 170
    # Simulated: tests of n answers per arm find the difference in ~80 % of runs (4,000 runs: +- 2.5 points).
    rng = np.random.default_rng(7)
    k1, k2 = rng.binomial(n, 0.5, 4_000), rng.binomial(n, 0.65, 4_000)
    found = np.mean([ab_stats.two_proportions(int(a), n, int(b), n).significant() for a, b in zip(k1, k2, strict=True)])
    assert 0.775 < found < 0.825, found
    half = ab_stats.answers_per_arm(0.5, 0.65, power=0.5)  # 50 % power: z_power 0, fewer answers
    assert half < n
    with pytest.raises(ValueError):
        ab_stats.answers_per_arm(0.3, 0.3)


# --- the report ---------------------------------------------------------------------------------------
T0 = datetime(2026, 1, 5, 9, tzinfo=UTC)


def answer(request_id: str, variant: str, version: str, minute: int, items=("a", "b"), surface="recommend"):
    return [
        {
            "request_id": request_id,
            "user_id": "u",
            "item_id": i,
            "position": n,
            "model_version": version,
            "variant": variant,
            "surface": surface,
            "shown_at": T0 + timedelta(minutes=minute),
        }
        for n, i in enumerate(items)
    ]


def events(*rows):
    names = ["event_id", "request_id", "item_id", "event_type"]
    return pa.Table.from_pylist(
        [dict(zip(names, r, strict=True)) for r in rows], schema=pa.schema([(n, pa.string()) for n in names])
    )


def test_the_report_counts_each_answer_once_per_arm_while_the_test_ran():
    rows = (
        answer("before", CHAMPION, "m1", 0)  # the champion before the test: not in it
        + answer("c1", CHALLENGER, "m2", 10)
        + answer("c2", CHALLENGER, "m2", 20)
        + answer("old", CHALLENGER, "m0", 15)  # an earlier test's challenger: not this one's
        + answer("a1", CHAMPION, "m1", 12)
        + answer("a2", CHAMPION, "m1", 14)
        + answer("a3", CHAMPION, "m1", 16)
        + answer("bulk", CHAMPION, "m1", 13, surface="batch")  # a campaign's list: not in the test
        + answer("later", CHAMPION, "m1", 30)  # after the last challenger answer: the test still runs
    )
    shown = pa.Table.from_pylist(rows, schema=IMPRESSIONS_SCHEMA).select(COLUMNS)
    got = report(
        shown,
        events(
            ("e1", "c1", "a", "view"),
            ("e2", "c1", "b", "view"),  # a second click on c1: one answer clicked
            ("e3", "c2", "b", "purchase"),  # converted, not clicked
            ("e4", "a1", "a", "view"),
            ("e5", "a2", "z", "view"),  # an item a2 did not show
            ("e6", "before", "a", "view"),
            ("e7", "bulk", "a", "view"),
            ("e8", "later", "a", "view"),
        ),
        "view",
        "purchase",
        "m2",
        0.5,
    )
    arms = got["arms"]
    assert arms[CHALLENGER]["answers"] == 2 and arms[CHAMPION]["answers"] == 4
    assert arms[CHALLENGER]["ctr"]["answers"] == 1 and arms[CHAMPION]["ctr"]["answers"] == 2
    assert arms[CHALLENGER]["conversion"]["answers"] == 1 and arms[CHAMPION]["conversion"]["answers"] == 0
    assert arms[CHALLENGER]["ctr"]["rate"] == 0.5 and arms[CHAMPION]["ctr"]["rate"] == 0.5
    assert arms[CHAMPION]["ctr"]["interval"] == list(ab_stats.wilson(2, 4))
    assert got["comparison"]["ctr"]["better"] is None and got["comparison"]["ctr"]["needed_per_arm"] is None
    conversion = got["comparison"]["conversion"]
    assert conversion["better"] == CHALLENGER and not conversion["significant"]
    assert conversion["p_value"] == pytest.approx(ab_stats.two_proportions(0, 4, 1, 2).p_value)
    assert conversion["needed_per_arm"] == ab_stats.answers_per_arm(0, 0.5)
    assert got["started_ms"] == int((T0 + timedelta(minutes=10)).timestamp() * 1000)
    assert got["champion_versions"] == ["m1"]


def test_the_report_of_a_test_with_no_answers_yet_says_nothing_is_known():
    shown = pa.Table.from_pylist(answer("a1", CHAMPION, "m1", 0), schema=IMPRESSIONS_SCHEMA).select(COLUMNS)
    got = report(shown, events(("e1", "a1", "a", "view")), "view", "purchase", "m2", 0.5)
    assert got["arms"][CHAMPION]["answers"] == got["arms"][CHALLENGER]["answers"] == 0
    assert got["comparison"]["ctr"]["better"] is None and not got["comparison"]["ctr"]["significant"]
    assert got["started_ms"] is None


# --- the follower: the challenger next to the champion -----------------------------------------------------------
def test_the_follower_answers_each_arm_from_its_model_and_erases_from_both(tmp_path):
    from types import SimpleNamespace

    from test_serving_model import RANK, artifact

    from recsys.io import model_store
    from recsys.protocol import ForgetMessage, VectorUpdate
    from recsys.settings import Settings
    from serving.follower import ModelFollower
    from serving.model import ServingModel

    champion_v, challenger_v = "m20260101T000000000000", "m20260101T000000000001-ease"
    s = Settings(state_dir=tmp_path, ab_challenger_version=challenger_v, ab_challenger_share=0.5)
    for location in (model_store.published(champion_v, s), model_store.challenger(challenger_v, s)):
        location.mkdir(parents=True)
        (location / "manifest.json").write_text("{}")
    models = {v: ServingModel(artifact(v, seed=n), {}, s) for n, v in enumerate((champion_v, challenger_v))}
    f = ModelFollower(s, loader=lambda path: models[path.name])
    f._try_swap(model_store.latest_published(s))
    f._want_challenger()
    assert f.current is models[champion_v] and f.challenger is models[challenger_v]
    assert not f.mirrored  # ALS has a real-time state: the champion's UPs' vectors are not the challenger's

    users = [f"u{n}" for n in range(5)] + [f"stranger{n}" for n in range(200)]
    for user in users:
        model, chosen = f.model_for(user)
        assert (
            chosen == arm(user, challenger_v, 0.5)
            and model is models[challenger_v if chosen == CHALLENGER else champion_v]
        )
    assert 60 < sum(f.model_for(u)[1] == CHALLENGER for u in users) < 145

    f.handle(
        VectorUpdate(model_version=challenger_v, kind="user", id="u1", vector=[1.0] * RANK).model_dump_json().encode()
    )
    f.handle(
        VectorUpdate(model_version=champion_v, kind="user", id="u2", vector=[1.0] * RANK).model_dump_json().encode()
    )
    assert models[challenger_v].speed_users == 1 and models[champion_v].speed_users == 1  # each its own UPs
    f.handle(ForgetMessage(user_id="u3").model_dump_json().encode())
    assert all(m.recommend("u3", 3).source == "popular" for m in models.values())  # erased from both arms

    # A/A: the champion's own version named as the challenger: a second copy, given the champion's UPs too.
    aa = ModelFollower(
        s.model_copy(update={"ab_challenger_version": champion_v}),
        loader=lambda path: ServingModel(artifact(path.name), {}, s),
    )
    aa._try_swap(model_store.latest_published(s))
    aa._want_challenger()
    assert aa.challenger is not None and aa.challenger is not aa.current
    aa.handle(
        VectorUpdate(model_version=champion_v, kind="user", id="u2", vector=[1.0] * RANK).model_dump_json().encode()
    )
    assert aa.current.speed_users == aa.challenger.speed_users == 1

    same = {"kafka_offsets": {0: 10}}
    request_time = SimpleNamespace(model=SimpleNamespace(), manifest=SimpleNamespace(**same))  # no `Updating` state
    champion = SimpleNamespace(manifest=SimpleNamespace(**same))
    later = SimpleNamespace(manifest=SimpleNamespace(kafka_offsets={0: 11}))
    assert ModelFollower._mirrors(request_time, champion)  # the same cut-off: the champion's UPs are exact
    assert not ModelFollower._mirrors(request_time, later)  # another cut-off: they would miss or repeat events


def test_the_challengers_ups_that_arrive_before_it_is_loaded_wait_for_it_even_when_it_is_older(tmp_path):
    """The speed layer may fold into the challenger before a replica could load it (a store the replica reached
    later): its UPs are not stale news of an older model, though its version is older than the champion's."""
    from test_serving_model import RANK, artifact

    from recsys.io import model_store
    from recsys.protocol import VectorUpdate
    from recsys.settings import Settings
    from serving.follower import ModelFollower
    from serving.model import ServingModel

    champion_v, challenger_v = "m20260101T000000000000", "m20251201T000000000000"
    s = Settings(state_dir=tmp_path, ab_challenger_version=challenger_v)
    model_store.published(champion_v, s).mkdir(parents=True)
    (model_store.published(champion_v, s) / "manifest.json").write_text("{}")
    models = {v: ServingModel(artifact(v, seed=n), {}, s) for n, v in enumerate((champion_v, challenger_v))}
    f = ModelFollower(s, loader=lambda path: models[path.name])
    f._try_swap(model_store.latest_published(s))
    f._want_challenger()
    assert f.challenger is None  # not in the store yet
    up = VectorUpdate(model_version=challenger_v, kind="user", id="u1", vector=[1.0] * RANK)
    f.handle(up.model_dump_json().encode())
    model_store.challenger(challenger_v, s).mkdir(parents=True)
    (model_store.challenger(challenger_v, s) / "manifest.json").write_text("{}")
    f._challenger_at = -float("inf")  # the retry's time has come
    f._want_challenger()
    assert f.challenger is models[challenger_v] and models[challenger_v].speed_users == 1
    assert models[champion_v].speed_users == 0


# --- publishing a challenger ---------------------------------------------------------------------------------
def test_a_challenger_is_published_beside_the_champion_without_announcing_it(tmp_path, monkeypatch):
    from test_model_store import artifact as store_artifact

    from jobs import common, publish
    from recsys.io import model_store
    from recsys.settings import Settings

    s = Settings(state_dir=tmp_path, eval_k=10)
    sent = []
    monkeypatch.setattr(publish, "announce", lambda version, path, s: sent.append(version))
    for version, ndcg in (("m20260101T000000000000", 0.30), ("m20260102T000000000000", 0.20)):
        a = store_artifact(version)
        metrics = {"metrics": {"ndcg@10": ndcg}, "baseline_metrics": {"ndcg@10": 0.10}}
        model_store.save_candidate(model_store.ModelArtifact(a.manifest.model_copy(update=metrics), a.data, a.model), s)
    assert publish.publish("m20260101T000000000000", s).passed and sent == ["m20260101T000000000000"]
    # Worse offline than the champion (a champion's gate would reject it for regressing), still a challenger:
    decision = publish.publish("m20260102T000000000000", s, as_challenger=True)
    assert decision.passed and decision.path == model_store.challenger("m20260102T000000000000", s)
    assert sent == ["m20260101T000000000000"]  # no MODEL message: serving and the speed layer keep the champion
    assert model_store.latest_published(s) == model_store.published("m20260101T000000000000", s)
    assert model_store.find("m20260102T000000000000", s) == decision.path  # serving finds it by its version
    assert common.registry_status(s)["m20260102T000000000000"]["status"] == "challenger"
    assert publish.publish("m20260102T000000000000", s, as_challenger=True).passed  # re-run: nothing to redo


def test_erasure_reaches_a_challenger_in_the_model_store(tmp_path):
    from test_model_store import artifact as store_artifact

    from recsys.erasure import erase_from_models
    from recsys.io import model_store
    from recsys.protocol import ForgetMessage
    from recsys.settings import Settings

    s = Settings(state_dir=tmp_path)
    model_store.promote(model_store.save_candidate(store_artifact("m20260101T000000000000"), s), s, as_challenger=True)
    assert erase_from_models([ForgetMessage(user_id="u1")], s) == 1
    kept = model_store.load(model_store.challenger("m20260101T000000000000", s))
    assert "u1" not in kept.user_ids.tolist() and kept.interactions[1].nnz == 0


def test_a_forget_request_tombstones_the_users_ups_under_every_challengers_keys(tmp_path):
    """A test that has ended leaves its challenger's UPs on `model-updates`: only a tombstone under their key
    lets compaction remove them."""
    from test_model_store import artifact as store_artifact

    from recsys import protocol
    from recsys.erasure import challenger_tombstones
    from recsys.io import model_store
    from recsys.settings import Settings

    s = Settings(state_dir=tmp_path, ab_challenger_version="m20260103T000000000000-neumf")  # a candidate's version
    assert challenger_tombstones("u1", s.model_copy(update={"ab_challenger_version": ""})) == []
    model_store.promote(model_store.save_candidate(store_artifact("m20260101T000000000000"), s), s, as_challenger=True)
    assert challenger_tombstones("u1", s) == [
        protocol.tombstone("user", "u1", "m20260101T000000000000"),
        protocol.tombstone("user", "u1", "m20260103T000000000000-neumf"),
    ]
