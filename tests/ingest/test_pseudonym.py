import pytest

from ingest import pseudonym


def test_pseudonyms_are_stable_keyed_and_key_safe():
    a = pseudonym.pseudonym("secret", "P_00001")
    assert a == pseudonym.pseudonym("secret", "P_00001")
    assert a != pseudonym.pseudonym("other", "P_00001") and a != pseudonym.pseudonym("secret", "P_00002")
    assert "P_00001" not in a and a.isalnum() and len(a) == 16
    assert "secret" not in pseudonym.salt_fingerprint("secret")


def test_salt_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv(pseudonym.SALT_ENV, "from-env")
    assert pseudonym.resolve_salt(None) == "from-env"
    assert pseudonym.resolve_salt("given") == "given"
    monkeypatch.delenv(pseudonym.SALT_ENV)
    assert pseudonym.resolve_salt(None) == pseudonym.DEFAULT_SALT


def test_identifiers_that_are_not_public_need_a_secret_salt_or_public_by_name(monkeypatch):
    monkeypatch.delenv(pseudonym.SALT_ENV, raising=False)
    for missing in (None, ""):
        with pytest.raises(pseudonym.SecretSaltNeeded, match=r"^an archive's patient IDs need a secret"):
            pseudonym.resolve_secret_salt(missing)
    assert pseudonym.resolve_secret_salt("public") == pseudonym.DEFAULT_SALT
    assert pseudonym.resolve_salt("public") == pseudonym.DEFAULT_SALT  # the same name means the same salt everywhere
    assert pseudonym.resolve_secret_salt("given") == "given"
    monkeypatch.setenv(pseudonym.SALT_ENV, "from-env")
    assert pseudonym.resolve_secret_salt(None) == "from-env"
