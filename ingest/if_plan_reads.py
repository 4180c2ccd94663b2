"""The two reads `ingest if` planning makes of every image before any unit exists: its fingerprint
(every byte) and its nuclear threshold (chunks spread over the nuclear channel, so that every
block of a slide is thresholded alike).

A slide collection is large and often on network storage, so these run in worker processes
(ingest.unit_pool), as the units do: an image whose read fails (a disk's read error, pixels that
do not decode) or kills its reader (SIGBUS from a mapped slide on a failing disk, or one cut short
while read) becomes a reject naming it, and planning goes on. On Ctrl-C no image not yet started is
read. workers=0 reads them here, in order (a debugger, a profiler).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from ingest import nuclei
from ingest.multiplex_tiff import Plane, RegionReader, files_fingerprint
from ingest.unit_pool import map_units
from shards.progress_bar import progress_bar

Measured = tuple[str, int | None]  # (fingerprint, nuclear threshold or None)


class PlannedImage(Protocol):
    path: Path  # a multi-channel TIFF, or a folder of one TIFF per channel
    nuclear: Plane | None  # the nuclear channel, where nuclei are to be found


def measure_image(image: PlannedImage, chunks: int) -> Measured | str:
    """(fingerprint, nuclear threshold from up to `chunks` chunks, or None without a nuclear
    channel); or, for an image that cannot be read through, why (the reject's reason)."""
    try:
        threshold = None
        if image.nuclear is not None:
            with RegionReader() as reader:
                threshold = nuclei.nuclear_threshold(reader.sample_chunks(image.nuclear, chunks))
        return files_fingerprint(image.path), threshold
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 -- whatever one image's pixels raise makes it a reject, not the job's end
        return f"unreadable TIFF: {type(exc).__name__}: {exc}"


def measure_images(images: Sequence[PlannedImage], chunks: int, *, workers: int,
                   progress: bool = False) -> Iterator[Measured | str]:
    """measure_image of every image, in their order, in `workers` processes (here for 0); with
    progress, a bar counts them."""
    if workers <= 0:
        results = (measure_image(image, chunks) for image in images)
    else:
        results = map_units(list(images), functools.partial(measure_image, chunks=chunks), workers=workers,
                            died=_died_reading)
    yield from progress_bar(results, total=len(images), unit="img", desc="plan if (fingerprint, nuclear threshold)",
                            enabled=progress)


def _died_reading(image: PlannedImage, reason: str) -> str:
    return reason.replace("while processing it", "while reading it for planning")
