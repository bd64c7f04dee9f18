"""The model artifact: one directory per model version, shared by the batch, speed and serving layers.

    <models_dir>/candidates/<version>/   written by `train`, scored by `evaluate`
    <models_dir>/published/<version>/    moved here by `publish` once it passes the gate

A directory holds the item and user factors, the id maps, the training
interactions (sparse r_ui, so the speed layer can fold in with a user's whole
history), item popularity, and `manifest.json`. A version becomes visible only
by an atomic rename of a complete directory, so no reader ever sees half a model.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.contracts.manifest import MANIFEST_FILE, ModelManifest
from recsys.settings import Settings, get_settings

FILES = {
    "user_factors": "user_factors.npy",
    "item_factors": "item_factors.npy",
    "user_ids": "user_ids.npy",
    "item_ids": "item_ids.npy",
    "interactions": "interactions.npz",
    "popularity": "popularity.npy",
    "seen_types": "seen_types.npz",
}


class ModelNotFound(FileNotFoundError):
    pass


@dataclass
class ModelArtifact:
    manifest: ModelManifest
    user_ids: np.ndarray  # str, row i of user_factors and of interactions
    item_ids: np.ndarray  # str, row j of item_factors, column j of interactions
    user_factors: np.ndarray  # float32 (n_users, rank)
    item_factors: np.ndarray  # float32 (n_items, rank)
    interactions: sp.csr_matrix  # float32 (n_users, n_items): training strengths r_ui
    popularity: np.ndarray  # float32 (n_items,): distinct training users per item
    # int32, same shape as interactions: bit b set = event type manifest.event_types[b] seen for (u, i).
    # Optional: without it, servers can filter "seen" but not "seen by event type".
    seen_types: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        n_users, n_items = len(self.user_ids), len(self.item_ids)
        rank = self.manifest.rank
        expected = {
            "user_factors": (self.user_factors.shape, (n_users, rank)),
            "item_factors": (self.item_factors.shape, (n_items, rank)),
            "interactions": (self.interactions.shape, (n_users, n_items)),
            "popularity": (self.popularity.shape, (n_items,)),
        }
        if self.seen_types is not None:
            expected["seen_types"] = (self.seen_types.shape, (n_users, n_items))
        wrong = {k: got for k, (got, want) in expected.items() if got != want}
        if wrong:
            raise ValueError(f"model {self.manifest.model_version}: inconsistent shapes {wrong}")


def candidates_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).models_dir / "candidates"


def published_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).models_dir / "published"


def save(artifact: ModelArtifact, target: Path) -> Path:
    """Write the artifact to `target` atomically (a complete directory appears, or nothing does)."""
    if target.exists():
        raise FileExistsError(f"model directory {target} already exists; versions are immutable")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        np.save(tmp / FILES["user_factors"], np.ascontiguousarray(artifact.user_factors, dtype=np.float32))
        np.save(tmp / FILES["item_factors"], np.ascontiguousarray(artifact.item_factors, dtype=np.float32))
        np.save(tmp / FILES["user_ids"], artifact.user_ids.astype(str))
        np.save(tmp / FILES["item_ids"], artifact.item_ids.astype(str))
        sp.save_npz(tmp / FILES["interactions"], artifact.interactions.astype(np.float32).tocsr())
        np.save(tmp / FILES["popularity"], artifact.popularity.astype(np.float32))
        files = dict(FILES)
        if artifact.seen_types is not None:
            sp.save_npz(tmp / FILES["seen_types"], artifact.seen_types.astype(np.int32).tocsr())
        else:
            del files["seen_types"]
        manifest = artifact.manifest.model_copy(update={"files": files})
        _write_manifest(tmp, manifest)  # last: a directory without a manifest is incomplete
        _fsync_dir(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load(path: Path, mmap: bool = True) -> ModelArtifact:
    """Load a model directory; factors are memory-mapped by default (cheap for large catalogues)."""
    manifest = read_manifest(path)
    mode = "r" if mmap else None
    return ModelArtifact(
        manifest=manifest,
        user_ids=np.load(path / FILES["user_ids"]),
        item_ids=np.load(path / FILES["item_ids"]),
        user_factors=np.load(path / FILES["user_factors"], mmap_mode=mode),
        item_factors=np.load(path / FILES["item_factors"], mmap_mode=mode),
        interactions=sp.load_npz(path / FILES["interactions"]).tocsr(),
        popularity=np.load(path / FILES["popularity"]),
        seen_types=sp.load_npz(path / FILES["seen_types"]).tocsr() if "seen_types" in manifest.files else None,
    )


def read_manifest(path: Path) -> ModelManifest:
    file = path / MANIFEST_FILE
    if not file.exists():
        raise ModelNotFound(f"no complete model at {path} (no {MANIFEST_FILE})")
    return ModelManifest.model_validate_json(file.read_text())


def update_manifest(path: Path, manifest: ModelManifest) -> None:
    """Replace a model's manifest atomically (used to record evaluation metrics)."""
    _write_manifest(path, manifest)


def _write_manifest(directory: Path, manifest: ModelManifest) -> None:
    tmp = directory / f".{MANIFEST_FILE}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(manifest.model_dump_json(indent=2))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_FILE)


def _fsync_dir(directory: Path) -> None:
    for f in directory.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


ERASED_PREFIX = "erased-"


def erase_users(path: Path, users: set[str]) -> int:
    """Erase users from a model directory in place (right to erasure). Returns how many rows were erased.

    Their id becomes `erased-<row>`, their factors zeros, their interactions and seen
    types empty. Shapes never change and each file is replaced atomically, so a reader
    sees every file whole, and processes that memory-mapped the old files keep them.
    Ids go first: a reader mixing old and new files then finds no such user at all.
    """
    user_ids = np.load(path / FILES["user_ids"])
    rows = np.flatnonzero(np.isin(user_ids, list(users)))
    if not len(rows):
        return 0
    manifest = read_manifest(path)
    user_ids = user_ids.astype(object)
    user_ids[rows] = [f"{ERASED_PREFIX}{r}" for r in rows]
    _replace(path, "user_ids", lambda f: np.save(f, user_ids.astype(str)))
    factors = np.load(path / FILES["user_factors"])
    factors[rows] = 0
    _replace(path, "user_factors", lambda f: np.save(f, factors))
    for name in ("interactions", "seen_types"):
        if name in manifest.files:
            matrix = sp.load_npz(path / FILES[name]).tolil()
            matrix[rows] = 0
            cleared = matrix.tocsr()
            cleared.eliminate_zeros()
            _replace(path, name, lambda f, m=cleared: sp.save_npz(f, m))
    return len(rows)


def _replace(directory: Path, name: str, write) -> None:
    """Write a model file under a temporary name, fsync it, then rename it over the old one."""
    target = directory / FILES[name]
    tmp = directory / f".{target.name}.{uuid.uuid4().hex[:8]}"
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def promote(candidate: Path, settings: Settings | None = None) -> Path:
    """Move a complete candidate into the published folder (one rename: atomic on one filesystem)."""
    read_manifest(candidate)  # refuse incomplete directories
    target = published_dir(settings) / candidate.name
    if target.exists():
        raise FileExistsError(f"model {candidate.name} is already published; versions are immutable")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(candidate, target)
    return target


def find(model_version: str, settings: Settings | None = None) -> Path:
    """The directory of a model version, published or still a candidate."""
    for root in (published_dir(settings), candidates_dir(settings)):
        if (root / model_version / MANIFEST_FILE).exists():
            return root / model_version
    raise ModelNotFound(f"no model {model_version} among published models or candidates")


def published_versions(settings: Settings | None = None) -> list[str]:
    """Published model versions, oldest first (versions sort by time by construction)."""
    root = published_dir(settings)
    if not root.exists():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / MANIFEST_FILE).exists())


def latest_published(settings: Settings | None = None) -> Path | None:
    versions = published_versions(settings)
    return published_dir(settings) / versions[-1] if versions else None
