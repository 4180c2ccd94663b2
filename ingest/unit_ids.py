"""A job's unit ids read in one pass, for jobs whose units are a table on disk (ingest.unit_table)
as well as for a list: its fingerprint and the check that no two units share an id hold one id
at a time, where a list of an archive's ids, its JSON or a set of them was hundreds of MB."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any


def unit_ids(units: Sequence[Any]) -> Iterator[str]:
    """The units' ids in order (from a unit table's id column alone)."""
    read_ids = getattr(units, "unit_ids", None)
    return read_ids() if read_ids is not None else (u.unit_id for u in units)


def job_fingerprint(parameters: dict[str, Any], units: Sequence[Any]) -> str:
    """sha256 of json.dumps({"parameters": parameters, "units": [every unit id]}, sort_keys=True),
    hashed as it is made (the same digest as that string's, which resumable runs recorded)."""
    digest = hashlib.sha256(f'{{"parameters": {json.dumps(parameters, sort_keys=True)}, "units": ['.encode())
    for i, unit_id in enumerate(unit_ids(units)):
        digest.update(f'{", " if i else ""}{json.dumps(unit_id)}'.encode())
    digest.update(b"]}")
    return digest.hexdigest()


def repeats_an_id(units: Sequence[Any]) -> bool:
    """Whether two units share an id: in one pass when the ids ascend (a unit table's always do),
    else with a set of them."""
    previous = None
    for unit_id in unit_ids(units):
        if previous is not None and unit_id <= previous:
            break
        previous = unit_id
    else:
        return False
    ids = list(unit_ids(units))
    return len(set(ids)) != len(ids)
