"""Negative controls for the crash checks in infra/chaos.py: each check passes on a faithful run and FAILS when
the property it names is broken (one event dropped, one counted twice, an UP claiming an offset it does not
cover). Without these a check could pass whatever the speed layer published (issue 19, item 1)."""

import numpy as np
import pytest
import scipy.sparse as sp
from artifacts import als_artifact

from infra.chaos import ups_against_offsets
from recsys.contracts.events import Event
from recsys.io.model_store import ModelArtifact
from recsys.models.als import FoldIn, Objective
from recsys.protocol import VectorUpdate

WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
VERSION = "m20260101T000000000000"


@pytest.fixture(scope="module")
def artifact() -> ModelArtifact:
    rng = np.random.default_rng(3)
    n_users, n_items, rank = 12, 40, 6
    items = rng.normal(scale=0.3, size=(n_items, rank)).astype(np.float32)
    base = sp.random(n_users, n_items, density=0.2, random_state=4, format="csr", dtype=np.float32)
    base.data[:] = rng.integers(1, 6, size=base.nnz)
    objective = Objective(confidence="one_plus_alpha_r", reg_scaling="count", alpha=0.3, reg=0.1)
    users = FoldIn(items, objective).vectors(base)
    return als_artifact(users, items, base, objective, version=VERSION, kafka_offsets={0: 100, 1: 100})


@pytest.fixture(scope="module")
def log() -> dict[str, list[tuple[int, Event]]]:
    """300 events after the model's cut-off (offset 100) on two partitions, users keyed to one partition each;
    a few users new to the model."""
    rng = np.random.default_rng(5)
    next_offset = {0: 100, 1: 100}
    history: dict[str, list[tuple[int, Event]]] = {}
    for n in range(300):
        user = f"u{rng.integers(0, 15)}"  # u12..u14 are not in the model
        partition = int(user[1:]) % 2
        offset = next_offset[partition]
        next_offset[partition] += 1
        event = Event(
            event_id=f"e{n}",
            user_id=user,
            item_id=f"i{rng.integers(0, 40)}",
            event_type=str(rng.choice(list(WEIGHTS))),
            ts=1_767_225_600_000 + n,
        )
        history.setdefault(user, []).append((offset, event))
    return history


def speed_layer(artifact, log, batch: int = 7, drop=None, double=None) -> list[VectorUpdate]:
    """What a speed layer publishes, micro-batch by micro-batch: one UP per touched user with the offset of their
    newest event in the batch. `drop` / `double` = (user, offset) of one event it loses / counts twice (a crash
    bug), while its UPs still carry the offsets it read."""
    rows = {u: i for i, u in enumerate(artifact.user_ids)}
    index = {it: j for j, it in enumerate(artifact.item_ids)}
    fold = FoldIn(artifact.item_factors, artifact.model.objective)
    totals: dict[str, np.ndarray] = {}
    stream = sorted((offset, user, e) for user, events in log.items() for offset, e in events)
    ups = []
    for start in range(0, len(stream), batch):
        newest: dict[str, int] = {}
        for offset, user, e in stream[start : start + batch]:
            if user not in totals:
                totals[user] = artifact.interactions[rows[user]].toarray().ravel() if user in rows else np.zeros(40)
            times = 0 if drop == (user, offset) else 2 if double == (user, offset) else 1
            totals[user][index[e.item_id]] += times * WEIGHTS[e.event_type]
            newest[user] = offset
        for user, offset in newest.items():
            nz = np.flatnonzero(totals[user])
            vector = fold.vector(nz, totals[user][nz])
            ups.append(
                VectorUpdate(model_version=VERSION, kind="user", id=user, vector=vector.tolist(), source_offset=offset)
            )
    return ups


def test_a_faithful_run_passes_and_every_up_is_checked(artifact, log):
    ups = speed_layer(artifact, log)
    result = ups_against_offsets(artifact, log, ups, WEIGHTS)
    assert result.mismatched == [] and result.checked == len(ups) > 100 and result.users == 15
    result.assert_ok()


@pytest.mark.parametrize("fault", ["drop", "double"])
def test_one_event_dropped_or_counted_twice_fails_the_check(artifact, log, fault):
    user = "u3"
    offset = log[user][len(log[user]) // 2][0]  # one event in the middle of the user's history
    ups = speed_layer(artifact, log, **{fault: (user, offset)})
    result = ups_against_offsets(artifact, log, ups, WEIGHTS)
    assert result.mismatched, f"the check missed an event {fault}ped"
    # Exactly the UPs published after the fault, for that user: the ones from before it are still right.
    wrong = {m.split(":")[0].split("@")[0] for m in result.mismatched}
    assert wrong == {user}
    later = [up for up in ups if up.id == user and up.source_offset >= offset]
    assert len(result.mismatched) == len(later)
    with pytest.raises(AssertionError, match="UPs differ"):
        result.assert_ok()


def test_an_up_that_claims_an_offset_it_does_not_cover_fails(artifact, log):
    ups = speed_layer(artifact, log)
    up = next(u for u in ups if u.id == "u5")
    later = log["u5"][-1][0]  # the vector of an earlier offset, labelled with the user's newest one
    forged = up.model_copy(update={"source_offset": later})
    assert ups_against_offsets(artifact, log, [forged], WEIGHTS).mismatched
    missing = up.model_copy(update={"source_offset": 99_999})
    assert "none of the user's events" in ups_against_offsets(artifact, log, [missing], WEIGHTS).mismatched[0]
