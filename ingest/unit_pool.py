"""Worker processes for an ingest job's units: outputs come back in unit order, few are held at
a time, and a worker that dies takes only its own unit with it (after one more try in a new worker).

Each worker has a pipe of its own; the parent hands a worker more units when half of those it
queued have come back (at most `in_flight` queued per worker, in one message per refill: the
writing process's pipe writes, each waking a worker, were a sixth of its time on a 2-vCPU VM, and
refills of two units out of four made a CheXpert job's writer ceiling 1.045x and 1.053x that of
one out of two, medians of 10 paired runs in two sessions), reorders the outputs and yields them
in unit order.
Why not multiprocessing.Pool.imap, which this replaces:

- its machinery cost the parent 2 ms of CPU per 93 KB output (one CBIS mammogram's lesion crops),
  a fifth of an image's work, against 0.24 ms here (three pool threads passing the GIL around,
  and a pipe read in 64 KB steps);
- a worker killed by the OOM killer or a crashing decoder hangs imap forever; here a new worker
  takes its place, tries that unit once more, and if it dies too the unit becomes a reject naming
  the signal; the job goes on;
- imap keeps computing ahead of a slow consumer and holds every output; here no unit is started
  more than `window` units ahead of the one the job is waiting for.

Bulky outputs do not go through the pipe. Any pickle.PickleBuffer in an output (the pipeline
wraps a large unit's members in them) travels out of band (pickle protocol 5): the worker writes
the buffers into an anonymous memory file (Linux memfd) and passes its descriptor over the
socket; the parent maps it and gets read-only memoryviews in their place. Pickled through the pipe,
a 40 MB immunofluorescence unit cost about 280 ms of CPU in copies and pipe traffic, more than the
unit's own work, so two workers ingested slower than one. A memory file needs no cleanup: it goes
when the last descriptor and mapping of it do, however either process ends.

The parent's own work a unit is what caps a job on many cores (it also writes every shard), so
the messages are lean. A forked worker inherits the job's units: the parent sends it a unit's
number (8 bytes), not the pickled unit, which had cost the parent ~70 us a CheXpert image, a
third of its work for one (spawned workers, off Linux, still receive the pickled unit). And a
result is one message: the out-of-band sizes, then the pickle.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import cv2

from ingest.mapped_files import map_read_only
from shards.heap import libc, release_free_heap

Task = tuple[int, Any]  # (unit index, unit)
_INDEX = struct.Struct("<q")  # a task, to a worker that holds the units
_COUNT = struct.Struct("<I")  # a result's header: how many out-of-band buffers, then their sizes ("<Q" each)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the process that started it dies, however it dies.
    A parent killed outright (SIGKILL: the OOM killer, `kill -9`, a scheduler's hard stop) runs no
    clean-up, and its forked workers, blocked reading their next task, got no end of file: each
    also holds its own pipe's other end, and the output folder's lock, both inherited. They slept
    on for good, and the rerun that should resume was refused ("another ingest is writing this
    folder"). Linux only (prctl); a spawned worker (elsewhere) holds neither, and reads the end of
    file instead."""
    c = libc() if sys.platform == "linux" else None
    if c is not None:
        c.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the request was made
        os._exit(0)


def _worker_main(conn: Connection, init: Callable[[], None] | None, run: Callable[[Any], Any],
                 units: Sequence[Any] | None, parent: int) -> None:
    """Runs tasks until an empty message, or until the parent is gone. With `units` (inherited
    when forked) a task is a unit's index; without, the pickled (index, unit)."""
    _die_with_parent(parent)
    # Ctrl-C and SIGTERM (a scheduler stopping the job, often sent to every process of it) are
    # the parent's to handle: it stops the job, resumable, and ends the workers itself. A worker
    # that died of them would make its unit a reject, and a resumed run would not redo it.
    for stop in _STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent over the fork
    if init is not None:
        init()
    while message := _next_task(conn):
        if units is None:  # from the parent over this private pipe, never from a shard
            tasks = pickle.loads(message)
        else:
            tasks = [(index, units[index]) for (index,) in _INDEX.iter_unpack(message)]
        for index, unit in tasks:
            send_result(conn, (index, run(unit)))


def _indices(tasks: list[Task]) -> bytes:
    return b"".join(_INDEX.pack(index) for index, _ in tasks)


def _next_task(conn: Connection) -> bytes:
    """The parent's next message; empty (stop) when the parent is gone."""
    try:
        return conn.recv_bytes()
    except (EOFError, OSError):
        return b""


_MEMFD = hasattr(os, "memfd_create")  # Linux; elsewhere out-of-band buffers go in band


def send_result(conn: Connection, message: Any) -> None:
    """message through conn, its PickleBuffers through a memory file (see the module docstring):
    one message of the out-of-band buffers' count and sizes and the pickle, then (when there are
    buffers) the memory file's descriptor."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, protocol=5, buffer_callback=buffers.append if _MEMFD else None)
    raw = [b.raw() for b in buffers]
    header = struct.pack(f"<I{len(raw)}Q", len(raw), *(view.nbytes for view in raw))
    if not raw:
        conn.send_bytes(header + payload)
        return
    fd = os.memfd_create("medshards-unit-output", os.MFD_CLOEXEC)
    try:
        for view in raw:
            while view:
                view = view[os.write(fd, view):]
        conn.send_bytes(header + payload)
        send_handle(conn, fd, os.getppid())
    finally:
        os.close(fd)


def receive_result(conn: Connection) -> Any:
    """The message send_result sent; its out-of-band buffers are read-only memoryviews of the
    mapped memory file. Raises EOFError or OSError when the worker is gone. (Unpickled: it comes
    from this job's own worker over its private socket, never from a shard.)"""
    message = memoryview(conn.recv_bytes())
    (count,) = _COUNT.unpack_from(message)
    sizes = struct.unpack_from(f"<{count}Q", message, _COUNT.size)
    payload = message[_COUNT.size + 8 * count:]
    if not count:
        return pickle.loads(payload)
    try:
        fd = recv_handle(conn)
    except RuntimeError as exc:  # the descriptor never came: the worker died between the messages
        raise EOFError(str(exc)) from exc
    total = sum(sizes)
    try:
        mapped = map_read_only(fd, total) if total else b""
    finally:
        os.close(fd)
    views, at = [], 0
    for size in sizes:
        views.append(mapped[at : at + size])
        at += size
    return pickle.loads(payload, buffers=views)


# Workers a unit may cost before it is rejected. The OOM killer ends the largest process when memory
# runs out, which with several workers holding images need not be the one whose image did it; a
# decoder that crashes on a file crashes again.
TRIES = 2


_DEATH_HINTS = {
    signal.SIGKILL: " (out of memory?)",
    signal.SIGSEGV: " (a decoder that crashes on this file?)",
    signal.SIGBUS: " (the file cut short while it was read, or a read error of its disk?)",
}


def describe_death(exitcode: int | None, tries: int = 1) -> str:
    times = "" if tries == 1 else f", {tries} times"
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = _DEATH_HINTS.get(-exitcode, "")
        return f"the worker process died of {name}{hint} while processing it{times}"
    return f"the worker process exited with status {exitcode} while processing it{times}"


class _Worker:
    def __init__(self, ctx, init: Callable[[], None] | None, run: Callable[[Any], Any], units: Sequence[Any]):
        self.conn, child = ctx.Pipe(duplex=True)
        # Forked, the worker has the units already (copy-on-write); spawned, it would get a pickle of them all.
        self.inherits = ctx.get_start_method() == "fork"
        self.process = ctx.Process(target=_worker_main,
                                   args=(child, init, run, units if self.inherits else None, os.getpid()), daemon=True)
        # Until the worker ignores them, a stop signal would run the parent's handler in it.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child.close()
        self.queued: deque[Task] = deque()  # sent, not yet come back; the first is being worked on

    def send(self, tasks: list[Task]) -> None:
        """Queue tasks with the worker, in one message."""
        message = _indices(tasks) if self.inherits else pickle.dumps(tasks, protocol=5)
        self.queued.extend(tasks)
        try:
            self.conn.send_bytes(message)
        except (BrokenPipeError, ConnectionResetError):
            # Died since its last result (the OOM killer): its end of file, read next, makes
            # the unit it was on a reject and hands this one, never started, to a new worker.
            pass

    def stop(self) -> None:
        try:
            self.conn.send_bytes(b"")
        except OSError:
            pass
        self.process.join(timeout=5)
        self.abandon()

    def abandon(self) -> None:
        """End the process now: what it is working on is not wanted (the job stopped early; a
        worker left to finish would block sending results nobody reads)."""
        if self.process.is_alive():
            self.process.kill()  # SIGTERM it ignores
            self.process.join()
        self.conn.close()


def map_units(units: Sequence[Any], run: Callable[[Any], Any], *, workers: int, died: Callable[[Any, str], Any],
              init: Callable[[], None] | None = None, in_flight: int = 4, window: int | None = None,
              start_method: str | None = None) -> Iterator[Any]:
    """run(unit) for every unit in `workers` processes (each calls init() first, if given),
    yielded in unit order. A unit whose worker dies is run again in a new one; when that dies too
    (TRIES in all), it yields died(unit, reason) instead. The other units are unaffected.
    Workers are forked on Linux, spawned elsewhere (`start_method` chooses); where they are
    spawned, `run`, `init` and `died` must be module-level and the units picklable.
    Workers run OpenCV on one thread each (one_opencv_thread_in_workers)."""
    with one_opencv_thread_in_workers():
        yield from _map_units(units, run, workers=workers, init=init, died=died, in_flight=in_flight, window=window,
                              start_method=start_method)


@contextlib.contextmanager
def one_opencv_thread_in_workers() -> Iterator[None]:
    """OpenCV on one thread in the worker processes forked meanwhile: a worker is one process a
    core, and OpenCV's own threads (one a core by default, for blurs, resizes, morphology) had N
    workers run N x cores threads; with one each, two `ingest if` workers on two cores ran 4%
    faster (median of 12 alternating runs; 7 of the 12 pairs). Set here in the parent, before the
    fork, and restored after: a forked child that resizes the thread pool it inherited hangs (the
    parent's pool threads are not in the child, and their condition variables never clear)."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _map_units(units: Sequence[Any], run: Callable[[Any], Any], *, workers: int, init: Callable[[], None] | None,
               died: Callable[[Any, str], Any], in_flight: int, window: int | None,
               start_method: str | None) -> Iterator[Any]:
    window = window or 8 * workers
    release_free_heap()  # a forked worker would copy the heap's free pages on first write
    ctx = multiprocessing.get_context(start_method or ("fork" if sys.platform == "linux" else "spawn"))
    pool = [_Worker(ctx, init, run, units) for _ in range(min(workers, len(units)))]
    again: deque[Task] = deque()  # handed out before and to be run again; they go first
    upcoming = 0  # the first unit never handed out (units are read when handed out: a unit table's from disk)
    done: dict[int, Any] = {}
    deaths: dict[int, int] = {}  # unit index -> workers that died on it
    waiting_for = 0

    half = max(1, in_flight // 2)

    def next_task() -> Task | None:
        nonlocal upcoming
        if again:
            return again.popleft() if again[0][0] < waiting_for + window else None
        if upcoming < min(len(units), waiting_for + window):
            upcoming += 1
            return upcoming - 1, units[upcoming - 1]
        return None

    def feed(worker: _Worker) -> None:
        """Up to half of in_flight more tasks, in one message, once half of the worker's have come
        back (at the start, so, each worker gets its half before any gets more)."""
        if len(worker.queued) > in_flight - half:
            return
        tasks = []
        while len(tasks) < half and (task := next_task()) is not None:
            tasks.append(task)
        if tasks:
            worker.send(tasks)

    try:
        for worker in pool:
            feed(worker)
        while waiting_for < len(units):
            if waiting_for in done:
                yield done.pop(waiting_for)
                waiting_for += 1
                for worker in pool:
                    feed(worker)
                continue
            by_conn = {w.conn: w for w in pool if w.queued}
            for conn in wait(list(by_conn)):
                worker = by_conn[conn]
                try:
                    index, output = receive_result(conn)
                except (EOFError, OSError):
                    worker.process.join()
                    index, unit = worker.queued.popleft()
                    again.extendleft(reversed(worker.queued))  # sent but never started
                    deaths[index] = deaths.get(index, 0) + 1
                    if deaths[index] < TRIES:  # the OOM killer's pick can be any worker: once more, first
                        again.appendleft((index, unit))
                    else:
                        done[index] = died(unit, describe_death(worker.process.exitcode, TRIES))
                    worker.conn.close()
                    pool[pool.index(worker)] = worker = _Worker(ctx, init, run, units)
                else:
                    worker.queued.popleft()
                    done[index] = output
                feed(worker)
    finally:
        finished = waiting_for == len(units)  # else the consumer stopped early (an error, Ctrl-C)
        for worker in pool:
            if finished:
                worker.stop()
            else:
                worker.abandon()
