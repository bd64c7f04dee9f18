"""Model directories: complete or absent, immutable, promoted by rename."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
from artifacts import als_artifact

from recsys.data.inputs import EventLog
from recsys.io import model_store
from recsys.models.als import Objective
from recsys.settings import Settings

OBJECTIVE = Objective(confidence="alpha_r", reg_scaling="none", alpha=1, reg=0.1)


def artifact(
    version: str = "m20260101T000000000000", n_users: int = 3, n_items: int = 4, rank: int = 2
) -> model_store.ModelArtifact:
    rng = np.random.default_rng(0)
    interactions = sp.random(n_users, n_items, density=0.5, format="csr", random_state=1, dtype=np.float32)
    events = EventLog(
        np.repeat(np.arange(n_users, dtype=np.int32), 2),
        np.zeros(2 * n_users, np.int32),
        np.arange(2 * n_users, dtype=np.int64),
        np.zeros(2 * n_users, np.int8),
    )
    return als_artifact(
        rng.normal(size=(n_users, rank)),
        rng.normal(size=(n_items, rank)),
        interactions,
        OBJECTIVE,
        version=version,
        events=events,
    )


def with_seen_types(a: model_store.ModelArtifact, bits: int = 1) -> model_store.ModelArtifact:
    data = replace(a.data, seen_types=(a.interactions != 0).astype(np.int32) * bits)
    return model_store.ModelArtifact(a.manifest, data, a.model)


def test_round_trip(tmp_path):
    a = with_seen_types(artifact(), 5)  # bits 0 and 2
    model_store.save(a, tmp_path / "m20260101T000000000000")
    b = model_store.load(tmp_path / "m20260101T000000000000")
    assert b.manifest.model_version == "m20260101T000000000000"
    assert set(b.manifest.files) == {*model_store.FILES, "user_factors", "item_factors"}
    assert b.manifest.engine == "implicit_als" and b.model.objective == OBJECTIVE
    np.testing.assert_array_equal(b.user_factors, a.user_factors)
    np.testing.assert_array_equal(b.item_ids, a.item_ids)
    assert (b.interactions != a.interactions).nnz == 0
    assert (b.seen_types != a.seen_types).nnz == 0


def test_seen_types_are_optional(tmp_path):
    model_store.save(artifact(), tmp_path / "m20260101T000000000000")
    b = model_store.load(tmp_path / "m20260101T000000000000")
    assert b.seen_types is None and "seen_types" not in b.manifest.files


def test_inconsistent_shapes_are_refused():
    a = artifact()
    with pytest.raises(ValueError, match="shape"):
        replace(a.data, item_ids=a.item_ids[:2])


@pytest.mark.reliability
def test_failed_save_leaves_nothing_and_versions_are_immutable(tmp_path):
    broken = artifact()
    broken.model.item_factors = object()  # fails while writing, after the shared files are on disk
    with pytest.raises(Exception):  # noqa: B017 - whatever numpy raises, the directory must not appear
        model_store.save(broken, tmp_path / "m20260101T000000000000")
    assert list(tmp_path.iterdir()) == []
    model_store.save(artifact(), tmp_path / "m20260101T000000000000")
    with pytest.raises(FileExistsError):
        model_store.save(artifact(), tmp_path / "m20260101T000000000000")


@pytest.mark.reliability
def test_directory_without_manifest_is_not_a_model(tmp_path):
    (tmp_path / "m20260101T000000000000").mkdir()
    with pytest.raises(model_store.ModelNotFound):
        model_store.load(tmp_path / "m20260101T000000000000")


def test_promote_and_latest(tmp_path):
    s = Settings(state_dir=tmp_path)
    assert model_store.latest_published(s) is None
    for v in ("m20260101T000000000000", "m20260301T000000000000", "m20260201T000000000000"):
        model_store.save(artifact(v), model_store.candidates_dir(s) / v)
        model_store.promote(model_store.candidates_dir(s) / v, s)
    assert model_store.published_versions(s) == [
        "m20260101T000000000000",
        "m20260201T000000000000",
        "m20260301T000000000000",
    ]
    assert model_store.latest_published(s).name == "m20260301T000000000000"
    assert not (model_store.candidates_dir(s) / "m20260101T000000000000").exists()


def test_find_looks_in_published_then_candidates(tmp_path):
    s = Settings(state_dir=tmp_path)
    model_store.save(artifact("m20260101T000000000000"), model_store.candidates_dir(s) / "m20260101T000000000000")
    assert model_store.find("m20260101T000000000000", s) == model_store.candidates_dir(s) / "m20260101T000000000000"
    model_store.promote(model_store.candidates_dir(s) / "m20260101T000000000000", s)
    assert model_store.find("m20260101T000000000000", s) == model_store.published_dir(s) / "m20260101T000000000000"
    with pytest.raises(model_store.ModelNotFound):
        model_store.find("m20260102T000000000000", s)


@pytest.mark.reliability
def test_erasing_users_keeps_shapes_and_every_other_user(tmp_path):
    a = with_seen_types(artifact(n_users=5))
    model_store.save(a, tmp_path / "m20260101T000000000000")
    with_mmap = model_store.load(
        tmp_path / "m20260101T000000000000"
    )  # a reader that mapped the files before the erasure
    assert model_store.erase_users(tmp_path / "m20260101T000000000000", {"u1", "u3", "nobody"}) == 2
    b = model_store.load(tmp_path / "m20260101T000000000000", mmap=False)
    assert b.user_ids.tolist() == ["u0", "erased-1", "u2", "erased-3", "u4"]
    assert not b.user_factors[[1, 3]].any() and b.interactions[[1, 3]].nnz == 0 and b.seen_types[[1, 3]].nnz == 0
    assert set(b.data.events.user.tolist()) == {0, 2, 4}  # their latest events are gone too
    keep = [0, 2, 4]
    np.testing.assert_array_equal(b.user_factors[keep], a.user_factors[keep])
    assert (b.interactions[keep] != a.interactions[keep]).nnz == 0
    np.testing.assert_array_equal(with_mmap.user_factors, a.user_factors)  # its view is whole, not torn
    assert model_store.erase_users(tmp_path / "m20260101T000000000000", {"u1"}) == 0  # idempotent
    assert not [
        p for p in (tmp_path / "m20260101T000000000000").iterdir() if p.name.startswith(".")
    ]  # no temporary files left


def test_a_model_with_sub_folders_round_trips(tmp_path):
    """The hybrid keeps each component in a sub-folder of the model directory."""
    from recsys.evaluation.protocol import dataset_from_events
    from recsys.models.hybrid import Hybrid

    rng = np.random.default_rng(1)
    events = [(f"u{u}", f"i{rng.integers(12)}", t, 1.0, "view") for u in range(8) for t in range(6)]
    import pandas as pd

    data, _ = dataset_from_events(pd.DataFrame(events, columns=["user_id", "item_id", "ts", "weight", "event_type"]))
    hybrid = Hybrid(
        Hybrid.Params(
            tune=False,
            weights={"implicit_als": 1.0, "item_knn": 1.0},
            component_params={"implicit_als": {"rank": 4, "iterations": 2}},
        )
    )
    hybrid.fit(data)
    manifest = model_store.build_manifest(hybrid, data, "m20260101T000000000000-hybrid")
    model_store.save(model_store.ModelArtifact(manifest, data, hybrid), tmp_path / "m")
    loaded = model_store.load(tmp_path / "m")
    ctx = data.contexts(range(3))
    np.testing.assert_allclose(loaded.model.score(ctx), hybrid.score(ctx), rtol=1e-6)
    assert model_store.erase_users(tmp_path / "m", {"u1"}) == 1
    assert not model_store.load(tmp_path / "m").model.components["implicit_als"].user_factors[1].any()
