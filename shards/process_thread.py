"""One background thread per purpose and process, for work that releases the GIL (hashing,
fdatasync) while the caller goes on. A forked child (an ingest worker) never uses its parent's:
the parent's thread does not exist in the child, so its executor would take work and never run it."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_EXECUTORS: dict[str, tuple[int, ThreadPoolExecutor]] = {}


def process_thread(name: str) -> ThreadPoolExecutor:
    """This process's single-thread executor named `name`, made on first use in each process."""
    made = _EXECUTORS.get(name)
    if made is None or made[0] != os.getpid():
        made = _EXECUTORS[name] = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix=name))
    return made[1]
