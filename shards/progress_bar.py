"""Progress of long work (an ingest, a verify, a plan over a DICOM tree) on stderr, for the
terminal and for a batch job's log alike.

On a terminal: tqdm's bar, redrawn in place at most once a second. Anywhere else (Slurm, Ray and
Kubernetes logs, `2> ingest.log`) tqdm redraws with carriage returns too, and a ten-hour ingest
became one log line of 36,000 redraws. There the same bar is written as a line of its own at most
every LOG_EVERY_S seconds, and not at all for work that ends sooner (the job's summary says the
rest), in ASCII. MEDSHARDS_PROGRESS_EVERY_S sets that interval (0: a line at every update).
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_EVERY_S = 60.0
EVERY_S_VARIABLE = "MEDSHARDS_PROGRESS_EVERY_S"


class _Lines(io.TextIOBase):
    """A text stream that writes each of tqdm's redraws as one line."""

    def __init__(self, stream: IO[str]):
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, enabled: bool = True, file: IO[str] | None = None,
                 every_s: float | None = None) -> tqdm:
    """A tqdm bar on `file` (stderr): in place on a terminal, else a line every `every_s` seconds
    (default: $MEDSHARDS_PROGRESS_EVERY_S, else LOG_EVERY_S; see the module docstring).
    enabled=False: a bar that shows nothing (--no-progress)."""
    file = sys.stderr if file is None else file
    every_s = _log_interval() if every_s is None else every_s
    common = dict(desc=desc, unit=unit, total=total, initial=initial, disable=not enabled)
    if _is_terminal(file):
        return tqdm(iterable, file=file, mininterval=1.0, **common)
    return tqdm(iterable, file=_Lines(file), mininterval=every_s, maxinterval=math.inf, delay=every_s, ascii=True,
                **common)


def _log_interval() -> float:
    value = os.environ.get(EVERY_S_VARIABLE, "")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if value and not (0 <= seconds < math.inf):
        raise ValueError(f"{EVERY_S_VARIABLE}={value!r}: expected seconds, 0 or more")
    return seconds if value else LOG_EVERY_S


def _is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
