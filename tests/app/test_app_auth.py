"""Local reviewer accounts: scrypt hashes with salt, constant-time checks, audit of logins."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from clinfuse.errors import ConfigError
from clinfuse.review import auth
from clinfuse.review.store import ReviewStore


def test_hash_is_salted_scrypt_matching_hashlib():
    h1, h2 = auth.hash_password("s3cret-pass"), auth.hash_password("s3cret-pass")
    assert h1 != h2  # fresh salt each time
    scheme, n, r, p, salt, key = h1.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1") and len(bytes.fromhex(salt)) == 16
    expected = hashlib.scrypt(
        b"s3cret-pass", salt=bytes.fromhex(salt), n=16384, r=8, p=1, dklen=32, maxmem=64 * 2**20
    )
    assert bytes.fromhex(key) == expected
    assert auth.verify_password("s3cret-pass", h1)
    assert not auth.verify_password("s3cret-pasS", h1)
    assert not auth.verify_password("s3cret-pass", "md5$abc")
    assert "s3cret" not in h1


def test_verification_uses_constant_time_compare(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.verify_password("s3cret-pass", auth.hash_password("s3cret-pass"))
    assert len(calls) == 1


def test_short_password_and_bad_username_are_refused(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    with pytest.raises(ConfigError, match="at least 8"):
        auth.add_reviewer(store, "carol", "short")
    for bad in ("../../etc/passwd", "", "a b", "x" * 70, "'; DROP TABLE reviewers;--"):
        with pytest.raises(ConfigError, match="not allowed"):
            auth.add_reviewer(store, bad, "long enough password")
    assert store.reviewers() == []


def test_authenticate_and_audit(review_db, password):
    PASSWORD = password
    store = ReviewStore(review_db)
    assert auth.authenticate(store, "alice", PASSWORD) == "alice"
    assert auth.authenticate(store, "alice", PASSWORD + "x") is None
    assert auth.authenticate(store, "nobody", PASSWORD) is None
    assert auth.authenticate(store, "' OR 1=1 --", PASSWORD) is None
    events = [(e["actor"], e["action"]) for e in reversed(store.audit_log())]
    assert events[-4:] == [
        ("alice", "login"),
        ("alice", "login_failed"),
        ("?", "login_failed"),
        ("?", "login_failed"),
    ]
    assert all(PASSWORD not in str(e) for e in store.audit_log())
    auth.reset_password(store, "alice", "a brand new one")
    assert auth.authenticate(store, "alice", PASSWORD) is None
    assert auth.authenticate(store, "alice", "a brand new one") == "alice"
