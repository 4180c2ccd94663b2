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
PUBLIC = "public"  # --id-salt public: the public default, asked for by name


class SecretSaltNeeded(ValueError):
    """Identifiers that are not public met no secret salt; str() says how to give one."""


def resolve_salt(salt: str | None) -> str:
    """The salt to use: the argument, else $MEDSHARDS_ID_SALT, else the public default."""
    if salt == PUBLIC:
        return DEFAULT_SALT
    return salt or os.environ.get(SALT_ENV) or DEFAULT_SALT


def resolve_secret_salt(salt: str | None, *, ids: str = "an archive's patient IDs") -> str:
    """resolve_salt for identifiers that are not public already: a hospital archive's patient IDs.
    With the public default, anyone holding this code reverses a pseudonym by hashing every
    possible ID (eight-digit medical record numbers take minutes), so the manifest's patient
    column would be the raw patient ID in all but name. Refused, then, unless a secret is given
    (the argument or $MEDSHARDS_ID_SALT) or the public salt is asked for by name, for an archive
    whose IDs are public anyway (RSNA, SIIM, a test suite). `ids` names them in the message (a
    lab's --patients table: `ingest if`). Raises SecretSaltNeeded, which the CLI reports as a usage
    error, as IngestError."""
    if not salt and not os.environ.get(SALT_ENV):
        raise SecretSaltNeeded(
            f"{ids} need a secret salt, or their pseudonyms can be reversed by "
            f"hashing every possible ID with the public one. Set {SALT_ENV} or pass --id-salt SECRET, and keep it: "
            "the same salt gives the same pseudonyms, so sets made later join by patient. For an archive whose "
            f"IDs are public already (RSNA, SIIM, a test suite), pass --id-salt {PUBLIC}")
    return resolve_salt(salt)


def salt_fingerprint(salt: str) -> str:
    """A short public fingerprint so a dataset card says which salt was used without revealing it."""
    return hashlib.sha256(b"medshards-salt-fingerprint:" + salt.encode()).hexdigest()[:12]


def pseudonym(salt: str, identifier: str, *, length: int = 16) -> str:
    """Stable keyed pseudonym of `identifier`: lowercase hex, no dots (safe inside sample keys)."""
    return hmac.new(salt.encode(), identifier.encode(), hashlib.sha256).hexdigest()[:length]
