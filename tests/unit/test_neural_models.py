"""The neural recommenders on tiny data: NeuMF (JAX training, numpy serving and real-time update) and SR-GNN.

Each test names the property it checks; the JAX side is the reference the numpy side must equal.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from recsys import registry
from recsys.data.inputs import Dataset, UserContext
from recsys.evaluation.protocol import dataset_from_events
from recsys.models.capabilities import updates_users
from recsys.models.neumf import NeuMF, NeuMFParams, NeuMFScorer, update_user
from recsys.models.srgnn import SRGNN, SRGNNParams, SRGNNScorer, current_session, session_graph

pytest.importorskip("jax")

S = 1000  # ms
HOUR = 3600 * S


def events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": [r[2] for r in rows],
            "weight": 1.0,
            "event_type": "view",
        }
    )


def ctx(items: list[int], ts: list[int] | None = None, row: int | None = None) -> UserContext:
    a = np.array(items, np.int64)
    ts = ts if ts is not None else [k * S for k in range(len(items))]
    return UserContext(
        row=row,
        items=np.unique(a),
        strengths=np.ones(len(np.unique(a)), np.float32),
        recent=a,
        recent_ts_ms=np.array(ts, np.int64),
        recent_kinds=np.zeros(len(a), np.int8),
    )


# --- data ---------------------------------------------------------------------------------------------------
def two_tastes(n_users: int = 60, seed: int = 0) -> Dataset:
    """Users of two tastes (items a0..a9 or b0..b9), each touching 6 items of their own taste, one a minute."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        side = "a" if u % 2 == 0 else "b"
        for k, j in enumerate(rng.choice(10, 6, replace=False)):
            rows.append((f"u{u:03d}", f"{side}{j}", u * HOUR + k * 60 * S))
    data, _ = dataset_from_events(events(rows))
    return data


def funnels(n_users: int = 80) -> Dataset:
    """Sessions A → B → C and D → B → E (so what follows B depends on what came before it), plus noise items,
    one session per user a minute apart; half the users also have an older unrelated session a day before."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(n_users):
        path = ["A", "B", "C"] if u % 2 == 0 else ["D", "B", "E"]
        t0 = 10 * 24 * HOUR + u * HOUR
        if u % 4 < 2:
            for k, j in enumerate(rng.choice(8, 3, replace=False)):
                rows.append((f"u{u:03d}", f"n{j}", t0 - 24 * HOUR + k * 60 * S))
        for k, item in enumerate(path):
            rows.append((f"u{u:03d}", item, t0 + k * 60 * S))
    data, _ = dataset_from_events(events(rows))
    return data


SMALL_NEUMF = NeuMFParams(
    gmf_dim=8,
    mlp_dim=8,
    mlp_layers=(16, 8),
    batch_size=64,
    epochs=15,
    lr=0.01,
    l2=0.0,
    update_deadline_ms=10_000,
    candidates=0,
)
SMALL_SRGNN = SRGNNParams(dim=16, batch_size=32, epochs=30, lr=0.01, lr_decay_epochs=100, l2=0.0)


@pytest.fixture(scope="module")
def neumf() -> tuple[NeuMF, Dataset]:
    data = two_tastes()
    model = NeuMF(SMALL_NEUMF)
    model.fit(data)
    return model, data


@pytest.fixture(scope="module")
def srgnn() -> tuple[SRGNN, Dataset]:
    data = funnels()
    model = SRGNN(SMALL_SRGNN)
    model.fit(data)
    return model, data


# --- training lowers the loss ---------------------------------------------------------------------------------
def test_training_lowers_the_loss(neumf, srgnn):
    for model, _ in (neumf, srgnn):
        losses = [row["loss"] for row in model.history]
        assert losses[0] == model.history[0]["loss"] and model.history[0]["epoch"] == 0  # the untrained model
        assert losses[-1] < 0.7 * losses[0], (model.name, losses)


def test_neumf_learns_the_two_tastes(neumf):
    model, data = neumf
    ids = list(data.item_ids)
    a_items = [j for j, i in enumerate(ids) if i.startswith("a")]
    users = data.contexts(range(data.n_users))
    scores = model.score(users)
    top_is_a = [np.isin(np.argsort(-scores[r])[:5], a_items).mean() for r in range(data.n_users)]
    assert np.mean(top_is_a[0::2]) > 0.8 and np.mean(top_is_a[1::2]) < 0.2


# --- SR-GNN: a session A → B recommends what followed A → B ---------------------------------------------------------
def test_a_session_a_then_b_recommends_what_followed_a_then_b(srgnn):
    model, data = srgnn
    ids = list(data.item_ids)
    a, b, c, d, e = (ids.index(x) for x in "ABCDE")
    after_ab = model.score([ctx([a, b])])[0]
    after_db = model.score([ctx([d, b])])[0]
    for scores in (after_ab, after_db):
        scores[[a, b, d]] = -np.inf  # seen, or never a next item here
    assert int(np.argmax(after_ab)) == c and int(np.argmax(after_db)) == e
    # Only the current session counts: an old A a day ago does not make B → C.
    old_a = model.score([ctx([a, d, b], [0, 24 * HOUR, 24 * HOUR + S])])[0]
    old_a[[a, b, d]] = -np.inf
    assert int(np.argmax(old_a)) == e


def test_the_current_session_is_cut_by_the_gap_and_deduplicated():
    got = current_session(
        np.array([1, 2, 3, 3, 4, 4, 9]),
        np.array([0, 10, 5000, 5001, 5002, 5003, 5004]),
        gap_ms=1000,
        max_len=3,
        n_items=9,
    )
    assert got.tolist() == [3, 4]  # 1, 2 are an older session; repeats dropped; 9 is unknown to the model
    nodes, alias, a_in, a_out = session_graph(np.array([5, 7, 5, 8]))
    assert nodes.tolist() == [5, 7, 8] and alias.tolist() == [0, 1, 0, 2]
    assert a_out[0].tolist() == [0.0, 0.5, 0.5] and a_in[0].tolist() == [0.0, 1.0, 0.0]


def test_session_ids_define_training_sessions_and_the_request_gap():
    rows = [("u", "A", 0), ("u", "B", 10 * S), ("u", "C", 20 * S), ("u", "D", 40 * S)]
    frame = events(rows)
    frame["session_id"] = ["s1", "s1", "s1", "s2"]
    data, _ = dataset_from_events(frame)
    from recsys.models.srgnn import training_examples

    (flat, begins, ends, targets), gap = training_examples(data, 3600 * S)
    assert targets.tolist() == [1, 2] and begins.tolist() == [0, 0]  # B after A, C after A B; D opens a new session
    assert flat[: ends[-1]].tolist() == [0, 1]  # the last prefix's context: A B
    assert gap == pytest.approx(10 * S, rel=0.01)  # requests cut sessions like the training sessions were cut


def test_srgnn_explains_with_the_session_item_that_carries_the_score(srgnn):
    model, data = srgnn
    ids = list(data.item_ids)
    a, b, c = (ids.index(x) for x in "ABC")
    user = ctx([a, b])
    reasons = model.explain(user, c, 2)
    shares = model.scorer.position_shares(np.array([a, b]), c)
    bias = float(model.scorer.item_emb[c] @ model.scorer.w["out_b"])
    assert sum(shares) + bias == pytest.approx(float(model.score([user])[0, c]), rel=1e-4, abs=1e-4)
    assert {r.item for r in reasons} == {a, b} and reasons[0].share >= reasons[1].share
    near, _ = model.similar_items(a, 3)
    assert a not in near.tolist()


# --- NeuMF: a user's real-time update moves them toward the items they clicked -----------------------------------
def test_a_real_time_update_moves_the_user_toward_the_clicked_items(neumf):
    model, data = neumf
    ids = list(data.item_ids)
    b_items = [j for j, i in enumerate(ids) if i.startswith("b")]
    row = 0  # an "a" user who now clicks three "b" items
    before_ctx = data.context(row)
    clicked = [j for j in b_items if j not in before_ctx.items][:3]
    after_ctx = data.context(row)
    after_ctx.items = np.r_[after_ctx.items, clicked]
    after_ctx.strengths = np.r_[after_ctx.strengths, np.ones(3, np.float32)]
    after_ctx.recent = np.r_[after_ctx.recent, clicked]
    states = model.update_users([before_ctx, after_ctx])
    assert states.shape == (2, model.state_size)
    before_ctx.state, after_ctx.state = states
    s_before, s_after = model.score([before_ctx, after_ctx])

    def rank(scores: np.ndarray, j: int) -> int:
        return int((scores > scores[j]).sum())

    assert all(rank(s_after, j) < rank(s_before, j) for j in clicked)
    # A new user (no row, no state) is folded in from the mean user on their history: they get their taste.
    new = model.score([ctx(b_items[:4])])[0]
    assert np.isin(np.argsort(-new)[:8], b_items).mean() > 0.7


def test_the_hand_written_user_gradient_equals_jax_grad(neumf):
    from recsys.models.neural.neumf_jax import jax_user_grads

    model, _ = neumf
    s = model.scorer
    rng = np.random.default_rng(0)
    items = rng.integers(0, s.n_items, 12)
    labels = (rng.random(12) < 0.4).astype(np.float32)
    gmf, mlp = s.user(3)
    loss, g_gmf, g_mlp = s.loss_and_user_grads(gmf, mlp, items, labels)
    ref_loss, ref_gmf, ref_mlp = jax_user_grads(s.weights, gmf, mlp, items, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(g_gmf, ref_gmf, atol=1e-6)
    np.testing.assert_allclose(g_mlp, ref_mlp, atol=1e-6)


def test_the_update_is_bounded_in_steps_and_time(neumf):
    model, data = neumf
    s = model.scorer
    history = data.context(0).items
    capped = update_user(s, history, *s.mean_user(), np.random.default_rng(0), max_steps=5, deadline_s=None)
    assert capped.steps == 5 and capped.loss_last < capped.loss_first
    rushed = update_user(s, history, *s.user(0), np.random.default_rng(0), max_steps=10_000, deadline_s=0.02)
    assert 1 <= rushed.steps < 10_000 and rushed.seconds < 1.0


def test_neumf_retriever_then_exact_rerank():
    rng = np.random.default_rng(0)
    d, n = 4, 300
    w = {
        "gmf_user": rng.normal(size=(5, d)),
        "gmf_item": rng.normal(size=(n, d)),
        "mlp_user": rng.normal(size=(5, d)),
        "mlp_item": rng.normal(size=(n, d)),
        "mlp_w0": rng.normal(size=(2 * d, 6)),
        "mlp_b0": np.zeros(6),
        "out_w": rng.normal(size=d + 6),
        "out_b": np.zeros(()),
    }
    s = NeuMFScorer({k: np.asarray(v, np.float32) for k, v in w.items()})
    gmf, mlp = s.user(1)
    exact = s.logits(gmf, mlp)
    ranked = s.ranked_scores(gmf, mlp, candidates=100)
    cand = np.argsort(-ranked)[:100]
    np.testing.assert_allclose(ranked[cand], exact[cand], rtol=1e-5)  # candidates carry their exact logit
    assert ranked[cand].min() > np.delete(ranked, cand).max()  # and rank above every other item
    np.testing.assert_allclose(s.ranked_scores(gmf, mlp, candidates=0), exact, rtol=1e-6)  # 0 = exhaustive


# --- save and load: numpy inference equals the trained model's JAX forward ------------------------------------------
def test_neumf_save_load_round_trip_equals_the_jax_forward(neumf, tmp_path):
    from recsys.models.neural.neumf_jax import jax_logits

    model, data = neumf
    users = np.repeat(np.arange(data.n_users), data.n_items)
    items = np.tile(np.arange(data.n_items), data.n_users)
    reference = jax_logits(model.scorer.weights, users, items).reshape(data.n_users, data.n_items)
    model.save(tmp_path)
    loaded = NeuMF.load(tmp_path, model.params, data)
    contexts = data.contexts(range(data.n_users))
    np.testing.assert_allclose(loaded.score(contexts), reference, atol=1e-5)
    np.testing.assert_allclose(loaded.score(contexts), model.score(contexts), atol=1e-6)
    NeuMF.erase_rows(tmp_path, np.array([0]))
    erased = NeuMF.load(tmp_path, model.params, data)
    assert not erased.scorer.user_gmf[0].any() and erased.scorer.user_gmf[1].any()


def test_srgnn_save_load_round_trip_equals_the_jax_forward(srgnn, tmp_path):
    from recsys.models.neural.data import gather_windows
    from recsys.models.neural.srgnn_jax import jax_scores

    model, data = srgnn
    rng = np.random.default_rng(0)
    sessions = [rng.integers(0, data.n_items, int(rng.integers(1, 30))) for _ in range(20)]
    sessions.append(np.array([2, 3, 2, 4, 2, 3]))  # repeats: one node per item, repeated edges count once
    flat = np.concatenate(sessions)
    ends = np.cumsum([len(s) for s in sessions])
    seqs, lengths = gather_windows(flat, ends - [len(s) for s in sessions], ends, model.scorer.max_len)
    reference = jax_scores(model.scorer.weights, seqs, lengths)
    model.save(tmp_path)
    loaded = SRGNN.load(tmp_path, model.params, data)
    assert isinstance(loaded.scorer, SRGNNScorer) and loaded.scorer.gap_ms == model.scorer.gap_ms
    for r, seq in enumerate(sessions):
        np.testing.assert_allclose(loaded.scorer.scores(seq), reference[r], atol=1e-4)
    assert np.isneginf(loaded.score([UserContext()])).all()  # nothing to read: it cannot rank


def test_both_are_registered_and_serving_needs_no_jax():
    assert registry.model_class("neumf") is NeuMF and registry.model_class("srgnn") is SRGNN
    assert updates_users(NeuMF()) and not updates_users(SRGNN())  # only NeuMF keeps a state per user
    import subprocess
    import sys

    code = (
        "import sys, recsys.models.neumf, recsys.models.srgnn, serving.model, speed_layer.state; "
        "sys.exit('jax' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- serving answers from the session model -------------------------------------------------------------------
def test_serving_answers_from_a_published_srgnn_model(srgnn, tmp_path):
    from recsys.io import model_store
    from recsys.protocol import VectorUpdate
    from recsys.settings import Settings
    from serving.model import ServingModel

    model, data = srgnn
    version = "m20260101T000000000000-srgnn"
    manifest = model_store.build_manifest(model, data, version)
    path = model_store.save(model_store.ModelArtifact(manifest, data, model), tmp_path / version)
    artifact = model_store.load(path)
    assert isinstance(artifact.model, SRGNN)
    s = Settings(state_dir=tmp_path)
    serving = ServingModel(artifact, {}, s)
    now = 100 * 24 * HOUR
    serving.apply(
        VectorUpdate(
            model_version=version,
            kind="user",
            id="u000",
            vector=None,
            event_ts_ms=now + S,
            strengths={"D": 1.0, "B": 1.0},
            event_types={"D": ["view"], "B": ["view"]},
            recent=[("D", "view", now), ("B", "view", now + S)],
        )
    )
    started = time.perf_counter()
    ranked = serving.recommend("u000", k=s.serving_max_k, explain=True)
    took = time.perf_counter() - started
    assert ranked.source == "speed" and ranked.item_ids[0] == "E"  # the session D → B, not the user's old A → B
    # Every other item comes back (views are not excluded; the two just viewed are, by the cool-down).
    assert len(ranked.item_ids) == data.n_items - 2 and not {"D", "B"} & set(ranked.item_ids)
    assert ranked.reasons is not None and ranked.reasons[0] in ("because you viewed B", "because you viewed D")
    assert took < 1.0
    fresh = serving.recommend("nobody", k=3)
    assert fresh.source == "popular"
