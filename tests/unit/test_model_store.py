"""Model directories: complete or absent, immutable, promoted by rename."""

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.contracts.manifest import ModelManifest, Objective
from recsys.io import model_store
from recsys.settings import Settings


def artifact(
    version: str = "m20260101T000000000000", n_users: int = 3, n_items: int = 4, rank: int = 2
) -> model_store.ModelArtifact:
    manifest = ModelManifest(
        model_version=version, created_at_ms=1, engine="implicit",
        objective=Objective(confidence="alpha_r", reg_scaling="none", alpha=1, reg=0.1),
        rank=rank, hyperparameters={}, n_users=n_users, n_items=n_items,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    return model_store.ModelArtifact(
        manifest=manifest,
        user_ids=np.array([f"u{i}" for i in range(n_users)]),
        item_ids=np.array([f"i{j}" for j in range(n_items)]),
        user_factors=rng.normal(size=(n_users, rank)).astype(np.float32),
        item_factors=rng.normal(size=(n_items, rank)).astype(np.float32),
        interactions=sp.random(n_users, n_items, density=0.5, format="csr", random_state=1, dtype=np.float32),
        popularity=np.ones(n_items, np.float32),
    )


def test_round_trip(tmp_path):
    a = artifact()
    a.seen_types = (a.interactions != 0).astype(np.int32) * 5  # bits 0 and 2
    model_store.save(a, tmp_path / "m20260101T000000000000")
    b = model_store.load(tmp_path / "m20260101T000000000000")
    assert b.manifest.model_version == "m20260101T000000000000" and b.manifest.files == model_store.FILES
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
    with pytest.raises(ValueError, match="inconsistent"):
        model_store.ModelArtifact(**{**a.__dict__, "item_factors": a.item_factors[:2]})


@pytest.mark.reliability
def test_failed_save_leaves_nothing_and_versions_are_immutable(tmp_path):
    broken = artifact()
    broken.popularity = object()  # fails while writing, after the factors are on disk
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
        "m20260101T000000000000", "m20260201T000000000000", "m20260301T000000000000"
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
    a = artifact(n_users=5)
    a.seen_types = (a.interactions != 0).astype(np.int32)
    model_store.save(a, tmp_path / "m20260101T000000000000")
    # a reader that mapped the files before the erasure
    with_mmap = model_store.load(tmp_path / "m20260101T000000000000")
    assert model_store.erase_users(tmp_path / "m20260101T000000000000", {"u1", "u3", "nobody"}) == 2
    b = model_store.load(tmp_path / "m20260101T000000000000", mmap=False)
    assert b.user_ids.tolist() == ["u0", "erased-1", "u2", "erased-3", "u4"]
    assert not b.user_factors[[1, 3]].any() and b.interactions[[1, 3]].nnz == 0 and b.seen_types[[1, 3]].nnz == 0
    keep = [0, 2, 4]
    np.testing.assert_array_equal(b.user_factors[keep], a.user_factors[keep])
    assert (b.interactions[keep] != a.interactions[keep]).nnz == 0
    np.testing.assert_array_equal(with_mmap.user_factors, a.user_factors)  # its view is whole, not torn
    assert model_store.erase_users(tmp_path / "m20260101T000000000000", {"u1"}) == 0  # idempotent
    # no temporary files left
    assert not [p for p in (tmp_path / "m20260101T000000000000").iterdir() if p.name.startswith(".")]
