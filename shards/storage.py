"""Where a shard set is read from: a local (or shared) folder, or a URI that pyarrow.fs opens --
`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://namenode:8020/path`, `file:///abs/path`.

Object stores are for reading (`ingest dicom` reads a DICOM archive from one, too). `ingest`
writes a local or shared folder (a shard becomes visible by an atomic rename, which object stores
do not have); copy the finished folder up with any tool (`aws s3 sync DIR s3://bucket/prefix`)
and check the copy with `shards verify s3://bucket/prefix`.

Options of the filesystem ride in the URI's query, as pyarrow.fs.FileSystem.from_uri reads them:
`s3://bucket/shards?endpoint_override=minio.lan:9000&scheme=http` for an S3-compatible store on
the premises, `?region=eu-west-1`, ... Joining a member's path keeps the query. Credentials come
from where the cloud SDK looks (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, an instance
role; GOOGLE_APPLICATION_CREDENTIALS), never from a shard set; keep keys out of the URI, which
messages and logs print whole.

Each process opens its own filesystem, once per scheme, authority and query: a DataLoader worker
forked from the trainer must not use the parent's connections and SDK threads, which do not
survive a fork.

A shard is read front to back (`open_input`): on an object store that is one streaming GET per
shard, not one ranged request per member; members a reader does not want are read past.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # a scheme of two letters or more: not C:\
_STREAM_BUFFER = 4 << 20  # an object store's GET is read in pieces this big
READ_RETRIES = 3  # per failed read of a shard, each from a new request at the failed offset
RETRY_PAUSE_S = 0.5  # doubled at each retry


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...` (read through pyarrow.fs), False for a local path."""
    return isinstance(location, str) and bool(_URI_RE.match(location))


def shard_root(location: str | Path) -> str:
    """A shard set's root as every process should name it: a local path made absolute (Ray
    workers do not share the driver's working directory), a URI without a trailing slash."""
    if not is_uri(location):
        return str(Path(location).resolve())
    parts = urlsplit(str(location))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/")))


def base_name(location: str | Path) -> str:
    """The last part of a folder's path or of a URI's path (the query left out): a set's name."""
    if not is_uri(location):
        return Path(location).name
    return urlsplit(str(location)).path.rstrip("/").rsplit("/", 1)[-1]


def join(location: str | Path, *names: str) -> str:
    """The location of `names` (relative, '/'-separated) under `location`; a URI keeps its query."""
    if not is_uri(location):
        return str(Path(location).joinpath(*names))
    parts = urlsplit(str(location))
    path = "/".join([parts.path.rstrip("/"), *(n.strip("/") for n in names)])
    return urlunsplit(parts._replace(path=path))


def parent(location: str | Path) -> str | Path:
    """The folder holding `location`: a Path's parent, or the URI with its last path component
    dropped (its query kept, as join keeps it)."""
    if not is_uri(location):
        return Path(location).parent
    parts = urlsplit(str(location))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/").rsplit("/", 1)[0]))


def name_of(location: str | Path) -> str:
    """The last component of a location's path ('shard-000003.tar')."""
    return (urlsplit(location).path if is_uri(location) else str(location)).rstrip("/").rsplit("/", 1)[-1]


_FILESYSTEMS: dict[tuple, tuple[Any, str]] = {}


def filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a URI; the filesystem is this process's own."""
    import pyarrow.fs  # here: a local shard set never needs it

    parts = urlsplit(location)
    key = (os.getpid(), parts.scheme, parts.netloc, parts.query)
    if key not in _FILESYSTEMS:
        try:
            _FILESYSTEMS[key] = pyarrow.fs.FileSystem.from_uri(urlunsplit(parts._replace(path="/", fragment="")))
        except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError
            raise OSError(f"{location}: cannot open its filesystem ({exc})") from exc
    fs, base = _FILESYSTEMS[key]
    return fs, base.rstrip("/") + "/" + unquote(parts.path).lstrip("/")  # percent-decoded, as from_uri does


def open_input(location: str | Path, buffering: int = -1):
    """A binary file to read `location` from front to back (`read(n)`, `tell()`, and `seek(n, 1)`
    forward). Raises FileNotFoundError or OSError naming the location."""
    if not is_uri(location):
        return open(location, "rb", buffering=buffering)
    fs, path = filesystem(str(location))
    try:
        return ForwardReader(fs.open_input_stream(path, buffer_size=_STREAM_BUFFER), location=str(location),
                             reopen=functools.partial(_reopen_at, fs, path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{location}: no such object") from exc
    except OSError as exc:
        raise OSError(f"{location}: cannot be opened ({exc})") from exc


def _reopen_at(fs, path: str, offset: int):
    """A buffered stream of the object from `offset` on (ranged requests of _STREAM_BUFFER bytes)."""
    import pyarrow

    raw = fs.open_input_file(path)
    raw.seek(offset)
    return pyarrow.BufferedInputStream(raw, _STREAM_BUFFER)


def read_bytes(location: str | Path) -> bytes:
    with open_input(location) as fh:
        return fh.read()


def is_file(location: str | Path) -> bool:
    if not is_uri(location):
        return Path(location).is_file()
    import pyarrow.fs

    fs, path = filesystem(str(location))
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def size_of(location: str | Path) -> int:
    """The file's size in bytes; FileNotFoundError when there is none (or it is a folder)."""
    if not is_uri(location):
        found = Path(location).stat()
        if not stat.S_ISREG(found.st_mode):
            raise FileNotFoundError(f"{location}: not a file")
        return found.st_size
    import pyarrow.fs

    fs, path = filesystem(str(location))
    info = fs.get_file_info(path)
    if info.type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"{location}: no such object")
    return info.size


def read_range(location: str, offset: int, size: int) -> bytes:
    """Up to `size` bytes of an object from `offset` on: one ranged request (fewer bytes at its
    end). Raises FileNotFoundError or OSError naming the location."""
    fs, path = filesystem(location)
    try:
        with fs.open_input_file(path) as fh:
            return fh.read_at(size, offset) if offset < fh.size() else b""
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{location}: no such object") from exc
    except OSError as exc:
        raise OSError(f"{location}: cannot be read ({exc})") from exc


def walk_objects(location: str) -> Iterator[tuple[str, str]]:
    """(path relative to `location`, '/'-separated; the object's own URI) for every object at any
    depth under a URI's prefix, sorted by relative path (one listing, made whole before the first
    is yielded: about 200 bytes an object). FileNotFoundError when there is no such bucket or
    nothing under the prefix, OSError when it cannot be listed; both name the location."""
    import pyarrow.fs

    fs, base = filesystem(location)
    base = base.rstrip("/")
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{location}: no such bucket, or no object under this prefix") from exc
    except OSError as exc:
        raise OSError(f"{location}: cannot be listed ({exc})") from exc
    parts = urlsplit(location)
    prefix = parts.path.rstrip("/")
    found = sorted(info.path[len(base) + 1:] for info in infos if info.type == pyarrow.fs.FileType.File)
    for rel in found:  # quoted: a key may hold '%', '?' or '#', which a URI's path cannot
        yield rel, urlunsplit(parts._replace(path=f"{prefix}/{quote(rel)}"))


def _folder_entries(location: str | Path) -> list[tuple[str, bool]]:
    """(name, is a file) for everything directly in a folder, sorted; [] when there is no such
    folder. An object store's common prefixes are its folders."""
    if not is_uri(location):
        folder = Path(location)
        return sorted((p.name, p.is_file()) for p in folder.iterdir()) if folder.is_dir() else []
    import pyarrow.fs

    fs, path = filesystem(str(location))
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted((info.base_name, info.type == pyarrow.fs.FileType.File) for info in infos)


def list_folder(location: str | Path) -> list[str]:
    """Names of the files directly in a folder, sorted; [] when there is no such folder."""
    return [name for name, is_a_file in _folder_entries(location) if is_a_file]


def list_subfolders(location: str | Path) -> list[str]:
    """Names of the folders (an object store's common prefixes) directly in a folder, sorted."""
    return [name for name, is_a_file in _folder_entries(location) if not is_a_file]


def list_names(location: str | Path) -> list[str]:
    """Names of everything directly in a folder (files and folders), sorted; [] when there is none."""
    return [name for name, _ in _folder_entries(location)]


def _arrow_source(location: str | Path) -> tuple[str, Any]:
    """(path, filesystem) as pyarrow's readers take them: a local path with no filesystem."""
    return filesystem(str(location))[::-1] if is_uri(location) else (str(location), None)


def read_parquet(location: str | Path, columns: list[str] | None = None):
    """A Parquet file (a manifest) as a pyarrow Table."""
    import pyarrow.parquet as pq

    path, fs = _arrow_source(location)
    return pq.read_table(path, columns=columns, filesystem=fs)


def parquet_footer(location: str | Path) -> tuple[int, list[str]]:
    """(row count, top-level column names) from a Parquet file's footer (nothing else is read)."""
    import pyarrow.parquet as pq

    path, fs = _arrow_source(location)
    footer = pq.read_metadata(path, filesystem=fs)
    return footer.num_rows, footer.schema.to_arrow_schema().names


class ForwardReader:
    """A pyarrow input stream as the file a tar reader wants: it counts its position and seeks
    forward by reading past (an object's stream cannot seek). A read that fails mid-object (a
    connection reset hours into a run) is retried READ_RETRIES times, each from a fresh request
    that starts at the byte it stopped at (`reopen(offset)`); then the error names the object
    and the offset."""

    def __init__(self, stream, *, location: str = "", reopen: Callable[[int], Any] | None = None):
        self._stream = stream
        self._at = 0
        self._location, self._reopen = location, reopen

    def read(self, n: int = -1) -> bytes:
        for attempt in range(READ_RETRIES + 1):
            try:
                data = self._stream.read() if n is None or n < 0 else self._stream.read(n)
                break
            except FileNotFoundError:
                raise
            except OSError as exc:
                if self._reopen is None or attempt == READ_RETRIES:
                    raise OSError(f"{self._location}: read failed at byte {self._at}"
                                  f"{f' after {attempt} retries' if attempt else ''} ({exc})") from exc
                warnings.warn(f"{self._location}: read failed at byte {self._at} ({exc}); retrying from there",
                              stacklevel=2)
                time.sleep(RETRY_PAUSE_S * 2**attempt)
                with contextlib.suppress(OSError):
                    self._stream.close()
                self._stream = self._reopen(self._at)
        self._at += len(data)
        return data

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset if whence == os.SEEK_SET else self._at + offset
        if whence not in (os.SEEK_SET, os.SEEK_CUR) or target < self._at:
            raise OSError("an object store's stream only seeks forward")
        while self._at < target:
            if not self.read(min(target - self._at, _STREAM_BUFFER)):
                break  # past the end: the next read says so
        return self._at

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> ForwardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
