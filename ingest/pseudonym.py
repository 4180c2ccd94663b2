"""Keyed pseudonyms for patient and image identifiers.

Raw identifiers (an archive's patient ID, a folder name that embeds it) never reach a shard,
manifest or log: they are replaced by HMAC-SHA256(salt, identifier). With a secret salt the
pseudonym cannot be reversed by enumerating the ID space (CBIS's P_00001..P_02092 is small); the
same salt gives the same pseudonyms, so shard sets made with one salt can be joined by patient.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SALT_ENV = "MEDSHARDS_ID_SALT"
DEFAULT_SALT = "medshards-public-default-salt"


def resolve_salt(salt: str | None) -> str:
    """The salt to use: the argument, else $MEDSHARDS_ID_SALT, else the public default."""
    return salt or os.environ.get(SALT_ENV) or DEFAULT_SALT


def salt_fingerprint(salt: str) -> str:
    """A short public fingerprint so a dataset card says which salt was used without revealing it."""
    return hashlib.sha256(b"medshards-salt-fingerprint:" + salt.encode()).hexdigest()[:12]


def pseudonym(salt: str, identifier: str, *, length: int = 16) -> str:
    """Stable keyed pseudonym of `identifier`: lowercase hex, no dots (safe inside sample keys)."""
    return hmac.new(salt.encode(), identifier.encode(), hashlib.sha256).hexdigest()[:length]
