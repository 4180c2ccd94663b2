"""`shards verify` on a good set and on one corruption at a time: each must fail, naming the shard
file and the problem, and leave the other shards out of the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from shards import schema
from shards.card import read_card, write_card
from shards.cli import main
from shards.writer import file_sha256

FIRST = "train/shard-000000.tar"  # holds train00abcdef and train01abcdef


def run_verify(root: Path, capsys, workers: int = 1) -> tuple[int, list[str]]:
    code = main(["verify", str(root), "--workers", str(workers)])
    return code, capsys.readouterr().out.splitlines()


def fail_line(lines: list[str], name: str) -> str:
    found = [line for line in lines if line.startswith(f"FAIL {name}: ")]
    assert len(found) == 1, lines
    return found[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_good_set_passes(shard_set, capsys, workers):
    code, lines = run_verify(shard_set, capsys, workers)
    assert code == 0
    assert lines == [f"verify {shard_set}: OK (5 shards, 10 samples)"]


def test_flipped_byte_fails_checksum(shard_set, capsys):
    path = shard_set / FIRST
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    code, lines = run_verify(shard_set, capsys)
    assert code == 1
    assert "sha256 mismatch" in fail_line(lines, FIRST)
    assert len([line for line in lines if line.startswith("FAIL")]) == 1
    assert lines[-1].startswith(f"verify {shard_set}: FAIL, ") and " in 1 files " in lines[-1]


def test_truncated_shard_fails(shard_set, capsys):
    path = shard_set / FIRST
    path.write_bytes(path.read_bytes()[:3000])
    code, lines = run_verify(shard_set, capsys)
    line = fail_line(lines, FIRST)
    assert code == 1
    assert "card says" in line and "sha256 mismatch" in line and "manifest keys not in the shard" in line


def test_tar_cut_at_a_member_boundary_is_caught_without_the_card(shard_set, capsys):
    """tarfile ends quietly at a missing header; with the card updated to match, only the
    end-of-archive check can tell."""
    path = shard_set / FIRST
    with tarfile.open(path) as tar:
        third = tar.getmembers()[2]  # members sort per key: .json, .mask.png, .png, then key 2
    cut = third.offset_data + -(-third.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    path.write_bytes(path.read_bytes()[:cut])
    card = read_card(shard_set)
    record = next(r for r in card["splits"]["train"]["shards"] if r["path"] == FIRST)
    record["bytes"], record["sha256"] = cut, file_sha256(path)
    write_card(shard_set, card)
    code, lines = run_verify(shard_set, capsys)
    line = fail_line(lines, FIRST)
    assert code == 1 and "no end-of-archive blocks" in line and "1 samples, card says 2" in line


def test_undecodable_png_caught_by_decoding_not_checksum(shard_set, capsys, rewrite_shard):
    broken = b"\x89PNG\r\n\x1a\n" + b"not an image" * 8
    rewrite_shard(shard_set, FIRST, lambda name, data: broken if name == "train00abcdef.png" else data)
    code, lines = run_verify(shard_set, capsys)
    line = fail_line(lines, FIRST)
    assert code == 1
    assert "train00abcdef: PNG member does not decode" in line
    assert "sha256" not in line and "size" not in line


def test_empty_npy_member_is_reported(shard_set, capsys, rewrite_shard):
    shard = "train/shard-000002.tar"  # holds the 3-channel PNG and the 7-channel .npy sample
    rewrite_shard(shard_set, shard, lambda name, data: b"" if name == "mif00cells.npy" else data)
    code, lines = run_verify(shard_set, capsys)
    assert code == 1 and "mif00cells: npy member does not decode" in fail_line(lines, shard)


def _taller(name: str, data: bytes) -> bytes:
    if name != "train01abcdef.json":
        return data
    meta = json.loads(data)
    meta["height"] += 1
    return json.dumps(meta, sort_keys=True).encode()


def test_json_height_disagreeing_with_pixels_fails(shard_set, capsys, rewrite_shard):
    rewrite_shard(shard_set, FIRST, _taller)
    code, lines = run_verify(shard_set, capsys)
    line = fail_line(lines, FIRST)
    assert code == 1
    assert "train01abcdef: height 41 in json, 40 in pixels" in line
    assert "manifest says 40x48x1 uint16, json 41x48x1 uint16" in line


def test_fov_flag_without_fov_member_fails(shard_set, capsys, rewrite_shard):
    def claim_fov(name, data):
        if name != "train00abcdef.json":
            return data
        return json.dumps({**json.loads(data), "has_fov": True}, sort_keys=True).encode()

    rewrite_shard(shard_set, FIRST, claim_fov)
    code, lines = run_verify(shard_set, capsys)
    assert code == 1 and "train00abcdef: json has_fov=True but fov.png member absent" in fail_line(lines, FIRST)


def test_every_problem_in_a_shard_is_named(shard_set, capsys, rewrite_shard):
    def both(name, data):
        return b"garbage" if name == "train00abcdef.png" else _taller(name, data)

    rewrite_shard(shard_set, FIRST, both)
    code, lines = run_verify(shard_set, capsys)
    line = fail_line(lines, FIRST)
    assert "train00abcdef: PNG member does not decode" in line and "train01abcdef: height 41" in line


def test_sample_missing_from_manifest_fails(shard_set, capsys):
    table = pq.read_table(shard_set / schema.MANIFEST_FILE)
    pq.write_table(table.filter(pc.field("key") != "train02abcdef"), shard_set / schema.MANIFEST_FILE)
    code, lines = run_verify(shard_set, capsys)
    assert code == 1
    assert "train02abcdef: not in manifest" in fail_line(lines, "train/shard-000001.tar")
    assert "train: 5 rows, card says 6 samples" in fail_line(lines, schema.MANIFEST_FILE)


def test_unlisted_shard_file_is_reported(shard_set, capsys):
    shutil.copy(shard_set / FIRST, shard_set / "train" / "shard-000099.tar")
    code, lines = run_verify(shard_set, capsys)
    assert code == 1
    assert fail_line(lines, "train/shard-000099.tar").endswith("not listed in dataset.json")


def test_missing_manifest_is_reported(shard_set, capsys):
    (shard_set / schema.MANIFEST_FILE).unlink()
    code, lines = run_verify(shard_set, capsys)
    assert code == 1
    assert "missing" in fail_line(lines, schema.MANIFEST_FILE)


def test_missing_card_is_a_clear_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a readable shard set" in capsys.readouterr().err


def test_console_script_as_a_subprocess(shard_set):
    """As users run it; one worker, since test_good_set_passes[2] covers the process pool."""
    script = Path(sys.executable).with_name("shards")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "shards.cli"]
    (shard_set / "val" / "shard-000000.tar").write_bytes(b"not a tar")
    done = subprocess.run([*command, "verify", str(shard_set), "--workers", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0].startswith("FAIL val/shard-000000.tar: size 9 bytes")


def test_ctrl_c_ends_the_command_with_130_and_no_traceback(shard_set, monkeypatch, capsys):
    from shards import cli

    def interrupted(argv=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.console()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "\nshards: interrupted\n"
