"""The model artifact: one directory per model version, shared by the batch, speed and serving layers.

    <models_dir>/candidates/<version>/   written by `train`, scored by `evaluate`
    <models_dir>/published/<version>/    moved here by `publish` once it passes the gate

A directory holds the shared part every recommender has (the `Dataset`: id maps,
the training interactions r_ui so a user can be updated against their whole
history, the event types seen per pair, each user's latest events, the items'
catalogue attributes), the model's own files (`Recommender.save`: ALS's factors,
a neighbourhood model's similarity matrix, ...) and `manifest.json`, written last.
A version becomes visible only by an atomic rename of a complete directory, so no
reader ever sees half a model.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsys import protocol
from recsys.contracts.manifest import MANIFEST_FILE, ModelManifest
from recsys.models.base import Dataset, EventLog, ItemAttributes, Recommender
from recsys.settings import Settings, get_settings

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
        model_version=model_version, created_at_ms=int(time.time() * 1000), engine=model.name,
        params=model.params.model_dump(), details=model.describe(), n_users=data.n_users, n_items=data.n_items,
        event_types=list(data.event_types), **fields,
    )  # fmt: skip


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
    np.savez(directory / FILES["recent_events"], user=tail.user, item=tail.item, ts_ms=tail.ts_ms, kind=tail.kind,
             weight=weight)  # fmt: skip
    a = data.attributes
    pq.write_table(pa.table({"category": list(a.category), "title": list(a.title), "price": a.price,
                             "tags": list(a.tags)}, schema=_ITEMS_SCHEMA), directory / FILES["items"])  # fmt: skip
    return files


_ITEMS_SCHEMA = pa.schema(
    [("category", pa.string()), ("title", pa.string()), ("price", pa.float64()), ("tags", pa.string())]
)


def load(path: Path, mmap: bool = True) -> ModelArtifact:
    """Load a model directory; large arrays are memory-mapped by default (cheap for large catalogues)."""
    from recsys.models import registry

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
    events = EventLog(recent["user"], recent["item"], recent["ts_ms"], recent["kind"], None,
                      recent["weight"] if "weight" in recent.files else None)  # fmt: skip
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
    """fsync every file under `directory` (models may keep their files in sub-folders: the hybrid's components)."""
    for f in directory.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())


ERASED_PREFIX = "erased-"


def erase_users(path: Path, users: set[str]) -> int:
    """Erase users from a model directory in place (right to erasure). Returns how many rows were erased.

    Their id becomes `erased-<row>`, their interactions, seen types and recent events
    empty, and the model erases what it holds per user (ALS: the factors become zeros).
    Shapes never change and each file is replaced atomically, so a reader sees every file
    whole, and processes that memory-mapped the old files keep them. Ids go first: a
    reader mixing old and new files then finds no such user at all.
    """
    from recsys.models import registry

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
    names = [d.name for d in root.iterdir() if d.is_dir() and (d / MANIFEST_FILE).exists()]
    return sorted(names, key=protocol.version_key)


def latest_published(settings: Settings | None = None) -> Path | None:
    versions = published_versions(settings)
    return published_dir(settings) / versions[-1] if versions else None
