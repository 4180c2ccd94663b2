"""A small, strict reader of the tar members the stream needs: names and bytes, in order; and
the matching writer of the members ShardWriter puts in a shard.

Why not `tarfile`: it parses every header field in Python, about 40 us a member here, and a sample
is three members (pixels, mask, json), a fifth of the 0.66 ms a 224 px 16-bit PNG takes to decode.
The stream reads every shard once an epoch, so it reads only what shards written by ShardWriter
(POSIX ustar headers; shards written by earlier versions through webdataset's TarWriter may hold
a pax header for a long name) can hold,
and rejects the rest instead of interpreting it: regular files, ustar or GNU magic, a checksum on
every header, pax `path`/`size` records; links, directories, devices and GNU extensions are named
as errors. Nothing here looks at what a member holds. `shards verify` reads shards with tarfile.

Writing: `ustar_member` makes the same bytes as Python's tarfile does for a regular file with a
short name (so plain `tarfile` and `webdataset.WebDataset` read shards as ever), in ~5 us instead
of tarfile's ~80 us through TarInfo; ingest writes a few members a sample.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

BLOCK = 512
_REGULAR = (b"0", b"\0")
_PAX_NEXT = b"x"  # pax extended header for the next member
_PAX_GLOBAL = b"g"  # pax global header: applies to no member the stream reads
_MAGICS = (b"ustar\x0000", b"ustar  \0")  # POSIX, and GNU tar's pre-POSIX spelling
RECORD = 20 * BLOCK  # tar's default blocking: an archive's length is a multiple of this
END_OF_ARCHIVE = bytes(2 * BLOCK)
_ZERO_BLOCK = bytes(BLOCK)
NAME_MAX = 100  # a ustar name field; longer names would need a prefix split or a pax header


class TarFormatError(ValueError):
    """Bytes that are not a tar member this reader accepts."""


def octal_field(value: int, width: int) -> bytes:
    """A ustar numeric field: zero-padded octal digits and a NUL, as tarfile writes them."""
    digits = b"%0*o" % (width - 1, value)
    if len(digits) != width - 1:
        raise TarFormatError(f"{value} does not fit a {width}-byte tar field")
    return digits + b"\0"


def _name_field(text: str, width: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > width:
        raise TarFormatError(f"{text!r} is longer than a tar header's {width}-byte field")
    return raw.ljust(width, b"\0")


def ustar_member(name: str, size: int, *, mtime: int, mode: int, owner: str) -> bytes:
    """The 512-byte POSIX ustar header of a regular file `name` of `size` bytes, owned by user and
    group `owner` (uid and gid 0); the caller writes the data after it, padded with NULs to a
    multiple of BLOCK (`padding(size)`)."""
    name_field, size_field = _name_field(name, NAME_MAX), octal_field(size, 12)
    before, after, fixed_sum = _header_template(mtime, mode, owner)
    # summed with its own field as spaces (POSIX.1-1988); the fixed fields' sum is cached
    checksum = b"%06o\0 " % (fixed_sum + sum(name_field) + sum(size_field))
    return b"".join((name_field, before, size_field, after[:12], checksum, after[20:]))


@functools.lru_cache(maxsize=8)
def _header_template(mtime: int, mode: int, owner: str) -> tuple[bytes, bytes, int]:
    """The header's bytes between name and size (mode, uid, gid), after size (from mtime to the
    end, checksum as spaces), and the byte sum of both: one writer's members differ only in
    name and size."""
    before = octal_field(mode, 8) + octal_field(0, 8) + octal_field(0, 8)
    after = b"".join((
        octal_field(mtime, 12), b" " * 8, b"0", bytes(100), b"ustar\x0000", _name_field(owner, 32),
        _name_field(owner, 32), bytes(16), bytes(155),  # devmajor, devminor: empty for a regular file
    )).ljust(BLOCK - NAME_MAX - len(before) - 12, b"\0")
    return before, after, sum(before) + sum(after)


def padding(size: int) -> bytes:
    """NULs that take `size` bytes of member data to the next BLOCK boundary."""
    return bytes(-size % BLOCK)


class TarEntry(NamedTuple):  # a tuple: a frozen dataclass took a few us to make, per member
    name: str
    size: int
    regular: bool  # a regular file; anything else is reported, never followed
    typeflag: str


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarFormatError(f"numeric field {field!r} is not octal") from None


def _checksum_ok(header: bytes, stored: bytes) -> bool:
    """The header's byte sum, its checksum field (`stored`) counted as spaces, equals the stored
    checksum. Summed by zlib.adler32 in C (a Python sum of 512 bytes took ~5 us, two a sample):
    the low 16 bits of Adler-32 are 1 + the byte sum mod 65521, exact for up to 256 bytes (at
    most 65280)."""
    total = (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) - 2
    return _number(stored) == total - (zlib.adler32(stored) & 0xFFFF) + 1 + 8 * 32


def _text(field: bytes) -> str:
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError:
        raise TarFormatError(f"member name {field!r} is not UTF-8") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """'<len> <key>=<value>\\n' records (POSIX.1-2001)."""
    records, pos = {}, 0
    try:
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= space - pos:
                raise ValueError(f"record length {length}")
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
            records[_text(key)] = _text(value)
            pos += length
        if "size" in records:
            records["size"] = str(int(records["size"]))
    except ValueError as exc:  # no space, no length, a size that is not a number: not a pax header
        raise TarFormatError(f"malformed pax header: {exc}") from None
    return records


# name, size, checksum, typeflag, magic + version, prefix: the ustar fields the reader looks at
_HEADER = struct.Struct("100s24x12s12x8s1s100x8s80x155s12x")


class TarReader:
    """Iterate a tar stream's members; `read()` returns the current member's bytes, and a member
    not read is skipped without reading it. Raises TarFormatError on a damaged or truncated tar.
    A header's fields come out of one struct unpack. (Cutting headers and members out of a
    megabyte buffer of our own instead of the file's was no faster, and copied every member once
    more.)"""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self._left = 0  # data bytes of the current member not yet consumed
        self._pad = 0

    def _read_exact(self, n: int) -> bytes:
        data = self._fh.read(n)
        if len(data) != n:
            raise TarFormatError(f"truncated: wanted {n} bytes at offset {self._fh.tell() - len(data)}, "
                                 f"got {len(data)}")
        return data

    def _skip_rest(self) -> None:
        if self._left or self._pad:
            self._fh.seek(self._left + self._pad, 1)
            self._left = self._pad = 0

    def read(self) -> bytes:
        data = self._read_exact(self._left)
        self._left = 0
        return data

    def __iter__(self) -> Iterator[TarEntry]:
        pax: dict[str, str] = {}
        while True:
            self._skip_rest()
            header = self._fh.read(BLOCK)
            if header == _ZERO_BLOCK:  # end-of-archive blocks
                return
            if len(header) != BLOCK:  # a skipped member's seek may pass the end of a truncated file
                raise TarFormatError("truncated: the file ends before its end-of-archive blocks")
            name, size, checksum, typeflag, magic, prefix = _HEADER.unpack(header)
            if magic not in _MAGICS or not _checksum_ok(header, checksum):
                raise TarFormatError(f"damaged header at offset {self._fh.tell() - BLOCK}")
            size = _number(size)
            self._left, self._pad = size, -size % BLOCK
            if typeflag in (_PAX_NEXT, _PAX_GLOBAL):
                records = _pax_records(self.read())
                if typeflag == _PAX_NEXT:
                    pax = records
                continue
            name = _text(name.split(b"\0", 1)[0])
            if magic[:6] == b"ustar\0" and prefix[0]:
                name = _text(prefix.split(b"\0", 1)[0]) + "/" + name
            if pax:
                name = pax.get("path", name)
                if "size" in pax:
                    self._left, self._pad = int(pax["size"]), -int(pax["size"]) % BLOCK
                pax = {}
            yield TarEntry(name, self._left, typeflag in _REGULAR, typeflag.decode("latin-1"))
