"""The serving layer's state: merged batch + speed answers, filters, explanations, swaps (no Kafka, no HTTP)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from artifacts import als_artifact

from recsys.io.model_store import ModelArtifact
from recsys.models.als import FoldIn, Objective
from recsys.protocol import ForgetMessage, ModelMessage, VectorUpdate
from recsys.settings import Settings
from serving.follower import ModelFollower
from serving.model import ServingModel, UnknownId

TYPES = ["view", "add_to_cart", "purchase"]
VIEW, PURCHASE = 1 << 0, 1 << 2
RANK = 4
OBJECTIVE = Objective(confidence="alpha_r", reg_scaling="none", alpha=1.0, reg=0.5)


def artifact(
    version: str = "m20260101T000000000000",
    n_users: int = 5,
    n_items: int = 40,
    seed: int = 0,
    user_ids: list[str] | None = None,
) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    # user 0 purchased item 0 and viewed item 1; the others viewed two random items each
    rows, cols, bits = [0, 0], [0, 1], [PURCHASE, VIEW]
    for u in range(1, n_users):
        for j in rng.choice(n_items, 2, replace=False):
            rows.append(u), cols.append(int(j)), bits.append(VIEW)
    seen = sp.csr_matrix((bits, (rows, cols)), shape=(n_users, n_items), dtype=np.int32)
    strengths = seen.astype(np.float32)
    strengths.data[:] = [5.0 if b == PURCHASE else 1.0 for b in seen.data]
    return als_artifact(
        rng.normal(size=(n_users, RANK)),
        rng.normal(size=(n_items, RANK)),
        strengths,
        OBJECTIVE,
        version=version,
        seen_types=seen,
        user_ids=user_ids,
    )


def most_popular(a: ModelArtifact, k: int, among: list[int] | None = None) -> list[float]:
    """The k highest popularities (distinct users per item), among some items (ties may go either way)."""
    pop = a.data.popularity()
    return sorted((float(pop[j]) for j in (among if among is not None else range(len(pop)))), reverse=True)[:k]


CATALOG = {f"i{j}": (f"Item {j}", "even" if j % 2 == 0 else "odd") for j in range(40)}


def model(**settings) -> ServingModel:
    return ServingModel(artifact(), CATALOG, Settings(**settings))


def test_batch_user_gets_the_exact_top_k_without_purchased_items():
    m, a = model(), artifact()
    ranked = m.recommend("u0", k=10)
    scores = a.item_factors @ a.user_factors[0]
    scores[0] = -np.inf  # purchased; the viewed item 1 stays eligible
    assert ranked.source == "batch" and ranked.item_ids == [f"i{j}" for j in np.argsort(-scores)[:10]]
    np.testing.assert_allclose(ranked.scores, np.sort(scores)[::-1][:10], rtol=1e-6)
    assert "i0" in m.recommend("u0", k=40, exclude_seen=False).item_ids


def test_excluded_event_types_are_a_setting():
    m = model(serving_exclude_event_types=["view", "purchase"])
    items = m.recommend("u0", k=40).item_ids
    assert "i0" not in items and "i1" not in items and len(items) == 38


def test_category_filter_and_unknown_user_fallback():
    m = model()
    assert all(int(i[1:]) % 2 == 1 for i in m.recommend("u2", k=10, category="odd").item_ids)
    fallback = m.recommend("stranger", k=3)
    assert fallback.source == "popular" and fallback.scores == most_popular(artifact(), 3)
    assert m.popular(2, category="odd").scores == most_popular(artifact(), 2, list(range(1, 40, 2)))
    assert m.popular(2, category="ODD").item_ids == m.popular(2, category="odd").item_ids  # any case


def test_speed_update_replaces_the_user_vector_and_adds_new_items():
    m = model()
    m.apply(VectorUpdate(model_version="m20260101T000000000000", kind="item", id="fresh", vector=[5.0, 5.0, 5.0, 5.0]))
    vector = [1.0, 1.0, 1.0, 1.0]
    m.apply(
        VectorUpdate(
            model_version="m20260101T000000000000",
            kind="user",
            id="u1",
            vector=vector,
            event_ts_ms=123,
            strengths={"i5": 5.0},
            event_types={"i5": ["purchase"]},
        )
    )
    ranked = m.recommend("u1", k=5)
    assert ranked.source == "speed" and ranked.as_of_ms == 123
    assert ranked.item_ids[0] == "fresh" and ranked.from_speed[0]  # new item: never in the batch answer
    assert "i5" not in m.recommend("u1", k=41).item_ids  # purchased since the model
    assert m.similar("fresh", 3).item_ids  # new items have neighbours too
    assert m.speed_updates == 2 and m.speed_users == 1 and m.n_items == 41


def test_wrong_rank_and_model_items_in_updates():
    m = model()
    with pytest.raises(ValueError, match="rank"):
        m.apply(VectorUpdate(model_version="m20260101T000000000000", kind="user", id="u1", vector=[1.0]))
    before = m.model.item_factors[3].copy()
    m.apply(VectorUpdate(model_version="m20260101T000000000000", kind="item", id="i3", vector=[9.0] * RANK))
    np.testing.assert_array_equal(m.model.item_factors[3], before)


@pytest.mark.reliability
def test_forgotten_users_get_popular_items_until_they_come_back():
    m = model()
    m.apply(
        VectorUpdate(model_version="m20260101T000000000000", kind="user", id="u0", vector=[1.0] * RANK, source_offset=5)
    )
    m.forget(ForgetMessage(user_id="u0", partition=0, offset=9))  # the model's data ends before the marker
    late = VectorUpdate(
        model_version="m20260101T000000000000", kind="user", id="u0", vector=[1.0] * RANK, source_offset=8
    )
    m.apply(late)  # folded from events before the marker, published after the FORGET: dropped
    assert m.recommend("u0", k=3).source == "popular" and not m.knows_user("u0")
    with pytest.raises(UnknownId):
        m.because("u0", "i3", 3)
    m.apply(late.model_copy(update={"source_offset": 12, "strengths": {"i3": 1.0}}))  # new events after the marker
    assert m.recommend("u0", k=3).source == "speed" and set(m.history("u0")) == {3}


@pytest.mark.reliability
def test_a_model_whose_data_ends_after_the_marker_keeps_the_batch_row():
    a = artifact()
    a.manifest.kafka_offsets = {0: 20}  # built after the marker at offset 9: cleaned of the user's older events
    m = ServingModel(a, CATALOG, Settings())
    m.forget(ForgetMessage(user_id="u0", partition=0, offset=9))
    assert m.recommend("u0", k=3).source == "batch"
    m.forget(ForgetMessage(user_id="u1", partition=1, offset=9))  # no data from partition 1: covered
    assert m.recommend("u1", k=3).source == "popular"


def test_because_shares_sum_to_the_folded_in_score():
    m, a = model(), artifact()
    score, shares = m.because("u0", "i7", n=5)
    folded = FoldIn(a.item_factors, a.model.objective).vector(np.array([0, 1]), np.array([5.0, 1.0]))
    assert score == pytest.approx(float(folded @ a.item_factors[7]), rel=1e-4)
    assert {i for i, _ in shares} == {"i0", "i1"}
    assert sum(c for _, c in shares) == pytest.approx(score, rel=1e-6)
    with pytest.raises(UnknownId):
        m.because("u0", "nope", 3)


def test_full_sort_baseline_and_exhaustive_approximate_index_agree_with_exact():
    big = artifact(n_items=2_000, seed=3)
    exact = ServingModel(big, {}, Settings())
    naive = ServingModel(big, {}, Settings(serving_index="full_sort"))
    approx = ServingModel(big, {}, Settings(serving_index="approximate", serving_ann_lists=16, serving_ann_probes=16))
    few = ServingModel(big, {}, Settings(serving_index="approximate", serving_ann_lists=16, serving_ann_probes=1))
    recall = []
    for user in ["u0", "u1", "u2", "u3", "u4"]:
        want = exact.recommend(user, 10).item_ids
        assert naive.recommend(user, 10).item_ids == want
        assert approx.recommend(user, 10).item_ids == want  # every cell probed: exact
        recall.append(len(set(few.recommend(user, 10).item_ids) & set(want)) / 10)
    assert np.mean(recall) < 1.0  # one cell of sixteen: some true neighbours are missed


def _follower(models: dict[str, ServingModel]) -> ModelFollower:
    return ModelFollower(Settings(), loader=lambda path: models[Path(path).name])


def _raw(message) -> bytes:
    return message.model_dump_json().encode()


def test_follower_swaps_models_keeps_early_updates_and_drops_stale_ones(tmp_path):
    for v in ("m20260101T000000000000", "m20260102T000000000000"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "manifest.json").write_text("{}")
    models = {
        "m20260101T000000000000": ServingModel(artifact("m20260101T000000000000"), {}, Settings()),
        "m20260102T000000000000": ServingModel(artifact("m20260102T000000000000"), {}, Settings()),
    }
    f = _follower(models)
    f.handle(_raw(ModelMessage(model_version="m20260101T000000000000", path=str(tmp_path / "m20260101T000000000000"))))
    early = VectorUpdate(model_version="m20260102T000000000000", kind="user", id="u3", vector=[1.0] * RANK)
    f.handle(_raw(early))  # m2's speed layer was quicker than m2's MODEL message
    f.handle(_raw(VectorUpdate(model_version="m20260101T000000000000", kind="user", id="u4", vector=[1.0] * RANK)))
    assert f.current.version == "m20260101T000000000000" and f.current.speed_users == 1
    f.handle(b'{"type": "FORGET", "user_id": "u2", "partition": 0, "offset": 3}')
    f.handle(_raw(ModelMessage(model_version="m20260102T000000000000", path=str(tmp_path / "m20260102T000000000000"))))
    assert f.current is models["m20260102T000000000000"]
    assert f.current.recommend("u3", 3).source == "speed"  # held, then applied before the swap
    assert f.current.recommend("u4", 3).source == "batch"  # m1's update: covered by m2's data
    assert f.current.recommend("u2", 3).source == "popular"  # forgotten before m2 arrived, still forgotten
    f.handle(_raw(VectorUpdate(model_version="m20260101T000000000000", kind="user", id="u1", vector=[1.0] * RANK)))
    f.handle(
        _raw(ModelMessage(model_version="m20260101T000000000000", path=str(tmp_path / "m20260101T000000000000")))
    )  # old model: ignored
    f.handle(b"not json")
    assert f.current is models["m20260102T000000000000"] and f.current.speed_users == 1


def test_a_batch_of_queries_is_answered_as_each_alone():
    m = model()
    m.apply(VectorUpdate(model_version="m20260101T000000000000", kind="user", id="u1", vector=[1.0, -1.0, 0.5, 0.0]))
    m.apply(VectorUpdate(model_version="m20260101T000000000000", kind="item", id="fresh", vector=[0.1] * RANK))
    asks = [("u0", 5, True, None), ("u1", 7, True, "odd"), ("stranger", 3, True, None), ("u2", 40, False, None)]
    together = m.answer([m.prepare(*a) for a in asks])
    alone = [m.recommend(*a) for a in asks]
    assert [r.item_ids for r in together] == [r.item_ids for r in alone]
    assert [r.source for r in together] == ["batch", "speed", "popular", "batch"]
    np.testing.assert_allclose(together[3].scores, alone[3].scores, rtol=1e-5)


def test_a_model_that_fails_to_load_leaves_the_served_one_in_place(tmp_path):
    for v in ("m20260101T000000000000", "m20260102T000000000000"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "manifest.json").write_text("{}")
    served = ServingModel(artifact("m20260101T000000000000"), {}, Settings())

    def loader(path):
        if Path(path).name == "m20260102T000000000000":
            raise ValueError("corrupt factors")
        return served

    f = ModelFollower(Settings(), loader=loader)
    f.handle(_raw(ModelMessage(model_version="m20260101T000000000000", path=str(tmp_path / "m20260101T000000000000"))))
    f.handle(_raw(ModelMessage(model_version="m20260102T000000000000", path=str(tmp_path / "m20260102T000000000000"))))
    f.handle(_raw(ModelMessage(model_version="m20260103T000000000000", path=str(tmp_path / "nowhere"))))
    assert f.current is served


def test_follower_over_its_hold_limit_drops_the_oldest_versions_updates(monkeypatch):
    from serving import follower

    monkeypatch.setattr(follower, "MAX_PENDING", 2)
    f = _follower({})
    versions = ["m20260103T000000000000", "m20260101T000000000000-zz", "m20260102T000000000000-aa"]
    for i, v in enumerate(versions):  # no model served yet: every UP is held for its model's MODEL message
        f.handle(_raw(VectorUpdate(model_version=v, kind="user", id=f"u{i}", vector=[1.0] * RANK)))
    assert set(f._pending) == {"m20260103T000000000000", "m20260102T000000000000-aa"}
