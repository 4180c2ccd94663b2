"""The unit pool: outputs in unit order whatever the workers' timing; a worker that dies costs its
own unit only (as died(...), naming the signal) and a new worker carries on; no unit starts more
than `window` units ahead of the one being waited for, and none is read from its sequence before."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ingest.unit_pool import describe_death, map_units


def _init() -> None:
    pass


def _slow_first(unit: int) -> tuple[int, int]:
    time.sleep(0.2 if unit == 0 else 0.001 * (unit % 3))
    return unit, os.getpid()


def _kill_on_three(unit: int) -> int:
    if unit == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return unit * 10


def _double(unit: int) -> int:
    return 2 * unit


def _died(unit: int, reason: str) -> str:
    return f"unit {unit}: {reason}"


def _start_time(unit: int) -> tuple[int, float]:
    time.sleep(0.05 if unit == 0 else 0.0)
    return unit, time.monotonic()


def test_outputs_come_in_unit_order_from_several_processes():
    outputs = list(map_units(list(range(20)), _slow_first, workers=2, init=_init, died=_died))
    assert [unit for unit, _ in outputs] == list(range(20))
    assert len({pid for _, pid in outputs}) == 2 and os.getpid() not in {pid for _, pid in outputs}


class _Unpicklable:
    """A unit that cannot be pickled (a forked worker is sent the unit's number, not the unit)."""

    def __init__(self, value: int):
        self.value = value

    def __reduce__(self):
        raise pickle.PicklingError("this unit must not be pickled")


def _value_times_ten(unit) -> int:
    return unit.value * 10 if isinstance(unit, _Unpicklable) else unit * 10


def test_forked_workers_are_sent_unit_numbers_not_pickled_units():
    units = [_Unpicklable(i) for i in range(9)]
    outputs = list(map_units(units, _value_times_ten, workers=2, init=_init, died=_died, start_method="fork"))
    assert outputs == [i * 10 for i in range(9)]


def test_spawned_workers_receive_the_pickled_units():
    outputs = list(map_units(list(range(7)), _value_times_ten, workers=2, init=_init, died=_died,
                             start_method="spawn"))
    assert outputs == [i * 10 for i in range(7)]
    with pytest.raises(pickle.PicklingError, match="must not be pickled"):
        list(map_units([_Unpicklable(1)], _value_times_ten, workers=1, init=_init, died=_died, start_method="spawn"))


def test_a_unit_whose_worker_dies_every_time_costs_only_that_unit():
    outputs = list(map_units(list(range(8)), _kill_on_three, workers=2, init=_init, died=_died))
    assert outputs[:3] == [0, 10, 20] and outputs[4:] == [40, 50, 60, 70]
    assert outputs[3] == "unit 3: the worker process died of SIGKILL (out of memory?) while processing it, 2 times"


def _killed_the_first_time(unit: tuple[int, str]) -> int:
    number, marker = unit
    if number == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer, which may pick any worker, once
    return number * 10


def test_a_unit_whose_worker_died_once_is_done_by_a_new_worker(tmp_path):
    marker = str(tmp_path / "killed-once")
    units = [(i, marker) for i in range(8)]
    outputs = list(map_units(units, _killed_the_first_time, workers=2, init=_init, died=_died))
    assert outputs == [i * 10 for i in range(8)] and os.path.exists(marker)


def _slow_zero_kill_one(unit: int) -> int:
    if unit == 0:
        time.sleep(0.3)
    if unit == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return unit * 10


def test_a_worker_that_dies_before_its_next_unit_is_sent_costs_only_its_unit():
    # window 2: the worker gets units 0 and 1 and then dies on 1, while the consumer is slow; the
    # parent then sends it unit 2 before reading its end of file (this raised BrokenPipeError)
    outputs = []
    for output in map_units(list(range(6)), _slow_zero_kill_one, workers=2, init=_init, died=_died, window=2):
        outputs.append(output)
        time.sleep(0.2)
    assert outputs[0] == 0 and outputs[2:] == [20, 30, 40, 50]
    assert outputs[1] == "unit 1: the worker process died of SIGKILL (out of memory?) while processing it, 2 times"


def test_no_unit_starts_more_than_window_ahead():
    # unit 0 is slow: with window 3, units 3 and later cannot start before unit 0 is done
    outputs = list(map_units(list(range(10)), _start_time, workers=2, init=_init, died=_died, window=3))
    finished_first = outputs[0][1]
    assert all(started >= finished_first for unit, started in outputs if unit >= 3)
    assert any(started < finished_first for unit, started in outputs if 0 < unit < 3)


@pytest.mark.parametrize(("code", "words"), [(-signal.SIGSEGV, "SIGSEGV (a decoder that crashes on this file?) while"),
                                             (-signal.SIGBUS, "SIGBUS (the file cut short while it was read"),
                                             (-signal.SIGTERM, "SIGTERM while"), (3, "status 3")])
def test_deaths_are_described(code, words):
    assert words in describe_death(code)


def _bulky(unit: int) -> dict:
    """Two large buffers marked out of band, one empty, and small bytes in band."""
    big = bytes([unit]) * (3 << 20)
    other = os.urandom(1 << 16)
    return {"unit": unit, "big": pickle.PickleBuffer(big), "empty": pickle.PickleBuffer(b""),
            "other": pickle.PickleBuffer(other), "digest": hashlib.sha256(big + other).hexdigest(), "small": b"s"}


def test_pickle_buffers_come_back_as_read_only_views_with_their_bytes():
    outputs = list(map_units(list(range(6)), _bulky, workers=2, init=_init, died=_died))
    assert [o["unit"] for o in outputs] == list(range(6))
    for o in outputs:
        assert all(isinstance(o[k], memoryview) and o[k].readonly for k in ("big", "empty", "other"))
        assert len(o["big"]) == 3 << 20 and bytes(o["big"][:1]) == bytes([o["unit"]]) and len(o["empty"]) == 0
        assert hashlib.sha256(bytes(o["big"]) + bytes(o["other"])).hexdigest() == o["digest"]
        assert o["small"] == b"s"


def _bulky_or_killed(unit: int) -> dict:
    if unit == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return _bulky(unit)


def test_a_dead_worker_among_bulky_outputs_costs_only_its_unit():
    outputs = list(map_units(list(range(5)), _bulky_or_killed, workers=2, init=_init, died=_died))
    assert [o["unit"] for i, o in enumerate(outputs) if i != 2] == [0, 1, 3, 4]
    assert "SIGKILL" in outputs[2]


def _larger_than_a_pipe(unit: int) -> tuple[int, bytes]:
    return os.getpid(), bytes(8 << 20)  # more than a pipe holds: a worker blocks sending it until it is read


def test_a_consumer_that_stops_early_ends_the_workers_at_once():
    """The job stopped (disk full, Ctrl-C): workers still holding results nobody will read are
    ended, not given the 5 s a finishing worker gets to exit (each of them would use it all,
    blocked sending)."""
    outputs = map_units(list(range(12)), _larger_than_a_pipe, workers=2, init=_init, died=_died)
    first_pid, _ = next(outputs)
    time.sleep(0.3)  # both workers are now blocked sending their next results
    start = time.monotonic()
    outputs.close()
    assert time.monotonic() - start < 3
    with pytest.raises(ProcessLookupError):
        os.kill(first_pid, 0)


_ORPHAN_SCRIPT = """
import os, sys, time
from ingest.unit_pool import map_units

def _init():
    pass

def _slow_pid(unit):
    time.sleep(0.05)
    return os.getpid()

def _died(unit, reason):
    return reason

if __name__ == "__main__":
    for pid in map_units(list(range(10_000)), _slow_pid, workers=2, init=_init, died=_died, start_method=sys.argv[1]):
        print(pid, flush=True)
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_end_when_the_parent_is_killed_outright(tmp_path, start_method, running):
    """SIGKILL (the OOM killer, `kill -9`) gives the parent no chance to stop its workers; they
    must not live on (they would hold the output folder's lock and keep a resume from starting)."""
    script = tmp_path / "pool_parent.py"
    script.write_text(_ORPHAN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, str(script), start_method], stdout=subprocess.PIPE, text=True, env=env)
    workers: set[int] = set()
    while len(workers) < 2:
        line = proc.stdout.readline()
        assert line, "the pool's parent ended early"
        workers.add(int(line))
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 30
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(map(running, workers)), "workers outlived their killed parent"


class _WatchedUnits(Sequence):
    """Units that record which of them the parent has read (a unit table reads them from disk)."""

    def __init__(self, n: int):
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        self.read.append(index)
        return index


def test_units_are_read_only_as_they_are_handed_out():
    units = _WatchedUnits(40)
    for k, unit in enumerate(map_units(units, _double, workers=2, died=_died, window=4)):
        assert unit == 2 * k
        assert max(units.read) < k + 4, "a unit read before it could be handed out"
    assert sorted(set(units.read)) == list(range(40))
