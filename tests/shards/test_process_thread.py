"""One background thread per purpose and process; a forked child gets its own, which runs."""

from __future__ import annotations

import os

from shards.process_thread import process_thread


def test_one_executor_per_name_in_a_process():
    assert process_thread("a") is process_thread("a")
    assert process_thread("a") is not process_thread("b")
    assert process_thread("a").submit(sum, [1, 2]).result() == 3


def test_a_forked_child_gets_a_thread_of_its_own():
    parent = process_thread("fork-test")
    parent.submit(int).result()  # the parent's thread exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's executor would queue work for a thread it does not have
        try:
            mine = process_thread("fork-test")
            ok = mine is not parent and mine.submit(sum, [2, 3]).result(timeout=10) == 5
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
