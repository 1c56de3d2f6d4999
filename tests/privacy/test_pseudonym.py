"""Keyed pseudonyms, UIDs, date shifts and secret handling."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from privacy.errors import SecretKeyError
from privacy.pseudonym import ENV_VAR, Pseudonymizer, load_secret

SECRET = b"test-secret-0123456789abcdef-0123456789"
OTHER_SECRET = b"another-secret-9876543210fedcba-98765432"


def test_pseudonym_is_hmac_sha256_of_namespace_and_value() -> None:
    # reference: the standard library's HMAC-SHA256
    p = Pseudonymizer(SECRET)
    expected = hmac.new(SECRET, b"patient\x1fMRN-1", hashlib.sha256).digest()
    assert p.digest("MRN-1", "patient") == expected


def test_same_key_same_pseudonym_other_key_other_pseudonym() -> None:
    a, b, c = Pseudonymizer(SECRET), Pseudonymizer(SECRET), Pseudonymizer(OTHER_SECRET)
    assert a.pseudonym("07300111", "patient") == b.pseudonym("07300111", "patient")
    assert a.pseudonym("07300111", "patient") != c.pseudonym("07300111", "patient")
    assert a.pseudonym("x", "case") != a.pseudonym("x", "patient")
    assert re.fullmatch(r"P[A-Z2-7]{12}", a.pseudonym("x", "p", prefix="P", length=12))


def test_uid_is_valid_consistent_and_keyed() -> None:
    from pydicom.uid import UID

    p, q = Pseudonymizer(SECRET), Pseudonymizer(OTHER_SECRET)
    uid = p.uid("1.2.840.113619.2.55.3.604688119")
    assert uid == p.uid("1.2.840.113619.2.55.3.604688119 ")
    assert uid != q.uid("1.2.840.113619.2.55.3.604688119")
    assert uid.startswith("2.25.") and len(uid) <= 64 and UID(uid).is_valid


def test_date_shift_range_and_consistency() -> None:
    p = Pseudonymizer(SECRET, max_shift_days=30)
    shifts = {p.date_shift_days(f"P{i}") for i in range(200)}
    assert shifts <= set(range(-30, 0)) and len(shifts) > 20
    assert p.date_shift_days("P1") == Pseudonymizer(SECRET, max_shift_days=30).date_shift_days("P1")


def test_repr_does_not_show_the_key() -> None:
    assert SECRET.decode() not in repr(Pseudonymizer(SECRET))


def test_load_secret_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "k"
    f.write_bytes(SECRET + b"\n")
    assert load_secret(f) == SECRET
    monkeypatch.setenv(ENV_VAR, SECRET.decode())
    assert load_secret() == SECRET


@pytest.mark.parametrize("content", [b"", b"   \n", b"short"])
def test_empty_or_short_secret_file_refused(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "k"
    f.write_bytes(content)
    with pytest.raises(SecretKeyError, match="secret file"):
        load_secret(f)


def test_missing_secret_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(SecretKeyError, match=ENV_VAR):
        load_secret()
    with pytest.raises(SecretKeyError, match="cannot read"):
        load_secret(tmp_path / "absent.key")
    monkeypatch.setenv(ENV_VAR, "")
    with pytest.raises(SecretKeyError, match="empty"):
        load_secret()
    with pytest.raises(SecretKeyError):
        Pseudonymizer(b"")


def test_a_set_aside_shift_is_replaced_by_the_next_keyed_one() -> None:
    p = Pseudonymizer(SECRET, max_shift_days=30)
    natural = p.date_shift_days("P1")
    p.avoid_date_shifts("P1", [natural])
    moved = p.date_shift_days("P1")
    assert moved != natural and -30 <= moved <= -1
    again = Pseudonymizer(SECRET, max_shift_days=30)
    again.avoid_date_shifts("P1", [natural])
    assert again.date_shift_days("P1") == moved  # deterministic
    p.avoid_date_shifts("P1", [s for s in range(-30, 0) if s != -7])
    assert p.date_shift_days("P1") == -7  # the only one left
    p.avoid_date_shifts("P1", range(-30, 0))
    assert -30 <= p.date_shift_days("P1") <= -1  # nothing left: still a valid shift
