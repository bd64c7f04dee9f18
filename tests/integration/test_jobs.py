"""The batch jobs on real Spark and real Delta tables: clean, train (both engines), evaluate, publish."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from artifacts import als_artifact

from jobs.archive_compact import archive_compact
from jobs.backfill import backfill, events_to_batches
from jobs.clean import TXN_APP_ID, clean
from jobs.common import registry_status
from jobs.evaluate import evaluate
from jobs.publish import publish
from jobs.top_n import top_n
from jobs.train import train
from recsys import erasure
from recsys.contracts.tables import BRONZE_SCHEMA, Tables
from recsys.data import movielens
from recsys.io import lake, model_store
from recsys.io.kafka import count_messages
from recsys.models.als import FoldIn, Objective
from recsys.privacy import pseudonymise
from recsys.protocol import ForgetMessage, Topics
from serving.model import ServingModel

pytestmark = pytest.mark.integration
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def local(settings, tmp_path):
    return settings.model_copy(update={"state_dir": tmp_path})


def bronze_rows(rows: list[dict]) -> pa.Table:
    defaults = {"session_id": None, "quantity": None, "price": None, "schema_version": 1, "ingested_at": NOW}
    full = [{**defaults, **r} for r in rows]
    for offset, r in enumerate(full):
        r.setdefault("kafka_partition", 0)
        r.setdefault("kafka_offset", offset)
    return pa.Table.from_pylist(full, schema=BRONZE_SCHEMA)


def event(eid: str, user: str, item: str = "i1", etype: str = "view", ts: datetime = NOW, **kw) -> dict:
    return {"event_id": eid, "user_id": user, "item_id": item, "event_type": etype, "ts": ts, **kw}


def test_clean_drops_each_kind_of_bad_row_and_says_how_many(spark, local):
    alice = pseudonymise("alice", local.pseudonym_key_bytes())
    bot = pseudonymise("bot", local.pseudonym_key_bytes())
    rows = [
        event(f"a{i}", alice, f"i{i}", "purchase" if i == 0 else "view", NOW - timedelta(minutes=i)) for i in range(5)
    ]
    rows += [
        event("a0", alice, "i0", "purchase", NOW, kafka_offset=900),  # duplicate delivery of a0
        event("raw1", "bob", "i2"),  # bypassed the producers: pseudonymised here
        event("t1", alice, "i3", "click"),  # unknown event type
        event("f1", alice, "i4", ts=NOW + timedelta(days=3)),  # from the future at arrival
        event("o1", alice, "i4", ts=datetime(1990, 1, 1, tzinfo=UTC)),  # too old
        event("late1", alice, "i9", ts=NOW - timedelta(days=3)),  # late but valid: kept
        event("h1", alice, "i2", "item_hidden"),  # an item update: archived, but not an interaction
    ]
    rows += [
        event(f"b{i}", bot, f"i{i % 50}", ts=NOW.replace(second=0) + timedelta(milliseconds=i)) for i in range(700)
    ]
    lake.write(Tables.path(Tables.BRONZE_EVENTS, local), bronze_rows(rows))

    report = clean(spark, settings=local)
    assert report.rows_in == len(rows)
    assert report.dropped == {"invalid": 0, "item_update": 1, "type": 1, "ts_range": 2, "duplicate": 1, "bot": 700}
    assert report.rows_out == 7 and report.bot_users == 1
    assert report.pseudonymised_here == 1 and report.late_events == 1
    assert report.kafka_offsets == {0: 901}

    silver = lake.read(Tables.path(Tables.SILVER_INTERACTIONS, local)).to_pylist()
    assert sorted(r["event_id"] for r in silver) == ["a0", "a1", "a2", "a3", "a4", "late1", "raw1"]
    assert all(r["user_id"].startswith("u_") for r in silver)
    assert {r["event_id"]: r["weight"] for r in silver}["a0"] == local.event_weights["purchase"]
    assert "data quality" in report.summary()


def test_clean_writes_silver_once_per_bronze_version(spark, local):
    """Delta's idempotent writes (txnAppId/txnVersion = the bronze version): a retry writes nothing, and an older
    bronze snapshot never replaces a newer silver (it could bring back rows erased since)."""
    user = pseudonymise("dave", local.pseudonym_key_bytes())
    bronze = Tables.path(Tables.BRONZE_EVENTS, local)
    lake.write(bronze, bronze_rows([event("e1", user, "i1")]))
    lake.write(bronze, bronze_rows([event("e2", user, "i2", kafka_offset=1)]))
    assert clean(spark, settings=local).silver_version == 0
    assert clean(spark, settings=local).silver_version == 0  # retried: nothing new
    assert clean(spark, bronze_version=0, settings=local).silver_version == 0  # older snapshot: skipped
    silver = Tables.path(Tables.SILVER_INTERACTIONS, local)
    assert lake.version(silver) == 0 and sorted(lake.read(silver)["event_id"].to_pylist()) == ["e1", "e2"]
    assert lake.committed_app_version(silver, TXN_APP_ID) == 1


def test_archive_compact_completes_pending_erasures_with_spark_and_compacts(spark, local):
    s = local.model_copy(update={"vacuum_retention_hours": 0})
    alice, bob = (pseudonymise(u, s.pseudonym_key_bytes()) for u in ("alice", "bob"))
    bronze = Tables.path(Tables.BRONZE_EVENTS, s)
    for offset in range(6):  # one small file per commit, as the archiver leaves them
        rows = [event(f"e{offset}-{u}", u, f"i{offset}", kafka_offset=offset) for u in (alice, bob)]
        lake.write(bronze, bronze_rows(rows), txns={Tables.archiver_txn_id(Topics.EVENTS, 0): offset + 1})
    clean(spark, settings=s)
    silver = Tables.path(Tables.SILVER_INTERACTIONS, s)
    assert lake.read(silver)["user_id"].to_pylist().count(alice) == 6
    # alice asked to be forgotten at offset 4; the archiver passed the marker and recorded the request, then died
    # before completing it.
    request = ForgetMessage(user_id=alice, partition=0, offset=4)
    erasure.record([request], erasure.REQUESTED, s)
    assert erasure.pending(s) == [request]

    result = archive_compact(spark, drain=False, settings=s)
    assert result["forget"] == {"completed": 1, "waiting_for_archiver": 0} and erasure.pending(s) == []
    kept = [(r["user_id"], r["kafka_offset"]) for r in lake.read(silver).to_pylist()]
    assert sorted(o for u, o in kept if u == alice) == [4, 5] and len([u for u, _ in kept if u == bob]) == 6
    assert [e["operation"] for e in lake.open_table(silver).history()].count("DELETE") == 1
    assert result[Tables.BRONZE_EVENTS]["files_removed"] == 6
    for table in (bronze, silver):
        assert len(list(Path(table).glob("*.parquet"))) == 1  # compacted, replaced files vacuumed
        protocol = lake.open_table(table).protocol()  # still writable by delta-rs (the archiver)
        assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    lake.write(bronze, bronze_rows([event("after", bob, kafka_offset=6)]))
    assert lake.read(bronze).num_rows == 13


@pytest.fixture(scope="module")
def movielens_models(spark, settings, tmp_path_factory):
    """MovieLens-100K backfilled, cleaned, trained with both engines and evaluated, once for this module."""
    s = settings.model_copy(update={"state_dir": tmp_path_factory.mktemp("ml")})
    backfill(events_to_batches(movielens.iter_events(s.pseudonym_key_bytes())), settings=s)
    clean(spark, settings=s)
    results = {}
    for engine in ("spark_als", "implicit_als"):
        version = f"m2026010{len(results) + 1}T000000000000-{engine}"
        train(spark, version, engine, settings=s)
        results[engine] = (version, evaluate(spark, version, settings=s))
    return s, results


def test_both_engines_write_the_same_artifact_format(movielens_models):
    s, results = movielens_models
    artifacts = {e: model_store.load(model_store.find(v, s)) for e, (v, _) in results.items()}
    spark_model, implicit_model = artifacts["spark_als"], artifacts["implicit_als"]
    assert spark_model.manifest.details["objective"]["confidence"] == "one_plus_alpha_r"
    assert spark_model.model.objective.reg_scaling == "count"
    assert implicit_model.manifest.details["objective"]["confidence"] == "alpha_r"
    assert implicit_model.model.objective.reg_scaling == "none"
    for a in artifacts.values():
        assert a.user_factors.shape == (movielens.N_USERS, a.model.params.rank)
        assert a.item_factors.shape == (movielens.N_ITEMS, a.model.params.rank)
        assert a.interactions.nnz == movielens.N_RATINGS  # one rating per (user, item) pair
        assert np.isfinite(a.user_factors).all() and np.abs(a.item_factors).sum() > 0
        assert a.manifest.silver_table_version == 0
    np.testing.assert_array_equal(spark_model.user_ids, implicit_model.user_ids)
    statuses = registry_status(s)
    assert {statuses[v]["status"] for v, _ in results.values()} == {"evaluated"}


def test_als_clearly_beats_popularity_on_movielens(movielens_models):
    _, results = movielens_models
    for engine, (_, metrics) in results.items():
        model, popular = metrics["model"], metrics["popularity"]
        assert model["ndcg@10"] >= 1.3 * popular["ndcg@10"], (engine, model, popular)
        assert model["precision@10"] > popular["precision@10"]
        assert model["coverage@10"] > popular["coverage@10"]
        assert model["n_users"] == popular["n_users"] == movielens.N_USERS


def test_spark_and_implicit_engines_reach_comparable_quality(movielens_models):
    _, results = movielens_models
    spark_ndcg = results["spark_als"][1]["model"]["ndcg@10"]
    implicit_ndcg = results["implicit_als"][1]["model"]["ndcg@10"]
    assert abs(spark_ndcg - implicit_ndcg) <= 0.15 * max(spark_ndcg, implicit_ndcg), (spark_ndcg, implicit_ndcg)


def test_gate_failure_publishes_nothing_then_a_good_model_is_published(movielens_models, broker):
    s, results = movielens_models
    s = s.model_copy(update={"kafka_bootstrap": broker.kafka_bootstrap})
    version = results["implicit_als"][0]
    messages_before = count_messages([Topics.MODEL_UPDATES], s)[Topics.MODEL_UPDATES]

    strict = s.model_copy(update={"gate_min_lift": 10.0})
    refused = publish(version, strict)
    assert not refused.passed and "popularity" in refused.reason
    assert model_store.published_versions(s) == []
    assert registry_status(s)[version]["status"] == "rejected"
    assert count_messages([Topics.MODEL_UPDATES], s)[Topics.MODEL_UPDATES] == messages_before

    accepted = publish(version, s)
    assert accepted.passed and model_store.published_versions(s) == [version]
    assert registry_status(s)[version]["status"] == "published"
    assert count_messages([Topics.MODEL_UPDATES], s)[Topics.MODEL_UPDATES] == messages_before + 1

    again = publish(version, s)  # as after a crash between the promotion and the message
    assert again.passed and "re-sent" in again.reason
    assert count_messages([Topics.MODEL_UPDATES], s)[Topics.MODEL_UPDATES] == messages_before + 2


def test_top_n_writes_each_users_served_list_replaces_it_nightly_and_erases_forgotten_users(spark, local):
    s = local.model_copy(update={"vacuum_retention_hours": 0})
    n_users, n_items = 300, 80
    rng = np.random.default_rng(3)
    users = [pseudonymise(f"shopper-{u}", s.pseudonym_key_bytes()) for u in range(n_users)]
    bought = sp.random(n_users, n_items, density=0.05, format="csr", random_state=3, dtype=np.float32)
    objective = Objective(confidence="alpha_r", reg_scaling="none", alpha=1.0, reg=0.5)
    a = als_artifact(rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8)), bought, objective, user_ids=users)
    model_store.promote(model_store.save_candidate(a, s), s)
    gone, later = users[0], users[1]
    erasure.record([ForgetMessage(user_id=gone, partition=0, offset=10**9)], erasure.REQUESTED, s)  # covers the model

    first = top_n(spark, n=12, settings=s)
    path = Tables.path(Tables.USER_TOP_N, s)
    rows = lake.read(path).to_pylist()
    assert first["users"] == n_users - 1 and len(rows) == 12 * (n_users - 1)
    assert gone not in {r["user_id"] for r in rows} and {r["model_version"] for r in rows} == {a.manifest.model_version}
    lists: dict[str, list] = {}
    for r in sorted(rows, key=lambda r: (r["user_id"], r["rank"])):
        lists.setdefault(r["user_id"], []).append((r["rank"], r["item_id"], r["score"]))
    served = ServingModel(model_store.load(model_store.latest_published(s)), {}, s)
    for user in users[1:]:  # what GET /recommend/{user}?k=12 answers from this model, seen items left out
        ranked = served.recommend(user, 12)
        assert lists[user] == list(zip(range(1, 13), ranked.item_ids, ranked.scores, strict=True)), user

    second = top_n(spark, n=5, settings=s)  # the next night: the content is replaced, not added to
    again = lake.read(path).to_pylist()
    assert len(again) == 5 * (n_users - 1) and {r["rank"] for r in again} == set(range(1, 6))
    assert {r["generated_at"] for r in again} != {r["generated_at"] for r in rows} and second["version"] > 0

    # `later` is forgotten: once the archiver has passed the marker, `complete` deletes their rows (and vacuums).
    lake.write(
        Tables.path(Tables.BRONZE_EVENTS, s),
        bronze_rows([event("e0", gone)]),
        txns={Tables.archiver_txn_id(Topics.EVENTS, 0): 11},
    )
    assert erasure.complete(ForgetMessage(user_id=later, partition=0, offset=10), s, spark)
    left = lake.read(path, columns=["user_id"]).column("user_id").to_pylist()
    assert later not in left and len(left) == 5 * (n_users - 2)
    assert all(later not in pq.read_table(f).column("user_id").to_pylist() for f in Path(path).glob("*.parquet"))


def test_time_decay_weights_recent_events_more(spark, local):
    user = pseudonymise("carol", local.pseudonym_key_bytes())
    rows = [event("old", user, "i_old", ts=NOW - timedelta(days=30)), event("new", user, "i_new", ts=NOW)]
    lake.write(Tables.path(Tables.BRONZE_EVENTS, local), bronze_rows(rows))
    clean(spark, settings=local)
    decayed = local.model_copy(update={"decay_half_life_days": 10.0, "als_rank": 2, "als_iterations": 2})
    path = train(spark, "m20260101T000000000000-decay", "implicit_als", settings=decayed)
    artifact = model_store.load(path)
    strengths = dict(zip(artifact.item_ids, artifact.interactions.toarray()[0], strict=True))
    assert strengths["i_new"] == pytest.approx(1.0)
    assert strengths["i_old"] == pytest.approx(0.5**3, rel=1e-4)


@pytest.mark.parametrize("engine", ["spark_als", "implicit_als"])
def test_folding_in_a_batch_user_reproduces_the_batch_vector(movielens_models, engine):
    """Same data, same item factors, the objective from the manifest: the fold-in lands on the trained vector.

    Up to one half-iteration: an engine whose last step updated the items has user
    vectors one step behind the final item factors.
    """
    s, results = movielens_models
    artifact = model_store.load(model_store.find(results[engine][0], s))
    folded = FoldIn(artifact.item_factors, artifact.model.objective).vectors(artifact.interactions)
    batch = np.asarray(artifact.user_factors, dtype=np.float64)
    cosine = (folded * batch).sum(1) / (np.linalg.norm(folded, axis=1) * np.linalg.norm(batch, axis=1))
    relative = np.linalg.norm(folded - batch, axis=1) / np.linalg.norm(batch, axis=1)
    if engine == "spark_als":  # Spark updates the users last: the fold-in is the trained vector
        assert relative.max() < 1e-4, relative.max()
    else:  # implicit updates the items last: the users are one half-iteration behind
        assert cosine.min() > 0.999 and np.median(relative) < 0.03, (cosine.min(), np.median(relative))


def test_spark_counted_cooccurrences_and_transitions_equal_the_driver_counted_ones(spark, settings):
    """The Spark tasks count exactly what the numpy fit counts: every pair, each once (synthetic, with sessions)."""
    from recsys.data import datasets
    from recsys.data.synthetic import SyntheticConfig, iter_batches
    from recsys.models.item_knn import cooccurrence, cooccurrence_by_spark
    from recsys.models.transitions import sequence_ids, transition_counts, transition_counts_by_spark

    table = pa.Table.from_batches(list(iter_batches(SyntheticConfig(n_events=4000, n_users=300, n_items=200))))
    data, _ = datasets.build(
        table.column("user_id"),
        table.column("item_id"),
        table.column("ts").cast(pa.int64()).to_numpy() // 1000,
        table.column("event_type"),
        np.ones(table.num_rows),
        ["view", "add_to_cart", "purchase"],
        session=table.column("session_id"),
    )
    binary = (data.strengths > 0).astype(np.float32).tocsr()
    want, got = cooccurrence(binary), cooccurrence_by_spark(spark, binary)
    assert want.nnz > 1000 and (got != want).nnz == 0
    sequence = sequence_ids(data.events, 0)
    how = {"window": 5, "step_decay": 0.8, "backward": 0.5, "tie_ms": 1000, "max_steps": 200}
    want = transition_counts(data.events, sequence, data.n_items, **how)
    got = transition_counts_by_spark(data.events, sequence, data.n_items, **how, spark=spark)
    assert want.nnz > 500 and np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
    np.testing.assert_allclose(got.data, want.data, rtol=1e-12)
