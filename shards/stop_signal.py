"""SIGTERM handled as Ctrl-C is, by the commands that run for hours (ingest, a one-process
pretraining run): `docker stop`, Kubernetes and Slurm's scancel stop a job with SIGTERM. Without a
handler Python dies at once, without saying how to go on, or, as a container's PID 1, ignores it
until the SIGKILL that follows. Raised as a KeyboardInterrupt, it takes every path Ctrl-C takes
(work in hand finished or kept, resumable), and the command tells the two apart to say which."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated in the block. Only the main thread can set a handler; elsewhere
    the block runs with SIGTERM as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
