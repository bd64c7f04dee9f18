"""The model artifact: one directory per model version, shared by the batch, speed and serving layers.

    <models_dir>/candidates/<version>/   written by `train`, scored by `evaluate`
    <models_dir>/published/<version>/    moved here by `publish` once it passes the gate (the newest: the champion)
    <models_dir>/challengers/<version>/  moved here by `publish --as-challenger`: served to an A/B test's
                                         challenger arm when RECSYS_AB_CHALLENGER_VERSION names it, never the champion

A directory holds the shared part every recommender has (the `Dataset`: id maps,
the training interactions r_ui so a user can be updated against their whole
history, the event types seen per pair, each user's latest events, the items'
catalogue attributes), the model's own files (`Recommender.save`: ALS's factors,
a neighbourhood model's similarity matrix, ...) and `manifest.json`, written last.
A version becomes visible only by an atomic rename of a complete directory, so no
reader ever sees half a model.

The store is a local folder (`<state_dir>/models`) or, with `RECSYS_MODELS_URI`, a
folder on HDFS (recsys.io.remote_files). A model's *location* is then a URI: `train`
writes the candidate to a local temporary folder and uploads it, `publish` renames it
on HDFS, and readers (`load_from`) copy it to a local temporary folder, load it whole
and delete the copy, so no host keeps a copy that erasure would have to find.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsys import protocol, registry
from recsys.contracts.manifest import MANIFEST_FILE, ModelManifest
from recsys.data.inputs import Dataset, EventLog, ItemAttributes
from recsys.io import remote_files
from recsys.settings import Settings, get_settings

if TYPE_CHECKING:
    from recsys.models.base import Recommender

# The artifact's shared part (the Dataset); each model adds its own files (Recommender.save).
FILES = {
    "user_ids": "user_ids.npy",
    "item_ids": "item_ids.npy",
    "interactions": "interactions.npz",
    "seen_types": "seen_types.npz",
    "recent_events": "recent_events.npz",
    "items": "items.parquet",
}


class ModelNotFound(FileNotFoundError):
    pass


@dataclass
class ModelArtifact:
    """A model version: its manifest, the data it was fitted on (with each user's latest events), the model."""

    manifest: ModelManifest
    data: Dataset
    model: Recommender

    @property
    def user_ids(self) -> np.ndarray:
        return self.data.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.data.item_ids

    @property
    def interactions(self) -> sp.csr_matrix:
        return self.data.strengths

    @property
    def seen_types(self) -> sp.csr_matrix | None:
        return self.data.seen_types

    @property
    def user_factors(self) -> np.ndarray:
        return self.model.user_factors  # type: ignore[attr-defined]  # factor models only

    @property
    def item_factors(self) -> np.ndarray:
        return self.model.item_factors  # type: ignore[attr-defined]


def build_manifest(model: Recommender, data: Dataset, model_version: str, **fields) -> ModelManifest:
    """The manifest of a freshly fitted model (fields: silver_table_version, kafka_offsets, fit_seconds, ...)."""
    return ModelManifest(
        model_version=model_version,
        created_at_ms=int(time.time() * 1000),
        engine=model.name,
        params=model.params.model_dump(),
        details=model.describe(),
        n_users=data.n_users,
        n_items=data.n_items,
        event_types=list(data.event_types),
        **fields,
    )


# Where a model is: a local directory, or a URI (`hdfs://...`) when the store is remote.
Location = str | Path


def _store(settings: Settings | None, *parts: str) -> Location:
    root = (settings or get_settings()).models_root
    return remote_files.join(root, *parts) if remote_files.is_remote(root) else Path(root).joinpath(*parts)


def candidates_dir(settings: Settings | None = None) -> Location:
    return _store(settings, "candidates")


def published_dir(settings: Settings | None = None) -> Location:
    return _store(settings, "published")


def challengers_dir(settings: Settings | None = None) -> Location:
    return _store(settings, "challengers")


def challenger(model_version: str, settings: Settings | None = None) -> Location:
    return _store(settings, "challengers", model_version)


def candidate(model_version: str, settings: Settings | None = None) -> Location:
    return _store(settings, "candidates", model_version)


def published(model_version: str, settings: Settings | None = None) -> Location:
    return _store(settings, "published", model_version)


def exists(location: Location) -> bool:
    """True if a complete model (one with its manifest) is at `location`."""
    manifest = _in(location, MANIFEST_FILE)
    return remote_files.exists(str(manifest)) if remote_files.is_remote(location) else Path(manifest).exists()


def _in(location: Location, name: str) -> Location:
    return remote_files.join(str(location), name) if remote_files.is_remote(location) else Path(location) / name


def save_candidate(artifact: ModelArtifact, settings: Settings | None = None) -> Location:
    """Write a fitted model as a candidate, atomically, wherever the store is; returns its location."""
    s = settings or get_settings()
    target = candidate(artifact.manifest.model_version, s)
    if not remote_files.is_remote(target):
        return save(artifact, Path(target))
    with _scratch(s) as scratch:
        local = save(artifact, scratch / artifact.manifest.model_version)
        remote_files.upload_folder(local, str(target))
    return target


@contextmanager
def _scratch(s: Settings) -> Iterator[Path]:
    """A local temporary folder for a remote model's files, deleted afterwards whatever happens."""
    s.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".model-", dir=s.state_dir) as tmp:
        yield Path(tmp)


def load_from(location: Location, settings: Settings | None = None) -> ModelArtifact:
    """Load the model at `location`: a local directory memory-mapped, a remote one read whole via a local copy."""
    if not remote_files.is_remote(location):
        return load(Path(location))
    with _scratch(settings or get_settings()) as scratch:
        remote_files.download_folder(str(location), scratch / "model")
        return load(scratch / "model", mmap=False)


def save(artifact: ModelArtifact, target: Path) -> Path:
    """Write the artifact to `target` atomically (a complete directory appears, or nothing does)."""
    if target.exists():
        raise FileExistsError(f"model directory {target} already exists; versions are immutable")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = _save_data(artifact.data, artifact.model.recent_events, tmp)
        files.update(artifact.model.save(tmp))
        manifest = artifact.manifest.model_copy(update={"files": files})
        _write_manifest(tmp, manifest)  # last: a directory without a manifest is incomplete
        _fsync_dir(tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save_data(data: Dataset, recent: int, directory: Path) -> dict[str, str]:
    np.save(directory / FILES["user_ids"], data.user_ids.astype(str))
    np.save(directory / FILES["item_ids"], data.item_ids.astype(str))
    sp.save_npz(directory / FILES["interactions"], data.strengths.astype(np.float32).tocsr())
    files = {k: FILES[k] for k in ("user_ids", "item_ids", "interactions", "recent_events", "items")}
    if data.seen_types is not None:
        sp.save_npz(directory / FILES["seen_types"], data.seen_types.astype(np.int32).tocsr())
        files["seen_types"] = FILES["seen_types"]
    tail = data.events.tail(data.n_users, recent)
    weight = tail.weight if tail.weight is not None else np.ones(len(tail), np.float32)
    np.savez(
        directory / FILES["recent_events"],
        user=tail.user,
        item=tail.item,
        ts_ms=tail.ts_ms,
        kind=tail.kind,
        weight=weight,
    )
    a = data.attributes
    pq.write_table(
        pa.table(
            {"category": list(a.category), "title": list(a.title), "price": a.price, "tags": list(a.tags)},
            schema=_ITEMS_SCHEMA,
        ),
        directory / FILES["items"],
    )
    return files


_ITEMS_SCHEMA = pa.schema(
    [("category", pa.string()), ("title", pa.string()), ("price", pa.float64()), ("tags", pa.string())]
)


def load(path: Path, mmap: bool = True) -> ModelArtifact:
    """Load a model directory; large arrays are memory-mapped by default (cheap for large catalogues)."""
    manifest = read_manifest(path)
    data = load_data(path, manifest)
    cls = registry.model_class(manifest.engine)
    model = cls.load(path, cls.Params.model_validate(manifest.params), data)
    if not mmap:
        for name, value in vars(model).items():
            if isinstance(value, np.memmap):
                setattr(model, name, np.array(value))
    return ModelArtifact(manifest, data, model)


def load_data(path: Path, manifest: ModelManifest) -> Dataset:
    recent = np.load(path / FILES["recent_events"])
    events = EventLog(
        recent["user"],
        recent["item"],
        recent["ts_ms"],
        recent["kind"],
        None,
        recent["weight"] if "weight" in recent.files else None,
    )
    items = pq.read_table(path / FILES["items"])
    attributes = ItemAttributes(
        np.asarray(items.column("category").to_pylist(), dtype=object),
        np.asarray(items.column("title").to_pylist(), dtype=object),
        items.column("price").to_numpy(zero_copy_only=False).astype(np.float64),
        np.asarray(items.column("tags").to_pylist(), dtype=object),
    )
    return Dataset(
        user_ids=np.load(path / FILES["user_ids"]),
        item_ids=np.load(path / FILES["item_ids"]),
        strengths=sp.load_npz(path / FILES["interactions"]).tocsr(),
        event_types=list(manifest.event_types),
        events=events,
        seen_types=sp.load_npz(path / FILES["seen_types"]).tocsr() if "seen_types" in manifest.files else None,
        items=attributes,
    )


def read_manifest(location: Location) -> ModelManifest:
    if not exists(location):
        raise ModelNotFound(f"no complete model at {location} (no {MANIFEST_FILE})")
    file = _in(location, MANIFEST_FILE)
    text = remote_files.read_text(str(file)) if remote_files.is_remote(file) else Path(file).read_text()
    return ModelManifest.model_validate_json(text)


def update_manifest(location: Location, manifest: ModelManifest) -> None:
    """Replace a model's manifest atomically (used to record evaluation metrics)."""
    if remote_files.is_remote(location):
        remote_files.write_text(str(_in(location, MANIFEST_FILE)), manifest.model_dump_json(indent=2))
    else:
        _write_manifest(Path(location), manifest)


def _write_manifest(directory: Path, manifest: ModelManifest) -> None:
    tmp = directory / f".{MANIFEST_FILE}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(manifest.model_dump_json(indent=2))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_FILE)


def _fsync_dir(directory: Path) -> None:
    """fsync every file under `directory` (models may keep their files in sub-folders: the hybrid's components)."""
    for f in directory.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())


ERASED_PREFIX = "erased-"


def erase_users(location: Location, users: set[str], settings: Settings | None = None) -> int:
    """Erase users from the model at `location`; a remote model through a local copy (see `_erase_users`)."""
    if not remote_files.is_remote(location):
        return _erase_users(Path(location), users)
    with _scratch(settings or get_settings()) as scratch:
        local = scratch / "model"
        remote_files.download_folder(str(location), local)
        before = _inodes(local)
        erased = _erase_users(local, users)
        # Erasure replaces each file it changes by a rename (a new inode): upload those, in the order they were
        # replaced (ids first, as locally), each one renamed into place on the store.
        changed = [f for f, inode in _inodes(local).items() if before.get(f) != inode]
        changed.sort(key=lambda f: f.stat().st_mtime_ns)
        if erased:
            remote_files.upload_files(local, str(location), changed)
        return erased


def _inodes(directory: Path) -> dict[Path, int]:
    return {f: f.stat().st_ino for f in directory.rglob("*") if f.is_file()}


def _erase_users(path: Path, users: set[str]) -> int:
    """Erase users from a model directory in place (right to erasure). Returns how many rows were erased.

    Their id becomes `erased-<row>`, their interactions, seen types and recent events
    empty, and the model erases what it holds per user (ALS: the factors become zeros).
    Shapes never change and each file is replaced atomically, so a reader sees every file
    whole, and processes that memory-mapped the old files keep them. Ids go first: a
    reader mixing old and new files then finds no such user at all.
    """
    user_ids = np.load(path / FILES["user_ids"])
    rows = np.flatnonzero(np.isin(user_ids, list(users)))
    if not len(rows):
        return 0
    manifest = read_manifest(path)
    user_ids = user_ids.astype(object)
    user_ids[rows] = [f"{ERASED_PREFIX}{r}" for r in rows]
    replace_file(path, FILES["user_ids"], lambda f: np.save(f, user_ids.astype(str)))
    for name in ("interactions", "seen_types"):
        if name in manifest.files:
            matrix = sp.load_npz(path / FILES[name]).tolil()
            matrix[rows] = 0
            cleared = matrix.tocsr()
            cleared.eliminate_zeros()
            replace_file(path, FILES[name], lambda f, m=cleared: sp.save_npz(f, m))
    recent = dict(np.load(path / FILES["recent_events"]))
    keep = ~np.isin(recent["user"], rows)
    replace_file(path, FILES["recent_events"], lambda f: np.savez(f, **{k: v[keep] for k, v in recent.items()}))
    registry.model_class(manifest.engine).erase_rows(path, rows)
    return len(rows)


def replace_file(directory: Path, file_name: str, write) -> None:
    """Write a model file under a temporary name, fsync it, then rename it over the old one."""
    target = directory / file_name
    tmp = directory / f".{target.name}.{uuid.uuid4().hex[:8]}"
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def promote(source: Location, settings: Settings | None = None, as_challenger: bool = False) -> Location:
    """Move a complete candidate into the published folder, or the challengers' (one rename: atomic on one
    filesystem, and on HDFS)."""
    model_version = posixpath.basename(str(source).rstrip("/"))
    target = (challenger if as_challenger else published)(model_version, settings)
    read_manifest(source)  # refuse incomplete directories
    if exists(target):
        raise FileExistsError(f"model {model_version} is already at {target}; versions are immutable")
    if remote_files.is_remote(target):
        remote_files.rename(str(source), str(target))
    else:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, target)
    return target


def find(model_version: str, settings: Settings | None = None) -> Location:
    """Where a model version is, published, a challenger or still a candidate."""
    for place in (published, challenger, candidate):
        location = place(model_version, settings)
        if exists(location):
            return location
    raise ModelNotFound(f"no model {model_version} among published models, challengers or candidates")


def versions_in(folder: Location) -> list[str]:
    """The model versions in `folder` (published or candidates), oldest first; incomplete ones left out."""
    if remote_files.is_remote(folder):
        names = remote_files.list_folders(str(folder))
    else:
        root = Path(folder)
        names = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")] if root.exists() else []
    return sorted((n for n in names if exists(_in(folder, n))), key=protocol.version_key)


def published_versions(settings: Settings | None = None) -> list[str]:
    """Published model versions, oldest first (versions sort by time by construction)."""
    return versions_in(published_dir(settings))


def latest_published(settings: Settings | None = None) -> Location | None:
    versions = published_versions(settings)
    return published(versions[-1], settings) if versions else None
