"""The SQLite review store: schema, append-only audit trail, parameterized SQL, concurrency."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from clinfuse.errors import ConfigError
from clinfuse.review.auth import add_reviewer
from clinfuse.review.store import SCHEMA_VERSION, ReviewStore, default_db_path

SAVES = 40


def _review(store: ReviewStore, case_id: str = "case0001", **kw):
    args = {
        "case_id": case_id,
        "reviewer": "alice",
        "decision": "agree",
        "risk_shown": 0.7,
        "threshold": 0.5,
        "model_version": "abc123",
    }
    args.update(kw)
    return store.add_review(**args)


def test_new_store_is_wal_with_schema_version(review_db):
    store = ReviewStore(review_db)
    assert store.journal_mode == "wal"
    assert store.schema_version == SCHEMA_VERSION
    with sqlite3.connect(review_db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_default_db_sits_beside_the_run(tmp_path):
    assert default_db_path(tmp_path / "runs" / "r1") == tmp_path / "runs" / "r1.reviews.sqlite"


def test_edits_append_and_supersede(review_db):
    store = ReviewStore(review_db)
    first = _review(store, decision="agree")
    second = _review(store, decision="disagree", corrected_label=0, comment="changed my mind")
    other = _review(store, reviewer="bob", decision="uncertain")
    assert first.supersedes is None
    assert second.supersedes == first.review_id
    assert other.supersedes is None
    history = store.reviews(case_id="case0001")
    assert [r.decision for r in history] == ["agree", "disagree", "uncertain"]
    latest = store.reviews(case_id="case0001", latest_only=True)
    assert {(r.reviewer, r.decision) for r in latest} == {
        ("alice", "disagree"),
        ("bob", "uncertain"),
    }
    status = store.review_status()
    assert status["case0001"]["n_reviewers"] == 2
    assert status["case0001"]["decisions"] == {"alice": "disagree", "bob": "uncertain"}
    actions = [e["action"] for e in store.audit_log()]
    assert actions.count("review_saved") == 3


def test_database_refuses_update_and_delete_of_reviews_and_audit(review_db):
    store = ReviewStore(review_db)
    _review(store)
    con = sqlite3.connect(review_db)
    for sql in (
        "UPDATE reviews SET decision = 'disagree'",
        "DELETE FROM reviews",
        "UPDATE audit_log SET actor = 'x'",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(sql)
    con.close()
    assert store.reviews()[0].decision == "agree"


def test_sql_like_comment_is_stored_verbatim(review_db):
    store = ReviewStore(review_db)
    nasty = "'); DROP TABLE reviews; -- \" OR 1=1; DELETE FROM audit_log;"
    saved = _review(store, comment=nasty, case_id="x' OR '1'='1")
    again = store.reviews(case_id="x' OR '1'='1")
    assert again == [saved] and again[0].comment == nasty
    assert store.reviews(case_id="case0001") == []  # the quote did not widen the query
    with sqlite3.connect(review_db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"reviews", "reviewers", "audit_log"} <= tables


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("decision", "maybe", "decision must be one of"),
        ("corrected_label", 2, "corrected label"),
        ("risk_shown", 1.5, "risk_shown"),
        ("reviewer", "mallory", "unknown reviewer"),
        ("comment", "x" * 10_001, "at most 10000"),
    ],
)
def test_bad_reviews_are_refused(review_db, field, value, message):
    store = ReviewStore(review_db)
    with pytest.raises(ConfigError, match=message):
        _review(store, **{field: value})
    assert store.reviews() == []


def test_newer_schema_and_foreign_database_are_refused(tmp_path):
    newer = tmp_path / "newer.sqlite"
    ReviewStore(newer)
    with sqlite3.connect(newer) as con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="schema version"):
        ReviewStore(newer)
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(ConfigError, match="not a clinfuse review store"):
        ReviewStore(foreign)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot use the review database"):
        ReviewStore(junk)


def _save_many(db: str, reviewer: str, barrier) -> None:
    store = ReviewStore(db)
    barrier.wait()
    for i in range(SAVES):
        _review(store, case_id=f"case{i % 7:04d}", reviewer=reviewer, comment=f"{reviewer}-{i}")


def test_two_reviewers_saving_at_once_in_threads_lose_nothing(review_db):
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=_save_many, args=(str(review_db), who, barrier))
        for who in ("alice", "bob")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = ReviewStore(review_db).reviews()
    assert len(rows) == 2 * SAVES
    assert {r.comment for r in rows} == {f"{w}-{i}" for w in ("alice", "bob") for i in range(SAVES)}
    for who in ("alice", "bob"):  # each save superseded that reviewer's previous one for the case
        mine = [r for r in rows if r.reviewer == who]
        for case in {r.case_id for r in mine}:
            chain = [r for r in mine if r.case_id == case]
            assert [r.supersedes for r in chain] == [None] + [r.review_id for r in chain[:-1]]


_WORKER = """
import sys, time
from pathlib import Path
from clinfuse.review.store import ReviewStore
db, who, go, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
store = ReviewStore(db)
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    store.add_review(case_id=f"case{i % 7:04d}", reviewer=who, decision="agree", risk_shown=0.7,
                     threshold=0.5, model_version="abc123", comment=f"{who}-{i}")
"""


def test_two_processes_saving_at_once_lose_nothing(review_db, tmp_path):
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(review_db), who, str(go), str(SAVES)])
        for who in ("alice", "bob")
    ]
    time.sleep(0.5)
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = ReviewStore(review_db).reviews()
    assert len(rows) == 2 * SAVES
    assert len({r.review_id for r in rows}) == 2 * SAVES
    assert {r.comment for r in rows} == {f"{w}-{i}" for w in ("alice", "bob") for i in range(SAVES)}


def test_reviewer_accounts_are_unique(review_db):
    store = ReviewStore(review_db)
    with pytest.raises(ConfigError, match="already exists"):
        add_reviewer(store, "alice", "another password")
    assert [r["username"] for r in store.reviewers()] == ["alice", "bob"]
    assert all("password_hash" not in r for r in store.reviewers())


def test_single_sign_on_identities(review_db):
    """An OIDC e-mail becomes an 'oidc' account once; it never logs in as a local (password)
    account of the same name, nor as a deactivated account."""
    store = ReviewStore(review_db)
    store.ensure_oidc_reviewer("carol@example.org", "Carol")
    store.ensure_oidc_reviewer("carol@example.org", "Carol")
    carol = [r for r in store.reviewers() if r["username"] == "carol@example.org"]
    assert [(r["auth"], r["display_name"]) for r in carol] == [("oidc", "Carol")]
    with pytest.raises(ConfigError, match="'alice' is a local account"):
        store.ensure_oidc_reviewer("alice", "Alice via SSO")
    con = sqlite3.connect(review_db)
    with con:
        con.execute("UPDATE reviewers SET active = 0 WHERE username = ?", ("carol@example.org",))
    con.close()
    with pytest.raises(ConfigError, match="deactivated"):
        store.ensure_oidc_reviewer("carol@example.org", "Carol")
