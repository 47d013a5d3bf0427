"""Inputs and outputs as local paths or URIs, through one pyarrow ``FileSystem`` per location.

A plain path or ``file://`` is pyarrow's ``LocalFileSystem``. Any other scheme (``s3://``, ``gs://``,
``abfs://``, ``hdfs://``, ...) goes through fsspec (the user installs the package for it: s3fs, gcsfs,
adlfs) wrapped as a pyarrow filesystem, so the same object reads manifests, image and audio files, writes
Parquet, and travels to Ray workers (both pickle). Credentials and endpoints come from the filesystem
package's usual sources (for S3: the AWS environment and config files, ``AWS_ENDPOINT_URL`` included).

Commits are atomic where the filesystem allows: locally a temporary file is renamed into place; an object
store has no rename, but a single object appears whole or not at all, so files are written straight to their
final name and the ledger line written after them is the commit point (``shards``).
"""

from __future__ import annotations

import posixpath
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from d2v.core.errors import ConfigError

_CACHE: dict[tuple[str, str], pafs.FileSystem] = {}  # (scheme, netloc) -> filesystem, per process
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Location:
    """A directory or file on a filesystem: ``fs`` plus the path that filesystem understands."""

    fs: pafs.FileSystem
    path: str  # no scheme; an object store's path starts with the bucket
    uri: str  # what the user wrote (for messages and for joining relative manifest paths)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, join_uri(self.uri, *parts))

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def makedirs(self) -> None:
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        else:  # object stores have no folders; fsspec makes the bucket if it must
            self.fs.create_dir(self.path, recursive=True)


def has_scheme(uri: str) -> bool:
    """``s3://b/k`` has one; ``/data``, ``data/x`` and a Windows ``C:\\x`` do not."""
    scheme = urlsplit(uri).scheme
    return len(scheme) > 1


def locate(uri: str) -> Location:
    """The filesystem and path of ``uri`` (a path, ``file://...``, or any fsspec URI).

    Raises:
        ConfigError: the scheme's filesystem package is not installed, or the URI is malformed.
    """
    if not has_scheme(uri) or uri.startswith("file://"):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return Location(_local(), str(Path(path).expanduser().absolute()), uri)
    parts = urlsplit(uri)
    key = (parts.scheme, parts.netloc)
    with _CACHE_LOCK:
        fs = _CACHE.get(key)
        if fs is None:
            fs = _CACHE[key] = _fsspec_filesystem(uri)
    path = (parts.netloc + parts.path).rstrip("/") or parts.netloc
    return Location(fs, path, uri)


def _local() -> pafs.FileSystem:
    return pafs.LocalFileSystem()


def _fsspec_filesystem(uri: str) -> pafs.FileSystem:
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - fsspec is in the extract extra
        raise ConfigError(f"{uri}: URIs need fsspec (pip install fsspec) and the scheme's filesystem") from exc
    scheme = urlsplit(uri).scheme
    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{uri}: no filesystem for {scheme}:// ({exc})") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def join_uri(base: str, *parts: str) -> str:
    """``base`` joined with relative ``parts`` (POSIX separators), keeping its scheme."""
    if has_scheme(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return str(Path(base, *parts))


def resolve_input(path: str, base: str) -> str:
    """A manifest's ``path`` value as a URI or an absolute path: relative ones are relative to ``base``."""
    if has_scheme(path) or Path(path).is_absolute():
        return path
    return join_uri(base, path)


def read_bytes(uri: str) -> bytes:
    """The bytes of one input file (image, audio, text), wherever it is.

    Raises:
        OSError: the file cannot be read (missing, permission, network).
    """
    loc = locate(uri)
    if loc.local:
        return Path(loc.path).read_bytes()
    try:
        return loc.read_bytes()
    except FileNotFoundError:
        raise
    except Exception as exc:  # fsspec backends raise their own types; a failed read is an OSError here
        if isinstance(exc, OSError):
            raise
        raise OSError(f"{uri}: {type(exc).__name__}: {exc}") from exc


def write_atomic(loc: Location, data: bytes | Any) -> None:
    """Write ``data`` (bytes, or a callable taking an output stream) to ``loc`` so it appears whole or not at all.

    Locally: a ``.tmp`` sibling, fsync, rename. Elsewhere: one object written straight to its name.
    """
    target = loc.path + ".tmp" if loc.local else loc.path
    if loc.local:
        Path(loc.path).parent.mkdir(parents=True, exist_ok=True)
    with loc.fs.open_output_stream(target) as out:
        if isinstance(data, bytes | bytearray):
            out.write(data)
        else:
            data(out)
    if loc.local:
        _fsync(target)
        loc.fs.move(target, loc.path)


def _fsync(path: str) -> None:
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_dir(loc: Location) -> list[pafs.FileInfo]:
    """The entries directly under ``loc`` (one level), sorted by path; ``[]`` when it does not exist."""
    if isinstance(loc.fs, pafs.PyFileSystem):  # fsspec caches listings: another writer may have changed it
        loc.fs.handler.fs.invalidate_cache(loc.path)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True, recursive=False))
    except FileNotFoundError:
        return []
    return sorted(infos, key=lambda i: i.path)
