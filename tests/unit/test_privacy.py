"""Pseudonyms are stable, keyed, recognisable and idempotent."""

import os
import stat

import pytest

from recsys.privacy import is_pseudonym, pseudonymise
from recsys.settings import Settings


@pytest.mark.reliability
def test_pseudonyms_are_stable_and_depend_on_the_key():
    assert pseudonymise("42", b"a" * 32) == pseudonymise("42", b"a" * 32)
    assert pseudonymise("42", b"a" * 32) != pseudonymise("42", b"b" * 32)
    assert pseudonymise("42", b"a" * 32) != pseudonymise("43", b"a" * 32)


@pytest.mark.reliability
def test_pseudonyms_do_not_contain_the_raw_id_and_are_recognised():
    p = pseudonymise("alice@example.com", b"a" * 32)
    assert "alice" not in p
    assert is_pseudonym(p) and not is_pseudonym("alice@example.com")


def test_pseudonymising_twice_changes_nothing():
    p = pseudonymise("42", b"a" * 32)
    assert pseudonymise(p, b"a" * 32) == p


def test_default_key_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_PSEUDONYM_KEY", "env-key-" + "x" * 40)
    assert Settings().pseudonym_key_bytes() == ("env-key-" + "x" * 40).encode()


@pytest.mark.reliability
def test_without_a_configured_key_one_is_created_privately_once(tmp_path, monkeypatch):
    monkeypatch.delenv("RECSYS_PSEUDONYM_KEY", raising=False)
    s = Settings(state_dir=tmp_path)
    first = s.pseudonym_key_bytes()
    key_file = tmp_path / "secrets" / "pseudonym.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert Settings(state_dir=tmp_path).pseudonym_key_bytes() == first
    assert len(first) >= 32
