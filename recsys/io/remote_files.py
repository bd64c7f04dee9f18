"""Folders and files on a remote filesystem (HDFS), for the model store.

Through fsspec with hdfs-native's implementation (a Rust client: no JVM, no libhdfs).
The model store needs four guarantees from it, all of which HDFS gives: a folder
appears under its final name by one rename, a rename never replaces an existing
folder, a rename with `overwrite=True` replaces one file atomically, and a listing
shows only what was renamed into place.
"""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem


def is_remote(location: str | Path) -> bool:
    """True for a URI (`hdfs://...`), false for a local path."""
    return "://" in str(location)


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def _fs(uri: str) -> tuple[AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _temporary_sibling(path: str) -> str:
    return posixpath.join(posixpath.dirname(path), f".tmp-{posixpath.basename(path)}-{uuid.uuid4().hex[:8]}")


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return bool(fs.exists(path))


def read_text(uri: str) -> str:
    fs, path = _fs(uri)
    return fs.cat_file(path).decode()


def write_text(uri: str, text: str) -> None:
    """Replace one file atomically: written under a temporary name, then renamed over the old one."""
    fs, path = _fs(uri)
    tmp = _temporary_sibling(path)
    fs.pipe_file(tmp, text.encode())
    fs.mv(tmp, path, overwrite=True)


def list_folders(uri: str) -> list[str]:
    """Names of the folders directly under `uri` (none if it does not exist), temporary ones left out."""
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    entries = fs.ls(path, detail=True)
    return [
        posixpath.basename(e["name"])
        for e in entries
        if e["type"] == "directory" and not posixpath.basename(e["name"]).startswith(".")
    ]


def upload_folder(local: Path, uri: str) -> None:
    """Copy a local folder to `uri`, which appears complete or not at all; refuses an existing `uri`."""
    fs, path = _fs(uri)
    if fs.exists(path):
        raise FileExistsError(f"{uri} already exists")
    tmp = _temporary_sibling(path)
    try:
        _put_files(fs, local, tmp, sorted(f for f in local.rglob("*") if f.is_file()))
        rename(fs.unstrip_protocol(tmp), uri)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
        raise


def upload_files(local: Path, uri: str, files: list[Path]) -> None:
    """Replace `files` (under `local`) in the folder `uri`, one atomic rename each, in the order given."""
    fs, path = _fs(uri)
    for f in files:
        target = posixpath.join(path, f.relative_to(local).as_posix())
        tmp = _temporary_sibling(target)
        fs.put_file(str(f), tmp)
        fs.mv(tmp, target, overwrite=True)


def _put_files(fs: AbstractFileSystem, local: Path, path: str, files: list[Path]) -> None:
    fs.makedirs(path, exist_ok=True)
    for f in files:
        target = posixpath.join(path, f.relative_to(local).as_posix())
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(f), target)


def download_folder(uri: str, local: Path) -> None:
    """Copy the folder `uri` into the (new) local folder `local`."""
    fs, path = _fs(uri)
    local.mkdir(parents=True)
    for name in fs.find(path):
        target = local / posixpath.relpath(name, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(name, str(target))


def rename(src: str, dst: str) -> None:
    """One atomic rename; an existing `dst` is never replaced (FileExistsError)."""
    fs, src_path = _fs(src)
    _, dst_path = _fs(dst)
    fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
    if fs.exists(dst_path):  # HDFS refuses too; this gives the caller the same error as a local rename
        raise FileExistsError(f"{dst} already exists")
    fs.mv(src_path, dst_path, overwrite=False)
