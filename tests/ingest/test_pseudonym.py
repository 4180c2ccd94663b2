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
