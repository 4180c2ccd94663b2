"""The stream's tar reader against Python's tarfile: the same members from real shards, long names
through pax headers, and damaged, truncated or unusual tars named as such, never guessed at; the
writer's headers byte for byte as tarfile makes them."""

from __future__ import annotations

import io
import tarfile

import pytest

from shards.card import read_card, shard_records
from shards.tar_members import NAME_MAX, TarFormatError, TarReader, ustar_member


def read_all(data: bytes) -> list[tuple[str, bool, bytes | None]]:
    reader = TarReader(io.BytesIO(data))
    return [(entry.name, entry.regular, reader.read() if entry.regular else None) for entry in reader]


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def test_reads_what_tarfile_reads_from_real_shards(shard_set):
    for record in shard_records(read_card(shard_set)):
        data = (shard_set / record["path"]).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            expected = [(info.name, True, tar.extractfile(info).read()) for info in tar]
        assert read_all(data) == expected


def test_members_not_read_are_skipped():
    data = make_tar([("a.json", b"1" * 700), ("a.png", b"2" * 513), ("b.json", b"3")])
    reader = TarReader(io.BytesIO(data))
    assert [(e.name, reader.read()) for e in reader if e.name.endswith(".json")] == [("a.json", b"1" * 700),
                                                                                        ("b.json", b"3")]


@pytest.mark.parametrize("name,fmt", [("k" * 150 + ".json", tarfile.PAX_FORMAT),
                                      ("d" * 120 + "/" + "k" * 90 + ".json", tarfile.USTAR_FORMAT)])
def test_long_names_through_pax_headers_and_ustar_prefixes(name, fmt):
    assert read_all(make_tar([(name, b"{}")], fmt)) == [(name, True, b"{}")]


def test_links_and_directories_are_reported_not_followed():
    link = tarfile.TarInfo("a.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    folder = tarfile.TarInfo("sub")
    folder.type = tarfile.DIRTYPE
    assert [(e.name, e.regular, e.typeflag) for e in TarReader(io.BytesIO(make_tar([link, folder])))] == [
        ("a.png", False, "2"), ("sub/", False, "5")]


def test_damaged_and_truncated_tars_raise():
    data = make_tar([("a.json", b"x" * 600), ("b.json", b"y")])
    damaged = bytearray(data)
    damaged[1536 + 100] ^= 0xFF  # inside the second header (a 600-byte member takes 512 + 1024): bad checksum
    with pytest.raises(TarFormatError, match="damaged header at offset 1536"):
        read_all(bytes(damaged))
    with pytest.raises(TarFormatError, match="truncated"):
        read_all(data[:700])  # inside the first member's data
    with pytest.raises(TarFormatError, match="before its end-of-archive blocks"):
        read_all(data[:1536])  # cut at a header boundary, where tarfile would stop quietly
    with pytest.raises(TarFormatError, match="damaged header"):
        read_all(b"not a tar at all".ljust(512, b"\0"))
    latin = io.BytesIO()
    with tarfile.open(fileobj=latin, mode="w", format=tarfile.USTAR_FORMAT, encoding="latin-1") as tar:
        tar.addfile(tarfile.TarInfo("caf\xe9.json"))
    with pytest.raises(TarFormatError, match="is not UTF-8"):
        read_all(latin.getvalue())


@pytest.mark.parametrize(("name", "size", "owner"), [("k.png", 0, "medshards"), ("x" * NAME_MAX, 8**11 - 1, "o"),
                                                     ("cbis_ab12_lesion3.mask.png", 511, "medshards")])
def test_headers_are_what_tarfile_writes(name, size, owner):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 1577836800, 0o444, owner, owner
    assert ustar_member(name, size, mtime=1577836800, mode=0o444, owner=owner) == info.tobuf(format=tarfile.USTAR_FORMAT)
